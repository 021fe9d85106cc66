"""The body the camera rides on (DESIGN §3, M19): it walks on a level floor, turns about the vertical, tilts its head.

A camera pose (camera-to-world, OpenCV axes: y down) in an episode frame whose y axis is the vertical (the frame of a
level first camera) is a *body state* ``(x, y, z, yaw, pitch)``: the camera centre, the heading (+ = turned left,
counter-clockwise seen from above; 0 looks along +z) and the head's tilt (+ = up). The rotation is R_yaw @ R_pitch
(``geometry.level_pose``), so a level body has no roll.

One frame of *motion* ``(dx, dz, dyaw, dpitch)`` first turns and tilts, then moves the body by ``dx`` to its right and
``dz`` forward along the new heading, on the floor (``y`` unchanged): the order of the simulator's agent, and of every
game with mouse-look. ``frame_motion`` measures it between poses; ``advance`` applies it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

STATE = ("x", "y", "z", "yaw", "pitch")  # the last axis of a body state
MOTION = ("dx", "dz", "dyaw", "dpitch")  # the last axis of one frame's motion


def wrap(angle: Tensor) -> Tensor:
    """Angles into [-pi, pi)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def body_state(c2w: Tensor) -> Tensor:
    """Body states (..., 5) of camera poses (..., 4, 4); roll, if any, is dropped."""
    f = c2w[..., :3, 2]  # (..., 3) optical axis
    yaw = torch.atan2(-f[..., 0], f[..., 2])
    pitch = torch.atan2(-f[..., 1], torch.linalg.vector_norm(f[..., [0, 2]], dim=-1))
    return torch.stack([c2w[..., 0, 3], c2w[..., 1, 3], c2w[..., 2, 3], yaw, pitch], dim=-1)


def body_pose(state: Tensor) -> Tensor:
    """Camera poses (..., 4, 4) of body states (..., 5)."""
    x, y, z, yaw, pitch = state.unbind(-1)
    cy, sy, cp, sp = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin()
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
    R_yaw = torch.stack([cy, zero, -sy, zero, one, zero, sy, zero, cy], -1).unflatten(-1, (3, 3))
    R_pitch = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).unflatten(-1, (3, 3))
    T = torch.zeros(*state.shape[:-1], 4, 4, dtype=state.dtype, device=state.device)
    T[..., :3, :3] = R_yaw @ R_pitch
    T[..., :3, 3] = torch.stack([x, y, z], -1)
    T[..., 3, 3] = 1.0
    return T


def heading(yaw: Tensor) -> tuple[Tensor, Tensor]:
    """The floor-plan axes (x, z) of a heading: right (..., 2) and forward (..., 2)."""
    c, s = yaw.cos(), yaw.sin()
    return torch.stack([c, s], -1), torch.stack([-s, c], -1)


def advance(state: Tensor, motion: Tensor) -> Tensor:
    """The body states (..., 5) after one frame of ``motion`` (..., 4) from ``state`` (..., 5)."""
    dx, dz, dyaw, dpitch = motion.unbind(-1)
    yaw = wrap(state[..., 3] + dyaw)
    right, forward = heading(yaw)
    xz = state[..., [0, 2]] + dx[..., None] * right + dz[..., None] * forward
    return torch.stack([xz[..., 0], state[..., 1], xz[..., 1], yaw, state[..., 4] + dpitch], -1)


def frame_motion(state: Tensor) -> Tensor:
    """The motion (..., T - 1, 4) of each frame of a sequence of body states (..., T, 5)."""
    before, after = state[..., :-1, :], state[..., 1:, :]
    right, forward = heading(after[..., 3])
    d = after[..., [0, 2]] - before[..., [0, 2]]
    return torch.stack([
        (d * right).sum(-1), (d * forward).sum(-1), wrap(after[..., 3] - before[..., 3]), after[..., 4] - before[..., 4]
    ], -1)


def to_body(points: Tensor, state: Tensor) -> Tensor:
    """World points (..., N, 3) in the level frame of the body ``state`` (..., 5): x right, y down from the camera's
    height, z forward along the heading (the tilt is not applied)."""
    right, forward = heading(state[..., 3])  # (..., 2)
    d = points - state[..., None, :3]  # (..., N, 3)
    dxz = d[..., [0, 2]]
    return torch.stack([(dxz * right[..., None, :]).sum(-1), d[..., 1], (dxz * forward[..., None, :]).sum(-1)], -1)


def relative(state: Tensor, origin: Tensor) -> Tensor:
    """Body states (..., 5) expressed in the level frame of the body ``origin`` (..., 5) (its yaw subtracted)."""
    p = to_body(state[..., None, :3], origin)[..., 0, :]
    return torch.cat([p, wrap(state[..., 3:4] - origin[..., 3:4]), state[..., 4:5]], -1)


def absolute(state: Tensor, origin: Tensor) -> Tensor:
    """The inverse of ``relative``: body states (..., 5) given in ``origin``'s level frame, in the world frame."""
    right, forward = heading(origin[..., 3])
    xz = origin[..., [0, 2]] + state[..., :1] * right + state[..., 2:3] * forward
    return torch.stack(
        [xz[..., 0], origin[..., 1] + state[..., 1], xz[..., 1], wrap(origin[..., 3] + state[..., 3]), state[..., 4]], -1
    )
