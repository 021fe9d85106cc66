"""Observation wrappers: DeepVerse observations in the form off-the-shelf agents take as they are."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from world_model.state import FRAME_KEYS


def rgbd(rgb: np.ndarray, depth: np.ndarray, near: float = 0.5) -> np.ndarray:
    """(..., H, W, 4) uint8: RGB, then inverse depth ``255 * min(1, near / depth)`` (``SB3Observation``'s image)."""
    inverse = np.minimum(1.0, near / depth)  # (..., H, W, 1) in (0, 1]
    return np.concatenate([rgb, np.round(255 * inverse).astype(np.uint8)], axis=-1)


class SB3Observation(gym.ObservationWrapper):
    """DeepVerse observations for stable-baselines3's ``MultiInputPolicy``, no custom policy needed.

    SB3 takes a 3-D Box as an image only when it is uint8 in [0, 255], and flattens everything else
    into an MLP input; its ``check_env`` warns about the float depth "image" and the 4x4 / 3x3
    matrices of the raw observation. This wrapper gives it:

    | key          | shape     | dtype   | meaning                                                       |
    |--------------|-----------|---------|---------------------------------------------------------------|
    | `rgbd`       | (H, W, 4) | uint8   | RGB, then inverse depth ``255 * min(1, near / depth)``: 255 at |
    |              |           |         | ``near`` metres or closer, halving each time depth doubles    |
    | `pose`       | (12,)     | float32 | camera-to-world rows 0-2 (rotation then translation), row-major|
    | `intrinsics` | (4,)      | float32 | (fx / W, fy / H, cx / W, cy / H): pixels over image size      |

    One image key, so SB3 builds one NatureCNN over aligned colour and geometry; inverse depth puts
    the resolution where collisions happen. ``NatureCNN`` needs images of at least 36 x 36 (the shipped
    model's 64 x 64 is fine). Works on ``DeepVerse-v0`` and ``DeepVerseSim-v0`` alike. Keys beyond the
    four of the observation dict pass through as they are, so it composes with ``GoalObservation``:
    ``SB3Observation(GoalObservation(env, task))``.

    Args:
        env: an env with the DeepVerse observation dict.
        near: metres mapped to 255 in the depth channel (default 0.5).
    """

    def __init__(self, env: gym.Env, near: float = 0.5):
        super().__init__(env)
        if not near > 0:
            raise ValueError(f"near must be > 0 metres, got {near!r}")
        self.near = float(near)
        if "depth" not in env.observation_space.spaces:
            raise ValueError("SB3Observation needs the depth key, and this env observes none (a model without depth)")
        H, W = env.observation_space["rgb"].shape[:2]
        self.size = np.array([W, H, W, H], dtype=np.float32)
        self.extra = [k for k in env.observation_space.spaces if k not in FRAME_KEYS]
        self.observation_space = spaces.Dict(
            {
                "rgbd": spaces.Box(0, 255, (H, W, 4), np.uint8),
                "pose": spaces.Box(-np.inf, np.inf, (12,), np.float32),
                "intrinsics": spaces.Box(0.0, np.inf, (4,), np.float32),
                **{k: env.observation_space[k] for k in self.extra},
            }
        )

    def observation(self, obs: dict) -> dict:
        K = obs["intrinsics"]
        return {
            "rgbd": rgbd(obs["rgb"], obs["depth"], self.near),
            "pose": obs["pose"][:3].reshape(12).astype(np.float32),
            "intrinsics": np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], dtype=np.float32) / self.size,
            **{k: obs[k] for k in self.extra},
        }


class GoalObservation(gym.ObservationWrapper):
    """Adds a task's goal, as the current camera sees it, to the observation dict.

    The ``task`` (e.g. ``agents.tasks.PointGoal``: ``goal`` = (distance m, sin, cos of the bearing, +
    to the left); ``VisualGoal``: ``goal_rgb``, the goal image) gives the keys and their spaces
    (``goal_space(height, width) -> dict``) and their values for a camera pose in the episode frame
    (``goal_observation(pose) -> dict``); the wrapper reads the task's current goal at every step, so a
    task may set a new one per episode (``task.reset(sim, seed)``). The env's episode frame must be the
    task's: the simulator's, or a learned world started from the same frame. Works on ``DeepVerse-v0``
    and ``DeepVerseSim-v0``; for stable-baselines3 wrap it in ``SB3Observation``.

    Args:
        env: an env with the DeepVerse observation dict.
        task: the task whose goal to add.
    """

    def __init__(self, env: gym.Env, task):
        super().__init__(env)
        H, W = env.observation_space["rgb"].shape[:2]
        goal = task.goal_space(H, W)
        clash = sorted(set(goal) & set(env.observation_space.spaces))
        if clash:
            raise ValueError(f"the task's goal keys {clash} are in the observation already")
        self.task = task
        self.observation_space = spaces.Dict({**env.observation_space.spaces, **goal})

    def observation(self, obs: dict) -> dict:
        return {**obs, **self.task.goal_observation(obs["pose"])}
