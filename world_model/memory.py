"""Geometric memory ψ: a pose-indexed pool of past keyframes, batched over worlds (DESIGN M11, M13).

The long rollout stores keyframes (the RGB-D pixels of a chunk's last frame and its camera, in the global
frame: the first frame's camera frame) once they leave the context window, and retrieves one of them as
the spatial condition of each new chunk; the rollout normalises it into the current window and encodes it. ψ, as in the paper and its release: among the stored entries take the ``k`` nearest camera
*positions* (Euclidean), then among those the one whose optical axis makes the smallest angle with the
query camera's.

All B worlds live in one preallocated ``tensordict.TensorDict`` of batch size (B, capacity), so adding
and retrieving are one batched op each, and cloning, selecting or resetting worlds is a TensorDict op.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from tensordict import TensorDict
from torch import Tensor

from world_model.geometry import optical_axis_angle


class WorldTable:
    """Per-world storage in one preallocated ``tensordict.TensorDict`` ``state`` whose first batch dim is the
    world: copying, selecting and loading worlds are TensorDict ops. Subclasses name what they hold (``noun``)."""

    state: TensorDict  # (B, ...)
    noun = "table"

    @property
    def batch_size(self) -> int:
        return self.state.batch_size[0]

    def clone(self):
        """An independent copy (planners branch from it)."""
        return self._with_state(self.state.clone())

    def select(self, index: Tensor):
        """A new table of the worlds ``index`` (B',) long, repeats allowed: expand one world to many candidates."""
        return self._with_state(self.state[index].clone())

    def load_state(self, other) -> None:
        """Overwrite this table in place with a copy of ``other``'s contents (same batch size and shapes)."""
        if other.state.shape != self.state.shape:
            raise ValueError(
                f"cannot load a {self.noun} of shape {tuple(other.state.shape)} into {tuple(self.state.shape)}"
            )
        self.state.update_(other.state)

    def nbytes(self) -> int:
        """Bytes held, for every world: fixed at construction."""
        return sum(t.numel() * t.element_size() for t in self.state.values())

    def _with_state(self, state: TensorDict):
        out = copy.copy(self)
        out.state = state
        return out


@dataclass
class MemoryConfig:
    capacity: int = 256  # entries per world; beyond it the least recently written entry is evicted
    k: int = 5  # ψ looks at the k nearest camera positions (release: 5)
    cell_size: float = 0.5  # metres; one entry per (position cell, heading bin): revisits replace
    yaw_bins: int = 12  # heading bins over 360 degrees (30 degrees each)


def psi(query: Tensor, keys: Tensor, valid: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The paper's retrieval ψ over candidate cameras: the k nearest camera positions, then among them
    the one whose optical axis is closest to the query's.

    Args:
        query: (B, 4, 4) camera-to-world.  keys: (B, N, 4, 4) candidates.  valid: (B, N) bool.
    Returns:
        index: (B,) into N (0 where nothing is valid);  found: (B,) bool, any valid candidate.
    """
    dist = (keys[..., :3, 3] - query[:, None, :3, 3]).norm(dim=-1)  # (B, N)
    dist = dist.masked_fill(~valid, math.inf)
    near_dist, near = dist.topk(min(k, dist.shape[1]), dim=1, largest=False)  # (B, k)
    worlds = torch.arange(keys.shape[0], device=keys.device)
    angle = optical_axis_angle(keys[worlds[:, None], near], query[:, None])  # (B, k)
    angle = angle.masked_fill(near_dist.isinf(), math.inf)
    index = near.gather(1, angle.argmin(dim=1, keepdim=True))[:, 0]  # (B,)
    return index, valid.any(dim=1)


class MemoryPool(WorldTable):
    """Keyframes (any per-pixel payload, the rollout's: RGB 0-255 + depth in metres) and their camera poses
    for B independent worlds.

    Bound: each world holds at most ``capacity`` entries, and at most one per (cubic position cell of
    side ``cell_size``, heading bin of the optical axis about the global vertical): an entry falling in
    an occupied (cell, bin) replaces it, the fresher view winning; a new (cell, bin) at capacity evicts
    the least recently written entry. Storage is allocated once, B * capacity entries of
    ``frame_shape``, and never grows, however long the episode.

    Args:
        config: ``MemoryConfig``.
        batch_size: B, the number of worlds.
        frame_shape: (C, H, W) of one keyframe (the rollout's: 4 channels, RGB-D, at full resolution).
        device, dtype: of the stored keyframes (poses are always float32).
    """

    noun = "pool"

    def __init__(
        self,
        config: MemoryConfig,
        batch_size: int,
        frame_shape: tuple[int, int, int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        for name in ("capacity", "k", "yaw_bins"):
            if getattr(config, name) < 1:
                raise ValueError(f"MemoryConfig.{name} must be >= 1, got {getattr(config, name)!r}")
        if not config.cell_size > 0:
            raise ValueError(f"MemoryConfig.cell_size must be > 0, got {config.cell_size!r}")
        B, N = batch_size, config.capacity
        self.config = config
        self.state = TensorDict(
            {
                "frame": torch.zeros(B, N, *frame_shape, dtype=dtype),  # (B, N, C, H, W)
                "c2w": torch.zeros(B, N, 4, 4),  # global frame
                "cell": torch.zeros(B, N, 3, dtype=torch.long),  # integer position cell
                "heading": torch.zeros(B, N, dtype=torch.long),  # heading bin
                "stamp": torch.zeros(B, N, dtype=torch.long),  # write order within the world
                "valid": torch.zeros(B, N, dtype=torch.bool),
            },
            batch_size=[B, N],
            device=device,
        )

    def sizes(self) -> Tensor:
        """(B,) number of stored entries per world."""
        return self.state["valid"].sum(dim=1)

    def add(self, frame: Tensor, c2w: Tensor, mask: Tensor | None = None) -> None:
        """Store one keyframe per world (where ``mask``).

        Args:
            frame: (B, C, H, W) keyframe.  c2w: (B, 4, 4) its pose in the global frame.
            mask: (B,) bool, the worlds that store; all when None.
        """
        st = self.state
        pos = c2w[:, :3, 3].float()  # (B, 3)
        cell = torch.floor(pos / self.config.cell_size).long()  # (B, 3)
        heading = self._heading_bin(c2w)  # (B,)
        valid = st["valid"]  # (B, N)
        same = valid & (st["cell"] == cell[:, None]).all(-1) & (st["heading"] == heading[:, None])  # (B, N)
        free = ~valid
        oldest = st["stamp"].masked_fill(free, torch.iinfo(torch.long).max).argmin(dim=1)  # (B,)
        slot = torch.where(
            same.any(1), same.long().argmax(1), torch.where(free.any(1), free.long().argmax(1), oldest)
        )  # (B,) the matching entry, else the first free slot, else the oldest entry
        stamp = st["stamp"].masked_fill(free, -1).amax(dim=1) + 1  # (B,) newer than every entry
        worlds = torch.arange(self.batch_size, device=slot.device)
        if mask is not None:
            worlds, slot = worlds[mask], slot[mask]
        st["frame"][worlds, slot] = frame[worlds].to(st["frame"].dtype)
        st["c2w"][worlds, slot] = c2w[worlds].float()
        st["cell"][worlds, slot] = cell[worlds]
        st["heading"][worlds, slot] = heading[worlds]
        st["stamp"][worlds, slot] = stamp[worlds]
        st["valid"][worlds, slot] = True

    def retrieve(self, c2w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ψ: the stored keyframe that best matches each query camera.

        Args:
            c2w: (B, 4, 4) query poses in the global frame.
        Returns:
            frame: (B, C, H, W);  c2w: (B, 4, 4) its pose;  found: (B,) bool, False (and zeros) where
            the world's pool is empty.
        """
        st = self.state
        best, found = psi(c2w.float(), st["c2w"], st["valid"], self.config.k)  # (B,), (B,)
        worlds = torch.arange(self.batch_size, device=best.device)
        frame = st["frame"][worlds, best]  # (B, C, H, W)
        pose = st["c2w"][worlds, best]  # (B, 4, 4)
        frame = torch.where(found.view(-1, *[1] * (frame.dim() - 1)), frame, torch.zeros_like(frame))
        pose = torch.where(found[:, None, None], pose, torch.zeros_like(pose))
        return frame, pose, found

    def reset(self, mask: Tensor | None = None) -> None:
        """Empty the worlds where ``mask`` (B,) bool (all when None), e.g. on autoreset."""
        mask = torch.ones(self.batch_size, dtype=torch.bool, device=self.state.device) if mask is None else mask
        self.state["valid"][mask] = False
        self.state["stamp"][mask] = 0

    def to(self, device: torch.device | str) -> MemoryPool:
        """Move the pool to ``device`` in place; returns self."""
        self.state = self.state.to(device)
        return self

    def _heading_bin(self, c2w: Tensor) -> Tensor:
        """(B, 4, 4) -> (B,) bin of the optical axis's heading about the global vertical (y, OpenCV)."""
        z = c2w[:, :3, 2].float()
        heading = torch.atan2(z[:, 0], z[:, 2])  # (B,) in [-pi, pi]
        bins = self.config.yaw_bins
        return torch.floor((heading + math.pi) / (2 * math.pi) * bins).long() % bins
