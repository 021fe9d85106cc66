"""``DeepVerseVectorEnv``: N learned worlds stepped together, one batched model call per step."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from deepverse_env.learned.world import LearnedWorld, load_model, make_config
from deepverse_env.sim.vector_env import check_vector_arguments, vector_seeds
from deepverse_env.spaces import action_id, action_space, check_images, observation_space
from world_model.model import DeepVerse


class DeepVerseVectorEnv(VectorEnv):
    """N independent ``DeepVerse-v0`` worlds with batched observations and infos.

    All N worlds live in one ``LearnedWorld`` (one ``Rollout`` of batch N), so a step is one batched
    model call (worlds at different window lengths after an autoreset are grouped by the rollout).
    With ``reset(seed=s)`` sub-env ``i`` starts as a single ``DeepVerseEnv`` reset with ``s + i`` (with
    the default starts: the simulator world of seed ``s + i``; ``seed`` may also be a list of N seeds);
    the sampler noise of all N comes from one generator seeded from sub-env 0's seed, so a vector of one
    world repeats the single env step for step, while in a larger batch each world draws different
    noise than it would alone.

    Autoreset follows Gymnasium's ``AutoresetMode.NEXT_STEP``: the step after a sub-env terminates or
    truncates restarts it from the next start of its loader (the default: its simulator's next world),
    ignores its action and returns its first observation with reward 0; its ``info["frames"]`` then
    holds that frame repeated and ``sentence`` is "". ``reset(options={"image": ...})`` starts every
    world from an image ((H, W, 3) for all, or (N, H, W, 3)); restarts still come from the loader.

    Observations are the single env's dict (no ``depth`` for a model without it) batched along a first dim
    of N; ``info`` holds ``frames`` (each key (N, F, ...)), ``sentence`` (N,) strings, ``scale`` (N,) and
    ``scene_seed`` (N,). Arguments
    are those of ``DeepVerseEnv`` plus ``num_envs`` and ``max_episode_steps`` (truncation, None for never).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        checkpoint: str | Path | DeepVerse | None = None,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        **config,
    ):
        check_vector_arguments(num_envs, max_episode_steps)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.config = make_config(config)
        self.num_envs = int(num_envs)
        self.world = LearnedWorld(load_model(checkpoint, self.config.device), self.num_envs, self.config)
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.actions = self.world.actions
        self.height, self.width, self.frames_per_step = self.world.H, self.world.W, self.world.F
        self.single_action_space = action_space(self.actions, self.config.text_actions)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = observation_space(self.height, self.width, "depth" in self.world.keys)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._rngs: list[np.random.Generator] | None = None
        self._steps = np.zeros(self.num_envs, dtype=np.int64)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        N = self.num_envs
        seeds = vector_seeds(seed, N)
        images = check_images(options, self.height, self.width, N)
        if seeds is not None or self._rngs is None:
            self._rngs = [seeding.np_random(s)[0] for s in (seeds or [None] * N)]
            self.world.generator.manual_seed(int(self._rngs[0].integers(2**63)))
        self.world.start(np.ones(N, dtype=bool), images, seeds)
        self._steps[:] = 0
        self._autoreset[:] = False
        info = {"scale": self.world.rollout.scale.cpu().numpy().copy(), "scene_seed": self.world.scene_seeds.copy()}
        return self.world.observation(), info

    def step(self, actions):
        if self.world.td is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        N, F = self.num_envs, self.frames_per_step
        if np.shape(actions) != (N,):
            raise ValueError(f"actions must hold {N} actions, got {actions!r}")
        ids = np.array([action_id(a, self.actions, self.config.text_actions) for a in actions], dtype=np.int64)
        restart = self._autoreset.copy()
        reward, terminated, frames, blocked = np.zeros(N), np.zeros(N, dtype=bool), None, np.zeros(N, dtype=bool)
        if not restart.all():  # restarting worlds ride along and are restarted after the step
            chunk, r, t = self.world.step(ids)
            frames = {k: chunk[k].cpu().numpy().copy() for k in self.world.keys}  # restarted rows are overwritten
            reward = np.where(restart, 0.0, r.cpu().numpy().astype(np.float64))
            terminated = t.cpu().numpy() & ~restart
            if "blocked" in chunk.keys():  # the motion model's verdict on each world's move
                blocked = chunk["blocked"].any(dim=1).cpu().numpy() & ~restart
        if restart.any():
            self.world.start(restart)
        obs = self.world.observation()
        if frames is None:
            frames = {k: np.repeat(v[:, None], F, axis=1) for k, v in obs.items()}
        else:
            for k in self.world.keys:
                frames[k][restart] = obs[k][restart, None]
        self._steps = np.where(restart, 0, self._steps + 1)
        truncated = np.zeros(N, dtype=bool)
        if self.max_episode_steps is not None:
            truncated = (self._steps >= self.max_episode_steps) & ~restart
        info = {
            "frames": frames,
            "sentence": np.array(["" if r else said for r, said in zip(restart, self.world.rollout.sentences or [""] * N)],
                                 dtype=object),
            "scale": self.world.rollout.scale.cpu().numpy().copy(),
            "scene_seed": self.world.scene_seeds.copy(),
        }
        if self.world.rollout.camera == "motion":  # the motion model's verdict on each world's move
            info["blocked"] = blocked
        self._autoreset = terminated | truncated
        return obs, reward, terminated, truncated, info

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode != "rgb_array" or self.world.td is None:
            return None
        return tuple(self.world.panel(i) for i in range(self.num_envs))
