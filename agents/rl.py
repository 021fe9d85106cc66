"""Reinforcement learning on tasks: stable-baselines3 PPO trained in the learned world or in the simulator,
judged in the simulator.

``TaskVecEnv`` is an SB3 ``VecEnv`` of N task episodes in one world:

- ``world="learned"``: N ``DeepVerse-v0`` worlds in one ``LearnedWorld`` (one batched model call per
  step); each episode starts from the simulator frame of its task seed and its goal is drawn there, then
  the world rolls on from its own predictions: the policy sees the goal relative to the *predicted*
  camera and is rewarded by the task's hooks on predicted frames (``PerWorldHooks``: a goal per world);
- ``world="sim"``: N ``DeepVerseSim-v0`` envs, the true world, with the same hooks.

Episodes draw task seeds from ``TASK_SEEDS[split]`` with the env's seed (train: never the evaluation
seeds), end at the task's termination hook or after ``task.max_steps`` steps (truncation), and restart at
once (SB3's autoreset: ``terminal_observation`` in the info). What the policy sees is
``policy_observation``: the task's goal keys (``PointGoal``: ``goal`` = distance, sin and cos of the
bearing) and, with ``keys`` holding ``"rgbd"``, the frame as ``SB3Observation`` gives it.

``train_ppo`` trains SB3's PPO with checkpoints (resumable: a second call with the same ``out`` goes on
from the last checkpoint) and a progress bar; ``run_policy`` plays a trained policy in the simulator on
one task seed, as ``agents.planners.run_mpc`` plays a planner.
"""
from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.vec_env import VecEnv

from agents.planners import EpisodeResult
from agents.tasks import TASK_SEEDS, Task, check_positive_int, make_task
from deepverse_env.learned.world import LearnedWorld, load_model, make_config
from deepverse_env.rewards import PerWorldHooks
from deepverse_env.sim.env import DeepVerseSimEnv
from deepverse_env.wrappers import rgbd

WORLDS = ("learned", "sim")
FRAME_OBSERVATIONS = ("rgbd",)  # keys a policy may see beside the task's goal keys


def observation_keys(task: Task, keys, height: int, width: int) -> dict[str, spaces.Space]:
    """The spaces of what a policy sees: the task's goal keys (always) and ``keys`` of
    ``FRAME_OBSERVATIONS``; ValueError naming an unknown key."""
    keys = list(keys or ())
    unknown = [k for k in keys if k not in FRAME_OBSERVATIONS]
    if unknown:
        raise ValueError(f"unknown policy observation keys {unknown}; expected some of {list(FRAME_OBSERVATIONS)}")
    out = dict(task.goal_space(height, width))
    if "rgbd" in keys:
        out["rgbd"] = spaces.Box(0, 255, (height, width, 4), np.uint8)
    return out


def policy_observation(task: Task, frame: dict[str, np.ndarray], keys) -> dict[str, np.ndarray]:
    """What a policy sees of ``frame`` (the observation dict of either env) for ``task``: the goal as the
    frame's camera sees it, plus the frame keys in ``keys``."""
    out = task.goal_observation(frame["pose"])
    if "rgbd" in keys:
        out["rgbd"] = rgbd(frame["rgb"], frame["depth"])
    return out


def draw_episode(task: Task, sim: DeepVerseSimEnv, rng: np.random.Generator, split: str = "train") -> tuple[int, dict]:
    """Start a task episode on a random seed of ``split`` in ``sim`` (seeds where the task cannot draw a
    goal, e.g. no object in range, are skipped). Returns the seed and the simulator's first observation."""
    seeds = TASK_SEEDS[split]
    for _ in range(100):
        seed = seeds[int(rng.integers(len(seeds)))]
        try:
            obs, _ = task.reset(sim, seed)
        except RuntimeError:  # no goal could be drawn in this world
            continue
        return seed, obs
    raise RuntimeError(f"{task.name}: no goal could be drawn on 100 random {split} seeds")


class TaskVecEnv(VecEnv):
    """N episodes of a task in the learned world or the simulator, as a stable-baselines3 ``VecEnv``.

    Args:
        task: a task spec (``agents.tasks.make_task``); each of the N worlds gets its own copy.
        world: ``"learned"`` (``DeepVerse-v0``'s batched world) or ``"sim"`` (``DeepVerseSim-v0``).
        num_envs: N.
        seed: of the task seeds drawn and of the learned world's sampler noise.
        keys: frame keys the policy sees beside the goal (``FRAME_OBSERVATIONS``).
        split: the ``TASK_SEEDS`` split episodes come from.
        checkpoint: the learned world's model (None: the shipped one).
        **config: ``DeepVerse-v0`` arguments for the learned world (e.g. ``render_cache=False``,
            ``sampler={"steps": 2}``); the simulator takes none.
    """

    def __init__(
        self, task, world: str = "learned", num_envs: int = 8, seed: int = 0, keys=(), split: str = "train",
        checkpoint=None, **config,
    ):
        if world not in WORLDS:
            raise ValueError(f"world must be one of {WORLDS}, got {world!r}")
        if split not in TASK_SEEDS:
            raise ValueError(f"unknown task seed split {split!r}; expected one of {sorted(TASK_SEEDS)}")
        if world == "sim" and (config or checkpoint is not None):
            raise ValueError(f"the simulator takes no model arguments, got checkpoint={checkpoint!r}, {sorted(config)}")
        N = check_positive_int(num_envs, "num_envs")
        self.world_name, self.split, self.keys = world, split, tuple(keys)
        self.tasks = [copy.deepcopy(make_task(task)) for _ in range(N)]  # a goal per world
        self.rng = np.random.default_rng(seed)
        if world == "learned":
            self.world = LearnedWorld(load_model(checkpoint, make_config(config).device), N, make_config(config))
            self.world.generator.manual_seed(int(self.rng.integers(2**63)))
            H, W = self.world.H, self.world.W
            self.drawer = DeepVerseSimEnv(height=H, width=W, fov_deg=self.world.config.fov_deg)
            self.actions = self.world.actions
        else:
            self.sims = [DeepVerseSimEnv() for _ in range(N)]
            H, W = self.sims[0].height, self.sims[0].width
            self.actions = self.sims[0].actions
        self.height, self.width = H, W
        self.render_mode = None  # read by VecEnv.__init__
        observation_space = spaces.Dict(observation_keys(self.tasks[0], self.keys, H, W))
        super().__init__(N, observation_space, spaces.Discrete(len(self.actions)))
        self.steps = np.zeros(N, dtype=np.int64)
        self.episode_seeds = np.full(N, -1, dtype=np.int64)
        self._frames: list[dict] = [{} for _ in range(N)]
        self._actions: np.ndarray | None = None

    # ---- episodes ------------------------------------------------------------------------------

    def _start(self, rows: np.ndarray) -> None:
        """Start new episodes in worlds ``rows``."""
        if self.world_name == "sim":
            for i in rows:
                self.episode_seeds[i], self._frames[i] = draw_episode(self.tasks[i], self.sims[i], self.rng, self.split)
        else:
            for i in rows:
                self.episode_seeds[i], _ = draw_episode(self.tasks[i], self.drawer, self.rng, self.split)
            mask = np.zeros(self.num_envs, dtype=bool)
            mask[rows] = True
            self.world.start(mask, seeds=[int(s) for s in self.episode_seeds])
            if not isinstance(self.world.hooks, PerWorldHooks):
                self.world.hooks = PerWorldHooks([t.hooks() for t in self.tasks])
            for i in rows:
                self.world.hooks.worlds[i] = self.tasks[i].hooks()
            frames = self.world.observation()
            for i in rows:
                self._frames[i] = {k: v[i] for k, v in frames.items()}
        self.steps[rows] = 0

    def _observe(self, i: int) -> dict[str, np.ndarray]:
        return policy_observation(self.tasks[i], self._frames[i], self.keys)

    def _stack(self, observations: list[dict]) -> dict[str, np.ndarray]:
        return {k: np.stack([o[k] for o in observations]) for k in self.observation_space.spaces}

    # ---- VecEnv ----------------------------------------------------------------------------------

    def reset(self):
        if self._seeds[0] is not None:  # VecEnv.seed(s) before reset: a new stream of task seeds
            self.rng = np.random.default_rng(self._seeds[0])
            if self.world_name == "learned":
                self.world.generator.manual_seed(int(self.rng.integers(2**63)))
            self._reset_seeds()
        self._start(np.arange(self.num_envs))
        return self._stack([self._observe(i) for i in range(self.num_envs)])

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions).reshape(-1)
        if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"actions must be {self.num_envs} integer action ids, got {actions!r}")
        if actions.min() < 0 or actions.max() >= len(self.actions):
            raise ValueError(f"actions must be ids in 0..{len(self.actions) - 1}, got {actions.tolist()}")
        self._actions = actions.astype(np.int64)

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("step_async() must come before step_wait()")
        N, ids = self.num_envs, self._actions
        self._actions = None
        if self.world_name == "sim":
            rewards, terminated = np.zeros(N, dtype=np.float32), np.zeros(N, dtype=bool)
            for i in range(N):
                self._frames[i], rewards[i], terminated[i], _, _ = self.sims[i].step(int(ids[i]))
        else:
            _, r, t = self.world.step(ids)
            rewards, terminated = r.cpu().numpy().astype(np.float32), t.cpu().numpy().astype(bool)
            frames = self.world.observation()
            broken = ~np.isfinite(frames["pose"]).all((1, 2)) | ~np.isfinite(rewards)
            if broken.any():  # never hand a policy NaN: name the worlds and their episodes
                raise RuntimeError(
                    f"the learned world produced a non-finite pose or reward in worlds {np.flatnonzero(broken).tolist()} "
                    f"(task seeds {self.episode_seeds[broken].tolist()}, steps {self.steps[broken].tolist()})"
                )
            self._frames = [{k: v[i] for k, v in frames.items()} for i in range(N)]
        self.steps += 1
        truncated = ~terminated & (self.steps >= np.array([t.max_steps for t in self.tasks]))
        done = terminated | truncated
        infos: list[dict[str, Any]] = [{"TimeLimit.truncated": bool(truncated[i])} for i in range(N)]
        observations = [self._observe(i) for i in range(N)]
        for i in np.flatnonzero(done):
            infos[i]["terminal_observation"] = observations[i]
            infos[i]["episode_seed"] = int(self.episode_seeds[i])
        if done.any():
            self._start(np.flatnonzero(done))
            for i in np.flatnonzero(done):
                observations[i] = self._observe(i)
        return self._stack(observations), rewards, done, infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        raise AttributeError(f"TaskVecEnv has no per-env attributes to set ({attr_name!r})")

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        raise AttributeError(f"TaskVecEnv has no per-env methods to call ({method_name!r})")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]


# ---- training ------------------------------------------------------------------------------------

CHECKPOINT = re.compile(r"ppo_(\d+)_steps\.zip$")


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint of ``out/checkpoints`` with the most steps, None when there is none."""
    found = [(int(m.group(1)), p) for p in (out / "checkpoints").glob("ppo_*_steps.zip") if (m := CHECKPOINT.search(p.name))]
    return max(found)[1] if found else None


class RecordedCheckpoints(CheckpointCallback):
    """SB3's ``CheckpointCallback`` (``ppo_<steps>_steps.zip``) that also keeps ``train.json`` current with each
    save: the settings, the steps done and the wall time of every session so far (a killed run keeps its)."""

    def __init__(self, record: Path, settings: dict, previous_wall: float, save_freq: int, path: str):
        super().__init__(save_freq, path, name_prefix="ppo")
        self.record, self.settings, self.previous_wall = record, settings, previous_wall
        self.started = time.perf_counter()

    def write(self, steps_done: int) -> None:
        wall = self.previous_wall + time.perf_counter() - self.started
        self.record.write_text(json.dumps({
            "settings": self.settings, "steps_done": int(steps_done), "wall_s": round(wall, 1),
            "torch_threads": torch.get_num_threads(),
        }, indent=2))

    def _on_step(self) -> bool:
        keep_going = super()._on_step()
        if self.n_calls % self.save_freq == 0:
            self.write(self.num_timesteps)
        return keep_going


def train_ppo(
    task, world: str, steps: int, out: str | Path, num_envs: int = 8, seed: int = 0, keys=(), save_every: int = 2048,
    progress_bar: bool = True, ppo: dict | None = None, checkpoint=None, **config,
) -> Path:
    """Train SB3 PPO on ``task`` in ``world`` for ``steps`` env steps in all; resumable.

    Writes ``out/checkpoints/ppo_<steps>_steps.zip`` every ``save_every`` steps (SB3's
    ``CheckpointCallback``), ``out/ppo.zip`` at the end and ``out/train.json`` (the arguments, steps done,
    wall time over every session, updated with each checkpoint). A call whose ``out`` holds checkpoints
    loads the latest and trains the remaining steps (``reset_num_timesteps=False``: the same step count,
    schedule and logs); one that finds ``ppo.zip`` with ``steps`` done returns at once.

    Args:
        task, world, num_envs, seed, keys, checkpoint, **config: ``TaskVecEnv``'s.
        steps: env steps in all (over the N envs).  out: the run's folder.
        ppo: arguments of ``stable_baselines3.PPO`` (default ``n_steps`` 64 per env, ``batch_size`` 256).
    Returns:
        the path of the final policy (``out/ppo.zip``).
    """
    steps = check_positive_int(steps, "steps")
    save_every = check_positive_int(save_every, "save_every")
    out = Path(out)
    settings = dict(task=task.name if isinstance(task, Task) else task, world=world, steps=steps, num_envs=num_envs, seed=seed, keys=list(keys),
                    ppo=ppo or {}, checkpoint=None if checkpoint is None else str(checkpoint), config=config)
    record = out / "train.json"
    previous_wall = 0.0
    if record.exists():
        done = json.loads(record.read_text())
        if {k: done["settings"].get(k) for k in settings if k != "steps"} != {k: v for k, v in settings.items() if k != "steps"}:
            raise ValueError(f"{out} holds a run with other settings ({done['settings']}); use another --out")
        if done.get("steps_done", 0) >= steps and (out / "ppo.zip").exists():
            return out / "ppo.zip"
        previous_wall = float(done.get("wall_s", 0.0))
    venv = TaskVecEnv(task, world, num_envs, seed, keys, checkpoint=checkpoint, **config)
    venv.seed(seed)
    resume = latest_checkpoint(out)
    arguments = {"n_steps": 64, "batch_size": 256, "n_epochs": 4, "gamma": 0.95, "ent_coef": 0.01, **(ppo or {})}
    if resume is not None:
        model = PPO.load(resume, env=venv, device="cpu")
    else:
        model = PPO("MultiInputPolicy", venv, seed=seed, device="cpu", verbose=0, **arguments)
    out.mkdir(parents=True, exist_ok=True)
    saver = RecordedCheckpoints(record, settings, previous_wall, max(1, save_every // num_envs), str(out / "checkpoints"))
    saver.write(model.num_timesteps)
    if steps > model.num_timesteps:
        model.learn(steps - model.num_timesteps, callback=saver, progress_bar=progress_bar, reset_num_timesteps=resume is None)
    model.save(out / "ppo.zip")
    saver.write(model.num_timesteps)
    return out / "ppo.zip"


def run_policy(task: Task, policy, sim, seed: int, keys=(), deterministic: bool = True) -> EpisodeResult:
    """Play the task's episode ``seed`` in the simulator with an SB3 policy (``policy.predict``) that sees
    ``policy_observation``; the same episode and judgement as ``agents.planners.run_mpc``."""
    obs, _ = task.reset(sim, seed)
    total, actions, success = 0.0, [], task.success(obs["pose"])
    for _ in range(task.max_steps):
        if success:
            break
        action, _ = policy.predict(policy_observation(task, obs, keys), deterministic=deterministic)
        obs, reward, terminated, truncated, _ = sim.step(int(action))
        total += reward
        actions.append(int(action))
        success = task.success(obs["pose"])
        if terminated or truncated:
            break
    return EpisodeResult(int(seed), success, len(actions), total, task.distance(obs["pose"]), actions)
