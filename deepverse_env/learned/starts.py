"""Where learned worlds start: loaders of known first frames (DIAMOND's ``WorldModelEnv`` is handed one too).

A ``StartLoader`` gives the first frame of each world that (re)starts: RGB, depth and intrinsics, from
which the model rolls on (a first frame's pose is the identity). ``SimulatorStarts``, the default, takes
them from ``DeepVerseSim-v0``; ``EpisodeStarts`` from episodes recorded by ``deepverse collect``. A user's
picture needs no loader: ``reset(options={"image": rgb})`` starts from it by first-frame completion (the
model makes its depth and camera).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from deepverse_env.sim.env import DeepVerseSimEnv
from world_model.episodes import list_episodes, load_episode

START_KEYS = ("rgb", "depth", "intrinsics")  # what a start frame gives, in Rollout.reset's order


class StartLoader(ABC):
    """First frames for the worlds of a learned env (``starts=`` of ``DeepVerse-v0``)."""

    @abstractmethod
    def load(self, worlds: np.ndarray, seeds: Sequence[int | None]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """First frames of the n worlds starting now.

        Args:
            worlds: (n,) their indices among the env's worlds (a loader may keep a stream per world).
            seeds: (n,) the seed of each start (``reset(seed=...)``), or None: continue the stream.
        Returns:
            frames: ``rgb`` (n, H, W, 3) uint8, ``depth`` (n, H, W, 1) float32 metres, ``intrinsics``
                (n, 3, 3) float32, at the model's frame size.
            scene_seeds: (n,) the simulator world of each frame, -1 where it is not known.
        """


class SimulatorStarts(StartLoader):
    """First frames of ``DeepVerseSim-v0``: one simulator per world, reset with the world's seed, so a
    start with seed s is the first observation of a ``DeepVerseSimEnv`` reset with s (the same world and
    view, its exact depth and intrinsics); a seedless start continues that world's simulator stream.

    Args:
        height, width: the frame size (the model's).  fov_deg: horizontal field of view.
    """

    def __init__(self, height: int, width: int, fov_deg: float = 75.0):
        self.size = dict(height=height, width=width, fov_deg=fov_deg)
        self.sims = {0: DeepVerseSimEnv(**self.size)}  # world -> its simulator; made now to check the size

    def load(self, worlds: np.ndarray, seeds: Sequence[int | None]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        frames, scene_seeds = [], []
        for i, seed in zip(worlds, seeds, strict=True):
            if i not in self.sims:
                self.sims[i] = DeepVerseSimEnv(**self.size)
            obs, info = self.sims[i].reset(seed=seed)
            frames.append(obs)
            scene_seeds.append(info["scene_seed"])
        return {k: np.stack([f[k] for f in frames]) for k in START_KEYS}, np.array(scene_seeds)


class EpisodeStarts(StartLoader):
    """First frames of the episodes recorded under ``root`` (``deepverse collect``), in index order: a
    start with seed s takes episode ``s % n`` of the n, a seedless one the episode after the last taken.
    Their simulator world is not recorded: ``scene_seed`` is -1."""

    def __init__(self, root: str | Path):
        self.episodes = list_episodes(root)  # FileNotFoundError naming a missing directory
        if not self.episodes:
            raise ValueError(f"no recorded episodes under {root}; record some with `deepverse collect --out {root}`")
        self.next = 0  # the episode a seedless start takes

    def load(self, worlds: np.ndarray, seeds: Sequence[int | None]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        firsts = []
        for seed in seeds:
            i = self.next if seed is None else seed % len(self.episodes)
            self.next = (i + 1) % len(self.episodes)
            frames, _ = load_episode(self.episodes[i])
            firsts.append(frames[0])
        first = torch.stack(firsts)  # (n,) copied out of the memmaps
        return {k: first[k].numpy() for k in START_KEYS}, np.full(len(seeds), -1)


def check_starts(
    loader: StartLoader, frames: dict[str, np.ndarray], scene_seeds: np.ndarray, n: int, height: int, width: int
) -> None:
    """ValueError naming the loader where ``loader.load`` gave anything but n start frames at the model's size."""
    want = {
        "rgb": ((n, height, width, 3), np.uint8),
        "depth": ((n, height, width, 1), np.float32),
        "intrinsics": ((n, 3, 3), np.float32),
    }
    for key, (shape, dtype) in want.items():
        a = frames.get(key)
        if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dtype:
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else repr(a)
            raise ValueError(
                f"{type(loader).__name__}.load gave {key} {got}; expected {np.dtype(dtype)} {shape} (the model's frame size)"
            )
    if not isinstance(scene_seeds, np.ndarray) or scene_seeds.shape != (n,) or scene_seeds.dtype.kind not in "iu":
        raise ValueError(f"{type(loader).__name__}.load gave scene_seeds {scene_seeds!r}; expected {n} integers")
