"""``DeepVerseSimVectorEnv``: N ground-truth worlds stepped together, one ray-cast call per step."""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from deepverse_env.actions import ActionSet
from deepverse_env.rewards import Hooks, start_state
from deepverse_env.sim import agent
from deepverse_env.sim.env import (
    check_arguments,
    check_hooks,
    check_reset_options,
    check_scene_seed,
    frames_state,
    render_frame,
)
from deepverse_env.sim.raycast import SceneBatch, render
from deepverse_env.sim.world import Scene, SceneConfig
from deepverse_env.spaces import action_space, check_action, observation_space
from world_model.geometry import default_intrinsics


def check_vector_arguments(num_envs, max_episode_steps) -> None:
    """ValueError unless ``num_envs`` is a positive integer and ``max_episode_steps`` one or None."""
    for name, value in (("num_envs", num_envs), ("max_episode_steps", max_episode_steps)):
        if (value is not None or name == "num_envs") and (
            isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
        ):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def vector_seeds(seed: int | list[int | None] | None, num_envs: int) -> list[int | None] | None:
    """Per-world seeds from a vector ``reset(seed=...)``: an integer s seeds world i with s + i (as
    ``SyncVectorEnv`` does), a list gives one seed (or None) per world, None keeps the streams going."""
    if seed is None:
        return None
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [int(seed) + i for i in range(num_envs)]
    if isinstance(seed, (list, tuple, np.ndarray)) and len(seed) == num_envs:
        return [None if s is None else int(s) for s in seed]
    raise ValueError(f"seed must be None, an integer or a list of {num_envs} seeds, got {seed!r}")


class DeepVerseSimVectorEnv(VectorEnv):
    """N independent ``DeepVerseSim-v0`` worlds with batched observations and infos.

    Sub-env ``i`` behaves exactly like a single ``DeepVerseSimEnv`` reset with the same seed: with
    ``reset(seed=s)`` it is seeded with ``s + i`` (as ``SyncVectorEnv`` does), and ``seed`` may also be
    a list of N seeds. All N x ``frames_per_step`` frames of a step are rendered by one ray-cast call.

    Autoreset follows Gymnasium's ``AutoresetMode.NEXT_STEP``: the step after a sub-env terminates or
    truncates resets it, ignores its action and returns its first observation with reward 0; its
    ``info["frames"]`` then holds that first frame repeated, ``blocked`` is False and ``sentence`` is "".

    Rewards and termination come from the ``reward`` / ``termination`` hooks as in the single env (one
    batched call for the N worlds; a restarting world gets reward 0 and its hook entries zeroed).

    Observations are the single env's dict batched along a first dim of N; ``info`` holds ``frames``
    (each key (N, F, ...)), ``abs_pose`` (N, 4, 4), ``blocked`` (N,), ``sentence`` (N,) strings and
    ``scene_seed`` (N,). Arguments are those of ``DeepVerseSimEnv`` (``reward`` and ``termination``
    included) plus ``num_envs`` and ``max_episode_steps`` (truncation, ``None`` for never).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        action_set: str | ActionSet = "basic",
        frames_per_step: int = 4,
        height: int = 64,
        width: int = 64,
        fov_deg: float = 75.0,
        render_mode: str | None = None,
        scene_config: SceneConfig | None = None,
        max_episode_steps: int | None = None,
        reward=None,
        termination=None,
    ):
        self.actions = check_arguments(
            action_set, frames_per_step, height, width, fov_deg, render_mode, self.metadata["render_modes"]
        )
        check_vector_arguments(num_envs, max_episode_steps)
        self.num_envs = int(num_envs)
        self.max_episode_steps = max_episode_steps
        self.frames_per_step, self.height, self.width = int(frames_per_step), int(height), int(width)
        self.render_mode = render_mode
        self.scene_config = scene_config or SceneConfig()
        self.K = default_intrinsics(self.height, self.width, float(fov_deg))
        self.single_action_space = action_space(self.actions)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = observation_space(self.height, self.width)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._rngs: list[np.random.Generator] | None = None
        self._scenes: list[Scene] = []
        self._batch: SceneBatch | None = None
        self._start = self._state = None  # (N, 4) agent states: first camera, current camera
        self._steps = np.zeros(self.num_envs, dtype=np.int64)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._trajectories: list[list[np.ndarray]] = []
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # rgb, depth (N, ...) of the latest frames
        self.hooks = Hooks(reward, termination)
        self._td = None  # (N,) the current frames and the hooks' state entries

    @property
    def hooks(self) -> Hooks:
        """The reward and termination hooks (a ``Hooks``, or ``PerWorldHooks`` with one per world); assigning
        checks them with a dry-run transition per action id (ValueError if they do not fit)."""
        return self._hooks

    @hooks.setter
    def hooks(self, hooks: Hooks) -> None:
        self._hooks = check_hooks(  # scored as step scores them: a batch of num_envs transitions
            hooks, self.actions, self.height, self.width, self.K, "DeepVerseSim-v0", self.num_envs
        )

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        N = self.num_envs
        scene_seeds = check_reset_options(options, "the DeepVerseSim-v0 vector env").get("scene_seed")
        if scene_seeds is not None:  # checked before anything changes
            if isinstance(scene_seeds, (str, bytes)) or np.shape(scene_seeds) != (N,):
                raise ValueError(f"options['scene_seed'] must hold {N} seeds, got {scene_seeds!r}")
            scene_seeds = [check_scene_seed(s, f"options['scene_seed'][{i}]") for i, s in enumerate(scene_seeds)]
        seeds = vector_seeds(seed, N)
        if seeds is not None or self._rngs is None:
            self._rngs = [seeding.np_random(s)[0] for s in (seeds or [None] * N)]
        self._scenes, self._trajectories = [None] * N, [None] * N
        self._start, self._state = np.zeros((N, 4)), np.zeros((N, 4))
        for i in range(N):
            self._reset_one(i, None if scene_seeds is None else scene_seeds[i])
        self._batch = SceneBatch.stack(self._scenes)
        self._steps[:] = 0
        self._autoreset[:] = False
        frames = self._render_states(self._state[:, None])
        obs = {k: v[:, -1] for k, v in frames.items()}
        self._td = frames_state(obs, N)
        return obs, {"abs_pose": self._abs_pose(), "scene_seed": np.array([s.seed for s in self._scenes])}

    def step(self, actions):
        if self._state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions!r}")
        ids = [check_action(a, len(self.actions)) for a in actions]
        chosen = [self.actions[i] for i in ids]
        N, F = self.num_envs, self.frames_per_step
        resets = np.flatnonzero(self._autoreset)
        for i in resets:
            self._reset_one(i, None)
        if len(resets):
            self._batch = SceneBatch.stack(self._scenes)
        states = np.repeat(self._state[:, None], F, axis=1)  # (N, F, 4); autoreset envs stay at their start
        blocked = np.zeros(N, dtype=bool)
        for i in np.flatnonzero(~self._autoreset):
            for f in range(F):
                self._state[i], b = agent.advance(self._scenes[i], self._state[i], chosen[i])
                states[i, f] = self._state[i]
                blocked[i] |= b
            self._trajectories[i].extend(s[:2] for s in states[i])
        frames = self._render_states(states)
        obs = {k: v[:, -1] for k, v in frames.items()}
        after = frames_state(obs, N)
        td, reward, terminated = self.hooks.step(self._td, ids, after)
        rows = torch.from_numpy(resets)
        self._td = start_state(td, rows, after[rows]) if len(resets) else td  # restarted worlds start afresh
        reward = np.where(self._autoreset, 0.0, reward.numpy().astype(np.float64))
        terminated = terminated.numpy() & ~self._autoreset

        self._steps = np.where(self._autoreset, 0, self._steps + 1)
        truncated = np.zeros(N, dtype=bool)
        if self.max_episode_steps is not None:
            truncated = (self._steps >= self.max_episode_steps) & ~self._autoreset
        info = {
            "frames": frames,
            "abs_pose": self._abs_pose(),
            "blocked": blocked,
            "sentence": np.array(["" if r else a.sentence for r, a in zip(self._autoreset, chosen)], dtype=object),
            "scene_seed": np.array([s.seed for s in self._scenes]),
        }
        self._autoreset = terminated | truncated
        return obs, reward, terminated, truncated, info

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode != "rgb_array" or self._last is None:
            return None
        rgb, depth = self._last
        return tuple(
            render_frame(s, np.stack(traj), state[2], rgb[i], depth[i])
            for i, (s, traj, state) in enumerate(zip(self._scenes, self._trajectories, self._state))
        )

    def _reset_one(self, i: int, scene_seed: int | None) -> None:
        self._scenes[i], self._state[i] = agent.start_episode(self._rngs[i], self.scene_config, scene_seed)
        self._start[i] = self._state[i]
        self._trajectories[i] = [self._state[i, :2].copy()]

    def _abs_pose(self) -> np.ndarray:
        return agent.camera_pose(self._state, self.scene_config.eye_height).astype(np.float32)

    def _render_states(self, states: np.ndarray) -> dict[str, np.ndarray]:
        """Frames of agent states (N, F, 4) in one ray-cast call: the observation keys, each (N, F, ...)."""
        N, F = states.shape[:2]
        c2w = torch.from_numpy(agent.camera_pose(states.reshape(N * F, 4), self.scene_config.eye_height)).float()
        K = self.K.expand(N * F, 3, 3)
        scenes = self._batch[torch.arange(N).repeat_interleave(F)]
        rgb, depth = render(scenes, c2w, K, self.height, self.width)
        rgb, depth = rgb.numpy().reshape(N, F, *rgb.shape[1:]), depth.numpy().reshape(N, F, *depth.shape[1:])
        self._last = (rgb[:, -1], depth[:, -1])
        return {
            "rgb": rgb,
            "depth": depth,
            "pose": agent.relative_pose(self._start[:, None], states).astype(np.float32),
            "intrinsics": K.numpy().reshape(N, F, 3, 3).copy(),
        }
