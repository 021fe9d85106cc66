"""Rectified flow: the training loss and the Euler sampler with two-condition guidance (DESIGN M8, M12).

Time convention, used everywhere in the project: **t = 1 is noise, t = 0 is data**,

    x_t = (1 - t) * x0 + t * eps,        velocity target  v = eps - x0,

so a sampler integrates dx/dt = v from t = 1 down to t = 0. ``FlowMatching`` knows nothing of the backbone
beyond ``model.encode_context(...)`` / ``model.denoise(...)`` / ``model(...)`` of ``world_model.mmdit``.

Training (``loss``): t ~ logit-normal (SD3); the history frames are noise-augmented at a level drawn per
sample (so the model tolerates its own imperfect past at rollout time); text is replaced by the null
text with probability 10% and the memory frame dropped with probability 50% (condition dropout for
guidance); channels given clean (``known``, first-frame completion M9) are not in the loss.

Sampling (``sample``): Euler steps on a (shifted) uniform grid with two-condition guidance

    e = e(0, 0) + s_T * (e(T, 0) - e(0, 0)) + s_S * (e(T, S) - e(T, 0)),

all branches in one batched call, and the context K/V encoded once per chunk and reused by every step.
Defaults follow the public release (10 steps here vs 15 there, s_T = 3.5, s_S = 6.0).
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from world_model.text_encoder import TextEmbedding


SAMPLER_FIELDS = ("steps", "shift", "s_text", "s_spatial")  # FlowConfig fields only the sampler reads


@dataclass
class FlowConfig:
    t_mean: float = 0.0  # logit-normal training times t = sigmoid(N(t_mean, t_std)) (SD3): most weight mid-way
    t_std: float = 1.0
    history_noise: float = 0.1  # history noise-augmentation level ~ U(0, history_noise) per sample
    text_drop: float = 0.1  # P(text -> null text) in training (paper)
    spatial_drop: float = 0.5  # P(memory frame dropped) in training (paper)
    steps: int = 10  # Euler steps per chunk; the release uses 15 at 384p, 8x8 latents need fewer
    shift: float = 1.0  # SD3 time shift t' = s t / (1 + (s - 1) t); 1 = uniform, for 8x8 latents (SD3: 3 at 1024^2)
    s_text: float = 3.5  # text guidance scale (release; paper 4)
    s_spatial: float = 6.0  # memory-frame guidance scale (release; paper 5)

    def __post_init__(self):
        for name in ("text_drop", "spatial_drop", "history_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.t_std <= 0:
            raise ValueError(f"t_std must be > 0, got {self.t_std!r}")
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift!r}")
        for name in ("s_text", "s_spatial"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite guidance scale, got {getattr(self, name)!r}")


class FlowLoss(NamedTuple):
    loss: Tensor  # () mean over the batch
    t: Tensor  # (B,) the flow time of each sample
    per_sample: Tensor  # (B,) each sample's loss, to read the loss per noise level


def _rand(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def _randn(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def _known_mask(known: Tensor | None, x: Tensor) -> Tensor | None:
    """(B, k, C) bool -> (B, k, C, 1, 1) for broadcasting over frames (B, k, C, h, w)."""
    if known is None:
        return None
    if known.shape != x.shape[:3]:
        raise ValueError(f"known has shape {tuple(known.shape)}; expected {tuple(x.shape[:3])}")
    return known.bool()[..., None, None]


class FlowMatching:
    """Rectified-flow objective and sampler for a ``world_model.mmdit.MMDiT``."""

    def __init__(self, config: FlowConfig | None = None):
        self.config = config or FlowConfig()

    def loss(
        self,
        model,
        x0: Tensor,
        history: Tensor | None,
        text: TextEmbedding,
        null_text: TextEmbedding,
        spatial: Tensor | None = None,
        spatial_mask: Tensor | None = None,
        known: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> FlowLoss:
        """Velocity regression on one batch of chunks.

        Args:
            x0: (B, k, C, h, w) clean latent frames to predict.
            history: (B, Th, C, h, w) clean recent latent frames, or None.
            text: the batch's captions; null_text: the learned empty text (batch 1 or B).
            spatial: (B, S, C, h, w) retrieved memory frame(s) or None; spatial_mask: (B,) False = none found.
            known: (B, k, C) bool, channels of x0 given clean (kept clean in x_t, left out of the loss).
        Returns:
            ``FlowLoss(loss, t, per_sample)``.
        """
        c = self.config
        B = x0.shape[0]
        t = torch.sigmoid(c.t_mean + c.t_std * _randn((B,), x0, generator))  # (B,)
        eps = _randn(x0.shape, x0, generator)
        tb = t.view(B, 1, 1, 1, 1)
        x_t = (1 - tb) * x0 + tb * eps
        mask = _known_mask(known, x0)
        if mask is not None:
            x_t = torch.where(mask, x0, x_t)
        history_t = None
        if history is not None and history.shape[1] > 0:
            history_t = c.history_noise * _rand((B,), x0, generator)  # (B,)
            hb = history_t.view(B, 1, 1, 1, 1)
            history = (1 - hb) * history + hb * _randn(history.shape, history, generator)
        text = text.where(_rand((B,), x0, generator) >= c.text_drop, null_text)
        if spatial is not None:
            keep = _rand((B,), x0, generator) >= c.spatial_drop
            spatial_mask = keep if spatial_mask is None else keep & spatial_mask.bool()
        v = model(x_t, t, history, history_t, *text, spatial, spatial_mask, known)
        err = (v - (eps - x0)) ** 2  # (B, k, C, h, w)
        weight = torch.ones_like(err) if mask is None else (~mask).to(err.dtype).expand_as(err)
        per_sample = (err * weight).sum((1, 2, 3, 4)) / weight.sum((1, 2, 3, 4)).clamp_min(1)  # (B,)
        return FlowLoss(per_sample.mean(), t, per_sample)

    def schedule(self, steps: int, device=None) -> Tensor:
        """(steps + 1,) times from 1 (noise) to 0 (data), uniform then shifted."""
        s = torch.linspace(1.0, 0.0, steps + 1, device=device)
        return self.config.shift * s / (1 + (self.config.shift - 1) * s)

    @torch.no_grad()
    def sample(
        self,
        model,
        history: Tensor | None,
        history_t: float | Tensor,
        text: TextEmbedding,
        null_text: TextEmbedding,
        spatial: Tensor | None = None,
        spatial_mask: Tensor | None = None,
        *,
        frames: int = 1,
        steps: int | None = None,
        s_text: float | None = None,
        s_spatial: float | None = None,
        known: Tensor | None = None,
        known_values: Tensor | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Generate the next ``frames`` latent frames of each sample (one chunk).

        Args:
            history: (B, Th, C, h, w) clean recent latent frames, or None.
            history_t: noise level (scalar or (B,)) the history is augmented with before conditioning,
                as in training; 0 = use it clean.
            text, null_text: captions (batch B) and the learned empty text (batch 1 or B).
            spatial: (B, S, C, h, w) memory frame(s) or None; spatial_mask: (B,) False = none for that sample.
                With no memory frame in the whole batch the third guidance branch is skipped.
            frames: k, noisy frames to generate.
            steps, s_text, s_spatial: default to the config (10, 3.5, 6.0).
            known: (B, k, C) bool and known_values (B, k, C, h, w): channels held at given clean values
                (first-frame completion: the RGB latent known, depth and raymap generated).
            use_cache: False re-encodes the context at every step (same result, for tests and the bench).
        Returns:
            (B, k, C, h, w) generated latent frames (t = 0).
        """
        c = self.config
        steps = c.steps if steps is None else steps
        s_text = c.s_text if s_text is None else s_text
        s_spatial = c.s_spatial if s_spatial is None else s_spatial
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps!r}")
        mc = model.config
        B = text.tokens.shape[0]
        x = text.pooled.new_empty(B, frames, mc.latent_channels, *mc.latent_size)
        mask = _known_mask(known, x)
        if (mask is None) != (known_values is None):
            raise ValueError("known and known_values must be given together")
        if known_values is not None and known_values.shape != x.shape:
            raise ValueError(f"known_values has shape {tuple(known_values.shape)}; expected {tuple(x.shape)}")
        if history is not None and history.shape[1] > 0:
            history_t = torch.as_tensor(history_t, dtype=x.dtype, device=x.device).expand(B)  # (B,)
            if history_t.any():
                hb = history_t.view(B, 1, 1, 1, 1)
                history = (1 - hb) * history + hb * _randn(history.shape, history, generator)

        # Branches along the batch: (null text, no memory), (text, no memory)[, (text, memory)].
        has_spatial = spatial is not None and (spatial_mask is None or bool(spatial_mask.any()))
        n = 3 if has_spatial else 2
        texts = TextEmbedding.cat([null_text.expand(B), text] + ([text] if has_spatial else []))
        hist = None if history is None else history.repeat(n, 1, 1, 1, 1)
        hist_t = history_t.repeat(n) if torch.is_tensor(history_t) and history_t.ndim else history_t
        spatial_n = spatial_mask_n = None
        if has_spatial:
            spatial_n = spatial.repeat(n, 1, 1, 1, 1)
            present = spatial_mask.bool() if spatial_mask is not None else spatial.new_ones(B, dtype=torch.bool)
            spatial_mask_n = torch.cat([torch.zeros_like(present), torch.zeros_like(present), present])
        known_n = None if known is None else known.repeat(n, 1, 1)

        def encode():
            return model.encode_context(hist, hist_t, *texts, spatial_n, spatial_mask_n)

        ctx = encode() if use_cache else None
        x = _randn(x.shape, x, generator)
        if mask is not None:
            x = torch.where(mask, known_values, x)
        ts = self.schedule(steps, device=x.device)
        for i in range(steps):
            v = model.denoise(x.repeat(n, 1, 1, 1, 1), ts[i], ctx if use_cache else encode(), known_n)
            v = v.chunk(n)  # n x (B, k, C, h, w)
            e = v[0] + s_text * (v[1] - v[0])
            if has_spatial:
                e = e + s_spatial * (v[2] - v[1])
            x = x + (ts[i + 1] - ts[i]) * e
            if mask is not None:
                x = torch.where(mask, known_values, x)
        return x
