"""Text encoders: action sentences -> token features, a padding mask and a pooled vector (DESIGN M10).

The paper precomputes frozen T5/CLIP embeddings. Our captions come from a closed grammar of 81 sentences
(``world_model.text.SENTENCES``), so the default encoder is small and *learned jointly* with the world
model: ``VocabTextEncoder`` tokenizes words over the caption vocabulary and runs a small transformer.
``PretrainedSentenceEncoder`` shows how to plug in a frozen sentence-embedding model instead.

Every encoder answers the ``TextEncoder`` protocol:

    emb = encoder.encode(["The camera moves forward, turning left."])   # TextEmbedding
    emb.tokens (B, L, D), emb.mask (B, L) bool (True = real token), emb.pooled (B, D)
    encoder.null(B)                                                      # the "empty" text for guidance

The null text is a learned embedding (one token plus a pooled vector), not the encoding of "": it is
what the world model sees when the text condition is dropped in training (10%) and in the unconditional
branch of classifier-free guidance.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from world_model.text import SENTENCES


class TextEmbedding(NamedTuple):
    """An encoded batch of sentences. Unpacks as ``tokens, mask, pooled = emb``."""

    tokens: Tensor  # (B, L, D) token features
    mask: Tensor  # (B, L) bool, True = real token, False = padding
    pooled: Tensor  # (B, D) one vector per sentence

    def pad_to(self, length: int) -> TextEmbedding:
        """Right-pad the tokens (with zeros, mask False) to ``length``."""
        extra = length - self.tokens.shape[1]
        if extra < 0:
            raise ValueError(f"cannot pad {self.tokens.shape[1]} tokens down to {length}")
        if extra == 0:
            return self
        return TextEmbedding(F.pad(self.tokens, (0, 0, 0, extra)), F.pad(self.mask, (0, extra)), self.pooled)

    def expand(self, batch_size: int) -> TextEmbedding:
        """Broadcast a batch of one to ``batch_size`` (a batch of that size is returned as is)."""
        if self.tokens.shape[0] == batch_size:
            return self
        if self.tokens.shape[0] != 1:
            raise ValueError(f"cannot expand a text batch of {self.tokens.shape[0]} to {batch_size}")
        tokens, mask, pooled = self
        return TextEmbedding(tokens.expand(batch_size, -1, -1), mask.expand(batch_size, -1), pooled.expand(batch_size, -1))

    @staticmethod
    def cat(embeddings: list[TextEmbedding]) -> TextEmbedding:
        """Concatenate along the batch, padding every member to the longest token length."""
        length = max(e.tokens.shape[1] for e in embeddings)
        padded = [e.pad_to(length) for e in embeddings]
        return TextEmbedding(*(torch.cat(parts) for parts in zip(*padded)))

    def where(self, keep: Tensor, other: TextEmbedding) -> TextEmbedding:
        """Per sample: this text where ``keep`` (B,) is True, else ``other`` (batch B or 1)."""
        batch, length = self.tokens.shape[:2]
        other = other.expand(batch)
        length = max(length, other.tokens.shape[1])
        a, b = self.pad_to(length), other.pad_to(length)
        return TextEmbedding(
            torch.where(keep[:, None, None], a.tokens, b.tokens),
            torch.where(keep[:, None], a.mask, b.mask),
            torch.where(keep[:, None], a.pooled, b.pooled),
        )


@runtime_checkable
class TextEncoder(Protocol):
    """What the world model needs from a text encoder."""

    dim: int  # D of tokens and pooled vector; the MM-DiT's ``text_dim``

    def encode(self, sentences: list[str]) -> TextEmbedding: ...

    def null(self, batch_size: int = 1) -> TextEmbedding: ...


class _NullText(nn.Module):
    """A learned "no text": one token (mask True) and a pooled vector, used when text is dropped."""

    def __init__(self, dim: int):
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)  # (1, 1, D)
        self.pooled = nn.Parameter(torch.randn(1, dim) * 0.02)  # (1, D)

    def forward(self, batch_size: int) -> TextEmbedding:
        mask = torch.ones(batch_size, 1, dtype=torch.bool, device=self.token.device)
        return TextEmbedding(self.token.expand(batch_size, -1, -1), mask, self.pooled.expand(batch_size, -1))


# --------------------------------------------------------------------------------------------------
# The default: a small transformer over the caption vocabulary, trained with the world model
# --------------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks: "left," -> "left", ","


def tokenize(sentence: str) -> list[str]:
    """Lower-case words and punctuation of a sentence."""
    return _WORD.findall(sentence.lower())


@dataclass
class TextEncoderConfig:
    dim: int = 128  # D of token features and the pooled vector (= the MM-DiT's text_dim)
    depth: int = 2  # transformer layers; 81 sentences of <= 13 tokens need very little
    heads: int = 4
    mlp_ratio: float = 4.0
    max_len: int = 32  # learned positions; the longest caption is 13 tokens


class VocabTextEncoder(nn.Module):
    """Word tokenizer over the caption vocabulary + a small pre-norm transformer.

    Words outside the vocabulary raise ``ValueError`` naming the word (no ``<unk>`` token): the encoder
    is trained only on the caption grammar, so an unseen word has no learned meaning and mapping it to
    ``<unk>`` would silently turn e.g. "forwards" into an unspecified action.

    Caching: in eval mode ``encode`` remembers each sentence's (detached) tokens and pooled vector, so a
    rollout pays for each of the 81 sentences once. Training changes the weights, so the cache is never
    used in train mode and is cleared by ``train()``/``eval()`` and ``load_state_dict``.
    """

    PAD = "<pad>"

    def __init__(self, config: TextEncoderConfig | None = None, sentences: tuple[str, ...] = SENTENCES):
        super().__init__()
        self.config = config = config or TextEncoderConfig()
        self.dim = config.dim
        words = sorted({w for s in sentences for w in tokenize(s)})
        self.vocab = {w: i for i, w in enumerate([self.PAD, *words])}
        self.embed = nn.Embedding(len(self.vocab), config.dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(config.max_len, config.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            config.dim,
            config.heads,
            int(config.dim * config.mlp_ratio),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.null_text = _NullText(config.dim)
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}  # sentence -> ((L, D) tokens, (D,) pooled)

    def token_ids(self, sentences: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids (B, L) padded with 0, and the mask (B, L) True on real tokens."""
        rows = []
        for s in sentences:
            words = tokenize(s)
            for w in words:
                if w not in self.vocab:
                    raise ValueError(
                        f"unknown word {w!r} in sentence {s!r}; the caption vocabulary is "
                        f"world_model.text.SENTENCES (e.g. {SENTENCES[3]!r})"
                    )
            if not 0 < len(words) <= self.config.max_len:
                raise ValueError(f"sentence {s!r} has {len(words)} tokens; expected 1..{self.config.max_len}")
            rows.append([self.vocab[w] for w in words])
        length = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (length - len(r)) for r in rows], device=self.pos.device)
        return ids, ids != 0

    def _forward(self, sentences: list[str]) -> TextEmbedding:
        ids, mask = self.token_ids(sentences)  # (B, L), (B, L)
        x = self.embed(ids) + self.pos[: ids.shape[1]]  # (B, L, D)
        x = self.norm(self.blocks(x, src_key_padding_mask=~mask))  # (B, L, D)
        w = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        pooled = (x * w).sum(1) / w.sum(1)  # (B, D) mean over real tokens
        return TextEmbedding(x * w, mask, pooled)

    def encode(self, sentences: list[str]) -> TextEmbedding:
        """Encode a batch of sentences (cached per sentence in eval mode)."""
        if not sentences:
            raise ValueError("encode needs at least one sentence")
        if self.training:
            return self._forward(list(sentences))
        missing = sorted({s for s in sentences if s not in self._cache})
        if missing:
            with torch.no_grad():
                emb = self._forward(missing)
            for i, s in enumerate(missing):
                n = int(emb.mask[i].sum())
                self._cache[s] = (emb.tokens[i, :n], emb.pooled[i])
        device = self.pos.device
        entries = [self._cache[s] for s in sentences]
        length = max(tok.shape[0] for tok, _ in entries)
        tokens = torch.stack([F.pad(tok, (0, 0, 0, length - tok.shape[0])) for tok, _ in entries]).to(device)
        mask = torch.stack([torch.arange(length) < tok.shape[0] for tok, _ in entries]).to(device)
        pooled = torch.stack([p for _, p in entries]).to(device)
        return TextEmbedding(tokens, mask, pooled)  # (B, L, D), (B, L), (B, D)

    def null(self, batch_size: int = 1) -> TextEmbedding:
        """The learned empty text, batch ``batch_size``."""
        return self.null_text(batch_size)

    def train(self, mode: bool = True) -> VocabTextEncoder:
        self._cache.clear()
        return super().train(mode)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._cache.clear()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# --------------------------------------------------------------------------------------------------
# Adapter for a frozen, pretrained sentence-embedding model
# --------------------------------------------------------------------------------------------------


class PretrainedSentenceEncoder(nn.Module):
    """Wraps a frozen ``embed(list[str]) -> (B, D)`` callable, e.g. ``SentenceTransformer(...).encode``.

    Each sentence becomes a single token (its embedding), which is also the pooled vector; the null
    text is still learned. The callable is frozen, so every sentence is cached in both modes.

        encoder = PretrainedSentenceEncoder.from_sentence_transformers("all-MiniLM-L6-v2")  # D = 384

    The MM-DiT then needs ``text_dim=encoder.dim``.
    """

    def __init__(self, embed: Callable[[list[str]], Tensor], dim: int):
        super().__init__()
        self.embed_fn = embed
        self.dim = dim
        self.null_text = _NullText(dim)
        self._cache: dict[str, Tensor] = {}  # sentence -> (D,)

    @classmethod
    def from_sentence_transformers(cls, name: str) -> PretrainedSentenceEncoder:
        """Load a model of the optional ``sentence-transformers`` package (not a project dependency)."""
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError("from_sentence_transformers needs the optional `sentence-transformers` package") from e
        model = SentenceTransformer(name, device="cpu")
        dim = model.get_sentence_embedding_dimension()
        return cls(lambda s: model.encode(s, convert_to_tensor=True), dim)

    def encode(self, sentences: list[str]) -> TextEmbedding:
        if not sentences:
            raise ValueError("encode needs at least one sentence")
        missing = sorted({s for s in sentences if s not in self._cache})
        if missing:
            with torch.no_grad():
                out = torch.as_tensor(self.embed_fn(missing), dtype=torch.float32)  # (M, D)
            if out.shape != (len(missing), self.dim):
                raise ValueError(
                    f"embedding callable returned shape {tuple(out.shape)}, expected ({len(missing)}, {self.dim})"
                )
            self._cache.update(zip(missing, out))
        device = self.null_text.token.device
        pooled = torch.stack([self._cache[s] for s in sentences]).to(device)  # (B, D)
        mask = torch.ones(len(sentences), 1, dtype=torch.bool, device=device)
        return TextEmbedding(pooled.unsqueeze(1), mask, pooled)  # (B, 1, D), (B, 1), (B, D)

    def null(self, batch_size: int = 1) -> TextEmbedding:
        return self.null_text(batch_size)
