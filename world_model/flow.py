"""Rectified flow: the training loss and the Euler sampler with two-condition guidance (DESIGN M8, M12).

Time convention, used everywhere in the project: **t = 1 is noise, t = 0 is data**,

    x_t = (1 - t) * x0 + t * eps,        velocity target  v = eps - x0,

so a sampler integrates dx/dt = v from t = 1 down to t = 0. ``FlowMatching`` knows nothing of the backbone
beyond ``model.encode_context(cond)`` / ``model.denoise(x, t, ctx, known)`` / ``model(x, t, cond, known)``:
the caller hands it the initial noise and the condition (as minRF's ``sample(z, cond, null_cond)``).

Training (``loss``): t ~ logit-normal (SD3); the history frames are noise-augmented at a level drawn per
sample (so the model tolerates its own imperfect past at rollout time); text is replaced by the null
text with probability 10% and the memory frame dropped with probability 50%, a render of the 3D cache
(M18) with it and alone another 20% (condition dropout for guidance; the rollout's first pass has no
render); channels given clean (``known``, first-frame completion M9) are not in the loss.

Sampling (``sample``): Euler steps on a (shifted) uniform grid with two-condition guidance

    e = e(0, 0) + s_T * (e(T, 0) - e(0, 0)) + s_S * (e(T, S) - e(T, 0)),

all branches in one batched call, and the context K/V encoded once per chunk and reused by every step.
Its settings are a ``SamplerConfig``; defaults follow the public release (10 steps here vs 15 there,
s_T = 3.5, s_S = 6.0).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplerConfig:
    """How a chunk is sampled: the one definition of every sampler setting.

    The model's config carries its defaults (``DeepVerseConfig.sampler``, kept by ``save_pretrained``);
    everything else that samples (the rollout, ``DeepVerse-v0``, the Lightning module's evaluation, and
    ``deepverse-train export``, whose flags are made from these fields) takes a ``SamplerConfig`` or a dict
    of the fields to change, applied with ``merged``. A new setting is one field here.
    """

    steps: int = field(default=10, metadata={"help": "Euler steps per chunk (release: 15 at 384p)"})
    shift: float = field(default=1.0, metadata={"help": "SD3 time shift t' = s t / (1 + (s - 1) t); 1 = uniform"})
    s_text: float = field(default=3.5, metadata={"help": "text guidance scale; 1 = no guidance (release 3.5, paper 4)"})
    s_spatial: float = field(default=6.0, metadata={"help": "memory-frame guidance scale (release 6.0, paper 5)"})

    def __post_init__(self):
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not self.shift > 0:
            raise ValueError(f"shift must be > 0, got {self.shift!r}")
        for name in ("s_text", "s_spatial"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite guidance scale, got {getattr(self, name)!r}")

    def merged(self, overrides: SamplerConfig | Mapping[str, Any] | None) -> SamplerConfig:
        """These settings with ``overrides`` applied: None keeps them, a ``SamplerConfig`` replaces them, a
        mapping changes the fields it names (None values are skipped). ValueError names an unknown field
        or a bad value."""
        if overrides is None or isinstance(overrides, SamplerConfig):
            return overrides or self
        if not isinstance(overrides, Mapping):
            raise ValueError(f"sampler settings must be a SamplerConfig or a dict, got {type(overrides).__name__}")
        known = {f.name for f in fields(SamplerConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{unknown} are not sampler settings; expected some of {sorted(known)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class FlowConfig:
    """The training objective's settings (the sampler's are ``SamplerConfig``)."""

    t_mean: float = 0.0  # logit-normal training times t = sigmoid(N(t_mean, t_std)) (SD3): most weight mid-way
    t_std: float = 1.0
    history_noise: float = 0.1  # history noise-augmentation level ~ U(0, history_noise) per sample
    text_drop: float = 0.1  # P(text -> null text) in training (paper)
    spatial_drop: float = 0.5  # P(memory frame dropped) in training (paper); a render is dropped with it
    render_drop: float = 0.2  # P(a render alone dropped) in training: the rollout's first pass has none (M18)

    def __post_init__(self):
        for name in ("text_drop", "spatial_drop", "render_drop", "history_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.t_std <= 0:
            raise ValueError(f"t_std must be > 0, got {self.t_std!r}")


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


def _noised_history(cond, level: Tensor, generator: torch.Generator | None):
    """``cond`` with its history mixed with noise at ``level`` (B,): x = (1 - l) x + l eps."""
    lb = level.view(-1, 1, 1, 1, 1)
    history = (1 - lb) * cond.history + lb * _randn(cond.history.shape, cond.history, generator)
    return dataclasses.replace(cond, history=history, history_t=level)


class FlowMatching:
    """Rectified-flow objective and sampler for any backbone with ``encode_context(cond)``,
    ``denoise(x, t, ctx, known)`` and ``forward(x, t, cond, known)`` (``world_model.mmdit.MMDiT``).

    ``cond`` is the backbone's condition (``world_model.mmdit.Condition``); the flow only asks it for its
    ``batch_size``, its ``history`` (to noise-augment), whether it ``has_spatial`` / ``holds_spatial``
    (memory frames, renders), whether it holds a ``render``, and ``drop`` / ``cat`` to build the guidance
    branches and the training dropout.
    """

    def __init__(self, config: FlowConfig | None = None):
        self.config = config or FlowConfig()

    def loss(
        self, model, x0: Tensor, cond, known: Tensor | None = None, generator: torch.Generator | None = None
    ) -> FlowLoss:
        """Velocity regression on one batch of chunks.

        Args:
            x0: (B, k, C, h, w) clean latent frames to predict.
            cond: their condition (history clean: it is noise-augmented here; memory frames and renders may
                be masked).
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
        if cond.has_history:
            cond = _noised_history(cond, c.history_noise * _rand((B,), x0, generator), generator)
        keep_text = _rand((B,), x0, generator) >= c.text_drop
        keep_spatial = _rand((B,), x0, generator) >= c.spatial_drop if cond.holds_spatial else None
        keep_render = _rand((B,), x0, generator) >= c.render_drop if cond.render is not None else None
        v = model(x_t, t, cond.drop(keep_text, keep_spatial, keep_render), known)
        err = (v - (eps - x0)) ** 2  # (B, k, C, h, w)
        weight = torch.ones_like(err) if mask is None else (~mask).to(err.dtype).expand_as(err)
        per_sample = (err * weight).sum((1, 2, 3, 4)) / weight.sum((1, 2, 3, 4)).clamp_min(1)  # (B,)
        return FlowLoss(per_sample.mean(), t, per_sample)

    @staticmethod
    def schedule(sampler: SamplerConfig, device=None) -> Tensor:
        """(steps + 1,) times from 1 (noise) to 0 (data), uniform then shifted."""
        s = torch.linspace(1.0, 0.0, sampler.steps + 1, device=device)
        return sampler.shift * s / (1 + (sampler.shift - 1) * s)

    @torch.no_grad()
    def sample(
        self,
        model,
        z: Tensor,
        cond,
        sampler: SamplerConfig,
        *,
        known: Tensor | None = None,
        known_values: Tensor | None = None,
        given: Tensor | None = None,
        given_values: Tensor | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Integrate one chunk from noise ``z`` to data with two-condition guidance.

        Args:
            z: (B, k, C, h, w) initial noise (t = 1).
            cond: the condition of the B samples; its history is noise-augmented to ``cond.history_t``
                first, as in training (0 = used clean). With no memory frame and no render in the whole
                batch the third guidance branch is skipped.
            sampler: steps, shift and the guidance scales.
            known: (B, k, C) bool and known_values (B, k, C, h, w): channels held at given clean values
                (first-frame completion: the RGB latent known, depth and raymap generated).
            given: (B, k, C) bool and given_values (B, k, C, h, w): channels *inpainted* (the rollout's cameras given by
                the motion model, M19): at every step they are replaced by their given values noised to the step's
                time with the sample's own starting noise, x_t = (1 - t) x + t z, so the backbone sees them as it saw
                every channel in training (unlike ``known``, which it saw only for completion); at t = 0 they are
                exactly the given values.
            generator: for the history noise.
            use_cache: False re-encodes the context at every step (same result, for tests and the bench).
        Returns:
            (B, k, C, h, w) generated latent frames (t = 0).
        """
        B = z.shape[0]
        if cond.batch_size != B:
            raise ValueError(f"the condition holds {cond.batch_size} samples; z holds {B}")
        mask = _known_mask(known, z)
        if (mask is None) != (known_values is None):
            raise ValueError("known and known_values must be given together")
        if known_values is not None and known_values.shape != z.shape:
            raise ValueError(f"known_values has shape {tuple(known_values.shape)}; expected {tuple(z.shape)}")
        inpaint = _known_mask(given, z)
        if (inpaint is None) != (given_values is None):
            raise ValueError("given and given_values must be given together")
        if given_values is not None and given_values.shape != z.shape:
            raise ValueError(f"given_values has shape {tuple(given_values.shape)}; expected {tuple(z.shape)}")
        if cond.has_history:
            level = torch.as_tensor(cond.history_t, dtype=z.dtype, device=z.device).expand(B)  # (B,)
            cond = _noised_history(cond, level, generator) if level.any() else dataclasses.replace(cond, history_t=level)

        # Branches along the batch: (null text, no memory), (text, no memory)[, (text, memory)]; a render goes with
        # the memory. Scales of 1 leave only the last branch in the sum below, so only it is computed.
        no, yes = torch.zeros(B, dtype=torch.bool, device=z.device), torch.ones(B, dtype=torch.bool, device=z.device)
        if cond.has_spatial:
            branches = [cond.drop(no, no), cond.drop(yes, no), cond.drop(yes, yes)]
        else:
            branches = [cond.drop(no, None), cond.drop(yes, None)]
        unguided = sampler.s_text == 1.0 and (not cond.has_spatial or sampler.s_spatial == 1.0)
        if unguided:
            branches = branches[-1:]
        n = len(branches)
        batched = type(cond).cat(branches)
        known_n = None if known is None else known.repeat(n, 1, 1)
        ctx = model.encode_context(batched) if use_cache else None
        x = z if mask is None else torch.where(mask, known_values, z)
        ts = self.schedule(sampler, device=z.device)
        if inpaint is not None:
            x = torch.where(inpaint, (1 - ts[0]) * given_values + ts[0] * z, x)
        for i in range(sampler.steps):
            v = model.denoise(x.repeat(n, 1, 1, 1, 1), ts[i], ctx if use_cache else model.encode_context(batched), known_n)
            v = v.chunk(n)  # n x (B, k, C, h, w)
            if unguided:
                e = v[0]
            else:
                e = v[0] + sampler.s_text * (v[1] - v[0])
                if n == 3:
                    e = e + sampler.s_spatial * (v[2] - v[1])
            x = x + (ts[i + 1] - ts[i]) * e
            if mask is not None:
                x = torch.where(mask, known_values, x)
            if inpaint is not None:
                x = torch.where(inpaint, (1 - ts[i + 1]) * given_values + ts[i + 1] * z, x)
        return x
