"""The DeepVerse world model as one object: codec + text encoder + MM-DiT + flow matching.

    model = DeepVerse(DeepVerseConfig())               # tiny: 64x64 frames, 4 frames per chunk
    loss, logs = model.loss(batch)                      # a batch of EpisodeClips (world-model stage)
    latent = model.next_latent(history, sentences)      # one chunk, two-condition guidance (model.sampler)
    model.save_pretrained("ckpt/"); DeepVerse.from_pretrained("ckpt/")

Training has two stages (DESIGN M4, M8): the codec first (``codec_loss``), then the world model with
the codec frozen (``loss``). In the second stage each batch picks a history length h uniformly in
1..m and predicts latent frame h from frames 0..h-1 with that chunk's caption, so the model sees every
cache fill level the rollout meets; with probability ``completion_prob`` the batch is instead
first-frame completion (M9): frame 0's RGB latent is given and its depth and raymap are generated,
with the null text and no history. With the MM-DiT's ``render_frame`` (M18) latent frame h also sees the
clip's true keyframes 0..h-1 rendered into its keyframe camera with realistic errors, as the rollout's
3D cache would show them (``clip_render``).

Checkpoints that users load are ``config.json`` + ``model.safetensors``: no pickle is ever executed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tensordict import TensorDict
from torch import Tensor, nn

from world_model import geometry as G
from world_model.codec import CODEC_PRESETS, CausalVAEConfig, Codec, PixelCodecConfig, build_codec
from world_model.flow import FlowConfig, FlowMatching, SamplerConfig
from world_model.mmdit import Condition, MMDiT
from world_model.motion import MotionConfig, MotionModel
from world_model.presets import config as dit_config
from world_model.refine import Refiner, RefinerConfig, RenderNoise, cache_renders, render_state
from world_model.splat import Render
from world_model.state import true_frames
from world_model.text import SENTENCES
from world_model.text_encoder import TextEmbedding, TextEncoderConfig, VocabTextEncoder

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
MIN_RENDER_COVER = 0.01  # a render of the 3D cache covering less of its frame is absent (training and rollouts)


def safetensors_shapes(file: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header alone (no tensor is read).
    Raises ValueError naming the file where it is not a safetensors file."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for foreign or truncated files
        raise ValueError(f"{file} is not a safetensors file ({type(e).__name__}: {e})") from None


@dataclass
class DeepVerseConfig:
    """Every size and switch of the world model; JSON round-trips through ``to_dict``/``from_dict``."""

    codec: str = "tiny"  # CODEC_PRESETS name ("tiny", "paper", "pixel")
    codec_overrides: dict = field(default_factory=dict)  # e.g. {"use_depth": False} for the no-depth ablation
    dit: str = "tiny"  # world_model.presets name
    dit_overrides: dict = field(default_factory=dict)  # e.g. {"history_mode": "channel"} (Model 1); render_frame (M18)
    text_overrides: dict = field(default_factory=dict)  # TextEncoderConfig fields (dim follows the DiT)
    flow_overrides: dict = field(default_factory=dict)  # FlowConfig fields (training times, dropout)
    sampler: dict = field(default_factory=dict)  # SamplerConfig fields set for this model (steps, guidance): not weights
    height: int = 64  # frame size the codec sees
    width: int = 64
    use_memory: bool = True  # condition on a ψ-retrieved memory frame (off = the no-memory ablation)
    render_cache: bool = False  # M18: refine decoded frames with the 3D cache rendered into their cameras (off = paper)
    refiner_overrides: dict = field(default_factory=dict)  # RefinerConfig fields
    completion_prob: float = 0.1  # share of training batches that are first-frame completion (M9)
    motion: bool = False  # M19: a learned motion model (world_model.motion) gives the rollout's cameras
    motion_overrides: dict = field(default_factory=dict)  # MotionConfig fields

    def __post_init__(self):
        if self.codec not in CODEC_PRESETS:
            raise ValueError(f"unknown codec preset {self.codec!r}; expected one of {sorted(CODEC_PRESETS)}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.motion, bool):
            raise ValueError(f"motion must be true or false, got {self.motion!r}")
        if not 0.0 <= self.completion_prob <= 1.0:
            raise ValueError(f"completion_prob must be in [0, 1], got {self.completion_prob!r}")
        if isinstance(self.sampler, SamplerConfig):
            self.sampler = dataclasses.asdict(self.sampler)
        SamplerConfig().merged(self.sampler)  # ValueError naming an unknown field or a bad value
        moved = sorted({f.name for f in dataclasses.fields(SamplerConfig)} & set(self.flow_overrides))
        if moved:
            raise ValueError(f"{moved} in flow_overrides are sampler settings: give them as sampler: {{...}}")
        for name, cls in (("text_overrides", TextEncoderConfig), ("flow_overrides", FlowConfig), ("refiner_overrides", RefinerConfig),
                          ("motion_overrides", MotionConfig)):
            known = {f.name for f in dataclasses.fields(cls)}
            for key in getattr(self, name):
                if key not in known:
                    raise ValueError(f"unknown {cls.__name__} field {key!r} in {name}; expected one of {sorted(known)}")

    def codec_config(self) -> CausalVAEConfig | PixelCodecConfig:
        """The codec's config: the ``codec`` preset with ``codec_overrides`` applied."""
        return dataclasses.replace(CODEC_PRESETS[self.codec], **self.codec_overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def weights_dict(self) -> dict:
        """``to_dict`` without ``sampler``: two configs that agree here describe the same weights and
        training, whatever they sample with."""
        out = self.to_dict()
        del out["sampler"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DeepVerseConfig:
        """The config of ``to_dict`` (or of an export from before ``sampler`` existed, whose sampler settings
        sat in ``flow_overrides``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DeepVerseConfig field(s) {unknown}; expected some of {sorted(known)}")
        data = dict(data)
        flow = dict(data.get("flow_overrides", {}))
        legacy = {f.name: flow.pop(f.name) for f in dataclasses.fields(SamplerConfig) if f.name in flow}
        if legacy:
            data["flow_overrides"], data["sampler"] = flow, {**legacy, **data.get("sampler", {})}
        return cls(**data)


class DeepVerse(nn.Module):
    """Codec, text encoder, MM-DiT and flow matching under one config."""

    def __init__(self, config: DeepVerseConfig | None = None):
        super().__init__()
        self.config = config = config or DeepVerseConfig()
        self.codec: Codec = build_codec(config.codec_config())
        h, w = self.codec.latent_size(config.height, config.width)
        self.dit = MMDiT(
            dit_config(config.dit, latent_channels=self.codec.latent_channels, latent_size=(h, w), **config.dit_overrides)
        )
        text_cfg = dataclasses.replace(TextEncoderConfig(dim=self.dit.config.text_dim), **config.text_overrides)
        if text_cfg.dim != self.dit.config.text_dim:
            raise ValueError(f"text dim {text_cfg.dim} must equal the DiT's text_dim {self.dit.config.text_dim}")
        self.text_encoder = VocabTextEncoder(text_cfg)
        self.flow = FlowMatching(FlowConfig(**config.flow_overrides))
        self.refiner = Refiner(RefinerConfig(**config.refiner_overrides)) if config.render_cache else None
        self.motion = MotionModel(MotionConfig(**config.motion_overrides)) if config.motion else None
        # Per-channel latent statistics: the MM-DiT and the flow work on (z - shift) / scale, so every channel
        # (the small-range raymap ones included) is ~unit variance. Identity until fitted to the codec.
        C = self.codec.latent_channels
        self.register_buffer("latent_shift", torch.zeros(C))  # (C,)
        self.register_buffer("latent_scale", torch.ones(C))  # (C,)

    @property
    def sampler(self) -> SamplerConfig:
        """The sampling defaults: ``SamplerConfig``'s with ``config.sampler`` applied."""
        return SamplerConfig().merged(self.config.sampler)

    def set_sampler(self, **fields) -> None:
        """Change the sampling defaults of a trained model (``SamplerConfig`` fields: flow ``steps``, ``shift``,
        guidance ``s_text`` and ``s_spatial``). Weights are untouched; ``save_pretrained`` keeps them."""
        changes = {k: v for k, v in fields.items() if v is not None}
        self.config = dataclasses.replace(self.config, sampler={**self.config.sampler, **changes})

    # ---- sizes ---------------------------------------------------------------------------------

    @property
    def history_frames(self) -> int:
        """m: the most latent frames of history the model conditions on."""
        return self.dit.config.history_frames

    @property
    def frames_per_chunk(self) -> int:
        """Video frames per generated latent frame (= one env step)."""
        return self.codec.temporal_factor

    @property
    def uses_cache(self) -> bool:
        """Whether the 3D cache (M18) serves this model: it has a part the cache feeds (a refiner, or an MM-DiT with a
        render frame) and depth to build the cache from. Without it a rollout runs the paper's path alone."""
        return self.codec.use_depth and (self.refiner is not None or self.dit.config.render_frame)

    def history(self, latents: Tensor) -> Tensor | None:
        """The history the MM-DiT takes from a window's latents (B, n, C, h, w): the last m frames. In
        channel mode (Model 1, exactly m frames) a short window is left-padded by repeating its first
        frame, and an empty one (first-frame completion) is m zero frames."""
        m = self.history_frames
        if self.dit.config.history_mode != "channel":
            return latents[:, -m:] if latents.shape[1] else None
        if latents.shape[1] == 0:
            return latents.new_zeros(latents.shape[0], m, *latents.shape[2:])
        pad = latents[:, :1].expand(-1, max(0, m - latents.shape[1]), -1, -1, -1)
        return torch.cat([pad, latents[:, -m:]], dim=1)

    # ---- encoding ------------------------------------------------------------------------------

    def encode(self, states: TensorDict) -> Tensor:
        """Latents (B, T', C, h, w) of normalised states (B,) with rgb/depth/raymap (T, *, H, W)."""
        depth = states["depth"] if self.codec.use_depth else None
        return self.codec.encode(states["rgb"], depth, states["raymap"])

    def standardize(self, latents: Tensor) -> Tensor:
        """Codec latents (B, T, C, h, w) -> the MM-DiT's space (per-channel zero mean, unit variance)."""
        return (latents - self.latent_shift[:, None, None]) / self.latent_scale[:, None, None]

    def unstandardize(self, latents: Tensor) -> Tensor:
        """The MM-DiT's space (B, T, C, h, w) -> codec latents."""
        return latents * self.latent_scale[:, None, None] + self.latent_shift[:, None, None]

    @torch.no_grad()
    def fit_latent_statistics(self, latents: Tensor, min_scale: float = 0.05) -> None:
        """Set the per-channel shift and scale from codec latents (N, T, C, h, w) of training clips.

        ``min_scale`` keeps a near-constant channel from being blown up by a tiny standard deviation."""
        if latents.ndim != 5 or latents.shape[2] != self.codec.latent_channels:
            raise ValueError(
                f"latents must be (N, T, {self.codec.latent_channels}, h, w), got {tuple(latents.shape)}"
            )
        per_channel = latents.float().transpose(0, 2).flatten(1)  # (C, N * T * h * w)
        if not torch.isfinite(per_channel).all():
            raise ValueError("latents for the statistics contain NaN or inf")
        self.latent_shift.copy_(per_channel.mean(1))
        self.latent_scale.copy_(per_channel.std(1).clamp_min(min_scale))

    @property
    def latent_statistics_fitted(self) -> bool:
        return bool((self.latent_shift != 0).any() or (self.latent_scale != 1).any())

    def text(self, sentences: list[str]) -> TextEmbedding:
        return self.text_encoder.encode(list(sentences))

    # ---- training ------------------------------------------------------------------------------

    def codec_loss(self, batch: TensorDict) -> tuple[Tensor, dict[str, Tensor]]:
        """Stage 1: reconstruction + KL of the codec on a batch of clips."""
        depth = batch["depth"] if self.codec.use_depth else None
        return self.codec.loss(batch["rgb"], depth, batch["raymap"])

    def loss(self, batch: TensorDict, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Stage 2: flow-matching loss of the MM-DiT and text encoder, the codec frozen.

        Args:
            batch: EpisodeClips items stacked (B,): rgb/depth/raymap (T, *, H, W) with T = 1 + m * tf,
                caption_ids (m,), and with memory: memory (1, *, H, W), has_memory; with ``render_frame``
                also pose (T, 4, 4), intrinsics (T, 3, 3) and scale (the clip's true frames are rendered).
            generator: for the batch kind, the flow's noise and dropout, and the render errors.
        Returns:
            the loss and detached scalars to log: ``history`` (h), ``completion`` (1 for a completion batch),
            and with ``render_frame`` ``render_cover`` (the share of the target the render covers, 0 without one).
        """
        render_frame = self.dit.config.render_frame
        with torch.no_grad():
            latents = self.standardize(self.encode(batch))  # (B, T', C, h, w)
        B, Tp = latents.shape[:2]
        if Tp < 2:
            raise ValueError(f"clips need at least one chunk after the first frame, got {Tp} latent frames")
        draw = torch.rand(2, generator=generator, device=latents.device if generator is None else generator.device)
        null = self.text_encoder.null(B)
        if draw[0] < self.config.completion_prob:
            known = torch.zeros(B, 1, self.codec.latent_channels, dtype=torch.bool, device=latents.device)
            known[:, :, self.codec.rgb_slice] = True
            cond = Condition(null, null, self.history(latents[:, :0]))
            out = self.flow.loss(self.dit, latents[:, :1], cond, known=known, generator=generator)
            logs = {"loss": out.loss.detach(), "history": torch.tensor(0.0), "completion": torch.tensor(1.0)}
            return out.loss, logs | ({"render_cover": torch.tensor(0.0)} if render_frame else {})
        h = 1 + int(draw[1] * min(Tp - 1, self.history_frames))  # history length 1..m
        sentences = [SENTENCES[i] for i in batch["caption_ids"][:, h - 1].tolist()]
        spatial = mask = None
        if self.config.use_memory and "memory" in batch.keys():
            with torch.no_grad():
                spatial = self.encode(batch["memory"])  # (B, 1, C, h, w)
            mask = batch["has_memory"].bool()
        render = cover = None
        if render_frame:
            with torch.no_grad():
                render, cover = self.clip_render(batch, h, RenderNoise(), generator)
        cond = self.condition(latents[:, :h], sentences, spatial, mask, render, cover, standardized=True)
        out = self.flow.loss(self.dit, latents[:, h : h + 1], cond, generator=generator)
        logs = {"loss": out.loss.detach(), "history": torch.tensor(float(h)), "completion": torch.tensor(0.0)}
        return out.loss, logs | ({"render_cover": cover.mean()} if render_frame else {})

    def clip_render(
        self, batch: TensorDict, h: int, noise: RenderNoise, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """What a rollout's 3D cache shows when latent frame h of a batch of clips is generated: the true
        keyframes 0, tf, ..., (h - 1) tf rendered into keyframe h tf's true camera with ``noise``
        (``refine.cache_renders``), encoded by ``encode_render``.

        Args:
            batch: EpisodeClips items stacked (B,) (rgb, depth, pose, intrinsics, raymap, scale).
            h: the latent frame to generate, 1..T'-1.
        Returns:
            codec latent (B, 1, C, h, w) and coverage (B, 1, h, w).
        """
        tf, scale = self.frames_per_chunk, batch["scale"]
        keyframes = torch.arange(0, h * tf, tf)  # (h,)
        render = cache_renders(true_frames(batch), torch.tensor([h * tf]), keyframes, scale, noise, generator)
        return self.encode_render(render, batch["raymap"][:, h * tf], scale)

    def encode_render(self, render: Render, raymap: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """The MM-DiT's render frame (M18) of a render of the 3D cache: its codec latent and its coverage.

        Args:
            render: ``splat.Render`` (B, H, W): colours 0..255, depth in metres, mask False in holes.
            raymap: (B, 6, H, W) the render's camera, normalised in the window.
            scale: (B,) metres per unit of the window.
        Returns:
            latent (B, 1, C, h, w): the codec latent of the render as a one-frame state (``refine.render_state``:
            colours 0 and depth -1 in holes); cover (B, 1, h, w): the share of each latent pixel's pixels covered.
        """
        state = render_state(render.values, render.depth, render.mask, scale)[:, None]  # (B, 1, 4, H, W)
        states = TensorDict({"rgb": state[:, :, :3], "depth": state[:, :, 3:], "raymap": raymap[:, None]}, [len(scale)])
        latent = self.encode(states)  # (B, 1, C, h, w)
        cover = F.avg_pool2d(render.mask[:, None].float(), self.codec.spatial_factor)  # (B, 1, h, w)
        return latent, cover

    # ---- generation ----------------------------------------------------------------------------

    def condition(
        self, latents: Tensor, sentences: list[str], spatial: Tensor | None = None,
        spatial_mask: Tensor | None = None, render: Tensor | None = None, render_cover: Tensor | None = None, *,
        standardized: bool = False,
    ) -> Condition:
        """The MM-DiT's condition for the next chunk of each world.

        Args:
            latents: (B, n, C, h, w) the current window (``history`` keeps the last m).
            sentences: B action sentences.
            spatial: (B, 1, C, h, w) codec latent of the memory frame in this window, or None (also when the
                model has no memory); spatial_mask: (B,) bool, found.
            render: (B, 1, C, h, w) codec latent of the 3D cache rendered into the new chunk's keyframe camera
                (``encode_render``; a model with ``render_frame`` only), or None; render_cover: (B, 1, h, w) its
                coverage. A render covering less than ``MIN_RENDER_COVER`` of its frame is marked absent.
            standardized: ``latents`` are already in the MM-DiT's space (``spatial`` and ``render`` are always
                codec latents).
        """
        if len(sentences) != latents.shape[0]:
            raise ValueError(f"got {len(sentences)} sentences for a batch of {latents.shape[0]} worlds")
        if (render is None) != (render_cover is None):
            raise ValueError("pass render and render_cover together (or neither)")
        history = self.history(latents if standardized else self.standardize(latents))
        use_memory = self.config.use_memory and spatial is not None
        present = None if render_cover is None else render_cover.flatten(1).mean(1) >= MIN_RENDER_COVER  # (B,)
        return Condition(
            self.text(sentences), self.text_encoder.null(len(sentences)), history, 0.0,
            self.standardize(spatial) if use_memory else None, spatial_mask if use_memory else None,
            None if render is None else self.standardize(render), render_cover, present,
        )

    def _noise(self, batch: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """(batch, 1, C, h, w) standard normal noise of one latent frame: the flow's starting point."""
        C, (h, w) = self.codec.latent_channels, self.dit.config.latent_size
        return torch.randn(batch, 1, C, h, w, generator=generator, device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def next_latent(
        self,
        history: Tensor,
        sentences: list[str],
        spatial: Tensor | None = None,
        spatial_mask: Tensor | None = None,
        render: Tensor | None = None,
        render_cover: Tensor | None = None,
        *,
        cameras: Tensor | None = None,
        sampler: SamplerConfig | dict | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The next latent frame (one chunk) of each world.

        Args:
            history: (B, Th, C, h, w) latents of the current window (the last m are used).
            sentences: B action sentences.
            spatial: (B, 1, C, h, w) memory frame in this window, or None; spatial_mask: (B,) found.
            render: (B, 1, C, h, w) the 3D cache rendered into the chunk's keyframe camera (``encode_render``,
                models with ``render_frame``), or None; render_cover: (B, 1, h, w) its coverage.
            cameras: (B, 1, 6, h, w) the raymap channels of the chunk's keyframe camera in the window
                (``codec.encode_raymap``; the motion model's, M19): generated *for* that camera, the channels inpainted
                at every flow step (``FlowMatching.sample``'s ``given``); None = the camera is generated too.
            sampler: changes to the model's ``sampler`` for this call.
        Returns:
            (B, 1, C, h, w); with ``cameras``, its raymap channels are exactly ``cameras``.
        """
        cond = self.condition(history, sentences, spatial, spatial_mask, render, render_cover)
        z = self._noise(len(sentences), cond.text.pooled, generator)
        given = given_values = None
        if cameras is not None:
            rays = self.codec.raymap_slice
            if cameras.shape != (*z.shape[:2], rays.stop - rays.start, *z.shape[3:]):
                raise ValueError(f"cameras has shape {tuple(cameras.shape)}; expected the raymap channels of {tuple(z.shape)}")
            full = torch.zeros_like(z)
            full[:, :, rays] = cameras.to(z.dtype)
            given_values = self.standardize(full)
            given = torch.zeros(z.shape[:3], dtype=torch.bool, device=z.device)
            given[:, :, rays] = True
        out = self.unstandardize(self.flow.sample(
            self.dit, z, cond, self.sampler.merged(sampler), given=given, given_values=given_values, generator=generator
        ))
        if cameras is not None:  # exactly the given camera (unstandardize's round trip is float-exact only up to ulps)
            out[:, :, self.codec.raymap_slice] = cameras.to(out.dtype)
        return out

    @torch.no_grad()
    def complete_first_frame(
        self, rgb: Tensor, *, sampler: SamplerConfig | dict | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """First-frame completion (M9): the latent of a single RGB frame with its depth and camera generated,
        with the null text and no guidance.

        Args:
            rgb: (B, 3, H, W) in [-1, 1].
            sampler: changes to the model's ``sampler`` (its guidance scales are not used).
        Returns:
            (B, 1, C, h, w): the given RGB latent, generated depth latent and raymap (window frame 0).
        """
        B, _, H, W = rgb.shape
        placeholder_rays = G.camera_to_raymap(G.default_intrinsics(H, W).to(rgb), torch.eye(4).to(rgb), H, W)
        frames = rgb[:, None]  # (B, 1, 3, H, W)
        depth = torch.zeros_like(frames[:, :, :1]) if self.codec.use_depth else None
        given = self.standardize(self.codec.encode(frames, depth, placeholder_rays.expand(B, 1, 6, H, W)))
        known = torch.zeros(B, 1, self.codec.latent_channels, dtype=torch.bool, device=rgb.device)
        known[:, :, self.codec.rgb_slice] = True  # the rgb part of ``given`` is real
        null = self.text_encoder.null(B)
        cond = Condition(null, null, self.history(given[:, :0]))
        unguided = dataclasses.replace(self.sampler.merged(sampler), s_text=1.0)
        z = self._noise(B, null.pooled, generator)
        return self.unstandardize(
            self.flow.sample(self.dit, z, cond, unguided, known=known, known_values=given, generator=generator)
        )

    # ---- checkpoints ---------------------------------------------------------------------------

    @classmethod
    def check_weights(
        cls, config: DeepVerseConfig, shapes: dict[str, tuple[int, ...]], weights: str, described_by: str,
        optional: tuple[str, ...] = (),
    ) -> None:
        """ValueError unless tensors named and shaped ``shapes`` are the weights of ``DeepVerse(config)``.

        The model is built on the meta device (no memory, no initialisation), so a config that names a large
        preset costs nothing when it does not match the weights. ``weights`` and ``described_by`` name the
        sources in the message; ``optional`` keys may be absent from ``shapes``.
        """
        try:
            with torch.device("meta"):
                skeleton = cls(config)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{described_by} does not describe a DeepVerse that can be built ({e})") from None
        own = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        missing = sorted(set(own) - set(shapes) - set(optional))
        unexpected = sorted(set(shapes) - set(own))
        wrong = sorted(k for k in set(own) & set(shapes) if own[k] != tuple(shapes[k]))
        if missing or unexpected or wrong:
            count = lambda d: sum(math.prod(v) for v in d.values())  # noqa: E731
            raise ValueError(
                f"{weights} does not match {described_by}: the config describes a model of {count(own):,} values "
                f"(codec {config.codec!r}, dit {config.dit!r}, {config.height}x{config.width} frames), the weights "
                f"hold {count(shapes):,}; missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shapes "
                f"{[f'{k}: {tuple(shapes[k])} in the weights, {own[k]} in the config' for k in wrong[:3]]} "
                f"(of {len(missing)}, {len(unexpected)}, {len(wrong)})"
            )

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into directory ``path``, atomically. ``dtype`` (e.g.
        ``torch.float16``: half the file) stores the floating-point weights in that type; loading casts them back
        to the model's (float32)."""
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")
        path = Path(path)
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=1))
        state = {k: v.detach().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous().cpu()
                 for k, v in self.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "deepverse/1"})
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> DeepVerse:
        """Load a ``save_pretrained`` directory. Raises ValueError/FileNotFoundError naming the bad file."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {path} is not a directory with {CONFIG_FILE} and {WEIGHTS_FILE}")
        cfg_file, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
        for f in (cfg_file, weights):
            if not f.is_file():
                raise FileNotFoundError(f"checkpoint {path} lacks {f.name}")
        try:
            data = json.loads(cfg_file.read_text())
            if not isinstance(data, dict):
                raise TypeError(f"it holds a {type(data).__name__}, expected a JSON object")
            config = DeepVerseConfig.from_dict(data)
        except (ValueError, TypeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"{cfg_file} is not a DeepVerse config ({e})") from None
        # Config against the weights' header before anything is allocated: a config naming the ~2.7-billion
        # parameter paper presets beside tiny weights fails in a fraction of a second.
        cls.check_weights(config, safetensors_shapes(weights), str(weights), str(cfg_file))
        try:
            state = load_file(str(weights), device=str(map_location))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{weights} cannot be read ({type(e).__name__}: {e})") from None
        model = cls(config)
        model.load_state_dict(state)
        return model.eval()


SHIPPED = Path(__file__).parent / "pretrained" / "tiny"


def load_pretrained(path: str | Path | None = None, map_location: str | torch.device = "cpu") -> DeepVerse:
    """The shipped model (no arguments: ``world_model/pretrained/tiny``, trained by us, offline) or any
    ``save_pretrained`` directory."""
    return DeepVerse.from_pretrained(SHIPPED if path is None else path, map_location)
