"""Long rollouts: the sliding window with rescaling and the geometric memory (the paper's Algorithm 1, M11, M13).

A ``Rollout`` runs B independent worlds. Each world holds

- a *window*: up to ``cache_max`` latent frames, normalised to the window's first camera (``anchor``,
  its pose in the episode frame) and scale (``scale``, metres per unit, ``geometry.window_scale``);
- the window's decoded frames in metres and in the episode frame (the first camera's coordinates),
  which is what the env observes and what re-normalisation starts from;
- a ``MemoryPool`` of keyframes that left the window, with their poses in the episode frame measured in
  units of the *first* window's scale (so the whole rollout is scale-equivariant: a scene scaled by
  a factor yields the same images and depths scaled by that factor).

``step(sentences)`` generates one chunk per world: ψ retrieves a memory keyframe for the current camera,
it is normalised into the current window and encoded as the spatial condition; the MM-DiT generates the
next latent frame from the window (its last m frames) with two-condition guidance; the window is decoded
and the chunk's frames returned in metres, with poses and intrinsics recovered from the predicted
raymaps. When the window would exceed ``cache_max`` it slides (Algorithm 1): the frames that leave are
stored in memory, the last ``keep`` latent frames' decoded frames are re-normalised by the first of them
(new anchor, new scale from its depth) and re-encoded, and generation continues. The codec's decoder keeps its
causal state (``DecoderStream``) across the slide (``carry_decoder``): each step decodes only its new chunk.

The 3D cache (M18, ``render_cache``: the start frame and the last keyframes as points in the episode frame,
``world_model.cache``) serves two parts of a model. A refiner refines the decoded colours against the cache
rendered into every new camera. An MM-DiT with a render frame (``render_frame``) makes each chunk in two
passes: the first, without a render, predicts the chunk's keyframe camera; the cache is rendered into it,
normalised into the window like the memory frame, and the second pass, conditioned on that render, makes
the chunk. Both passes draw from the rollout's generator, so a seed still fixes the frames.

Generated cameras belong to a body that walks on a level floor (``level_camera``: no roll, the start camera's
height, tilt within ``max_pitch_deg``) with a fixed lens (``fixed_intrinsics``), and each slide pulls the new
window's metres towards the start frame's (``metric_anchor``, ``_anchor_to_start``); without them a long random
walk of the shipped model climbed 172 m and its scale wandered 0.004-10.8 (``deepverse drift``).

A model whose codec has no depth (the no-depth ablation, ``codec.use_depth`` False) rolls out in a *depth-free
mode*: its frames carry no ``depth`` key (none is made up), every window keeps the start frame's scale (from the
given depth of a 4D start, or ``completion_scale`` for an image start), since there is no predicted depth to re-anchor
a slide on (no ``metric_anchor``, no floor or body bounds: ``floor`` stays 0), and there is no 3D cache (it is built
from depth: ``render_cache`` is ignored, the paper path runs). The level camera and fixed intrinsics still hold, and
memory keyframes are RGB alone (ψ retrieves by camera pose only).

Memory use per world is fixed: ``cache_max`` latent frames, 1 + (cache_max - 1) * tf decoded frames and
``MemoryConfig.capacity`` keyframes; nothing grows with episode length.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tensordict import TensorDict
from torch import Tensor

from world_model import geometry as G
from world_model.body import absolute, body_pose, body_state, relative
from world_model.cache import CacheConfig, PointCache
from world_model.codec import DecoderStream
from world_model.flow import SamplerConfig
from world_model.memory import MemoryConfig, MemoryPool
from world_model.model import DeepVerse
from world_model.motion import SharedPoints, depth_points, nearby_points
from world_model.refine import refine_frames
from world_model.splat import splat
from world_model.state import normalize_frames, to_frames
from world_model.text import SENTENCES

AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


CAMERAS = ("motion", "generated")


@dataclass
class RolloutConfig:
    camera: str | None = None  # "motion": the motion model's cameras (M19), the chunk generated for them; "generated":
                               # the paper's, recovered from the generated raymap; None = "motion" if the model has one
    caption_thresholds: dict | None = None  # with the motion camera: geometry.motion_classes' thresholds (metres and
                                            # radians over a chunk) that caption the predicted motion for the MM-DiT
                                            # (deepverse_env.actions.caption_thresholds); None = half of each command
    cache_max: int = 6  # CacheMaxSize: latent frames in a window before it slides
    keep: int | None = None  # latent frames kept as the next window's context; None = min(m, cache_max - 1)
    sampler: SamplerConfig | dict | None = None  # changes to the model's sampler (None: the model's own)
    use_memory: bool = True  # retrieve a memory keyframe as the spatial condition
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    render_cache: bool = True  # hold the 3D cache (M18) for a model with a refiner or a render-frame MM-DiT (and depth)
    cache: CacheConfig = field(default_factory=CacheConfig)
    completion_scale: float = 1.0  # metres per unit of a world started from an RGB image alone (without depth: always)
    dtype: str = "float32"  # "bfloat16" / "float16": the networks run under autocast; geometry stays float32
    carry_decoder: bool = True  # at a slide, carry each world's decoder state (the causal convolutions' last frames,
                                # those of the chunk just decoded) into the new window; False rebuilds it by decoding
                                # the new window's re-encoded latents again (2x the codec's work per slide; see _append)
    micro_batch: int | None = None  # worlds per codec decode / slide encode / refiner call within a step; None: 4 on the
                                    # CPU (a call's activations then stay in the CPU's caches: 16 worlds 1.26x the
                                    # frames/s in float32, 1.11x in bfloat16, `deepverse bench env`), all on a GPU
    max_rescale: float = 4.0  # a window's scale changes at most this factor per slide (see _append)
    scale_quantile: float = 0.01  # share of nearest generated depth pixels a slide ignores when it rescales
    fixed_intrinsics: bool = True  # every frame keeps the start frame's intrinsics (no action zooms; see _generate)
    level_camera: bool = True  # the camera of a body walking on a level floor: no roll, start height (see _generate)
    max_pitch_deg: float = 30.0  # with level_camera: the head tilts at most this far (the simulator's PITCH_LIMIT)
    metric_anchor: float = 0.5  # share (log scale) of a slide's scale disagreement with the start corrected
    anchor_overlap: float = 0.2  # share of the new first frame seeing the start frame's surfaces for full trust
    # The body's world (with level_camera and metric_anchor > 0): at each slide the new window's metres are clamped
    # so that its first frame keeps it (``body_bounds``). Sizes are in eye heights (the start frame's flat floor, else
    # ``eye_height``), so a world scaled as a whole stays scale-equivariant. The defaults are the simulator's agent
    # (WorldConfig: eye 1.5 m, ceilings at most 3.0 m, body radius 0.2 m); None drops a bound.
    eye_height: float | None = 1.5  # the floor under the camera (start units) when the start frame shows none flat
    room_height: float | None = 2.0  # the highest ceiling above the floor, in eye heights
    min_depth: float | None = 0.1  # no surface nearer than this, in eye heights (0.2 m of body radius, seen at a corner)
    body_slack: float = 2.0  # generated floors and ceilings may reach this factor past the slab before a bound binds
                             # (generated geometry is noisy: over 300 steps of `deepverse drift` the median
                             # depth ratio was 0.66x at 1.0, 0.81x at 1.5, 1.03x at 2.0 with the floor test's old
                             # 10% tolerance; 0.94x at 2.0 with 25%, the narrower band)


def height_below(depth: Tensor, K: Tensor, c2w: Tensor) -> Tensor:
    """Height of each pixel's point below a level camera (y is down): depth (b, H, W), K (b, 3, 3), c2w (b, 4, 4)
    -> (b, H, W) in depth's units, negative above the camera."""
    return G.unproject(depth, K, c2w)[..., 1] - c2w[:, 1, 3, None, None]


def floor_height(depth: Tensor, K: Tensor, c2w: Tensor, share: float = 0.05, tolerance: float = 0.25) -> tuple[Tensor, Tensor]:
    """How far below a level camera the floor is, from one frame, and whether a floor is seen.

    The height is the 95th percentile of the height below the camera of the lower half of the image's
    points. It is a floor when at least ``share`` of the points of *each* quarter of the image below the
    middle lie within ``tolerance`` of it (0.25: generated floors are not flat to 10%; `deepverse drift`, 300 steps,
    depth ratio 5-95% 0.28-2.5 against 0.32-3.3 at 0.1): a horizontal surface is at one height from row to row, while a
    wall that hides the floor only reaches its lowest height in the bottom rows.
    depth (b, H, W) metres, K (b, 3, 3), c2w (b, 4, 4) level poses. Returns (height (b,) metres, flat (b,) bool).
    """
    H = depth.shape[-2]
    below = height_below(depth, K, c2w)[:, H // 2 :]  # (b, H/2, W)
    height = torch.quantile(below.flatten(1), 0.95, dim=1)  # (b,)
    near = ((below - height[:, None, None]).abs() <= tolerance * height.abs()[:, None, None]).float()
    upper, lower = near[:, : near.shape[1] // 2].mean(dim=(1, 2)), near[:, near.shape[1] // 2 :].mean(dim=(1, 2))
    return height, (height > 0) & (upper >= share) & (lower >= share)


def body_bounds(
    depth: Tensor, K: Tensor, c2w: Tensor, floor: Tensor, ceiling: Tensor, min_depth: Tensor | None,
    quantile: float = 0.95, near_quantile: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """The factors (lo, hi) a frame's depth can be scaled by while its surfaces stay in the body's world.

    Nothing is seen below the floor or above the ceiling, and nothing nearer than the body lets a wall come:
    scaled by c, the ``quantile`` of the points' height below a level camera must stay <= ``floor``, that of
    their height above it <= ``ceiling``, and the ``near_quantile`` of depth >= ``min_depth``. (The simulator's
    own frames keep these bounds with no slack along random walks: tests/test_rollout.py.)

    Args:
        depth: (b, H, W) > 0.  K: (b, 3, 3).  c2w: (b, 4, 4) level poses (y down).
        floor, ceiling: (b,) distances below and above the camera (> 0; inf: no bound).
        min_depth: (b,) the nearest allowed depth (0: no bound), or None.
    Returns:
        lo, hi: (b,) with lo = 0 and hi = inf where a bound is absent or measures nothing.
    """
    b = depth.shape[0]
    lo = depth.new_zeros(b)
    hi = torch.full_like(lo, math.inf)
    down = height_below(depth, K, c2w).flatten(1)  # (b, H * W)
    for limit, extent in ((floor, down), (ceiling, -down)):
        reach = torch.quantile(extent, quantile, dim=1)  # (b,)
        hi = torch.where(reach > 0, torch.minimum(hi, limit / reach.clamp_min(1e-12)), hi)
    if min_depth is not None:
        near = torch.quantile(depth.flatten(1), near_quantile, dim=1)  # (b,)
        lo = min_depth / near.clamp_min(1e-12)
    return lo, hi


class Rollout:
    """Batched autoregressive 4D rollout of a ``DeepVerse`` model (B independent worlds).

    Args:
        model: the world model (put in eval mode).
        batch_size: B.
        config: window, sampler and memory settings.
        generator: sampler noise (seeded => deterministic rollouts).
    """

    def __init__(
        self, model: DeepVerse, batch_size: int, config: RolloutConfig | None = None,
        generator: torch.Generator | None = None,
    ):
        self.model = model.eval()
        self.config = c = config or RolloutConfig()
        if int(c.cache_max) != c.cache_max or c.cache_max < 2:
            raise ValueError(f"cache_max must be an integer >= 2, got {c.cache_max!r}")
        self.keep = c.keep if c.keep is not None else max(1, min(model.history_frames, c.cache_max - 1))
        if not 1 <= self.keep < c.cache_max:
            raise ValueError(f"keep ({self.keep}) must be in 1..cache_max-1 (cache_max {c.cache_max})")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if c.dtype not in AUTOCAST:
            raise ValueError(f"dtype must be one of {sorted(AUTOCAST)}, got {c.dtype!r}")
        if not c.max_rescale > 1:
            raise ValueError(f"max_rescale must be > 1, got {c.max_rescale!r}")
        if not 0.0 <= c.scale_quantile < 0.5:
            raise ValueError(f"scale_quantile must be in [0, 0.5), got {c.scale_quantile!r}")
        for name in ("fixed_intrinsics", "level_camera", "carry_decoder"):
            if not isinstance(getattr(c, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(c, name)!r}")
        if not 0.0 < c.max_pitch_deg <= 90.0:
            raise ValueError(f"max_pitch_deg must be in (0, 90], got {c.max_pitch_deg!r}")
        if not 0.0 <= c.metric_anchor <= 1.0:
            raise ValueError(f"metric_anchor must be in [0, 1], got {c.metric_anchor!r}")
        if not 0.0 < c.anchor_overlap <= 1.0:
            raise ValueError(f"anchor_overlap must be in (0, 1], got {c.anchor_overlap!r}")
        for name in ("eye_height", "room_height", "min_depth"):
            value = getattr(c, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf):
                raise ValueError(f"{name} must be None or a finite number > 0, got {value!r}")
        if isinstance(c.body_slack, bool) or not isinstance(c.body_slack, (int, float)) or not 1 <= c.body_slack < math.inf:
            raise ValueError(f"body_slack must be a finite number >= 1, got {c.body_slack!r}")
        if c.room_height is not None and not c.room_height > 1:
            raise ValueError(f"room_height must be > 1 eye height (the ceiling above the camera), got {c.room_height!r}")
        if c.micro_batch is not None and (isinstance(c.micro_batch, bool) or not isinstance(c.micro_batch, int) or c.micro_batch < 1):
            raise ValueError(f"micro_batch must be None or a positive integer, got {c.micro_batch!r}")
        model.sampler.merged(c.sampler)  # ValueError naming a bad setting, before anything runs
        if c.camera is not None and c.camera not in CAMERAS:
            raise ValueError(f"camera must be one of {list(CAMERAS)} or None, got {c.camera!r}")
        if c.camera == "motion" and model.motion is None:
            raise ValueError("camera 'motion' needs a model with a motion model (DeepVerseConfig.motion); this one has none")
        self.camera = c.camera or ("motion" if model.motion is not None else "generated")
        if c.caption_thresholds is not None:
            want = {"move_threshold", "yaw_threshold", "pitch_threshold"}
            t = c.caption_thresholds
            if not isinstance(t, dict) or set(t) != want or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf for v in t.values()
            ):
                raise ValueError(f"caption_thresholds must be None or a dict of {sorted(want)}, each > 0, got {t!r}")
        self.B = int(batch_size)
        self.generator = generator
        self.depth = model.codec.use_depth  # False: the depth-free mode (module docstring)
        self.tf = model.codec.temporal_factor
        self.H, self.W = model.config.height, model.config.width
        C = model.codec.latent_channels
        h, w = model.codec.latent_size(self.H, self.W)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.latents = torch.zeros(self.B, c.cache_max, C, h, w, device=self.device)  # (B, L, C, h, w)
        self.length = torch.zeros(self.B, dtype=torch.long, device=self.device)  # latent frames in each window
        self.frames = self._blank_frames(1 + (c.cache_max - 1) * self.tf)  # (B, T) metric, episode frame
        self.anchor = torch.eye(4, device=self.device).repeat(self.B, 1, 1)  # (B, 4, 4) window's first camera
        self.scale = torch.ones(self.B, device=self.device)  # (B,) metres per unit of the window
        self.unit = torch.ones(self.B, device=self.device)  # (B,) the first window's scale: memory units
        self.origin = torch.ones(self.B, self.H, self.W, device=self.device)  # (B, H, W) start frame's depth, metres
        self.origin_K = torch.eye(3, device=self.device).repeat(self.B, 1, 1)  # (B, 3, 3) its intrinsics
        self.floor = torch.zeros(self.B, device=self.device)  # (B,) start frame's floor below the camera, 0: none
        keyframe = (4 if self.depth else 3, self.H, self.W)  # RGB-D, RGB without depth
        self.memory = MemoryPool(c.memory, self.B, keyframe, device=self.device)
        self.stream = DecoderStream()  # each world's decoder state: a step decodes only its new chunk
        grounded = c.render_cache and model.uses_cache
        self.micro = int(c.micro_batch) if c.micro_batch is not None else 4 if self.device.type == "cpu" else self.B
        self.cache = PointCache(c.cache, self.B, self.H, self.W, self.device) if grounded else None
        self.sentences: list[str] = []  # the sentences the MM-DiT was given at the last step

    def _net(self):
        """Context for network calls: autocast to ``config.dtype`` (a no-op for float32)."""
        dtype = AUTOCAST[self.config.dtype]
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    # ---- state ---------------------------------------------------------------------------------

    def _blank_frames(self, T: int, B: int | None = None) -> TensorDict:
        B = self.B if B is None else B
        depth = {"depth": torch.ones(B, T, self.H, self.W, 1)} if self.depth else {}
        return TensorDict(
            {
                "rgb": torch.zeros(B, T, self.H, self.W, 3, dtype=torch.uint8),
                **depth,
                "pose": torch.eye(4).repeat(B, T, 1, 1),
                "intrinsics": torch.eye(3).repeat(B, T, 1, 1),
            },
            batch_size=[B, T],
            device=self.device,
        )

    def _state(self) -> dict:
        return {"latents": self.latents, "length": self.length, "frames": self.frames, "anchor": self.anchor,
                "scale": self.scale, "unit": self.unit, "origin": self.origin, "origin_K": self.origin_K,
                "floor": self.floor}

    def nbytes(self) -> int:
        """Bytes of state held for all worlds: windows, decoded frames, decoder stream and memory pool.
        Fixed once every world has started; rollouts never grow it."""
        state = self._state()
        frames = state.pop("frames")
        tensors = [*state.values(), *frames.values(), *self.stream.cache.values()]
        tables = self.memory.nbytes() + (self.cache.nbytes() if self.cache is not None else 0)
        return sum(t.numel() * t.element_size() for t in tensors) + tables

    def clone(self) -> Rollout:
        """An independent copy of every world (planners branch from it); shares the model."""
        return self.select(torch.arange(self.B, device=self.device))

    def select(self, index: Tensor) -> Rollout:
        """A rollout of worlds ``index`` (B',) of this one (repeats allowed: one state -> many candidates)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        out = Rollout.__new__(Rollout)
        out.__dict__.update(self.__dict__)
        out.B = len(index)
        for name, value in self._state().items():
            setattr(out, name, value[index].clone())
        out.memory = self.memory.select(index)
        out.stream = self.stream.select(index)
        out.cache = self.cache.select(index) if self.cache is not None else None
        return out

    def load(self, other: Rollout) -> None:
        """Overwrite every world with a copy of ``other``'s (same batch size)."""
        if other.B != self.B:
            raise ValueError(f"cannot load a rollout of {other.B} worlds into one of {self.B}")
        for name, value in other._state().items():
            setattr(self, name, value.clone())
        self.memory.load_state(other.memory)
        self.stream = other.stream.select(torch.arange(other.B, device=self.device))
        if self.cache is not None:
            self.cache.load_state(other.cache)

    # ---- start ---------------------------------------------------------------------------------

    @torch.no_grad()
    def reset(
        self, rgb: Tensor, depth: Tensor | None = None, intrinsics: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> TensorDict:
        """Start worlds from a first frame.

        Args:
            rgb: (B', H, W, 3) uint8, B' = worlds in ``mask`` (all B when None).
            depth: (B', H, W, 1) metres and intrinsics (B', 3, 3): a known 4D first frame (e.g. from the
                simulator). Without them the depth and camera are generated (first-frame completion, M9)
                and depth is in units of ``completion_scale`` metres. For a codec without depth the given
                depth only sets the scale, and an image start generates the camera alone.
            mask: (B,) bool, the worlds to (re)start; the others continue untouched.
        Returns:
            the first frames of the started worlds, TensorDict (B',) with rgb, depth (not for a codec
            without depth), pose (identity: the episode frame is the first camera's), intrinsics.
        """
        mask = torch.ones(self.B, dtype=torch.bool, device=self.device) if mask is None else mask.bool()
        n = int(mask.sum())
        self._check_frame("rgb", rgb, (n, self.H, self.W, 3), torch.uint8)
        if (depth is None) != (intrinsics is None):
            raise ValueError("pass depth and intrinsics together (or neither, to generate them)")
        eye = torch.eye(4, device=self.device).repeat(n, 1, 1)
        if depth is not None:
            self._check_frame("depth", depth, (n, self.H, self.W, 1), torch.float32)
            if not bool((depth > 0).all()):
                raise ValueError("depth must be > 0 everywhere")
            self._check_frame("intrinsics", intrinsics, (n, 3, 3), torch.float32)
            first = TensorDict({"rgb": rgb, "depth": depth, "pose": eye, "intrinsics": intrinsics}, [n]).to(self.device)
            scale = G.window_scale(first["depth"][..., 0])
            if not self.depth:
                first = first.exclude("depth")  # it set the scale; the codec encodes none and no frame carries one
            with self._net():
                latent = self.model.encode(normalize_frames(first[:, None], eye, scale)).float()  # (n, 1, C, h, w)
                stream = DecoderStream()
                self.model.codec.decode_stream(latent, stream)  # frame 0 starts each world's decoder state
        else:
            scale = torch.full((n,), float(self.config.completion_scale), device=self.device)
            with self._net():
                latent = self.model.complete_first_frame(
                    rgb.to(self.device).movedim(-1, 1).float() / 127.5 - 1.0, sampler=self.config.sampler,
                    generator=self.generator,
                ).float()
                stream = DecoderStream()
                decoded = {k: v.float() for k, v in self.model.codec.decode_stream(latent, stream).items()}
            K = self.model.codec.decode_cameras(latent)[0][:, 0]
            # The window's first camera is the identity by definition: keep the predicted intrinsics only.
            rays = G.camera_to_raymap(K, eye, self.H, self.W)[:, None]  # (n, 1, 6, H, W)
            latent[:, :, self.model.codec.raymap_slice] = self.model.codec.encode_raymap(rays)
            depth = {"depth": G.decode_depth(decoded["depth"][:, 0, 0], scale)[..., None]} if self.depth else {}
            first = TensorDict({"rgb": rgb.to(self.device), **depth, "pose": eye, "intrinsics": K}, [n])
        idx = mask.nonzero()[:, 0]
        self.latents[idx] = 0
        self.latents[idx, :1] = latent
        self.length[idx] = 1
        self.frames[idx] = self._blank_frames(self.frames.shape[1], n)
        self.frames[idx, :1] = first[:, None]
        self.anchor[idx], self.scale[idx], self.unit[idx] = eye, scale, scale
        if self.depth:  # what slides anchor their metres to (_anchor_to_start); without depth nothing is anchored
            self.origin[idx], self.origin_K[idx] = first["depth"][..., 0], first["intrinsics"]
            floor, flat = floor_height(first["depth"][..., 0], first["intrinsics"], eye)
            self.floor[idx] = torch.where(flat, floor, 0.0)
        self.memory.reset(mask)
        self.stream.update(idx, stream)
        if self.cache is not None:
            self.cache.reset(mask)
            self.cache.add(first, idx, real=True)  # the start picture (its depth is generated from an image alone)
        return first

    def _check_frame(self, name: str, x, shape: tuple, dtype) -> None:
        if not torch.is_tensor(x) or tuple(x.shape) != shape:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"{name} must be a tensor of shape {shape}, got {got}")
        if x.dtype != dtype:
            raise ValueError(f"{name} must have dtype {dtype}, got {x.dtype}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} has NaN or infinite values")

    # ---- step ----------------------------------------------------------------------------------

    @torch.no_grad()
    def step(
        self, sentences: list[str] | None = None, before_commit: Callable[[TensorDict], object] | None = None, *,
        commands: Tensor | None = None,
    ) -> TensorDict:
        """Generate one chunk per world.

        Args:
            sentences: B action sentences (``world_model.text.SENTENCES``): the generated camera's action.
            before_commit: called with the chunk once it is generated and before any world's state changes
                (e.g. to score it); if it raises, or generation does, the rollout is left exactly as it
                was, sampler noise included, and the error propagates: the step is all or nothing.
            commands: (B, 5) the pressed actions' per-frame commands (x, y, z, yaw, pitch): the motion camera's action.
                The motion model moves the body; the MM-DiT gets the sentence of the motion that happens.
        Returns:
            TensorDict (B, tf): rgb uint8 (H, W, 3), depth (H, W, 1) metres (not for a codec without depth),
            pose (4, 4) in the episode frame, intrinsics (3, 3); with the motion camera also ``blocked`` bool (the
            motion model's verdict on each frame's move).
        """
        if self.camera == "motion":
            if sentences is not None or commands is None:
                raise ValueError("this rollout's cameras are the motion model's: pass commands= (B, 5), not sentences")
            commands = torch.as_tensor(commands, dtype=torch.float32, device=self.device)
            if commands.shape != (self.B, 5) or not bool(commands.isfinite().all()):
                raise ValueError(f"commands must be a finite ({self.B}, 5) tensor (x, y, z, yaw, pitch), got shape "
                                 f"{tuple(commands.shape)}")
        elif commands is not None or sentences is None:
            raise ValueError("this rollout generates its cameras (camera 'generated'): pass sentences, not commands")
        elif len(sentences) != self.B:
            raise ValueError(f"got {len(sentences)} sentences for {self.B} worlds")
        if not bool((self.length > 0).all()):
            raise RuntimeError("call reset() before step(): some worlds were never started")
        noise = self.generator.get_state() if self.generator is not None else None
        try:
            chunk, pending, said = self._generate(sentences, commands)
            if before_commit is not None:
                before_commit(chunk)
        except BaseException:
            if noise is not None:
                self.generator.set_state(noise)
            raise
        self._commit(pending)
        self.sentences = said  # what the MM-DiT was told: the pressed sentences, or the motion model's
        return chunk

    @torch.no_grad()
    def plan(self, commands: Tensor) -> tuple[Tensor, Tensor, list[str]]:
        """The motion model's cameras for the next chunk of every world (changes nothing).

        The points it reads are ``world_points``: the window's last frame and keyframes before it (up to
        ``MotionConfig.history``) and the 3D cache, in metres in the episode frame. It runs in float32 whatever
        ``dtype`` says (bfloat16 poses would be ~0.5 degrees off). Returns poses (B, tf, 4, 4) in the episode frame,
        blocked (B, tf) bool, and the B sentences of the motion (``geometry.motion_classes``, ``caption_thresholds``).
        """
        motion = self.model.motion
        rows = torch.arange(self.B, device=self.device)
        current = self.frames["pose"][rows, self._frame_count() - 1]  # (B, 4, 4)
        start = body_state(current)  # (B, 5)
        xyz, seen = self.world_points(rows)
        points, mask = nearby_points(xyz, seen, start, motion.config.points)
        out = motion(points, mask, commands, relative(start, start), self.tf)
        states = absolute(out["state"], start[:, None])  # (B, tf + 1, 5)
        poses = body_pose(states[:, 1:])
        t = self.config.caption_thresholds
        if t is None:  # half of each command's motion over the chunk
            half = 0.5 * self.tf * commands.abs().amax(dim=0)
            t = {"move_threshold": float(half[[0, 2]].max().clamp_min(1e-3)), "yaw_threshold": float(half[3].clamp_min(1e-3)),
                 "pitch_threshold": float(half[4].clamp_min(1e-3))}
        ids = G.motion_classes(current, poses[:, -1], **t)
        return poses, out["blocked_logit"] > 0, [SENTENCES[i] for i in ids.tolist()]

    def world_points(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """What worlds ``rows`` (n,) have shown, as points in the episode frame (metres): the window's keyframes (the
        motion model's history) and, where there is one, the 3D cache. xyz (n, P, 3), seen (n, P)."""
        motion = self.model.motion
        last = self._frame_count()[rows] - 1
        index = last[:, None] - self.tf * torch.arange(motion.config.history + 1, device=self.device)
        frames = self.frames[rows[:, None], index.clamp_min(0)]  # (n, 1 + history)
        if not self.depth:
            return frames["pose"].new_zeros(len(rows), 1, 3), torch.zeros(len(rows), 1, dtype=torch.bool, device=self.device)
        xyz, seen = depth_points(frames["depth"][..., 0], frames["intrinsics"], frames["pose"], index >= 0)
        if self.cache is not None:
            st = self.cache.state[rows]  # (n, F)
            xyz = torch.cat([xyz, st["xyz"].flatten(1, 2)], 1)
            seen = torch.cat([seen, st["valid"][:, :, None].expand(-1, -1, st["xyz"].shape[2]).flatten(1)], 1)
        return xyz, seen

    @torch.no_grad()
    def imagine_poses(self, rows: Tensor, commands: Tensor) -> TensorDict:
        """Pose-only imagination (M19): the motion model alone rolls candidate command sequences from worlds ``rows``
        (M,) against what those worlds have shown (``world_points``): no MM-DiT, no codec, nothing changes here.

        Args:
            rows: (M,) the world each candidate starts from (repeats allowed).  commands: (M, L, 5) per step.
        Returns:
            TensorDict (M, L): ``pose`` (4, 4) and ``intrinsics`` (3, 3) of the last frame of each step, ``blocked``
            (whether the motion model blocked a frame of the step).
        """
        if self.camera != "motion":
            raise ValueError("pose-only imagination needs the motion model's cameras (camera 'motion')")
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        commands = torch.as_tensor(commands, dtype=torch.float32, device=self.device)
        if commands.ndim != 3 or commands.shape[::2] != (len(rows), 5) or not bool(commands.isfinite().all()):
            raise ValueError(f"commands must be a finite ({len(rows)}, L, 5) tensor, got shape {tuple(commands.shape)}")
        unique, inverse = rows.unique(return_inverse=True)
        motion, M, L = self.model.motion, len(rows), commands.shape[1]
        start = body_state(self.frames["pose"][unique, self._frame_count()[unique] - 1])  # (U, 5) episode frame
        shared = SharedPoints(*self.world_points(unique), start, motion.config.points)  # shared by its candidates
        state = start[inverse]  # (M, 5)
        poses, blocked = [], []
        for t in range(L):
            points, mask = shared.nearby(state, inverse)
            out = motion(points, mask, commands[:, t], relative(state, state), self.tf)
            state = absolute(out["state"][:, -1], state)
            poses.append(body_pose(state))
            blocked.append((out["blocked_logit"] > 0).any(1))
        K = self.frames["intrinsics"][rows, :1].expand(M, L, 3, 3)
        return TensorDict({"pose": torch.stack(poses, 1), "intrinsics": K, "blocked": torch.stack(blocked, 1)}, [M, L])

    def _generate(self, sentences: list[str] | None, commands: Tensor | None) -> tuple[TensorDict, list[tuple], list[str]]:
        """The chunk (B, tf), per history group what ``_commit`` writes back, and the sentences the MM-DiT was given;
        changes nothing but the generator. Groups are disjoint sets of worlds and everything a group reads is its own rows, so
        committing every group after generating all of them gives what committing each in turn gave."""
        planned = None
        if commands is not None:
            poses, blocked, sentences = self.plan(commands)
            planned = (poses, blocked)
        spatial, found = self._spatial()
        chunk = self._blank_frames(self.tf)
        pending = []
        render_frame = self.cache is not None and self.model.dit.config.render_frame
        for th, idx in self._history_groups():  # worlds whose histories are equally long share one model call
            n = self.length[idx]  # (b,) their window lengths
            frame = (n - th)[:, None] + torch.arange(th, device=self.device)  # (b, th) the last th latents
            condition = (
                self.latents[idx[:, None], frame], [sentences[i] for i in idx.tolist()],
                None if spatial is None else spatial[idx], None if found is None else found[idx],
            )
            cameras = None
            if planned is not None:  # generated for the motion model's keyframe camera, in the window's units
                K = self.frames["intrinsics"][idx, 0]
                window = G.scale_poses(G.relative_pose(self.anchor[idx], planned[0][idx, -1]), self.scale[idx])
                cameras = self.model.codec.encode_raymap(G.camera_to_raymap(K, window, self.H, self.W)[:, None])
            if render_frame and planned is not None:  # the camera is known: one pass, conditioned on its render
                render, cover = self._render(idx, self.frames["intrinsics"][idx, 0], planned[0][idx, -1])
                condition = (*condition, render, cover)
            with self._net():
                new = self.model.next_latent(
                    *condition, cameras=cameras, sampler=self.config.sampler, generator=self.generator
                ).float()  # (b, 1, C, h, w)
            if render_frame and planned is None:  # the first pass's keyframe camera is where the cache is rendered
                K, _, pose = self._cameras(idx, n, new)
                render, cover = self._render(idx, K[:, -1], pose[:, -1])
                with self._net():
                    new = self.model.next_latent(
                        *condition, render, cover, sampler=self.config.sampler, generator=self.generator
                    ).float()
            with self._net():
                stream = self.stream.select(idx)  # a copy: the worlds' decoder state changes at commit
                decoded = self._decode(new, stream)
            K, c2w, pose = self._cameras(idx, n, new)
            if planned is not None:  # the motion model's cameras, not the raymap's decoding of them
                pose = planned[0][idx]
                c2w = G.scale_poses(G.relative_pose(self.anchor[idx, None], pose), self.scale[idx, None])
            # (b, tf): the chunk's frames, after the last keyframe, in metres and the episode frame, posed as the body
            new_frames = to_frames(decoded["rgb"], decoded.get("depth"), c2w, K, self.scale[idx], self.anchor[idx])
            new_frames["pose"] = pose
            if self.cache is not None and self.model.refiner is not None:
                new_frames["rgb"] = self._refine(idx, new_frames)
            chunk[idx] = new_frames
            pending.append((idx, n, new, new_frames, stream))
        if planned is not None:
            chunk["blocked"] = planned[1]
        return chunk, pending, sentences

    def _cameras(self, idx: Tensor, n: Tensor, new: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The cameras of the frames (b, tf) of a generated latent ``new`` (b, 1, C, h, w) after windows of lengths
        ``n`` (b,) of worlds ``idx`` (b,): intrinsics K (b, tf, 3, 3), the raymap's poses c2w (b, tf, 4, 4) in the
        window, and the poses (b, tf, 4, 4) the body takes, in metres in the episode frame."""
        K, c2w = self.model.codec.decode_cameras(torch.cat([self.latents[idx, n - 1][:, None], new], dim=1))
        if self.config.fixed_intrinsics:
            # A world's camera never zooms: no action changes the focal length. The raymap's intrinsics
            # are a prediction that wanders (shipped model, deepverse drift --raw: fx 32-61 px over 300 random
            # steps, true 41.7), and re-encoded at every slide they compound; the start frame's (given, or
            # completed from the image) are kept instead, and the pose is the raymap's as before.
            K = self.frames["intrinsics"][idx, :1].expand_as(K)  # (b, 1 + tf, 3, 3)
        K, c2w = K[:, 1:], c2w[:, 1:]  # the chunk's frames, after the last keyframe
        pose = self.anchor[idx, None] @ G.unscale_poses(c2w, self.scale[idx, None])  # metres, episode frame
        if self.config.level_camera:
            # Every action moves the body on the floor and turns it about the vertical; the head only
            # tilts. The raymap's poses roll, climb and pitch past the limit (shipped model, 300 random
            # steps: one camera 172 m up), and re-encoded at every slide the error compounds; the frames
            # keep the predicted heading, tilt (clamped) and floor position, at the start camera's height.
            pose = G.level_pose(pose, 0.0, math.radians(self.config.max_pitch_deg))
        return K, c2w, pose

    def _render(self, idx: Tensor, K: Tensor, pose: Tensor) -> tuple[Tensor, Tensor]:
        """The 3D cache of worlds ``idx`` (b,) rendered into one camera each, K (b, 3, 3) and pose (b, 4, 4) in
        metres in the episode frame, as the MM-DiT's render frame: codec latent (b, 1, C, h, w), cover (b, 1, h, w).
        The render is normalised into each world's current window, as the memory frame is (``_spatial``)."""
        render = self.cache.render(idx, K[:, None], pose[:, None])  # (b, H, W)
        window = G.scale_poses(G.relative_pose(self.anchor[idx], pose), self.scale[idx])  # (b, 4, 4) normalize_frames
        raymap = G.camera_to_raymap(K, window, self.H, self.W)  # (b, 6, H, W)
        with self._net():
            latent, cover = self.model.encode_render(render, raymap, self.scale[idx])
        return latent.float(), cover

    def _commit(self, pending: list[tuple]) -> None:
        """Write generated chunks into their worlds: decoder state, windows (sliding the full ones), 3D cache."""
        for idx, n, new, new_frames, stream in pending:
            self.stream.update(idx, stream)
            for length in n.unique().tolist():  # windows grow (or slide) by their own length
                rows = (n == length).nonzero()[:, 0]
                T = 1 + (length - 1) * self.tf
                frames = torch.cat([self.frames[idx[rows], :T], new_frames[rows]], dim=1)  # (b', T + tf)
                self._append(idx[rows], length, new[rows], frames)
            if self.cache is not None:
                self.cache.add(new_frames[:, -1], idx)  # the chunk's keyframe joins the 3D cache

    def _history_groups(self) -> list[tuple[int, Tensor]]:
        """Worlds grouped by the history the MM-DiT takes from their windows, the last min(n, m) latents
        (``DeepVerse.history``), so windows of length m and longer share one call and a restarted world no
        longer splits the batch by every window length. Returns (history length, world indices) pairs."""
        th = self.length.clamp(max=self.model.history_frames)  # (B,)
        return [(t, (th == t).nonzero()[:, 0]) for t in th.unique().tolist()]

    def _refine(self, idx: Tensor, frames: TensorDict) -> Tensor:
        """The refiner's colours (b, tf, H, W, 3) uint8 of decoded frames (b, tf), given the 3D cache rendered
        into their predicted cameras."""
        render = self.cache.render(idx, frames["intrinsics"], frames["pose"])  # (b * tf, H, W)
        with self._net():
            return refine_frames(self.model.refiner, frames, render, self.scale[idx], max_batch=self.micro * self.tf)

    def _decode(self, latent: Tensor, stream: DecoderStream) -> dict[str, Tensor]:
        """``codec.decode_stream`` of latents (b, t, C, h, w) continuing ``stream`` (b worlds, updated in place),
        ``micro`` worlds a call; float32 rgb (b, F, 3, H, W) and depth (b, F, 1, H, W) (absent without depth)."""
        started, parts = stream.started, []
        for rows in torch.arange(len(latent), device=self.device).split(self.micro):
            part = stream.select(rows)
            part.started = started
            parts.append(self.model.codec.decode_stream(latent[rows], part))
            stream.update(rows, part)
        return {k: torch.cat([p[k] for p in parts]).float() for k in parts[0]}

    def _spatial(self) -> tuple[Tensor | None, Tensor | None]:
        """ψ-retrieved memory keyframes, normalised into each world's current window and encoded."""
        if not (self.config.use_memory and self.model.config.use_memory):
            return None, None
        last = self.frames["pose"][torch.arange(self.B), self._frame_count() - 1]  # (B, 4, 4) current camera
        keyframe, c2w, found = self.memory.retrieve(G.scale_poses(last, 1 / self.unit))  # (B, 4, H, W) RGB-D, or RGB
        if not bool(found.any()):
            return None, None
        K = self.frames["intrinsics"][:, 0]
        depth = {"depth": keyframe[:, 3:].movedim(1, -1).clamp_min(1e-6)} if self.depth else {}
        frame = TensorDict(
            {"rgb": keyframe[:, :3].movedim(1, -1).round().clamp(0, 255).to(torch.uint8), **depth,
             "pose": G.unscale_poses(c2w, self.unit), "intrinsics": K},
            [self.B],
        )
        # Worlds with an empty pool (just restarted) get a stand-in: their own current camera, so nothing
        # is normalised by the zero pose of an empty slot; the model masks them out anyway.
        frame["pose"] = torch.where(found[:, None, None], frame["pose"], last)
        states = normalize_frames(frame[:, None], self.anchor, self.scale)
        with self._net():
            latent = self.model.encode(states).float()  # (B, 1, C, h, w)
        return latent.where(found[:, None, None, None, None], 0), found

    def _anchor_to_start(self, idx: Tensor, kept: TensorDict) -> TensorDict:
        """The frames (b, T) that start a new window, their metric scale pulled towards the start frame's.

        Each slide re-anchors the window's scale on its own predicted depth, so any bias of that depth
        compounds from window to window (shipped model, 300 random steps: the scale wandered 0.004-10.8
        and one world's median depth reached 34 m). The start frame (the real picture, or its completed
        depth) holds the world's units, through two measurements of the new first frame:

        - *seen again*: the start frame's surfaces rendered into the new first camera; the median ratio of
          their depth to the predicted one, trusted in proportion to the share of the frame they cover
          (full at ``anchor_overlap``);
        - *the floor*: with a level camera the floor stays as far below it as in the start frame
          (``floor_height``); the ratio of the start's floor height to the new frame's, trusted where both
          frames see a flat floor.

        Their trust-weighted mean disagreement (log scale) c is corrected by ``metric_anchor`` of it: the
        kept frames are rescaled by c ** metric_anchor about the new first camera (depths, and translations
        relative to it). In normalised units nothing changes (``encode_depth`` and the window's poses are
        scale-free): only the metres the window stands for. A world that measures neither keeps its scale.

        With a level camera, c is then clamped to the factors that keep the new first frame in the body's world
        (``body_bounds``: nothing below the floor or above the highest ceiling, nothing nearer than ``min_depth``):
        a hard bound where the two measurements see nothing (1,000 random steps without it: one world's scale grew
        ~10x per 100 steps, another shrank to 2% of the truth).
        """
        if self.config.metric_anchor == 0:
            return kept
        first = kept[:, 0]  # (b,)
        predicted = first["depth"][..., 0]  # (b, H, W)
        eye = torch.eye(4, device=self.device).expand(len(idx), 4, 4)
        xyz = G.unproject(self.origin[idx], self.origin_K[idx], eye).flatten(1, 2)  # (b, P, 3) episode frame
        render = splat(xyz, xyz[..., :1], first["intrinsics"], first["pose"], self.H, self.W)
        seen = render.mask & (predicted > 0)
        ratio = torch.where(seen, render.depth / predicted.clamp_min(1e-6), torch.nan).flatten(1)  # (b, P)
        bound = self.config.max_rescale
        log_seen = ratio.nanmedian(dim=1).values.nan_to_num(1.0).clamp(1 / bound, bound).log()  # (b,)
        # Trust grows with the overlap (continuously: a hard threshold made the correction jump on a pixel).
        w_seen = (seen.flatten(1).float().mean(dim=1) / self.config.anchor_overlap).clamp(max=1.0)  # (b,)
        w_floor = torch.zeros_like(w_seen)
        log_floor = torch.zeros_like(w_seen)
        if self.config.level_camera:
            floor, flat = floor_height(predicted, first["intrinsics"], first["pose"])
            w_floor = (flat & (self.floor[idx] > 0)).float()
            log_floor = torch.where(w_floor > 0, self.floor[idx] / floor.clamp_min(1e-6), 1.0).clamp(1 / bound, bound).log()
        log_c = (w_seen * log_seen + w_floor * log_floor) / (w_seen + w_floor).clamp_min(1.0)
        c = (self.config.metric_anchor * log_c).exp()  # (b,)
        if self.config.level_camera:  # then c stays within what the body's world allows
            below, above, near = self._body(idx)  # floor and ceiling distances, nearest depth
            slack = self.config.body_slack
            lo, hi = body_bounds(predicted, first["intrinsics"], first["pose"], below * slack, above * slack, near)
            # A frame too near at its nearest pixels and too deep below the floor at once is garbage both ways: the
            # geometric mean of the two bounds (letting the upper one win shrank a world 4x a slide, to 0.002x).
            c = torch.where(lo > hi, (lo * hi).sqrt(), torch.minimum(torch.maximum(c, lo), hi))
        out = kept.clone()
        out["depth"] = kept["depth"] * c[:, None, None, None, None]
        if self.camera == "motion":  # the cameras are the motion model's, in metres: only the generated depth is rescaled
            return out
        # In the first camera by the general inverse: with G.relative_pose (a transpose, exact for rigid poses
        # only) the kept rotations shrank slide after slide, to 1e-8 by step 92 of `deepverse drift`, then NaN.
        relative = torch.linalg.inv(first["pose"])[:, None] @ kept["pose"]  # (b, T, 4, 4)
        out["pose"] = first["pose"][:, None] @ G.unscale_poses(relative, c[:, None])
        return out

    def _body(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The body's world around each camera (b,), start units (inf / None: no bound): the floor below it (the
        start frame's flat floor, else ``eye_height``), the highest ceiling above it, the nearest depth."""
        c = self.config
        eye = torch.where(self.floor[idx] > 0, self.floor[idx], c.eye_height if c.eye_height is not None else math.inf)
        ceiling = eye * (c.room_height - 1) if c.room_height is not None else torch.full_like(eye, math.inf)
        near = None if c.min_depth is None else torch.where(eye < math.inf, eye * c.min_depth, 0.0)
        return eye, ceiling, near

    def _frame_count(self) -> Tensor:
        return 1 + (self.length - 1) * self.tf  # (B,)

    def _append(self, idx: Tensor, n: int, new: Tensor, frames: TensorDict) -> None:
        """Add a generated latent to windows of length n; slide those that are full (Algorithm 1)."""
        T = frames.shape[1]
        if n + 1 <= self.config.cache_max:
            self.latents[idx, n] = new[:, 0]
            self.frames[idx, :T] = frames
            self.length[idx] = n + 1
            return
        # The window is full: keyframes leaving it go to memory, the last `keep` latents start a new window.
        drop = n + 1 - self.keep
        mask = torch.zeros(self.B, dtype=torch.bool, device=self.device)  # the pool is batched over all B
        mask[idx] = True
        # (B, 4, H, W) RGB-D, (B, 3, H, W) RGB without depth; rows outside idx are ignored
        keyframe = torch.zeros(self.B, *self.memory.state["frame"].shape[2:], device=self.device)
        pose = torch.eye(4, device=self.device).repeat(self.B, 1, 1)
        for j in range(drop):
            key = frames[:, j * self.tf]  # (b,) keyframe of latent j
            channels = [key[k].movedim(-1, 1).float() for k in ("rgb", "depth") if k in key.keys()]  # (b, 3 | 1, H, W)
            keyframe[idx] = torch.cat(channels, dim=1)
            pose[idx] = G.scale_poses(key["pose"], 1 / self.unit[idx])
            self.memory.add(keyframe, pose, mask)
        kept = frames[:, drop * self.tf :]  # (b, 1 + (keep - 1) * tf)
        scale = self.scale[idx]  # without depth every window keeps the start frame's scale: nothing to re-anchor on
        if self.depth:
            kept = self._anchor_to_start(idx, kept)
            # The new scale comes from the predicted depth of the new first frame. Its nearest pixel is no
            # anchor: a few generated pixels sit far nearer than the surface around them (shipped model: max
            # normalised disparity 1.0-2.0 where the 99th percentile is 0.6-1.0), and re-anchoring on them
            # shrinks the scale at every slide (0.94x a step: 0.75 -> 1e-15 in 600 steps, then depth 0 and
            # NaN). So the scale is set by a low quantile of depth, and its change per slide is bounded too.
            scale = G.window_scale(kept["depth"][:, 0, ..., 0], quantile=self.config.scale_quantile).clamp(
                scale / self.config.max_rescale, scale * self.config.max_rescale
            )
        anchor = kept["pose"][:, 0]
        with self._net():
            normalized = normalize_frames(kept, anchor, scale)
            latents = torch.cat([self.model.encode(part).float() for part in normalized.split(self.micro)])  # (b, keep, C, h, w)
            if not self.config.carry_decoder:
                stream = DecoderStream()
                self.model.codec.decode_stream(latents, stream)  # the new window's decoder state, rebuilt
                self.stream.update(idx, stream)
        self.latents[idx] = 0
        self.latents[idx, : self.keep] = latents
        self.frames[idx] = self._blank_frames(self.frames.shape[1], len(idx))
        self.frames[idx, : kept.shape[1]] = kept
        self.anchor[idx], self.scale[idx] = anchor, scale
        self.length[idx] = self.keep
