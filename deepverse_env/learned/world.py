"""``LearnedWorld``: B worlds of a world model, the core of ``DeepVerse-v0`` and its vector env.

It owns no weights: it composes the model's batched sliding-window ``Rollout`` (with its memory), the
reward and termination hooks of ``deepverse_env.rewards``, a ``StartLoader`` of first frames and a
``WorldMap`` per world, as DIAMOND's ``WorldModelEnv`` is a thin shell handed a model and a loader.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor

from deepverse_env.actions import ActionSet, get_action_set
from deepverse_env.learned.starts import START_KEYS, SimulatorStarts, StartLoader, check_starts
from deepverse_env.render import WorldMap
from deepverse_env.rewards import Hooks, start_state
from world_model import geometry as G
from world_model.flow import SamplerConfig
from world_model.memory import MemoryConfig
from world_model.model import DeepVerse, load_pretrained
from world_model.rollout import AUTOCAST, Rollout, RolloutConfig
from world_model.state import FRAME_KEYS
from world_model.text import SENTENCES


@dataclass
class LearnedEnvConfig:
    """Everything about a learned world except its weights: the keyword arguments of ``DeepVerse-v0``."""

    action_set: str | ActionSet = "basic"  # as DeepVerseSim-v0: "basic", "deepverse", "full" or an ActionSet
    text_actions: bool = False  # True: an action is a sentence of world_model.text.SENTENCES (a Text space)
    frames_per_step: int | None = None  # None = the model's chunk; anything else must equal it
    sampler: SamplerConfig | dict | None = None  # changes to the checkpoint's sampler, e.g. {"steps": 2}
    use_memory: bool = True  # condition each chunk on a ψ-retrieved memory keyframe
    render_cache: bool = True  # refine frames with the 3D cache when the model has a refiner (False: paper path)
    cache_max: int = 6  # latent frames in a window before it slides (Algorithm 1's CacheMaxSize)
    memory_capacity: int = 256  # keyframes kept per world: the memory pool's bound
    reward: Any = None  # a deepverse_env.rewards.make_reward spec: name, dict, list or callable
    termination: Any = None  # a make_termination spec
    starts: StartLoader | None = None  # first frames of (re)starts; None = SimulatorStarts at fov_deg
    fov_deg: float = 75.0  # horizontal field of view of the default simulator starts
    map_points: int = 50_000  # predicted points kept per world (render map, .ply): a uniform sample
    device: str = "cpu"  # where the model runs
    dtype: str = "float32"  # compute dtype; "bfloat16" / "float16" run the model under torch.autocast


def make_config(options: dict) -> LearnedEnvConfig:
    """``LearnedEnvConfig`` from keyword arguments; ValueError naming an unknown one."""
    known = {f.name for f in fields(LearnedEnvConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown DeepVerse-v0 argument(s) {unknown}; expected checkpoint, render_mode or {sorted(known)}")
    return LearnedEnvConfig(**options)


@dataclass
class WorldState:
    """A snapshot of every world of a ``LearnedWorld``: restore it with ``set_state``, imagine from it."""

    rollout: Rollout  # windows, scales and memory pools
    td: TensorDict  # (B,) the current frames and the hooks' state entries
    generator: Tensor  # sampler noise state
    maps: list[WorldMap]
    scene_seeds: np.ndarray


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


class LearnedWorld:
    """B worlds of a world model: start, step, score, imagine, snapshot, draw. The core of both envs.

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
        if c.frames_per_step is not None and c.frames_per_step != self.F:
            raise ValueError(
                f"frames_per_step={c.frames_per_step!r} does not match the model's chunk of {self.F} frames "
                "(one step = one chunk); leave it None"
            )
        dtype = str(c.dtype).removeprefix("torch.")
        if dtype not in AUTOCAST:
            raise ValueError(f"dtype must be one of {sorted(AUTOCAST)}, got {c.dtype!r}")
        if c.starts is not None and not isinstance(c.starts, StartLoader):
            raise ValueError(f"starts must be None or a StartLoader (SimulatorStarts, EpisodeStarts), got {c.starts!r}")
        self.starts = SimulatorStarts(self.H, self.W, c.fov_deg) if c.starts is None else c.starts
        self.actions = get_action_set(c.action_set)
        self.sentences = SENTENCES if c.text_actions else tuple(a.sentence for a in self.actions.actions)  # id -> text
        self.hooks = Hooks(c.reward, c.termination)  # replaceable: a task installs its own per episode
        self.generator = torch.Generator(self.device)
        rollout_config = RolloutConfig(
            cache_max=c.cache_max, sampler=c.sampler, use_memory=c.use_memory, render_cache=c.render_cache,
            memory=MemoryConfig(capacity=c.memory_capacity), dtype=dtype,
        )
        self.rollout = Rollout(model, self.B, rollout_config, self.generator)
        self.td: TensorDict | None = None  # (B,) current frames + hook state entries; None before start
        self.maps = [WorldMap(c.map_points) for _ in range(self.B)]
        self.scene_seeds = np.full(self.B, -1, dtype=np.int64)  # simulator world of each start, -1 = not known

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
        chunk = self.rollout.step([self.sentences[i] for i in ids])
        self.td, reward, terminated = self.hooks.step(self.td, ids, chunk[:, -1])
        self._record(np.arange(self.B), self.td)
        return chunk, reward, terminated

    def _record(self, idx: np.ndarray, frames: TensorDict) -> None:
        """Add the frames (len(idx),) of worlds ``idx`` to their maps: camera position and points."""
        s = max(1, self.H // 32)  # about 32 x 32 points per frame
        K = frames["intrinsics"].clone()
        K[:, :2] = K[:, :2] / s  # pixel i * s of the full frame is pixel i of the strided one
        points = G.unproject(frames["depth"][:, ::s, ::s, 0], K, frames["pose"]).flatten(1, 2).cpu().numpy()
        colours = frames["rgb"][:, ::s, ::s].flatten(1, 2).cpu().numpy()  # (n, P, 3)
        positions = frames["pose"][:, :3, 3].cpu().numpy()  # (n, 3)
        for j, i in enumerate(idx):
            self.maps[i].add(points[j], colours[j], positions[j])

    # ---- reading ---------------------------------------------------------------------------------

    def observation(self) -> dict[str, np.ndarray]:
        """The current frame of every world: the observation keys, each (B, ...), as numpy copies."""
        return {k: self.td[k].cpu().numpy().copy() for k in FRAME_KEYS}

    def panel(self, i: int) -> np.ndarray:
        """World i's picture: predicted RGB | depth colour map | top-down map of its predicted point cloud
        and camera path; the layout of ``DeepVerseSim-v0``'s render, so the two line up."""
        rgb, depth, pose = (self.td[k][i].cpu().numpy() for k in ("rgb", "depth", "pose"))
        return self.maps[i].panel(rgb, depth, pose)

    def nbytes(self) -> int:
        """Bytes of state held for all worlds: the rollout's (windows, decoder stream, memory pools), hook
        entries and maps. Fixed once the first step has run (hooks add their entries then); episodes
        never grow it."""
        tensors = list(self.td.values()) if self.td is not None else []
        maps = sum(m.nbytes() for m in self.maps)
        return self.rollout.nbytes() + sum(t.numel() * t.element_size() for t in tensors) + maps

    # ---- planning --------------------------------------------------------------------------------

    def get_state(self) -> WorldState:
        return WorldState(
            self.rollout.clone(), self.td.clone(), self.generator.get_state(), [m.copy() for m in self.maps],
            self.scene_seeds.copy(),
        )

    def set_state(self, state: WorldState) -> None:
        if state.rollout.B != self.B:
            raise ValueError(f"a state of {state.rollout.B} worlds cannot be restored into {self.B}")
        self.rollout.load(state.rollout)
        self.td = state.td.clone()
        self.generator.set_state(state.generator)
        self.maps = [m.copy() for m in state.maps]
        self.scene_seeds = state.scene_seeds.copy()

    def imagine(self, index: np.ndarray, ids: np.ndarray, state: WorldState | None, seed: int) -> TensorDict:
        """Roll action sequences from worlds ``index`` in one batched rollout of a copy; nothing here changes.

        Args:
            index: (M,) the world each sequence starts from (repeats: many candidates from one state).
            ids: (M, L) action ids.  state: start from this snapshot instead of the current worlds.
            seed: of the imagined rollout's noise.
        Returns:
            TensorDict (M, L): the frame after each step (rgb, depth, pose, intrinsics), ``action``,
            ``reward`` and ``terminated`` from the hooks, and ``scale`` (the window scale).
        """
        rollout, td = (self.rollout, self.td) if state is None else (state.rollout, state.td)
        rows = torch.as_tensor(index, dtype=torch.long, device=self.device)
        branch = rollout.select(rows)
        branch.generator = torch.Generator(self.device).manual_seed(seed)
        frames, scales = [], []
        for step_ids in ids.T:  # (M,) per step
            frames.append(branch.step([self.sentences[i] for i in step_ids])[:, -1].select(*FRAME_KEYS))
            scales.append(branch.scale.clone())
        # (M, L); the hooks start from td[rows], their entries included, so stateful hooks branch too
        out = self.hooks.rollout(td[rows], torch.as_tensor(ids, dtype=torch.long), torch.stack(frames, dim=1))
        out["scale"] = torch.stack(scales, dim=1)
        return out
