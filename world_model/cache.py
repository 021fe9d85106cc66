"""The 3D cache (M18): a bounded point cloud of what each world has shown, rendered into new cameras.

Each of B worlds keeps its start frame and its last ``frames - 1`` generated keyframes (the last frame of every
chunk) as coloured points in the episode frame: every pixel unprojected with its depth and camera. The
rollout renders them, z-buffered (``world_model.splat``), into the predicted camera of every new frame, and
the refiner (``world_model.refine``) takes detail from the render where it agrees with the decoded frame.

The start frame is *real* (a picture the world was started from): it is never evicted, and in the z-test its
points win against generated surfaces up to ``real_priority`` nearer. Without both, each generated keyframe,
a little softer than the render it was refined from, covered the sharp start frame, and detail washed out
over a rollout (shipped refiner: sharpness 0.17 at frame 4, 0.09 by frame 32).

Bound: ``frames`` x H x W points per world, 15 bytes each (xyz float32, rgb uint8): 5 x 64 x 64 -> 300 KB.
A ring: a new generated keyframe replaces the oldest generated one. Storage is one preallocated TensorDict (B, frames), so cloning,
selecting and resetting worlds are TensorDict ops, as in ``world_model.memory``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict
from torch import Tensor

from world_model import geometry as G
from world_model.memory import WorldTable
from world_model.splat import Render, splat


@dataclass
class CacheConfig:
    frames: int = 5  # keyframes held per world, the start frame included (the refiner trains on up to 4)
    real_priority: float = 0.05  # a real frame's points win the z-test against surfaces up to 5% nearer

    def __post_init__(self):
        if isinstance(self.frames, bool) or int(self.frames) != self.frames or self.frames < 2:
            raise ValueError(f"CacheConfig.frames must be an integer >= 2 (the start frame and one more), got {self.frames!r}")
        if not 0 <= self.real_priority < 1:
            raise ValueError(f"CacheConfig.real_priority must be in [0, 1), got {self.real_priority!r}")


class PointCache(WorldTable):
    """Keyframe point clouds of B worlds (see the module docstring).

    Args:
        config: ``CacheConfig``.  batch_size: B.  height, width: the frame size.  device: where it lives.
    """

    noun = "cache"

    def __init__(self, config: CacheConfig, batch_size: int, height: int, width: int, device=None):
        B, F, P = batch_size, config.frames, height * width
        self.config, self.height, self.width = config, height, width
        self.state = TensorDict(
            {
                "xyz": torch.zeros(B, F, P, 3),  # episode frame, metres
                "rgb": torch.zeros(B, F, P, 3, dtype=torch.uint8),
                "stamp": torch.zeros(B, F, dtype=torch.long),  # write order within the world
                "valid": torch.zeros(B, F, dtype=torch.bool),
                "real": torch.zeros(B, F, dtype=torch.bool),  # a real picture: kept, and wins near-ties
            },
            batch_size=[B, F],
            device=device,
        )

    def add(self, frames: TensorDict, worlds: Tensor, real: bool = False) -> None:
        """Store one keyframe for each of ``worlds`` (n,) long: frames (n,) rgb (H, W, 3) uint8, depth (H, W, 1)
        metres, pose (4, 4) in the episode frame, intrinsics (3, 3). It takes a free slot, else replaces the
        world's oldest generated keyframe; ``real`` marks a real picture (the start frame)."""
        st = self.state
        age = st["stamp"][worlds].masked_fill(~st["valid"][worlds], -1)  # (n, F) free slots first
        slot = age.masked_fill(st["real"][worlds], torch.iinfo(torch.long).max).argmin(dim=1)  # (n,) never a real one
        stamp = st["stamp"][worlds].amax(dim=1) + 1  # (n,)
        xyz = G.unproject(frames["depth"][..., 0].float(), frames["intrinsics"].float(), frames["pose"].float())
        st["xyz"][worlds, slot] = xyz.flatten(1, 2)  # (n, P, 3)
        st["rgb"][worlds, slot] = frames["rgb"].flatten(1, 2)
        st["stamp"][worlds, slot] = stamp
        st["valid"][worlds, slot] = True
        st["real"][worlds, slot] = real

    def render(self, worlds: Tensor, K: Tensor, c2w: Tensor) -> Render:
        """Render worlds (n,) into T cameras each: K (n, T, 3, 3), c2w (n, T, 4, 4) -> ``Render`` (n * T, H, W)."""
        n, T = c2w.shape[:2]
        st = self.state[worlds]  # (n, F)
        F, P = st.shape[1], self.height * self.width
        valid = st["valid"][:, :, None].expand(n, F, P).reshape(n, F * P)
        priority = (st["real"].float() * self.config.real_priority)[:, :, None].expand(n, F, P).reshape(n, F * P)
        return splat(
            st["xyz"].reshape(n, F * P, 3).repeat_interleave(T, 0), st["rgb"].reshape(n, F * P, 3).float().repeat_interleave(T, 0),
            K.flatten(0, 1), c2w.flatten(0, 1), self.height, self.width, valid=valid.repeat_interleave(T, 0),
            priority=priority.repeat_interleave(T, 0),
        )

    def sizes(self) -> Tensor:
        """(B,) keyframes held per world."""
        return self.state["valid"].sum(dim=1)

    def reset(self, mask: Tensor) -> None:
        """Empty the worlds where ``mask`` (B,) bool."""
        self.state["valid"][mask] = False
        self.state["real"][mask] = False
        self.state["stamp"][mask] = 0

