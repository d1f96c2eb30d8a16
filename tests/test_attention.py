import math

import torch

from tiny_magicvideo.attention import (MultiHeadAttention, SpatialTransformer, TemporalAttention, causal_mask,
                                       scaled_dot_product_attention)


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


def test_causal_mask_lets_frame_i_see_frames_0_to_i():
    assert causal_mask(4).tolist() == [[True, False, False, False], [True, True, False, False],
                                       [True, True, True, False], [True, True, True, True]]


def moved_off_initial_values(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    for parameter in module.parameters():
        parameter.data.add_(0.1 * torch.randn_like(parameter))
    return module


def test_temporal_attention_starts_at_zero():
    torch.manual_seed(0)
    temporal = TemporalAttention(16, 4, max_frames=6)
    assert temporal(torch.randn(2 * 6, 16, 3, 3), torch.arange(6)).abs().max() == 0


def test_temporal_attention_weights_are_causal_and_masked_before_the_softmax():
    temporal = moved_off_initial_values(TemporalAttention(16, 4, max_frames=5))
    temporal.attention.fused = False  # the explicit formula, so the softmax weights can be read
    weights = []
    original = torch.Tensor.softmax

    def record(logits, dim):
        out = original(logits, dim=dim)
        weights.append(out)
        return out

    torch.Tensor.softmax = record
    try:
        temporal(torch.randn(5, 16, 2, 2), torch.arange(5))
    finally:
        torch.Tensor.softmax = original
    (w,) = weights  # (B*H*W, heads, T, T)
    assert torch.equal(w[..., ~causal_mask(5)], torch.zeros_like(w[..., ~causal_mask(5)]))
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]))  # rows still sum to 1: masked before
    assert (w[..., causal_mask(5)] > 0).all()


def test_temporal_attention_mixes_frames_only_forwards_and_only_within_a_clip():
    temporal = moved_off_initial_values(TemporalAttention(16, 4, max_frames=4))
    for fused in (True, False):
        temporal.attention.fused = fused
        x = torch.randn(2 * 4, 16, 3, 3)  # (B*T, C, H, W), batch 2 of 4 frames
        out = temporal(x, torch.arange(4)).unflatten(0, (2, 4))  # (B, T, C, H, W)
        changed = x.clone().unflatten(0, (2, 4))
        changed[0, 2, :, 1, 1] += 1.0  # clip 0, frame 2, location (1, 1)
        new = temporal(changed.flatten(0, 1), torch.arange(4)).unflatten(0, (2, 4))
        difference = (new - out).abs().sum(2)  # (B, T, H, W)
        assert difference[1].max() == 0  # the other clip
        assert difference[0, :2].max() < 1e-6  # earlier frames
        assert (difference[0, 2:, 1, 1] > 1e-4).all()  # frame 2 and later at that location


def per_location_temporal_attention(temporal, x, frame_index, context, context_mask):
    """TemporalAttention with text written the direct way: each location's T tokens cross-attend to
    their own copy of the clip's text, whose keys and values are then projected H*W times."""
    num_frames, (frames_in_batch, c, h, w) = len(frame_index), x.shape
    batch = frames_in_batch // num_frames
    tokens = temporal.norm(x).reshape(batch, num_frames, c, h * w).permute(0, 3, 1, 2).reshape(-1, num_frames, c)
    tokens = temporal.proj_in(tokens) + temporal.frame_position[frame_index]
    tokens = tokens + temporal.attention(temporal.norm1(tokens), attention_mask=causal_mask(num_frames))
    text = context[::num_frames].repeat_interleave(h * w, dim=0)  # (B*H*W, L, D)
    text_mask = context_mask[::num_frames].repeat_interleave(h * w, dim=0)
    tokens = tokens + temporal.cross_attention(temporal.norm_cross(tokens), text, key_mask=text_mask)
    tokens = temporal.proj_out(tokens + temporal.feed_forward(temporal.norm2(tokens)))
    return tokens.reshape(batch, h * w, num_frames, c).permute(0, 2, 3, 1).reshape(frames_in_batch, c, h, w)


def test_temporal_cross_attention_projects_the_text_once_per_clip_and_gives_the_per_location_result():
    temporal = moved_off_initial_values(TemporalAttention(16, 4, max_frames=3, context_width=8))
    x = torch.randn(2 * 3, 16, 2, 2)  # (B*T, C, H, W): 2 clips of 3 frames, 2x2 locations
    context = torch.randn(2, 5, 8).repeat_interleave(3, dim=0)  # one copy per frame, as the U-Net passes it
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]]).repeat_interleave(3, dim=0)
    projected = []
    temporal.cross_attention.to_k.register_forward_hook(lambda module, inputs, output: projected.append(output.shape))
    out = temporal(x, torch.arange(3), context, mask)
    assert projected == [(2, 5, 16)]  # the text's keys: once per clip, not once per location (2 * 4)
    assert torch.allclose(out, per_location_temporal_attention(temporal, x, torch.arange(3), context, mask),
                          atol=1e-5)
