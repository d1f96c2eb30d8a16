import math

import torch

from tiny_magicvideo.attention import MultiHeadAttention, SpatialTransformer, scaled_dot_product_attention


def test_explicit_attention_is_the_formula_and_agrees_with_the_fused_kernel():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5, generator=g) > 0.3
    mask[..., 0] = True  # every query sees at least one key
    explicit = scaled_dot_product_attention(q, k, v, mask, fused=False)
    fused = scaled_dot_product_attention(q, k, v, mask, fused=True)
    assert torch.allclose(explicit, fused, atol=1e-5)
    # one entry by hand: softmax over the allowed keys of q.k / sqrt(d), then the weighted mean
    logits = torch.tensor([q[1, 2, 3] @ k[1, 2, j] / math.sqrt(8) if mask[1, 0, 3, j] else -math.inf
                           for j in range(5)])
    assert torch.allclose(explicit[1, 2, 3], logits.softmax(0) @ v[1, 2], atol=1e-5)


def test_padding_keys_are_ignored():
    torch.manual_seed(0)
    attention = MultiHeadAttention(16, 4, context_width=8)
    tokens, context = torch.randn(1, 6, 16), torch.randn(1, 5, 8)
    mask = torch.tensor([[True, True, True, False, False]])
    changed = context.clone()
    changed[:, 3:] = 100.0  # whatever sits in the padding
    for fused in (True, False):
        attention.fused = fused
        assert torch.allclose(attention(tokens, context, mask), attention(tokens, changed, mask), atol=1e-5)


def test_spatial_transformer_keeps_shapes_and_frames_apart():
    torch.manual_seed(0)
    transformer = SpatialTransformer(16, 4, context_width=8)
    x, context = torch.randn(3, 16, 4, 4), torch.randn(3, 5, 8)
    out = transformer(x, context, None)
    assert out.shape == x.shape
    x_changed = x.clone()
    x_changed[2] += 1.0  # another frame (batch entry) changes
    assert torch.allclose(transformer(x_changed, context, None)[:2], out[:2], atol=1e-6)
