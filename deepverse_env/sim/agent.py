"""The agent: a camera on a body that walks on the floor, turns about the vertical and tilts its head.

State of one agent: ``(x, z, yaw, pitch)`` float64 in the scene's absolute frame (``world.py``): the
position on the floor plan, the heading (+ = turned left, counter-clockwise seen from above; 0 looks
along +z) and the head tilt (+ = up, clamped to +-PITCH_LIMIT). The camera sits at ``eye_height``.

One frame of an action first turns and tilts, then moves by the action's body-frame translation along
the new heading (pitch ignored, like a game; the vertical component is ignored too: the agent stays on
the floor). A move that would make the agent's circle overlap a wall or an object is not applied at
all (no sliding) and the frame counts as blocked; the turn still happens.
"""
from __future__ import annotations

import math

import numpy as np

from deepverse_env.actions import PITCH_LIMIT, Action
from deepverse_env.sim.world import Scene, SceneConfig, generate_scene


def _rotation(yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """R = R_yaw @ R_pitch, (..., 3, 3): yaw about the world vertical y, pitch about the camera x axis."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    zero, one = np.zeros_like(yaw), np.ones_like(yaw)
    R_yaw = np.stack([cy, zero, -sy, zero, one, zero, sy, zero, cy], -1).reshape(*yaw.shape, 3, 3)
    R_pitch = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(*yaw.shape, 3, 3)
    return R_yaw @ R_pitch


def camera_pose(state: np.ndarray, eye_height: float) -> np.ndarray:
    """Absolute camera-to-world poses (..., 4, 4) float64 of agent states (..., 4)."""
    x, z, yaw, pitch = np.moveaxis(state, -1, 0)
    T = np.zeros(state.shape[:-1] + (4, 4))
    T[..., :3, :3] = _rotation(yaw, pitch)
    T[..., :3, 3] = np.stack([x, np.full_like(x, -eye_height), z], -1)
    T[..., 3, 3] = 1.0
    return T


def relative_pose(start: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Pose (..., 4, 4) float64 of the camera of ``state`` in the camera frame of ``start`` (both (..., 4)).

    Built from angle differences, so it is exactly the identity when ``state`` equals a level ``start``.
    """
    R0_inv = np.swapaxes(_rotation(np.zeros_like(start[..., 3]), start[..., 3]), -1, -2)  # undo start pitch
    T = np.zeros(np.broadcast_shapes(start.shape, state.shape)[:-1] + (4, 4))
    T[..., :3, :3] = R0_inv @ _rotation(state[..., 2] - start[..., 2], state[..., 3])
    moved = np.stack([state[..., 0] - start[..., 0], np.zeros_like(state[..., 0]), state[..., 1] - start[..., 1]], -1)
    T[..., :3, 3] = (R0_inv @ _rotation(-start[..., 2], np.zeros_like(start[..., 2])) @ moved[..., None])[..., 0]
    T[..., 3, 3] = 1.0
    return T


def start_episode(
    rng: np.random.Generator, config: SceneConfig, scene_seed: int | None = None
) -> tuple[Scene, np.ndarray]:
    """A world (``scene_seed``, else drawn from ``rng``) and a start state: a free spot, random heading, level."""
    if scene_seed is None:
        scene_seed = int(rng.integers(2**31 - 1))
    elif isinstance(scene_seed, bool) or not isinstance(scene_seed, (int, np.integer)) or scene_seed < 0:
        raise ValueError(f"scene_seed must be a non-negative integer, got {scene_seed!r}")
    scene = generate_scene(int(scene_seed), config)
    x, z = scene.free_spot(rng)
    return scene, np.array([x, z, rng.uniform(-math.pi, math.pi), 0.0])


def advance(scene: Scene, state: np.ndarray, action: Action) -> tuple[np.ndarray, bool]:
    """One frame of ``action`` from ``state`` (4,): the new state and whether the move was blocked."""
    x, z, yaw, pitch = state
    yaw = math.remainder(yaw + action.yaw, 2 * math.pi)
    pitch = min(max(pitch + action.pitch, -PITCH_LIMIT), PITCH_LIMIT)
    dx, _, dz = action.translation  # body frame: x right, z forward
    blocked = False
    if dx or dz:
        c, s = math.cos(yaw), math.sin(yaw)
        nx, nz = x + dx * c - dz * s, z + dx * s + dz * c  # right = (c, 0, s), forward = (-s, 0, c)
        if scene.collides(nx, nz):
            blocked = True
        else:
            x, z = nx, nz
    return np.array([x, z, yaw, pitch]), blocked
