"""``DeepVerse-v0``: one learned world behind Gymnasium's single-env API (DESIGN §3, §4)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tensordict import TensorDict

from deepverse_env.export import write_ply
from deepverse_env.learned.world import LearnedWorld, WorldState, load_model, make_config
from deepverse_env.render import HumanWindow
from deepverse_env.learned.starts import START_KEYS
from deepverse_env.rewards import Hooks
from deepverse_env.spaces import (
    action_id, action_space, check_action_sequences, check_images, check_seed, observation_space,
)
from world_model.model import DeepVerse


class DeepVerseEnv(gym.Env):
    """
    ## Description

    The learned world of DeepVerse: the world model (``world_model.model.DeepVerse``) rolls the world
    forward one temporal chunk per step from its own predictions of RGB, depth and camera, with its
    sliding window and geometric memory (the paper's Algorithm 1). Discrete actions become the action
    set's sentences, the text control the model was trained on. Observations are the model's *own*
    predictions, not the simulator's. Spaces and step are those of ``DeepVerseSim-v0``, so an agent
    moves between the real and the imagined world without change.

    ## Action Space

    ``Discrete(len(action_set))`` (``basic``: 9, ``deepverse``: 27, ``full``: 81); action ``a`` is sent
    to the model as ``action_set[a].sentence``. With ``text_actions=True`` the space is ``Sentences``, a
    ``gymnasium.spaces.Text`` holding exactly the 81 sentences of ``world_model.text.SENTENCES``; any
    other string is a ValueError.

    ## Observation Space

    A ``Dict`` (DESIGN §3), the chunk's last frame:

    | key          | shape     | dtype   | meaning                                                      |
    |--------------|-----------|---------|--------------------------------------------------------------|
    | `rgb`        | (H, W, 3) | uint8   | predicted colour image                                       |
    | `depth`      | (H, W, 1) | float32 | predicted z-depth in metres, > 0                             |
    | `pose`       | (4, 4)    | float32 | predicted camera-to-world, OpenCV axes, first camera = I     |
    | `intrinsics` | (3, 3)    | float32 | predicted pinhole K in pixels                                |

    H, W are the model's frame size (64 x 64 for the shipped model). For stable-baselines3, wrap with
    ``deepverse_env.wrappers.SB3Observation``. A model whose codec has no depth (the no-depth ablation) has
    no `depth` key, in the space, the observations and ``info["frames"]`` alike: nothing stands in for it
    (hooks that need depth, ``SB3Observation`` and ``export_point_cloud`` refuse such a world; its render's
    depth tile is black and its map shows the camera path alone).

    ``info`` of ``step``: ``frames`` (the chunk: ``rgb`` (F, H, W, 3), ``depth`` (F, H, W, 1), ``pose``
    (F, 4, 4), ``intrinsics`` (F, 3, 3)), ``sentence`` (the caption the model was given: with a motion model the
    motion that happens, e.g. "stays in place" for a forward into a wall), ``blocked`` (with a motion model: whether
    it blocked a frame's move), ``scale``
    (metres per unit of the current window). ``info`` of ``reset``: ``scale`` and ``scene_seed`` (the
    simulator world of the start frame, -1 where not known: an image, a recorded episode).

    ## Rewards

    From the ``reward`` hook (``deepverse_env.rewards``: ``"goal"``, ``"collision"``, ``"exploration"``,
    ``"action_cost"``, a dict with arguments and ``weight``, a list of those summed, or any callable
    ``TensorDict (B,) -> (B,)``); 0.0 without one. A hook sees the state before (observation keys),
    ``action`` (the action id: the index in the action set, or in text mode the sentence's index in the
    vocabulary) and ``("next", ...)`` the state after; entries it writes under ``next`` (e.g. explored
    voxels) are carried to the next step, cloned with ``get_state`` and zeroed at reset.

    ## Starting State

    A known first frame from the ``starts`` loader (``deepverse_env.learned.starts``). The default,
    ``SimulatorStarts``, makes ``reset(seed=s)`` start from the first frame of ``DeepVerseSim-v0`` reset
    with s (the same world and view, its exact depth and intrinsics; a seedless reset continues the
    simulator's stream); ``EpisodeStarts(DIR)`` starts from recorded episodes (seed s: episode
    ``s % n``). ``options={"image": rgb}`` starts from any RGB image instead, uint8 (H, W, 3): the model
    first generates its depth and camera (first-frame completion), in units of 1 m (the scale of one
    image is unknown); a model without depth takes a 4D start's true depth for its scale alone. The first
    pose is the identity. Sampler noise comes from a ``torch.Generator`` seeded from ``np_random`` when
    ``reset`` gets a seed: same seed and actions, same observations (CPU).

    ## Episode End

    Terminates when the ``termination`` hook says so (``"goal_reached"``, ``"collided"``, a list: any);
    truncation after ``max_episode_steps`` (500 as registered) by the TimeLimit wrapper.

    ## Arguments

    ```python
    >>> import gymnasium as gym
    >>> import deepverse_env
    >>> env = gym.make("DeepVerse-v0", reward="exploration", sampler={"steps": 2})  # the shipped model, 2 flow steps
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(env.unwrapped.actions.index("forward"))
    >>> obs["rgb"].shape, info["frames"]["depth"].shape, reward > 0
    ((64, 64, 3), (4, 64, 64, 1), True)

    ```

    ``checkpoint`` (None: the shipped model ``world_model/pretrained/tiny``; a ``save_pretrained``
    directory; or a ``DeepVerse``), ``render_mode`` ("rgb_array": predicted RGB | depth | top-down map of
    the predicted point cloud and path, the layout of ``DeepVerseSim-v0``; "human": that picture in a
    pygame window), and the fields of ``LearnedEnvConfig``:

    | argument          | default   | meaning                                                     |
    |-------------------|-----------|-------------------------------------------------------------|
    | `action_set`      | "basic"   | "basic", "deepverse", "full" or an ``ActionSet``            |
    | `text_actions`    | False     | actions are sentences (``Sentences`` Text space)            |
    | `frames_per_step` | None      | the model's chunk (4); another value is an error            |
    | `sampler`         | None      | changes to the checkpoint's ``SamplerConfig`` ({"steps": 2}) |
    | `render_cache`    | True      | 3D cache (M18) for a refiner or a render-frame MM-DiT        |
    | `use_memory`      | True      | ψ memory keyframe as the spatial condition                  |
    | `cache_max`       | 6         | latent frames per window before it slides                   |
    | `memory_capacity` | 256       | memory keyframes per world                                  |
    | `reward`          | None      | reward hook spec                                            |
    | `termination`     | None      | termination hook spec                                       |
    | `starts`          | None      | a ``StartLoader``; None: ``SimulatorStarts`` at `fov_deg`   |
    | `fov_deg`         | 75.0      | field of view of the default simulator starts               |
    | `map_points`      | 50000     | points kept of the predicted cloud (map and ``.ply``)       |
    | `device`          | "cpu"     | where the model runs                                        |
    | `dtype`           | "auto"    | fp32 vs bf16 measured once per machine; or as given         |
    | `carry_decoder`   | True      | decoder state carried across a slide (False: rebuilt)       |
    | `imagine_chunk`   | 16        | candidates per batched rollout of ``imagine`` (peak memory)  |

    Memory is bounded and allocated up front (``LearnedWorld.nbytes`` reports it): per world
    ``cache_max`` latent frames, ``1 + (cache_max - 1) * F`` decoded frames, ``memory_capacity``
    keyframes of (4, H, W) float32 (the bulk: 16 MiB at 64 x 64 and 256), the 3D cache if held
    (``world_model.cache``: 5 keyframes x H x W points x 15 bytes, 300 KB at 64 x 64), ``map_points`` x 15
    bytes of point cloud and the last 10,000 camera positions (120 KB). A step's working set comes and goes on
    top: over 1,000 steps of the step-1,600 shipped model (one world, CPU) process RSS between steps
    stayed between a floor of 492 MiB, flat from step 200 on, and 600 MiB (``pytest -m slow`` checks
    the floor of the current one).

    Planning: ``imagine(action_sequences)`` rolls (N, L) candidate sequences from the current state (or
    a ``get_state()`` snapshot) in one batched rollout and returns a TensorDict (N, L) of imagined frames
    with hook rewards; ``get_state``/``set_state`` clone and restore everything, sampler noise included.
    ``resync(obs)`` restarts the world from a true 4D frame (RGB, metric depth, intrinsics), so an MPC
    planner imagines from what the real world shows (``agents.planners.run_mpc``); ``hooks`` may be
    replaced (a task sets its goal per episode).
    ``export_point_cloud(path)`` writes the accumulated predicted world as ``.ply``.

    ## Vectorized environment

    ``gym.make_vec("DeepVerse-v0", num_envs=N, vectorization_mode="vector_entry_point")`` gives
    ``DeepVerseVectorEnv``: N worlds, one batched model call per step, next-step autoreset.

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 4}

    def __init__(self, checkpoint: str | Path | DeepVerse | None = None, render_mode: str | None = None, **config):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self._window = HumanWindow(self.metadata["render_fps"]) if render_mode == "human" else None
        self.config = make_config(config)
        self.world = LearnedWorld(load_model(checkpoint, self.config.device), 1, self.config)
        self.render_mode = render_mode
        self.actions = self.world.actions
        self.height, self.width, self.frames_per_step = self.world.H, self.world.W, self.world.F
        self.action_space = action_space(self.actions, self.config.text_actions)
        self.observation_space = observation_space(self.height, self.width, "depth" in self.world.keys)
        self._seeded = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        # Check the arguments before anything changes (np_random included): a rejected reset leaves the
        # env as it was, so a valid reset (or, after an earlier one, a step) goes on from there.
        seed = check_seed(seed)
        images = check_images(options, self.height, self.width)
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            self.world.generator.manual_seed(int(self.np_random.integers(2**63)))
            self._seeded = True
        self.world.start(np.ones(1, dtype=bool), images, None if seed is None else [seed])
        if self._window is not None:
            self._window.show(self.world.panel(0))
        info = {"scale": float(self.world.rollout.scale[0]), "scene_seed": int(self.world.scene_seeds[0])}
        return self._obs(), info

    def step(self, action):
        if self.world.td is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        i = action_id(action, self.actions, self.config.text_actions)
        chunk, reward, terminated = self.world.step(np.array([i]))
        if self._window is not None:
            self._window.show(self.world.panel(0))
        info = {
            "frames": {k: chunk[k][0].cpu().numpy() for k in self.world.keys},
            "sentence": self.world.rollout.sentences[0],
            "scale": float(self.world.rollout.scale[0]),
        }
        if "blocked" in chunk.keys():  # the motion model's verdict, as DeepVerseSim-v0 reports its own
            info["blocked"] = bool(chunk["blocked"][0].any())
        return self._obs(), float(reward[0]), bool(terminated[0]), False, info

    def render(self):
        if self.render_mode != "rgb_array" or self.world.td is None:
            return None
        return self.world.panel(0)

    def close(self):
        if self._window is not None:
            self._window.close()

    # ---- planner API -----------------------------------------------------------------------------

    def imagine(
        self, action_sequences, state: WorldState | None = None, seed: int | None = None, pixels: bool = True
    ) -> TensorDict:
        """Imagine N candidate futures in one batched rollout, from the current state or a snapshot.

        Args:
            action_sequences: (N, L) integer action ids (indices into the action set; in text mode,
                indices into ``world_model.text.SENTENCES``).
            state: a ``get_state()`` snapshot to start from (default: now).
            seed: of the imagined noise, an integer in [0, 2**64) (default: drawn from ``np_random``).
            pixels: False imagines poses alone (a model with a motion model, M19): the motion model rolls the
                sequences against what the world has shown, no MM-DiT and no codec, thousands of candidate-steps a
                second; hooks that need only the pose (point goals, action costs) score it.
        Returns:
            TensorDict (N, L): ``rgb``, ``depth`` (with depth), ``pose``, ``intrinsics`` after each step, ``action``,
            ``reward`` and ``terminated`` from the hooks, ``scale``; with ``pixels=False`` ``pose``, ``intrinsics``,
            ``blocked``, ``action``, ``reward``, ``terminated``. The env itself is left as it was.

        Candidates are rolled ``imagine_chunk`` (default 16) at a time, so memory stays bounded whatever N
        is (about 80 MB a candidate of a chunk for the shipped model on CPU, plus the returned frames;
        ``LearnedWorld.imagine``); the result depends only on the seed and ``imagine_chunk``.
        """
        if self.world.td is None:
            raise gym.error.ResetNeeded("call reset() before imagine()")
        a = check_action_sequences(action_sequences, len(self.world.sentences))
        seed = check_seed(seed, "imagine's seed", 2**64)
        if state is not None:
            self.world.check_state(state)
        if not isinstance(pixels, (bool, np.bool_)):
            raise ValueError(f"pixels must be True or False, got {pixels!r}")
        if not pixels:
            return self.world.imagine_poses(np.zeros(len(a), dtype=np.int64), a, state)
        if seed is None:
            seed = int(self.np_random.integers(2**63))
        return self.world.imagine(np.zeros(len(a), dtype=np.int64), a, state, seed)

    @property
    def hooks(self) -> Hooks:
        """The reward and termination hooks (``deepverse_env.rewards.Hooks``); a task may replace them."""
        return self.world.hooks

    @hooks.setter
    def hooks(self, hooks: Hooks) -> None:
        self.world.hooks = hooks  # ValueError for anything but Hooks that can score this env (a dry run)

    def resync(self, frame: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Restart the world from a known 4D frame, e.g. the true current observation of the simulator: an
        MPC planner re-anchors its imagination on what the real world shows before every plan.

        Args:
            frame: ``rgb`` (H, W, 3) uint8, ``depth`` (H, W, 1) float32 metres > 0 and ``intrinsics``
                (3, 3) float32 (an observation dict will do; its ``pose`` is not used).
        Returns:
            the new observation: the frame, with the identity pose, since its camera starts a new episode
            frame (a goal from the old one moves with ``GoalReward``'s ``origin``). Windows, memory, map and
            hook state start afresh (``scene_seed`` becomes -1, not known); the sampler noise goes on.
        """
        if self.world.td is None:
            raise gym.error.ResetNeeded("call reset() before resync()")
        missing = [k for k in START_KEYS if k not in frame]
        if missing:
            raise ValueError(f"the frame lacks {missing}; resync needs {list(START_KEYS)}")
        self.world.start(np.ones(1, dtype=bool), frames={k: np.asarray(frame[k])[None] for k in START_KEYS})
        if self._window is not None:
            self._window.show(self.world.panel(0))
        return self._obs()

    def get_state(self) -> WorldState:
        """A snapshot of the env's world (windows, memory, hook state, noise, map)."""
        if self.world.td is None:
            raise gym.error.ResetNeeded("call reset() before get_state()")
        return self.world.get_state()

    def set_state(self, state: WorldState) -> None:
        """Restore a ``get_state()`` snapshot (it stays valid for further restores). ValueError, with the env
        left as it was, for anything but a snapshot of an env of the same model object and settings."""
        self.world.set_state(state)

    def export_point_cloud(self, path: str | Path, binary: bool = True) -> Path:
        """Write the accumulated predicted point cloud of this episode (``map_points`` at most) as ``.ply``;
        ValueError for a world without depth (it has no point cloud)."""
        if "depth" not in self.world.keys:
            raise ValueError("this world's model has no depth (codec use_depth false): it has no point cloud to export")
        cloud = self.world.maps[0].cloud
        return write_ply(path, cloud.points, cloud.colours, binary=binary)

    def _obs(self) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.world.observation().items()}
