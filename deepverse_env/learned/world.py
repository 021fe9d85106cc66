"""``LearnedWorld``: B worlds of a world model, the core of ``DeepVerse-v0`` and its vector env.

It owns no weights: it composes the model's batched sliding-window ``Rollout`` (with its memory), the
reward and termination hooks of ``deepverse_env.rewards``, a ``StartLoader`` of first frames and a
``WorldMap`` per world, as DIAMOND's ``WorldModelEnv`` is a thin shell handed a model and a loader.
"""
from __future__ import annotations

import hashlib
import json
import math
import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor

from deepverse_env.actions import ActionSet, caption_thresholds, get_action_set
from deepverse_env.learned.starts import START_KEYS, SimulatorStarts, StartLoader, check_starts
from deepverse_env.render import WorldMap
from deepverse_env.rewards import Hooks, PerWorldHooks, start_state
from world_model import geometry as G
from world_model.flow import SamplerConfig
from world_model.memory import MemoryConfig
from world_model.model import DeepVerse, load_pretrained
from world_model.precision import auto_dtype
from world_model.rollout import AUTOCAST, Rollout, RolloutConfig
from world_model.state import frame_keys
from world_model.text import SENTENCES


@dataclass
class LearnedEnvConfig:
    """Everything about a learned world except its weights: the keyword arguments of ``DeepVerse-v0``."""

    action_set: str | ActionSet = "basic"  # as DeepVerseSim-v0: "basic", "deepverse", "full" or an ActionSet
    text_actions: bool = False  # True: an action is a sentence of world_model.text.SENTENCES (a Text space)
    frames_per_step: int | None = None  # None = the model's chunk; anything else must equal it
    sampler: SamplerConfig | dict | None = None  # changes to the checkpoint's sampler, e.g. {"steps": 2}
    use_memory: bool = True  # condition each chunk on a ψ-retrieved memory keyframe
    render_cache: bool = True  # the 3D cache, for a model with a refiner or a render frame (False: paper path)
    embodied: bool = True  # the body holds the camera: start intrinsics, level at start height, metric anchor
    camera: str | None = None  # "motion": the model's motion model moves the camera (M19); "generated": the paper's
                               # raymap; None = "motion" where the checkpoint has a motion model
    cache_max: int = 6  # latent frames in a window before it slides (Algorithm 1's CacheMaxSize)
    memory_capacity: int = 256  # keyframes kept per world: the memory pool's bound
    reward: Any = None  # a deepverse_env.rewards.make_reward spec: name, dict, list or callable
    termination: Any = None  # a make_termination spec
    starts: StartLoader | None = None  # first frames of (re)starts; None = SimulatorStarts at fov_deg
    fov_deg: float = 75.0  # horizontal field of view of the default simulator starts
    map_points: int = 50_000  # predicted points kept per world (render map, .ply): a uniform sample
    device: str = "cpu"  # where the model runs
    dtype: str = "auto"  # compute dtype: "auto" measures float32 against bfloat16 autocast once per machine and model
                         # (world_model.precision, cached); "float32", "bfloat16" / "float16" (torch.autocast) as given
    carry_decoder: bool = True  # the codec decoder's state carried across a window slide (False: rebuilt, 2x its work)
    imagine_chunk: int = 16  # candidates per batched rollout of imagine: bounds its peak memory (see imagine); 16 is
                             # also the fastest here (256 x 8 steps, bf16, 2 cores: 180 s at 16, 278 s at 64)

    def __post_init__(self):
        """Strict types for the plain settings, so ``use_memory="no"`` is an error, not True; integers are
        normalised to ``int`` (numpy integers are accepted). The others are checked where they are used:
        ``action_set`` (get_action_set), ``sampler`` (SamplerConfig.merged), ``reward`` / ``termination``
        (Hooks), ``starts``, ``frames_per_step`` and ``dtype`` (LearnedWorld). ``device`` must name a device this
        machine has (a CUDA one only where torch sees it)."""
        for name in ("text_actions", "use_memory", "render_cache", "embodied", "carry_decoder"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {value!r}")
            setattr(self, name, bool(value))
        _check_device(self.device)
        for name, low in (("cache_max", 2), ("memory_capacity", 1), ("map_points", 1), ("imagine_chunk", 1)):
            setattr(self, name, _integer(getattr(self, name), name, low))
        if self.frames_per_step is not None:
            self.frames_per_step = _integer(self.frames_per_step, "frames_per_step", 1)
        fov = self.fov_deg
        if isinstance(fov, (bool, np.bool_)) or not isinstance(fov, (int, float, np.integer, np.floating)) or not 0 < fov < 180:
            raise ValueError(f"fov_deg must be a number of degrees in (0, 180), got {fov!r}")
        if not isinstance(self.dtype, (str, torch.dtype)):
            raise ValueError(f"dtype must be 'auto' or one of {sorted(AUTOCAST)}, got {self.dtype!r}")


def _integer(value, name: str, low: int) -> int:
    """``value`` as an int >= ``low``; ValueError naming it otherwise (a bool or a float is no integer)."""
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        i = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}") from None
    if i < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return i


def make_config(options: dict) -> LearnedEnvConfig:
    """``LearnedEnvConfig`` from keyword arguments; ValueError naming an unknown one or a bad value."""
    known = {f.name for f in fields(LearnedEnvConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown DeepVerse-v0 argument(s) {unknown}; expected checkpoint, render_mode or {sorted(known)}")
    return LearnedEnvConfig(**options)


@dataclass(frozen=True)
class StateSource:
    """What a ``WorldState`` was taken from: everything its tensors' shapes and meaning depend on. A
    snapshot restores into (or is imagined from in) a world of the same source only."""

    model: int  # id() of the model object: the snapshot's rollout holds the model, so the id cannot be reused
    # while the snapshot lives; the decoder stream is keyed by the model's modules, so even a model loaded
    # from the same checkpoint is another model here
    worlds: int  # B
    height: int
    width: int
    cache_max: int
    memory_capacity: int
    render_cache: bool  # whether the 3D cache is held (render_cache and a model with a refiner or a render frame)
    map_points: int
    device: str

    def mismatch(self, other: StateSource) -> list[str]:
        """'name=theirs (this world: ours)' for every field where ``other`` (the snapshot's) differs."""
        out = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine != theirs:
                if f.name == "model":
                    out.append(f"model=another model object (id {theirs:#x}; this world's: {mine:#x})")
                else:
                    out.append(f"{f.name}={theirs!r} (this world: {mine!r})")
        return out


@dataclass
class WorldState:
    """A snapshot of every world of a ``LearnedWorld``: restore it with ``set_state``, imagine from it."""

    rollout: Rollout  # windows, scales and memory pools
    td: TensorDict  # (B,) the current frames and the hooks' state entries
    generator: Tensor  # sampler noise state
    maps: list[WorldMap]
    scene_seeds: np.ndarray
    source: StateSource  # what it was taken from: set_state and imagine check it before touching anything


def _check_device(device) -> None:
    """ValueError unless ``device`` (a string or ``torch.device``) names a device this machine has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA device on this machine (use 'cpu')")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def load_model(checkpoint: str | Path | DeepVerse | None, device: str | torch.device = "cpu") -> DeepVerse:
    """The world model of a ``checkpoint``: None = the shipped model, a ``save_pretrained`` directory, or a
    ``DeepVerse`` (used as it is, moved to ``device`` in place)."""
    if isinstance(checkpoint, DeepVerse):
        model = checkpoint
    elif checkpoint is None:
        try:
            model = load_pretrained()
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"the shipped model is missing ({e}); pass a checkpoint instead: checkpoint=DIR in Python, "
                "--checkpoint DIR on the command line (a DeepVerse.save_pretrained directory)"
            ) from None
    elif isinstance(checkpoint, (str, Path)):
        model = DeepVerse.from_pretrained(checkpoint)
    else:
        raise ValueError(f"checkpoint must be None, a directory or a DeepVerse, got {type(checkpoint).__name__}")
    return model.to(device).eval()


def require_depth(model: DeepVerse, what: str) -> None:
    """ValueError naming ``what`` (a command that reads the predicted depth) for a model without depth."""
    if not model.codec.use_depth:
        raise ValueError(f"{what} needs the predicted depth, and this model has none (codec use_depth false: the "
                         "no-depth ablation)")


class LearnedWorld:
    """B worlds of a world model: start, step, score, imagine, snapshot, draw. The core of both envs.

    A model whose codec has no depth (the no-depth ablation) gives frames without ``depth`` (``keys``; the
    rollout's depth-free mode): hooks that need depth refuse it, the panel's depth tile is black and the map
    holds the camera path alone. Its starts still take a true depth, which sets the world's scale.

    Args:
        model: the world model (shared, not copied).
        num_worlds: B.
        config: ``LearnedEnvConfig``.
    """

    def __init__(self, model: DeepVerse, num_worlds: int, config: LearnedEnvConfig):
        c = self.config = config
        self.B = int(num_worlds)
        self.device = next(model.parameters()).device
        self.H, self.W, self.F = model.config.height, model.config.width, model.frames_per_chunk
        self.keys = frame_keys(model.codec.use_depth)  # the observation keys (no depth for a model without it)
        if c.frames_per_step is not None and c.frames_per_step != self.F:
            raise ValueError(
                f"frames_per_step={c.frames_per_step!r} does not match the model's chunk of {self.F} frames "
                "(one step = one chunk); leave it None"
            )
        dtype = str(c.dtype).removeprefix("torch.")
        if dtype not in AUTOCAST and dtype != "auto":
            raise ValueError(f"dtype must be 'auto' or one of {sorted(AUTOCAST)}, got {c.dtype!r}")
        if dtype == "auto":  # measured once per machine and model (world_model.precision)
            dtype = auto_dtype(self.workload(model, c), lambda d: self.seconds_per_step(model, replace(c, dtype=d)))
        self.dtype = dtype
        if c.starts is not None and not isinstance(c.starts, StartLoader):
            raise ValueError(f"starts must be None or a StartLoader (SimulatorStarts, EpisodeStarts), got {c.starts!r}")
        self.starts = SimulatorStarts(self.H, self.W, c.fov_deg) if c.starts is None else c.starts
        self.actions = get_action_set(c.action_set)
        self.sentences = SENTENCES if c.text_actions else tuple(a.sentence for a in self.actions.actions)  # id -> text
        pressed = get_action_set("full") if c.text_actions else self.actions  # "full" is SENTENCES' order
        self.commands = torch.tensor([a.command for a in pressed.actions], dtype=torch.float32, device=self.device)
        self.generator = torch.Generator(self.device)
        rollout_config = RolloutConfig(
            camera=c.camera, caption_thresholds=caption_thresholds(self.F), cache_max=c.cache_max, sampler=c.sampler, use_memory=c.use_memory, render_cache=c.render_cache,
            memory=MemoryConfig(capacity=c.memory_capacity), dtype=dtype, carry_decoder=c.carry_decoder,
            # embodied=False: the cameras as the raymaps predict them, units re-anchored on predicted depth
            fixed_intrinsics=c.embodied, level_camera=c.embodied, **({} if c.embodied else {"metric_anchor": 0.0}),
        )
        self.rollout = Rollout(model, self.B, rollout_config, self.generator)
        self.td: TensorDict | None = None  # (B,) current frames + hook state entries; None before start
        self.maps = [WorldMap(c.map_points) for _ in range(self.B)]
        self.scene_seeds = np.full(self.B, -1, dtype=np.int64)  # simulator world of each start, -1 = not known
        self.hooks = Hooks(c.reward, c.termination)  # replaceable: a task installs its own per episode

    @staticmethod
    def workload(model: DeepVerse, config: LearnedEnvConfig) -> str:
        """What ``dtype="auto"`` measures: one step of one world of this model (its config's digest) in these
        settings."""
        digest = hashlib.sha1(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:10]
        return (f"DeepVerse-v0 step, one world, {model.config.height}x{model.config.width}, model {digest}, "
                f"render_cache {config.render_cache}, device {config.device}")

    @staticmethod
    def seconds_per_step(model: DeepVerse, config: LearnedEnvConfig, steps: int = 2) -> float:
        """Seconds a step of one world takes in ``config.dtype`` (after one step of warm-up)."""
        world = LearnedWorld(model, 1, replace(config, reward=None, termination=None))
        world.start(np.ones(1, dtype=bool), seeds=[0])
        world.step(np.zeros(1, dtype=np.int64))
        t0 = time.perf_counter()
        for _ in range(steps):
            world.step(np.zeros(1, dtype=np.int64))
        return (time.perf_counter() - t0) / steps

    # ---- hooks -----------------------------------------------------------------------------------

    @property
    def hooks(self) -> Hooks:
        """The reward and termination hooks; setting them scores a dry run first (``check_hooks``)."""
        return self._hooks

    @hooks.setter
    def hooks(self, hooks: Hooks) -> None:
        self.check_hooks(hooks)
        self._hooks = hooks

    def check_hooks(self, hooks: Hooks) -> None:
        """ValueError unless ``hooks`` can score this world's transitions: a dry run scores the transition
        from the current frames (before the first start: a stand-in frame, black, 1 m deep, the default
        camera) to themselves under every action id, and checks each output is a (batch,) tensor. So a hook
        that cannot score this env (an ``action_cost`` table shorter than the action set, an image goal of
        another size, hook state of another shape) fails when it is installed, not in the middle of an
        episode. A hook that fails only on some frames is still caught atomically by ``step``. Hooks are
        called on copies of the state; a hook with side effects outside its ``td`` sees one extra call."""
        if not isinstance(hooks, Hooks):
            raise ValueError(f"hooks must be a deepverse_env.rewards.Hooks, got {hooks!r}")
        n = len(self.sentences)
        state = self.td if self.td is not None else self._stand_in()
        if isinstance(hooks, PerWorldHooks):  # one Hooks per world: score all B worlds at once, ids cycling
            batches = [(state, (np.arange(self.B) + k) % n) for k in range(0, n, self.B)]
        else:  # world 0 under every action id in one batch
            batches = [(state[torch.zeros(n, dtype=torch.long, device=state.device)], np.arange(n))]
        for before, ids in batches:
            try:
                after = before.select(*self.keys)
                _, reward, done = hooks.step(before, ids, after)
                for what, out in (("reward", reward), ("termination", done)):
                    if not torch.is_tensor(out) or tuple(out.shape) != (len(ids),):
                        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
                        raise ValueError(f"the {what} hook gave {shape} for a batch of {len(ids)}; expected ({len(ids)},)")
            except Exception as e:
                raise ValueError(
                    f"these hooks cannot score this env's transitions: a dry run of every action id 0..{n - 1} "
                    f"raised {type(e).__name__}: {e}"
                ) from e

    def _stand_in(self) -> TensorDict:
        """(B,) plain first frames for a dry run before any start: black, 1 m deep (with depth), identity pose,
        a pinhole of ``fov_deg``."""
        f = self.W / 2 / math.tan(math.radians(float(self.config.fov_deg)) / 2)
        K = torch.tensor([[f, 0, self.W / 2], [0, f, self.H / 2], [0, 0, 1]], dtype=torch.float32)
        B = self.B
        return TensorDict(
            {"rgb": torch.zeros(B, self.H, self.W, 3, dtype=torch.uint8), "depth": torch.ones(B, self.H, self.W, 1),
             "pose": torch.eye(4).repeat(B, 1, 1), "intrinsics": K.repeat(B, 1, 1)},
            [B], device=self.device,
        ).select(*self.keys)

    # ---- start and step ------------------------------------------------------------------------

    def start(
        self,
        mask: np.ndarray,
        images: np.ndarray | None = None,
        seeds: Sequence[int | None] | None = None,
        frames: dict[str, np.ndarray] | None = None,
    ) -> None:
        """(Re)start the worlds where ``mask`` (B,) bool; their hook state entries start empty.

        Args:
            images: (n, H, W, 3) uint8 for the n masked worlds (first-frame completion), or
            frames: known 4D first frames of the n masked worlds (``START_KEYS``, each (n, ...)), or
                neither: their first frames come from the start loader, world i's with ``seeds[i]``
                (None: its next).
        """
        idx = np.flatnonzero(mask)
        m = torch.as_tensor(mask, dtype=torch.bool, device=self.device)
        scene_seeds = np.full(len(idx), -1)  # not known for images and given frames
        if images is None and frames is None:
            frames, scene_seeds = self.starts.load(idx, [None if seeds is None else seeds[i] for i in idx])
            check_starts(self.starts, frames, scene_seeds, len(idx), self.H, self.W)
        self.scene_seeds[idx] = scene_seeds
        if images is not None:
            first = self.rollout.reset(torch.from_numpy(images), mask=m)
        else:
            first = self.rollout.reset(*(torch.as_tensor(frames[k]) for k in START_KEYS), mask=m)
        if self.td is None and len(idx) != self.B:
            raise RuntimeError("the first start must start every world")
        self.td = start_state(self.td, torch.as_tensor(idx, device=self.device), first)
        for i in idx:
            self.maps[i].clear()
        self._record(idx, first)

    def step(self, ids: np.ndarray) -> tuple[TensorDict, Tensor, Tensor]:
        """One chunk for every world.

        Args:
            ids: (B,) action ids (see ``deepverse_env.spaces.action_id``).
        Returns:
            frames TensorDict (B, F), rewards (B,) float, terminated (B,) bool.
        """
        # All or nothing: the hooks score the chunk inside the rollout's step, after it is generated and
        # before the rollout commits it (Rollout.step's before_commit), so a hook that raises leaves the
        # windows, memory, 3D cache and sampler noise as they were and the env steps on as if the call
        # never came. That costs nothing, where a snapshot to roll back to would copy the whole state
        # (the memory pool alone is 16 MiB a world) every step. check_hooks catches most bad hooks earlier.
        scored = []
        chunk = self.rollout.step(
            **self.pressed(self.rollout, ids),
            before_commit=lambda chunk: scored.append(self.hooks.step(self.td, ids, chunk[:, -1])),
        )
        self.td, reward, terminated = scored[0]
        self._record(np.arange(self.B), self.td)
        return chunk, reward, terminated

    def pressed(self, rollout: Rollout, ids: np.ndarray) -> dict:
        """``Rollout.step``'s action arguments for action ids (B,): commands for the motion camera, else sentences."""
        if rollout.camera == "motion":
            return {"commands": self.commands[torch.as_tensor(np.asarray(ids), dtype=torch.long, device=self.device)]}
        return {"sentences": [self.sentences[i] for i in ids]}

    def _record(self, idx: np.ndarray, frames: TensorDict) -> None:
        """Add the frames (len(idx),) of worlds ``idx`` to their maps: camera position and points (none
        without depth)."""
        s = max(1, self.H // 32)  # about 32 x 32 points per frame
        K = frames["intrinsics"].clone()
        K[:, :2] = K[:, :2] / s  # pixel i * s of the full frame is pixel i of the strided one
        colours = frames["rgb"][:, ::s, ::s].flatten(1, 2).cpu().numpy()  # (n, P, 3)
        if "depth" in frames.keys():
            points = G.unproject(frames["depth"][:, ::s, ::s, 0], K, frames["pose"]).flatten(1, 2).cpu().numpy()
        else:
            points, colours = np.zeros((len(idx), 0, 3), np.float32), colours[:, :0]  # (n, 0, 3)
        positions = frames["pose"][:, :3, 3].cpu().numpy()  # (n, 3)
        for j, i in enumerate(idx):
            self.maps[i].add(points[j], colours[j], positions[j])

    # ---- reading ---------------------------------------------------------------------------------

    def observation(self) -> dict[str, np.ndarray]:
        """The current frame of every world: the observation keys (``keys``), each (B, ...), as numpy copies."""
        return {k: self.td[k].cpu().numpy().copy() for k in self.keys}

    def panel(self, i: int) -> np.ndarray:
        """World i's picture: predicted RGB | depth colour map (black without depth) | top-down map of its
        predicted point cloud and camera path; the layout of ``DeepVerseSim-v0``'s render, so the two line up."""
        rgb, pose = (self.td[k][i].cpu().numpy() for k in ("rgb", "pose"))
        depth = self.td["depth"][i].cpu().numpy() if "depth" in self.keys else None
        return self.maps[i].panel(rgb, depth, pose)

    def nbytes(self) -> int:
        """Bytes of state held for all worlds: the rollout's (windows, decoder stream, memory pools), hook
        entries and maps. Fixed once the first step has run (hooks add their entries then); episodes
        never grow it."""
        tensors = list(self.td.values()) if self.td is not None else []
        maps = sum(m.nbytes() for m in self.maps)
        return self.rollout.nbytes() + sum(t.numel() * t.element_size() for t in tensors) + maps

    # ---- planning --------------------------------------------------------------------------------

    @property
    def source(self) -> StateSource:
        """What this world's snapshots are taken from (``WorldState.source``)."""
        c = self.config
        return StateSource(
            model=id(self.rollout.model), worlds=self.B, height=self.H, width=self.W, cache_max=c.cache_max,
            memory_capacity=c.memory_capacity, render_cache=self.rollout.cache is not None, map_points=c.map_points,
            device=str(self.device),
        )

    def get_state(self) -> WorldState:
        return WorldState(
            self.rollout.clone(), self.td.clone(), self.generator.get_state(), [m.copy() for m in self.maps],
            self.scene_seeds.copy(), self.source,
        )

    def check_state(self, state) -> WorldState:
        """``state`` if it is a ``WorldState`` taken from a world like this one (same model object, number
        of worlds, frame size, cache_max, memory capacity, 3D cache, map size, device); else a ValueError
        naming every difference. Nothing is touched."""
        if not isinstance(state, WorldState):
            raise ValueError(f"state must be a WorldState from get_state(), got {type(state).__name__} {state!r:.80}")
        diff = self.source.mismatch(state.source)
        if diff:
            raise ValueError(
                f"this snapshot was taken from another world: {'; '.join(diff)}. A get_state() snapshot "
                "restores only into an env of the same model object and settings"
            )
        return state

    def set_state(self, state: WorldState) -> None:
        self.check_state(state)  # before anything changes: a rejected snapshot leaves the world as it was
        self.rollout.load(state.rollout)
        self.td = state.td.clone()
        self.generator.set_state(state.generator)
        self.maps = [m.copy() for m in state.maps]
        self.scene_seeds = state.scene_seeds.copy()

    def imagine_poses(self, index: np.ndarray, ids: np.ndarray, state: WorldState | None) -> TensorDict:
        """Pose-only imagination (``Rollout.imagine_poses``: the motion model alone, no MM-DiT, no codec) of action
        sequences ``ids`` (M, L) from worlds ``index`` (M,), scored by the hooks; nothing here changes.

        Returns TensorDict (M, L): ``pose``, ``intrinsics``, ``blocked``, ``action``, ``reward``, ``terminated``.
        Hooks that read pixels or depth cannot score it: ValueError naming the key they wanted.
        """
        rollout, td = (self.rollout, self.td) if state is None else (state.rollout, state.td)
        if rollout.camera != "motion":
            raise ValueError("pixels=False imagines with the motion model alone: this world has none (camera 'generated')")
        rows = torch.as_tensor(index, dtype=torch.long, device=self.device)
        ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long, device=self.device)
        frames = rollout.imagine_poses(rows, self.commands[ids_t])
        try:
            kept = td.select(*(k for k in td.keys() if k not in self.keys or k in frames.keys()))  # no rgb/depth copies
            return self.hooks.rollout(kept[rows], ids_t, frames)
        except (KeyError, ValueError) as e:  # a hook reading rgb/depth: KeyError, or next_depth's ValueError
            raise ValueError(f"pose-only imagination (pixels=False) makes only {sorted(frames.keys())} of the imagined "
                             f"frames, and the reward or termination hooks need more: {e}") from None

    def imagine(self, index: np.ndarray, ids: np.ndarray, state: WorldState | None, seed: int) -> TensorDict:
        """Roll action sequences from worlds ``index`` in batched rollouts of copies; nothing here changes.

        The M candidates are rolled ``config.imagine_chunk`` at a time, so peak memory is bounded whatever
        M is: each candidate of a chunk holds a copy of its world's rollout state (windows, decoder stream,
        memory pool, 3D cache: ``rollout.nbytes() / B``, 26 MiB a world for the shipped model at the
        default settings) plus its share of the chunk's activations (about 80 MB a candidate in all for the
        shipped model on CPU), so imagine's peak is about ``imagine_chunk`` x that (~1.7 GB at the default 16)
        plus the returned frames, M x L x (H x W x 7 + 120) bytes, which are the answer. Chunk k's noise
        comes from its own generator, seeded with ``seed`` for chunk 0 and with ``chunk_seed(seed, k)``
        for k > 0: the result depends on the seed and ``imagine_chunk`` only, and a call of at most
        ``imagine_chunk`` candidates is one batched rollout seeded with ``seed``, as before chunking.

        Args:
            index: (M,) the world each sequence starts from (repeats: many candidates from one state).
            ids: (M, L) action ids.  state: start from this snapshot instead of the current worlds.
            seed: of the imagined rollout's noise, an integer in [0, 2**64).
        Returns:
            TensorDict (M, L): the frame after each step (``keys``: rgb, depth, pose, intrinsics), ``action``,
            ``reward`` and ``terminated`` from the hooks, and ``scale`` (the window scale).
        """
        if state is not None:
            self.check_state(state)
        rollout, td = (self.rollout, self.td) if state is None else (state.rollout, state.td)
        rows = torch.as_tensor(index, dtype=torch.long, device=self.device)
        ids = np.asarray(ids)
        size = self.config.imagine_chunk
        return torch.cat(
            [
                self._imagine_chunk(rollout, td, rows[k : k + size], ids[k : k + size], chunk_seed(seed, k // size))
                for k in range(0, len(rows), size)
            ],
            dim=0,
        )

    def _imagine_chunk(self, rollout: Rollout, td: TensorDict, rows: Tensor, ids: np.ndarray, seed: int) -> TensorDict:
        branch = rollout.select(rows)
        branch.generator = torch.Generator(self.device).manual_seed(seed)
        frames, scales = [], []
        for step_ids in ids.T:  # (M,) per step
            frames.append(branch.step(**self.pressed(branch, step_ids))[:, -1].select(*self.keys))
            scales.append(branch.scale.clone())
        del branch  # its copy of the rollout state goes before the next chunk's is made
        # (M, L); the hooks start from td[rows], their entries included, so stateful hooks branch too
        out = self.hooks.rollout(td[rows], torch.as_tensor(ids, dtype=torch.long), torch.stack(frames, dim=1))
        out["scale"] = torch.stack(scales, dim=1)
        return out


def chunk_seed(seed: int, k: int) -> int:
    """The noise seed of chunk ``k`` of an ``imagine`` call seeded with ``seed``: ``seed`` itself for chunk 0
    (so a call that fits one chunk is what it was before chunking), a ``numpy.random.SeedSequence((seed, k))``
    draw in [0, 2**64) for the others."""
    if k == 0:
        return int(seed)
    return int(np.random.SeedSequence((int(seed), int(k))).generate_state(1, np.uint64)[0])
