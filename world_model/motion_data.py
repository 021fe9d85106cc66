"""Every chunk of recorded episodes as the motion model (``world_model.motion``) learns from it.

Unlike the world model's clips (``episodes.EpisodeClips``) no chunk is filtered out: blocked and static chunks are
what the motion model must learn. Each item (a TensorDict, no batch dims) holds, for chunk s of an episode
(frames f0 = s * tf .. f0 + tf):

- ``points`` (n, 3), ``mask`` (n,): ``motion.nearby_points`` of the depth of frame f0 and of the keyframes f0 - tf,
  f0 - 2 tf, ... before it (what a rollout's window holds; with ``random_history`` a uniformly drawn number of them,
  0..history, as windows hold after a start or a slide), in the level frame of the body at f0;
- ``truth`` (tf + 1, 5): the body states of frames f0 .. f0 + tf in that frame (``world_model.body``);
- ``blocked`` (tf,) bool: the frames whose move was blocked (``motion.blocked_frames``, from the measured motion);
- ``command`` (5,): the pressed action's per-frame command (``episode.json``'s ``commands``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDict
from torch.utils.data import Dataset

from world_model import body as Bd
from world_model.episodes import EpisodeError, list_episodes, load_episode
from world_model.motion import blocked_frames, depth_points, nearby_points


class MotionChunks(Dataset):
    """Every chunk of the episodes under ``root``, with ``history`` keyframes of depth before it (module docstring)."""

    def __init__(self, root: str | Path, history: int = 5, points: int = 1024, random_history: bool = False):
        for name, value, lo in (("history", history, 0), ("points", points, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
        self.root, self.history, self.points, self.random_history = Path(root), history, points, random_history
        self.paths = list_episodes(root)
        if not self.paths:
            raise EpisodeError(f"no complete episodes (episode_NNNNNN/) under {root}")
        self.episodes: list[TensorDict] = []
        self.commands: list[torch.Tensor] = []  # (steps, 5) per episode
        self.index: list[tuple[int, int]] = []
        self.frames_per_step = 0
        for path in self.paths:
            frames, meta = load_episode(path)
            commands = meta.get("commands")
            steps = len(meta["captions"])
            if not isinstance(commands, list) or len(commands) != steps or any(
                not isinstance(c, list) or len(c) != 5 for c in commands
            ):
                raise EpisodeError(
                    f"{path}/episode.json lacks 'commands' (one [x, y, z, yaw, pitch] per step; episodes recorded "
                    f"before the motion model): record the dataset again with `deepverse collect`"
                )
            fps = meta["frames_per_step"]
            if self.frames_per_step and fps != self.frames_per_step:
                raise EpisodeError(f"{path}: frames_per_step {fps}, but earlier episodes have {self.frames_per_step}")
            self.frames_per_step = fps
            e = len(self.episodes)
            self.episodes.append(frames)
            self.commands.append(torch.tensor(commands, dtype=torch.float32))
            self.index.extend((e, s) for s in range(steps))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)  # DataLoader workers map the files themselves
        state["episodes"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.episodes is None:
            self.episodes = [load_episode(path)[0] for path in self.paths]

    def __len__(self) -> int:
        return len(self.index)

    seeded = True  # a ResumableLoader hands each index with a seed of its own: the drawn history resumes exactly

    def __getitem__(self, key: int | tuple[int, int]) -> TensorDict:
        """Chunk ``key``, or ``(index, seed)``: the random history drawn from ``seed`` instead of the global generator."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        e, s = self.index[i]
        tf, ep = self.frames_per_step, self.episodes[e]
        f0 = s * tf
        wanted = torch.tensor([f0 - k * tf for k in range(self.history + 1)])  # (1 + history,) newest first
        valid = wanted >= 0
        if self.random_history:
            g = None if seed is None else torch.Generator().manual_seed(seed)
            valid &= torch.arange(len(wanted)) <= int(torch.randint(len(wanted), (), generator=g))
        frames = ep[wanted.clamp_min(0)].to_tensordict()
        start = Bd.body_state(frames["pose"][:1])  # (1, 5)
        xyz, seen = depth_points(frames["depth"][None, ..., 0], frames["intrinsics"][None], frames["pose"][None], valid[None])
        points, mask = nearby_points(xyz, seen, start, self.points)
        truth = Bd.relative(Bd.body_state(torch.as_tensor(ep["pose"][f0 : f0 + tf + 1])), start)  # (tf + 1, 5)
        command = self.commands[e][s]
        return TensorDict({
            "points": points[0], "mask": mask[0], "truth": truth, "command": command,
            "blocked": blocked_frames(truth[None], command[None])[0],
        }, [])
