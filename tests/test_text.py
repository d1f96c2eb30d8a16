import warnings

import pytest
import torch

from tiny_magicvideo.config import TextConfig
from tiny_magicvideo.shapes import caption_vocabulary
from tiny_magicvideo.text import PAD, START, UNKNOWN, TextEncoder, Tokenizer

WORDS = caption_vocabulary()


def test_tokenizer_maps_caption_words_and_pads():
    tokenizer = Tokenizer(max_length=8, vocabulary=WORDS)
    ids, mask = tokenizer(["a red circle moving left", ""])
    assert ids.shape == (2, 8) and mask.dtype == torch.bool
    assert ids[0, 0] == START and mask[0].sum() == 6 and (ids[0, 6:] == PAD).all()
    assert [tokenizer.vocabulary[i] for i in ids[0, 1:6]] == ["a", "red", "circle", "moving", "left"]
    assert mask[1].tolist() == [True] + [False] * 7  # "" is just <start>
    assert torch.equal(tokenizer(["A Red, CIRCLE moving left!"])[0][0], ids[0])


def test_unknown_words_warn_once_and_long_prompts_are_cut_with_a_warning():
    tokenizer = Tokenizer(max_length=5, vocabulary=WORDS)
    with pytest.warns(UserWarning, match="unknown word 'purple'"):
        ids, _ = tokenizer(["a purple circle"])
    assert ids[0, 2] == UNKNOWN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer(["purple"])  # the same unknown word again: no second warning
    with pytest.warns(UserWarning, match="only the first 4 are used"):
        ids, mask = tokenizer(["a red circle moving to the left"])
    assert mask.all()
    with pytest.warns(UserWarning) as caught:  # a pasted essay is named by its start, not printed whole
        tokenizer(["a red circle " * 100])
    assert "'a red circle a red circle a red circle a...' has 300 words" in str(caught[0].message)


def test_text_encoder_output_shapes_and_padding_independence():
    torch.manual_seed(0)
    encoder = TextEncoder(TextConfig(max_length=10, width=32, num_layers=2, num_heads=4), WORDS).eval()
    context, mask = encoder(["a red circle moving left", "blue box"])
    assert context.shape == (2, 10, 32) and mask.shape == (2, 10)
    alone, _ = encoder(["blue box"])  # batching with a longer prompt does not change real tokens
    assert torch.allclose(alone[0, :3], context[1, :3], atol=1e-5)


def test_a_tokenizer_takes_its_words_from_its_caller():
    with pytest.raises(ValueError, match="needs the words it knows"):
        Tokenizer(max_length=5, vocabulary=())
    tokenizer = Tokenizer(max_length=5, vocabulary=("apply", "eye", "makeup"))
    with pytest.warns(UserWarning, match=r"unknown word 'red' in a prompt is read as <unknown>; the vocabulary is "
                                         r"the 3 words given"):
        ids, _ = tokenizer(["apply red makeup"])
    assert [tokenizer.vocabulary[i] for i in ids[0, 1:4]] == ["apply", "<unknown>", "makeup"]
