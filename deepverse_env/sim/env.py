"""``DeepVerseSim-v0``: the ground-truth world as a Gymnasium env (DESIGN §3, §4)."""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from deepverse_env.actions import ActionSet, get_action_set
from deepverse_env.render import draw_topdown, panel
from deepverse_env.rewards import Hooks
from deepverse_env.sim import agent
from deepverse_env.sim.raycast import SceneBatch, render
from deepverse_env.sim.world import WALL, Scene, SceneConfig
from deepverse_env.spaces import action_space, check_action, check_action_sequences, observation_space
from world_model.geometry import default_intrinsics


def check_arguments(action_set, frames_per_step, height, width, fov_deg, render_mode, render_modes) -> ActionSet:
    """Validate the constructor arguments shared by the single and the vector env; returns the action set."""
    actions = get_action_set(action_set)  # ValueError naming an unknown set
    for name, value in (("frames_per_step", frames_per_step), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(fov_deg, (int, float, np.floating, np.integer)) or not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg!r}")
    if render_mode is not None and render_mode not in render_modes:
        raise ValueError(f"render_mode must be None or one of {render_modes}, got {render_mode!r}")
    return actions


RESET_OPTIONS = ("scene_seed",)  # what reset(options=...) of DeepVerseSim-v0 (and its vector env) knows


def check_reset_options(options, env: str = "DeepVerseSim-v0") -> dict[str, Any]:
    """``options`` of ``reset`` as a dict (None: {}); ValueError naming unknown keys and the known ones."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"reset options must be a dict or None, got {options!r}")
    unknown = [k for k in options if k not in RESET_OPTIONS]
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown} for {env}; the known options are {list(RESET_OPTIONS)}")
    return options


def check_scene_seed(value, what: str = "options['scene_seed']") -> int | None:
    """A world seed: None (drawn from the env's stream) or an integer in [0, 2**63); ValueError naming it."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**63:
        raise ValueError(f"{what} must be None or a non-negative integer (a world seed below 2**63), got {value!r}")
    return int(value)


def dry_run_frames(height: int, width: int, K: torch.Tensor) -> TensorDict:
    """(1,) a frame of the observation keys (black, 1 m deep, identity pose) on which envs dry-run their hooks."""
    return TensorDict(
        {
            "rgb": torch.zeros(1, height, width, 3, dtype=torch.uint8),
            "depth": torch.ones(1, height, width, 1),
            "pose": torch.eye(4)[None],
            "intrinsics": K.reshape(1, 3, 3).float(),
        },
        batch_size=[1],
    )


def check_hooks(
    hooks, actions: ActionSet, height: int, width: int, K: torch.Tensor, env: str, batch: int | None = None
) -> Hooks:
    """``hooks`` as installed in a simulator env: ValueError unless it is a ``Hooks`` that scores the env's
    action set and frames (``Hooks.check``: a dry-run transition per action id, ``batch`` at a time)."""
    if not isinstance(hooks, Hooks):
        raise ValueError(f"hooks must be a deepverse_env.rewards.Hooks, got {hooks!r}")
    hooks.check(dry_run_frames(height, width, K), len(actions), env, batch)
    return hooks


def frames_state(frames: dict[str, np.ndarray], batch: int) -> TensorDict:
    """Observation arrays, each (batch, ...), as a TensorDict the hooks score (copies: callers keep theirs)."""
    return TensorDict({k: torch.from_numpy(v.copy()) for k, v in frames.items()}, batch_size=[batch])


def render_frame(scene: Scene, trajectory: np.ndarray, heading: float, rgb: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """RGB | depth colour map | floor plan with the trajectory, upscaled to at least 256 pixels high.

    Args:
        trajectory: (T, 2) camera positions (x, z) so far, absolute.  heading: yaw of the last camera.
        rgb: (H, W, 3) uint8.  depth: (H, W, 1) metres.
    Returns:
        (H', W', 3) uint8.
    """
    (x0, _, z0), (x1, _, z1) = scene.bounds
    w = 0.15  # the enclosure, drawn as walls this thick around it
    outer = np.array([[x0 - w, z0 - w, x1 + w, z0], [x0 - w, z1, x1 + w, z1 + w], [x0 - w, z0, x0, z1], [x1, z0, x1 + w, z1]])
    solid = scene.boxes[:, 4] > -scene.agent_height  # what blocks the agent: walls and objects, not lintels
    mat = scene.box_material[solid]
    mean = scene.textures.reshape(len(scene.textures), -1, 3).mean(1)  # (NM, 3) mean colour of each material
    grey = np.full((1, 3), 60.0)
    return panel(
        rgb,
        depth,
        lambda size: draw_topdown(
            size,
            (x0 - w, x1 + w, z0 - w, z1 + w),
            rects=np.concatenate([outer, scene.boxes[solid][:, [0, 2, 3, 5]]]),
            rect_colours=np.concatenate([grey.repeat(4, 0), np.where((mat == WALL)[:, None], grey, mean[mat])]),
            circles=np.concatenate([scene.cylinders[:, [0, 1, 2]], scene.spheres[:, [0, 2, 3]]]),
            circle_colours=mean[np.concatenate([scene.cylinder_material, scene.sphere_material])],
            trajectory=trajectory,
            heading=heading,
        ),
    )


class DeepVerseSimEnv(gym.Env):
    """
    ## Description

    The ground-truth world of DeepVerse: procedurally generated indoor scenes (a grid of rooms and
    corridors joined by doorways, with boxes, pillars and spheres, textured and Lambert-shaded),
    ray-cast in torch with exact RGB, z-depth, camera pose and intrinsics. A camera walks through
    it; one step is one action held for a chunk of ``frames_per_step`` frames (the world model's
    temporal chunk). Worlds are deterministic per seed, and the agent collides with walls and objects.

    ## Action Space

    ``Discrete(len(action_set))`` over a named set of ``deepverse_env.actions``: each action is a
    per-frame camera motion (translation in the body frame, yaw about the vertical, pitch) and a
    sentence. ``basic`` (9): stay, forward, backward, strafe left/right, turn left/right, look up/down;
    ``deepverse`` (27): 9 translations x 3 rotations; ``full`` (81): x 3 pitches.
    Motion per frame: 0.08 m, 3 degrees of yaw, 2.5 degrees of pitch (clamped to +-30 degrees). A move
    that would collide is not applied (no sliding); turning still happens.

    ## Observation Space

    A ``Dict`` (DESIGN §3), the chunk's last frame:

    | key          | shape     | dtype   | meaning                                                    |
    |--------------|-----------|---------|------------------------------------------------------------|
    | `rgb`        | (H, W, 3) | uint8   | colour image                                               |
    | `depth`      | (H, W, 1) | float32 | z-depth in metres, > 0 and finite everywhere (closed rooms)|
    | `pose`       | (4, 4)    | float32 | camera-to-world, OpenCV axes, relative to the first camera |
    | `intrinsics` | (3, 3)    | float32 | pinhole K in pixels, pixel centres at integers             |

    The episode's world frame is the camera frame of its first observation, so ``reset`` returns the
    identity pose (and y points down along gravity, as the first camera is level).

    ``info`` of ``step``: ``frames`` (dict of the chunk's ``rgb`` (F, H, W, 3), ``depth`` (F, H, W, 1),
    ``pose`` (F, 4, 4), ``intrinsics`` (F, 3, 3)), ``abs_pose`` (4, 4) in the scene's own frame,
    ``blocked`` (any frame's move was blocked), ``sentence`` (the action's sentence), ``scene_seed``.
    ``info`` of ``reset``: ``abs_pose`` and ``scene_seed``.

    ## Rewards

    From the ``reward`` hook, exactly as in ``DeepVerse-v0`` (``deepverse_env.rewards``: a name, a dict
    with arguments and ``weight``, a list of those summed, or any callable ``TensorDict (B,) -> (B,)``),
    through the same ``Hooks`` code path, so a task means the same in the true and the learned world; 0.0
    without one. A hook sees the state before (observation keys), ``action`` and ``("next", ...)`` the
    state after; the entries it writes under ``next`` are carried to the next step and dropped at reset.
    ``hooks`` may be replaced between episodes (``agents.tasks`` installs a goal per episode). Hooks are
    checked when installed (in ``gym.make`` and on assignment): one dry-run transition per action id is
    scored, so a hook that does not fit the env (e.g. an ``action_cost`` table of the wrong length) is a
    ValueError then, not mid-episode.

    ## Starting State

    A new world per reset (its seed drawn from ``np_random``, or ``options={"scene_seed": k}``, k >= 0), the
    camera at a free spot of a random room, 1.5 m above the floor, random heading, level. ``scene_seed`` is
    the only option; others are a ValueError.

    ## Episode End

    Terminates when the ``termination`` hook says so (``"goal_reached"``, ``"collided"``, a list: any;
    without one, never); truncation after ``max_episode_steps`` (500 as registered) by the TimeLimit wrapper.

    ## Arguments

    ```python
    >>> import gymnasium as gym
    >>> import deepverse_env
    >>> env = gym.make("DeepVerseSim-v0", action_set="deepverse", height=32, width=32)
    >>> obs, info = env.reset(seed=0)
    >>> obs["rgb"].shape, obs["depth"].shape
    ((32, 32, 3), (32, 32, 1))

    ```

    | argument          | default   | meaning                                                  |
    |-------------------|-----------|----------------------------------------------------------|
    | `action_set`      | "basic"   | "basic", "deepverse", "full" or an ``ActionSet``         |
    | `frames_per_step` | 4         | frames per step (the chunk), >= 1                        |
    | `height`, `width` | 64, 64    | image size in pixels                                     |
    | `fov_deg`         | 75.0      | horizontal field of view, in (0, 180)                    |
    | `render_mode`     | None      | "rgb_array": RGB, depth colour map and top-down map      |
    | `scene_config`    | None      | ``SceneConfig`` of the worlds (default: its defaults)    |
    | `reward`          | None      | reward hook spec, as ``DeepVerse-v0``'s                  |
    | `termination`     | None      | termination hook spec, as ``DeepVerse-v0``'s             |

    Planning: ``imagine(action_sequences)`` is ``DeepVerse-v0``'s planner API on the true world: it rolls
    (N, L) candidate sequences from the current state with exact frames and hook rewards, and leaves
    the env as it was. A planner given the simulator as its model is the oracle that separates planner
    quality from model quality (``agents.planners``).

    ## Vectorized environment

    ``gym.make_vec("DeepVerseSim-v0", num_envs=N, vectorization_mode="vector_entry_point")`` gives
    ``DeepVerseSimVectorEnv``: N worlds rendered by one ray-cast call per step, next-step autoreset.

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        action_set: str | ActionSet = "basic",
        frames_per_step: int = 4,
        height: int = 64,
        width: int = 64,
        fov_deg: float = 75.0,
        render_mode: str | None = None,
        scene_config: SceneConfig | None = None,
        reward=None,
        termination=None,
    ):
        self.actions = check_arguments(
            action_set, frames_per_step, height, width, fov_deg, render_mode, self.metadata["render_modes"]
        )
        self.frames_per_step, self.height, self.width = int(frames_per_step), int(height), int(width)
        self.render_mode = render_mode
        self.scene_config = scene_config or SceneConfig()
        self.K = default_intrinsics(self.height, self.width, float(fov_deg))  # (3, 3) torch float32
        self.action_space = action_space(self.actions)
        self.observation_space = observation_space(self.height, self.width)
        self.scene: Scene | None = None
        self._batch: SceneBatch | None = None
        self._start = self._state = None  # (4,) agent states: first camera, current camera
        self._trajectory: list[np.ndarray] = []  # (x, z) per frame, for the top-down map
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # rgb, depth of the latest frame
        self.hooks = Hooks(reward, termination)
        self._td: TensorDict | None = None  # (1,) the current frame and the hooks' state entries

    @property
    def hooks(self) -> Hooks:
        """The reward and termination hooks (``deepverse_env.rewards.Hooks``); a task may replace them.
        Assigning checks them (a dry-run transition per action id): ValueError if they do not fit."""
        return self._hooks

    @hooks.setter
    def hooks(self, hooks: Hooks) -> None:
        self._hooks = check_hooks(hooks, self.actions, self.height, self.width, self.K, "DeepVerseSim-v0")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        scene_seed = check_scene_seed(check_reset_options(options).get("scene_seed"))  # before anything changes
        super().reset(seed=seed)
        self.scene, self._state = agent.start_episode(self.np_random, self.scene_config, scene_seed)
        self._batch = SceneBatch.stack([self.scene])
        self._start = self._state.copy()
        self._trajectory = [self._state[:2].copy()]
        frames = self._render_states(self._state[None])
        obs = {k: v[-1] for k, v in frames.items()}
        self._td = frames_state(frames, 1)
        return obs, {"abs_pose": self._abs_pose(self._state), "scene_seed": self.scene.seed}

    def step(self, action):
        if self._state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        i = check_action(action, len(self.actions))
        a = self.actions[i]
        states, blocked = self._chunk(self._state, a)  # (F, 4)
        self._state = states[-1]
        self._trajectory.extend(s[:2] for s in states)
        frames = self._render_states(states)
        obs = {k: v[-1] for k, v in frames.items()}
        after = frames_state({k: v[-1:] for k, v in frames.items()}, 1)  # (1,) the chunk's last frame
        self._td, reward, terminated = self.hooks.step(self._td, [i], after)
        info = {
            "frames": frames,
            "abs_pose": self._abs_pose(self._state),
            "blocked": blocked,
            "sentence": a.sentence,
            "scene_seed": self.scene.seed,
        }
        return obs, float(reward[0]), bool(terminated[0]), False, info

    def imagine(self, action_sequences, seed: int | None = None, pixels: bool = True) -> TensorDict:
        """Roll N candidate action sequences from the current state in the true world: ``DeepVerse-v0``'s
        ``imagine`` with exact frames (a planner's oracle model).

        Args:
            action_sequences: (N, L) integer action ids.
            seed: not used (the simulator is deterministic); there for the planner interface.
            pixels: False skips the ray-cast: ``pose``, ``intrinsics`` and ``blocked`` alone (``DeepVerse-v0``'s
                pose-only imagination).
        Returns:
            TensorDict (N, L): ``rgb``, ``depth``, ``pose``, ``intrinsics`` after each step, ``action``,
            ``reward`` and ``terminated`` from the hooks. The env itself is left as it was.
        """
        if self._state is None:
            raise gym.error.ResetNeeded("call reset() before imagine()")
        a = check_action_sequences(action_sequences, len(self.actions))
        if not isinstance(pixels, (bool, np.bool_)):
            raise ValueError(f"pixels must be True or False, got {pixels!r}")
        N, L = a.shape
        states = np.empty((N, L, 4))  # the agent state after each step of each sequence
        blocked = np.zeros((N, L), dtype=bool)
        for n in range(N):
            state = self._state
            for t in range(L):
                chunk, blocked[n, t] = self._chunk(state, self.actions[a[n, t]])
                state = states[n, t] = chunk[-1]
        if not pixels:
            pose = torch.from_numpy(agent.relative_pose(self._start, states).astype(np.float32))  # (N, L, 4, 4)
            K = self.K.expand(N, L, 3, 3)
            frames = TensorDict({"pose": pose, "intrinsics": K, "blocked": torch.from_numpy(blocked)}, [N, L])
            kept = self._td.select(*(k for k in self._td.keys() if k not in ("rgb", "depth")))  # no pixel copies
            return self.hooks.rollout(kept.expand(N).clone(), torch.from_numpy(a).long(), frames)
        frames = frames_state(self._frames(states.reshape(N * L, 4)), N * L).reshape(N, L)  # one ray-cast call
        return self.hooks.rollout(self._td.expand(N).clone(), torch.from_numpy(a).long(), frames)

    def render(self):
        if self.render_mode != "rgb_array" or self._last is None:
            return None
        return render_frame(self.scene, np.stack(self._trajectory), self._state[2], *self._last)

    def _abs_pose(self, state: np.ndarray) -> np.ndarray:
        return agent.camera_pose(state, self.scene.eye_height).astype(np.float32)

    def _chunk(self, state: np.ndarray, action) -> tuple[np.ndarray, bool]:
        """The agent states (F, 4) of one action held for a chunk from ``state``, and whether a move was blocked."""
        states, blocked = [], False
        for _ in range(self.frames_per_step):
            state, b = agent.advance(self.scene, state, action)
            states.append(state)
            blocked |= b
        return np.stack(states), blocked

    def _render_states(self, states: np.ndarray) -> dict[str, np.ndarray]:
        """Frames of the agent states (F, 4) of a step, the last one kept for ``render``."""
        frames = self._frames(states)
        self._last = (frames["rgb"][-1], frames["depth"][-1])
        return frames

    def _frames(self, states: np.ndarray) -> dict[str, np.ndarray]:
        """Frames of agent states (F, 4) in one ray-cast call: the observation keys, each (F, ...)."""
        F = len(states)
        c2w = torch.from_numpy(agent.camera_pose(states, self.scene.eye_height)).float()
        K = self.K.expand(F, 3, 3)
        rgb, depth = render(self._batch[torch.zeros(F, dtype=torch.int64)], c2w, K, self.height, self.width)
        return {
            "rgb": rgb.numpy(),
            "depth": depth.numpy(),
            "pose": agent.relative_pose(self._start, states).astype(np.float32),
            "intrinsics": K.numpy().copy(),
        }
