"""Text encoders: shapes and masks, eval-mode caching and its invalidation, null text, adapters."""
import pytest
import torch

from world_model.text import SENTENCES
from world_model.text_encoder import (
    PretrainedSentenceEncoder,
    TextEmbedding,
    TextEncoder,
    TextEncoderConfig,
    VocabTextEncoder,
    tokenize,
)

SMALL = TextEncoderConfig(dim=16, depth=1, heads=2)


def test_every_caption_tokenizes_within_max_len():
    enc = VocabTextEncoder(SMALL)
    assert max(len(tokenize(s)) for s in SENTENCES) <= SMALL.max_len
    ids, mask = enc.token_ids(list(SENTENCES))
    assert ids.shape == mask.shape and mask.sum(1).min() >= 5


def test_encode_shapes_and_mask():
    torch.manual_seed(0)
    enc = VocabTextEncoder(SMALL)
    assert isinstance(enc, TextEncoder)
    short, long = SENTENCES[0], max(SENTENCES, key=lambda s: len(tokenize(s)))
    tokens, mask, pooled = enc.encode([short, long])
    L = len(tokenize(long))
    assert tokens.shape == (2, L, 16) and mask.shape == (2, L) and pooled.shape == (2, 16)
    assert mask[0].sum() == len(tokenize(short)) and mask[1].all()
    assert torch.all(tokens[0, ~mask[0]] == 0)  # padding carries no features
    assert not torch.allclose(pooled[0], pooled[1])


def test_padding_does_not_change_a_sentence():
    torch.manual_seed(0)
    enc = VocabTextEncoder(SMALL).eval()
    alone = enc._forward([SENTENCES[0]])
    padded = enc._forward([SENTENCES[0], SENTENCES[-1]])
    n = alone.tokens.shape[1]
    torch.testing.assert_close(padded.tokens[0, :n], alone.tokens[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded.pooled[0], alone.pooled[0], rtol=1e-5, atol=1e-6)


def test_cache_only_in_eval_and_cleared_on_mode_switch():
    torch.manual_seed(0)
    enc = VocabTextEncoder(SMALL)
    batch = [SENTENCES[1], SENTENCES[2], SENTENCES[1]]
    train_out = enc.encode(batch)
    assert train_out.pooled.requires_grad and not enc._cache  # train mode: never cached
    enc.eval()
    first = enc.encode(batch)
    assert set(enc._cache) == {SENTENCES[1], SENTENCES[2]}
    second = enc.encode(batch)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    torch.testing.assert_close(first.pooled, train_out.pooled.detach())  # cache == fresh computation
    with torch.no_grad():
        enc.embed.weight.add_(1.0)
    enc.train()
    assert not enc._cache
    enc.eval()
    assert not torch.allclose(enc.encode(batch).pooled, first.pooled)  # new weights, new cache
    enc.load_state_dict(enc.state_dict())
    assert not enc._cache


def test_gradients_reach_the_encoder_and_null_text():
    enc = VocabTextEncoder(SMALL)
    emb = enc.encode(list(SENTENCES[:4]))
    mixed = emb.where(torch.tensor([True, False, True, False]), enc.null())
    (mixed.tokens.sum() + mixed.pooled.sum()).backward()
    assert enc.embed.weight.grad.abs().sum() > 0
    assert enc.null_text.token.grad.abs().sum() > 0 and enc.null_text.pooled.grad.abs().sum() > 0


def test_null_text_and_batch_helpers():
    enc = VocabTextEncoder(SMALL)
    null = enc.null(3)
    assert null.tokens.shape == (3, 1, 16) and null.mask.all() and null.pooled.shape == (3, 16)
    emb = enc.encode(list(SENTENCES[:2]))
    both = TextEmbedding.cat([enc.null(2), emb])
    assert both.tokens.shape == (4, emb.tokens.shape[1], 16)
    assert both.mask[:2].sum(1).tolist() == [1, 1]
    mixed = emb.where(torch.tensor([False, True]), enc.null())
    torch.testing.assert_close(mixed.pooled[0], enc.null().pooled[0])
    torch.testing.assert_close(mixed.tokens[1], emb.tokens[1])


def test_unknown_word_raises_naming_it():
    enc = VocabTextEncoder(SMALL)
    with pytest.raises(ValueError, match="'flies'"):
        enc.encode(["The camera flies forward."])
    with pytest.raises(ValueError, match="at least one"):
        enc.encode([])


def test_pretrained_adapter_caches_a_frozen_callable():
    calls = []

    def embed(sentences):
        calls.append(list(sentences))
        return torch.stack([torch.full((8,), float(len(s))) for s in sentences])

    enc = PretrainedSentenceEncoder(embed, dim=8)
    tokens, mask, pooled = enc.encode([SENTENCES[0], SENTENCES[5], SENTENCES[0]])
    assert tokens.shape == (3, 1, 8) and mask.all() and torch.equal(tokens[:, 0], pooled)
    enc.encode([SENTENCES[5]])
    assert len(calls) == 1 and sorted(calls[0]) == sorted({SENTENCES[0], SENTENCES[5]})
    assert enc.null(2).tokens.shape == (2, 1, 8)
    bad = PretrainedSentenceEncoder(lambda s: torch.zeros(len(s), 7), dim=8)
    with pytest.raises(ValueError, match="7"):
        bad.encode(["anything"])
