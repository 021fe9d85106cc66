"""``DeepVerse-v0``: the learned world as a Gymnasium env (DESIGN §3, §4).

The env is a thin shell over model parts, as DIAMOND's ``WorldModelEnv``: ``LearnedWorld`` owns no
weights; it composes the world model's batched sliding-window ``Rollout`` (with its memory), the reward
and termination hooks of ``deepverse_env.rewards`` and a loader of start frames (the simulator, or a
user's image), and holds B worlds. ``DeepVerseEnv`` is one of them behind Gymnasium's single-env API and
``DeepVerseVectorEnv`` (``learned_vector_env``) N of them stepped by one batched model call. Both answer
exactly like ``DeepVerseSim-v0``: the same spaces and the same step, so an agent moves between the two
without change.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from tensordict import TensorDict
from torch import Tensor

from deepverse_env.actions import ActionSet, get_action_set
from deepverse_env.export import PointCloud, write_ply
from deepverse_env.render import colorize_depth, draw_cloud_map, side_by_side, upscale
from deepverse_env.rewards import make_reward, make_termination
from deepverse_env.sim.env import DEPTH_RANGE, DeepVerseSimEnv, check_action, observation_space
from world_model import geometry as G
from world_model.memory import MemoryConfig
from world_model.model import DeepVerse, load_pretrained
from world_model.rollout import AUTOCAST, FRAME_KEYS, Rollout, RolloutConfig
from world_model.text import SENTENCES, sentence_index

PATH_STEPS = 10_000  # camera positions kept per world for the map (a ring: the most recent ones)


@dataclass
class LearnedEnvConfig:
    """Everything about a learned world except its weights: the keyword arguments of ``DeepVerse-v0``."""

    action_set: str | ActionSet = "basic"  # as DeepVerseSim-v0: "basic", "deepverse", "full" or an ActionSet
    text_actions: bool = False  # True: an action is a sentence of world_model.text.SENTENCES (a Text space)
    frames_per_step: int | None = None  # None = the model's chunk; anything else must equal it
    steps: int | None = None  # flow steps per chunk (None = the checkpoint's FlowConfig)
    s_text: float | None = None  # text guidance scale (None = the checkpoint's)
    s_spatial: float | None = None  # memory guidance scale (None = the checkpoint's)
    use_memory: bool = True  # condition each chunk on a ψ-retrieved memory keyframe
    cache_max: int = 6  # latent frames in a window before it slides (Algorithm 1's CacheMaxSize)
    memory_capacity: int = 256  # keyframes kept per world: the memory pool's bound
    reward: Any = None  # a deepverse_env.rewards.make_reward spec: name, dict, list or callable
    termination: Any = None  # a make_termination spec
    fov_deg: float = 75.0  # horizontal field of view of the simulator's start frames
    map_points: int = 50_000  # predicted points kept per world (render map, .ply): a uniform sample
    device: str = "cpu"  # where the model runs
    dtype: str = "float32"  # compute dtype; "bfloat16" / "float16" run the model under torch.autocast


def make_config(options: dict) -> LearnedEnvConfig:
    """``LearnedEnvConfig`` from keyword arguments; ValueError naming an unknown one."""
    known = {f.name for f in fields(LearnedEnvConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown DeepVerse-v0 argument(s) {unknown}; expected checkpoint, render_mode or {sorted(known)}")
    return LearnedEnvConfig(**options)


@dataclass
class WorldState:
    """A snapshot of every world of a ``LearnedWorld``: restore it with ``set_state``, imagine from it."""

    rollout: Rollout  # windows, scales and memory pools
    td: TensorDict  # (B,) the current frames and the hooks' state entries
    generator: Tensor  # sampler noise state
    clouds: list[PointCloud]
    paths: np.ndarray
    path_counts: np.ndarray
    scene_seeds: np.ndarray


def load_model(checkpoint: str | Path | DeepVerse | None, device: str | torch.device = "cpu") -> DeepVerse:
    """The world model of a ``checkpoint``: None = the shipped model, a ``save_pretrained`` directory, or a
    ``DeepVerse`` (used as it is, moved to ``device`` in place)."""
    if isinstance(checkpoint, DeepVerse):
        model = checkpoint
    elif checkpoint is None:
        try:
            model = load_pretrained()
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"the shipped model is missing ({e}); pass a checkpoint instead: checkpoint=DIR in Python, "
                "--checkpoint DIR on the command line (a DeepVerse.save_pretrained directory)"
            ) from None
    elif isinstance(checkpoint, (str, Path)):
        model = DeepVerse.from_pretrained(checkpoint)
    else:
        raise ValueError(f"checkpoint must be None, a directory or a DeepVerse, got {type(checkpoint).__name__}")
    return model.to(device).eval()


def check_images(image, height: int, width: int, n: int = 1) -> np.ndarray:
    """``options["image"]`` as (n, H, W, 3) uint8: one RGB image (H, W, 3) for every world, or (n, H, W, 3)."""
    a = np.asarray(image)
    if a.shape == (height, width, 3):
        a = np.broadcast_to(a, (n, height, width, 3))
    if a.shape != (n, height, width, 3):
        want = f"({height}, {width}, 3)" + (f" or ({n}, {height}, {width}, 3)" if n > 1 else "")
        raise ValueError(f"options['image'] must be an RGB image of shape {want} (the model's size), got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError("options['image'] has NaN or infinite values")
    if a.dtype != np.uint8:
        raise ValueError(f"options['image'] must have dtype uint8 (0..255), got {a.dtype}")
    return np.array(a)  # a copy: the caller may reuse its array


class Sentences(spaces.Text):
    """The caption vocabulary as a ``Text`` space: it contains exactly the sentences of
    ``world_model.text.SENTENCES``, and ``sample`` draws one of them."""

    def __init__(self, seed: int | None = None):
        super().__init__(
            max_length=max(map(len, SENTENCES)), min_length=min(map(len, SENTENCES)),
            charset=frozenset("".join(SENTENCES)), seed=seed,
        )

    def sample(self, mask=None, probability=None) -> str:
        if mask is not None or probability is not None:
            raise ValueError("Sentences.sample draws uniformly from the vocabulary; it takes no mask or probability")
        return SENTENCES[int(self.np_random.integers(len(SENTENCES)))]

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and x in SENTENCES


def action_id(action, actions: ActionSet, text: bool) -> int:
    """The id of an action as the hooks see it: its index in the action set, or in text mode the
    sentence's index in the vocabulary. ValueError for anything else."""
    if not text:
        return check_action(action, len(actions))
    if not isinstance(action, str) or action not in SENTENCES:
        raise ValueError(
            f"action {action!r} is not a sentence of world_model.text.SENTENCES ({len(SENTENCES)} sentences, "
            f"e.g. {SENTENCES[3]!r})"
        )
    return sentence_index(action)


class LearnedWorld:
    """B worlds of a world model: start, step, score, imagine, snapshot, draw. The core of both envs.

    Args:
        model: the world model (shared, not copied).
        num_worlds: B.
        config: ``LearnedEnvConfig``.
    """

    def __init__(self, model: DeepVerse, num_worlds: int, config: LearnedEnvConfig):
        c = self.config = config
        self.B = int(num_worlds)
        self.device = next(model.parameters()).device
        self.H, self.W, self.F = model.config.height, model.config.width, model.frames_per_chunk
        if c.frames_per_step is not None and c.frames_per_step != self.F:
            raise ValueError(
                f"frames_per_step={c.frames_per_step!r} does not match the model's chunk of {self.F} frames "
                "(one step = one chunk); leave it None"
            )
        dtype = str(c.dtype).removeprefix("torch.")
        if dtype not in AUTOCAST:
            raise ValueError(f"dtype must be one of {sorted(AUTOCAST)}, got {c.dtype!r}")
        self.actions = get_action_set(c.action_set)
        self.sentences = SENTENCES if c.text_actions else tuple(a.sentence for a in self.actions.actions)  # id -> text
        self.reward, self.termination = make_reward(c.reward), make_termination(c.termination)
        self.generator = torch.Generator(self.device)
        rollout_config = RolloutConfig(
            cache_max=c.cache_max, steps=c.steps, s_text=c.s_text, s_spatial=c.s_spatial, use_memory=c.use_memory,
            memory=MemoryConfig(capacity=c.memory_capacity), dtype=dtype,
        )
        self.rollout = Rollout(model, self.B, rollout_config, self.generator)
        self.sims = [
            DeepVerseSimEnv(frames_per_step=self.F, height=self.H, width=self.W, fov_deg=c.fov_deg) for _ in range(self.B)
        ]
        self.td: TensorDict | None = None  # (B,) current frames + hook state entries; None before start
        self.clouds = [PointCloud(c.map_points) for _ in range(self.B)]
        self.paths = np.zeros((self.B, PATH_STEPS, 3), dtype=np.float32)  # camera positions, a ring per world
        self.path_counts = np.zeros(self.B, dtype=np.int64)  # positions ever recorded this episode
        self.scene_seeds = np.full(self.B, -1, dtype=np.int64)  # simulator world of each start, -1 = an image

    # ---- start and step ------------------------------------------------------------------------

    def start(self, mask: np.ndarray, images: np.ndarray | None = None, seeds: Sequence[int | None] | None = None) -> None:
        """(Re)start the worlds where ``mask`` (B,) bool.

        Args:
            images: (n, H, W, 3) uint8 for the n masked worlds (first-frame completion), or None: world i
                starts from a frame of its simulator, reset with ``seeds[i]`` (None continues its stream).
        """
        idx = np.flatnonzero(mask)
        m = torch.as_tensor(mask, dtype=torch.bool, device=self.device)
        if images is None:
            frames = []
            for i in idx:
                obs, info = self.sims[i].reset(seed=None if seeds is None else seeds[i])
                frames.append(obs)
                self.scene_seeds[i] = info["scene_seed"]
            first = [torch.from_numpy(np.stack([f[k] for f in frames])) for k in ("rgb", "depth", "intrinsics")]
            first = self.rollout.reset(*first, mask=m)
        else:
            self.scene_seeds[idx] = -1
            first = self.rollout.reset(torch.from_numpy(images), mask=m)
        if self.td is None:
            if len(idx) != self.B:
                raise RuntimeError("the first start must start every world")
            self.td = first.clone()
        else:
            self.td = self.td.clone()  # never write into frames a caller may hold
            rows = torch.as_tensor(idx, device=self.device)
            for key in list(self.td.keys()):
                if key in FRAME_KEYS:
                    self.td[key][rows] = first[key]
                else:  # a hook's state entry (e.g. explored voxels) starts empty
                    self.td[key][rows] = 0
        for i in idx:
            self.clouds[i].clear()
        self.path_counts[idx] = 0
        self._record(idx, first)

    def step(self, ids: np.ndarray) -> tuple[TensorDict, Tensor, Tensor]:
        """One chunk for every world.

        Args:
            ids: (B,) action ids (see ``action_id``).
        Returns:
            frames TensorDict (B, F), rewards (B,) float, terminated (B,) bool.
        """
        chunk = self.rollout.step([self.sentences[i] for i in ids])
        td = self._transition(self.td, ids, chunk[:, -1])
        reward, terminated = self._score(td)
        self.td = td["next"]
        self._record(np.arange(self.B), self.td)
        return chunk, reward, terminated

    def _transition(self, state: TensorDict, ids, after: TensorDict) -> TensorDict:
        """The hooks' input: the state before, the action and ``("next", ...)`` the state after."""
        td = state.copy()
        td["action"] = torch.as_tensor(np.asarray(ids), dtype=torch.long, device=self.device)
        td["next"] = after
        return td

    def _score(self, td: TensorDict) -> tuple[Tensor, Tensor]:
        B = td.batch_size[0]
        reward = self.reward(td).float() if self.reward is not None else torch.zeros(B, device=self.device)
        done = (
            self.termination(td).bool() if self.termination is not None
            else torch.zeros(B, dtype=torch.bool, device=self.device)
        )
        return reward, done

    def _record(self, idx: np.ndarray, frames: TensorDict) -> None:
        """Add the frames (len(idx),) of worlds ``idx`` to their maps: camera path and point cloud."""
        s = max(1, self.H // 32)  # about 32 x 32 points per frame
        K = frames["intrinsics"].clone()
        K[:, :2] = K[:, :2] / s  # pixel i * s of the full frame is pixel i of the strided one
        points = G.unproject(frames["depth"][:, ::s, ::s, 0], K, frames["pose"]).flatten(1, 2).cpu().numpy()
        colours = frames["rgb"][:, ::s, ::s].flatten(1, 2).cpu().numpy()  # (n, P, 3)
        self.paths[idx, self.path_counts[idx] % PATH_STEPS] = frames["pose"][:, :3, 3].cpu().numpy()
        self.path_counts[idx] += 1
        for j, i in enumerate(idx):
            self.clouds[i].add(points[j], colours[j])

    # ---- reading ---------------------------------------------------------------------------------

    def observation(self) -> dict[str, np.ndarray]:
        """The current frame of every world: the observation keys, each (B, ...), as numpy copies."""
        return {k: self.td[k].cpu().numpy().copy() for k in FRAME_KEYS}

    def panel(self, i: int) -> np.ndarray:
        """World i's picture: predicted RGB | depth colour map | top-down map of its predicted point cloud
        and camera path; the layout of ``DeepVerseSim-v0``'s render, so the two line up."""
        rgb, depth = self.td["rgb"][i].cpu().numpy(), self.td["depth"][i].cpu().numpy()
        k = max(1, 256 // self.H)
        axis = self.td["pose"][i, :3, 2].cpu().numpy()  # optical axis
        heading = math.atan2(-axis[0], axis[2])  # 0 looks along +z, + turns left
        cloud = self.clouds[i]
        n = self.path_counts[i]
        path = self.paths[i, :n] if n <= PATH_STEPS else np.roll(self.paths[i], -(n % PATH_STEPS), axis=0)
        topdown = draw_cloud_map(self.H * k, cloud.points, cloud.colours, path, heading)
        return side_by_side(upscale(rgb, k), upscale(colorize_depth(depth[..., 0], *DEPTH_RANGE), k), topdown)

    def nbytes(self) -> int:
        """Bytes of state held for all worlds: the rollout's (windows, decoder stream, memory pools), hook
        entries and maps. Fixed once the
        first step has run (hooks add their entries then); episodes never grow it."""
        tensors = list(self.td.values()) if self.td is not None else []
        maps = sum(c.nbytes() for c in self.clouds) + self.paths.nbytes
        return self.rollout.nbytes() + sum(t.numel() * t.element_size() for t in tensors) + maps

    # ---- planning --------------------------------------------------------------------------------

    def get_state(self) -> WorldState:
        return WorldState(
            self.rollout.clone(), self.td.clone(), self.generator.get_state(), [c.copy() for c in self.clouds],
            self.paths.copy(), self.path_counts.copy(), self.scene_seeds.copy(),
        )

    def set_state(self, state: WorldState) -> None:
        if state.rollout.B != self.B:
            raise ValueError(f"a state of {state.rollout.B} worlds cannot be restored into {self.B}")
        self.rollout.load(state.rollout)
        self.td = state.td.clone()
        self.generator.set_state(state.generator)
        self.clouds = [c.copy() for c in state.clouds]
        self.paths, self.path_counts = state.paths.copy(), state.path_counts.copy()
        self.scene_seeds = state.scene_seeds.copy()

    def imagine(self, index: np.ndarray, ids: np.ndarray, state: WorldState | None, seed: int) -> TensorDict:
        """Roll action sequences from worlds ``index`` in one batched rollout of a copy; nothing here changes.

        Args:
            index: (M,) the world each sequence starts from (repeats: many candidates from one state).
            ids: (M, L) action ids.  state: start from this snapshot instead of the current worlds.
            seed: of the imagined rollout's noise.
        Returns:
            TensorDict (M, L): the frame after each step (rgb, depth, pose, intrinsics), ``action``,
            ``reward`` and ``terminated`` from the hooks, and ``scale`` (the window scale).
        """
        rollout, td = (self.rollout, self.td) if state is None else (state.rollout, state.td)
        rows = torch.as_tensor(index, dtype=torch.long, device=self.device)
        branch = rollout.select(rows)
        branch.generator = torch.Generator(self.device).manual_seed(seed)
        current = td[rows].clone()  # (M,) hook entries included, so stateful hooks branch too
        out = []
        for step_ids in ids.T:  # (M,) per step
            chunk = branch.step([self.sentences[i] for i in step_ids])
            transition = self._transition(current, step_ids, chunk[:, -1])
            reward, terminated = self._score(transition)
            current = transition["next"]
            out.append(
                TensorDict(
                    {**{k: current[k] for k in FRAME_KEYS}, "action": transition["action"], "reward": reward,
                     "terminated": terminated, "scale": branch.scale.clone()},
                    batch_size=[len(rows)],
                )
            )
        return torch.stack(out, dim=1)  # (M, L)


class DeepVerseEnv(gym.Env):
    """
    ## Description

    The learned world of DeepVerse: the world model (``world_model.model.DeepVerse``) rolls the world
    forward one temporal chunk per step from its own predictions of RGB, depth and camera, with its
    sliding window and geometric memory (the paper's Algorithm 1). Discrete actions become the action
    set's sentences, the text control the model was trained on. Observations are the model's *own*
    predictions: its depth and pose, not the simulator's. The spaces and the step are those of
    ``DeepVerseSim-v0``, so an agent moves between the real and the imagined world without change.

    ## Action Space

    ``Discrete(len(action_set))`` over the named action set, as in ``DeepVerseSim-v0`` (``basic``: 9,
    ``deepverse``: 27, ``full``: 81); action ``a`` is sent to the model as ``action_set[a].sentence``.
    With ``text_actions=True`` the space is ``Sentences``, a ``gymnasium.spaces.Text`` holding exactly the
    81 sentences of ``world_model.text.SENTENCES``; any other string is a ValueError.

    ## Observation Space

    The ``Dict`` of DESIGN §3 and ``DeepVerseSim-v0``, the chunk's last frame:

    | key          | shape     | dtype   | meaning                                                      |
    |--------------|-----------|---------|--------------------------------------------------------------|
    | `rgb`        | (H, W, 3) | uint8   | predicted colour image                                       |
    | `depth`      | (H, W, 1) | float32 | predicted z-depth in metres, > 0                             |
    | `pose`       | (4, 4)    | float32 | predicted camera-to-world, OpenCV axes, first camera = I     |
    | `intrinsics` | (3, 3)    | float32 | predicted pinhole K in pixels                                |

    H, W are the model's frame size (64 x 64 for the shipped model). For stable-baselines3, wrap with
    ``deepverse_env.wrappers.SB3Observation``.

    ``info`` of ``step``: ``frames`` (the chunk: ``rgb`` (F, H, W, 3), ``depth`` (F, H, W, 1), ``pose``
    (F, 4, 4), ``intrinsics`` (F, 3, 3)), ``sentence`` (the caption the model was given), ``scale``
    (metres per unit of the current window). ``info`` of ``reset``: ``scale`` and ``scene_seed`` (the
    simulator world of the start frame, -1 for an image).

    ## Rewards

    From the ``reward`` hook (``deepverse_env.rewards``: ``"goal"``, ``"collision"``, ``"exploration"``,
    ``"action_cost"``, a dict with arguments and ``weight``, a list of those summed, or any callable
    ``TensorDict (B,) -> (B,)``); 0.0 without one. A hook sees the state before (observation keys),
    ``action`` (the action id: the index in the action set, or in text mode the sentence's index in the
    vocabulary) and ``("next", ...)`` the state after; entries it writes under ``next`` (e.g. explored
    voxels) are carried to the next step, cloned with ``get_state`` and zeroed at reset.

    ## Starting State

    ``reset(seed=s)`` starts from the first frame of ``DeepVerseSim-v0`` reset with the same seed (the
    same world and view, with its exact depth and intrinsics as the known first frame; a seedless reset
    continues the simulator's stream as ``DeepVerseSim-v0`` does). ``options={"image": rgb}`` starts from
    any RGB image instead, uint8 (H, W, 3) at the model's size: the model first generates its depth and
    camera (first-frame completion), in units of 1 m (the scale of one image is unknown). The pose of the
    first frame is the identity. Sampler noise comes from a ``torch.Generator`` seeded from ``np_random``
    when ``reset`` gets a seed: same seed and actions, same observations (CPU).

    ## Episode End

    Terminates when the ``termination`` hook says so (``"goal_reached"``, ``"collided"``, a list: any);
    truncation after ``max_episode_steps`` (500 as registered) by the TimeLimit wrapper.

    ## Arguments

    ```python
    >>> import gymnasium as gym
    >>> import deepverse_env
    >>> env = gym.make("DeepVerse-v0", reward="exploration")  # the shipped model  # doctest: +SKIP
    >>> obs, info = env.reset(seed=0)  # doctest: +SKIP

    ```

    ``checkpoint`` (None: the shipped model ``world_model/pretrained/tiny``; a ``save_pretrained``
    directory; or a ``DeepVerse``), ``render_mode`` ("rgb_array": predicted RGB | depth | top-down map of
    the predicted point cloud and path; "human": that picture in a pygame window), and the fields of
    ``LearnedEnvConfig``:

    | argument          | default   | meaning                                                     |
    |-------------------|-----------|-------------------------------------------------------------|
    | `action_set`      | "basic"   | "basic", "deepverse", "full" or an ``ActionSet``            |
    | `text_actions`    | False     | actions are sentences (``Sentences`` Text space)            |
    | `frames_per_step` | None      | the model's chunk (4); another value is an error            |
    | `steps`           | None      | flow steps per chunk (None: the checkpoint's)               |
    | `s_text`          | None      | text guidance scale (None: the checkpoint's)                |
    | `s_spatial`       | None      | memory guidance scale (None: the checkpoint's)              |
    | `use_memory`      | True      | ψ memory keyframe as the spatial condition                  |
    | `cache_max`       | 6         | latent frames per window before it slides                   |
    | `memory_capacity` | 256       | memory keyframes per world                                  |
    | `reward`          | None      | reward hook spec                                            |
    | `termination`     | None      | termination hook spec                                       |
    | `fov_deg`         | 75.0      | field of view of the simulator start frames                 |
    | `map_points`      | 50000     | points kept of the predicted cloud (map and ``.ply``)       |
    | `device`          | "cpu"     | where the model runs                                        |
    | `dtype`           | "float32" | "bfloat16" / "float16": autocast compute                    |

    Memory is bounded: per world the rollout holds ``cache_max`` latent frames, ``1 + (cache_max - 1) * F``
    decoded frames and ``memory_capacity`` keyframes of (4, H, W) float32 (the bulk: 16 MiB at 64 x 64 and
    256), plus ``map_points`` x 15 bytes of point cloud and the last 10,000 camera positions (120 KB);
    ``LearnedWorld.nbytes`` reports it, and no episode length changes it. A step's working set
    (activations, the decoded chunk) comes and goes on top: measured over 1,000 steps of the step-1,600
    shipped model (one world, CPU), process RSS between steps stayed between a floor of 492 MiB, flat from
    step 200 on, and 600 MiB (``pytest -m slow`` checks the floor of the current one).

    Planning: ``imagine(action_sequences)`` rolls (N, L) candidate sequences from the current state (or
    a ``get_state()`` snapshot) in one batched rollout and returns a TensorDict (N, L) of imagined frames
    with hook rewards; ``get_state``/``set_state`` clone and restore everything, sampler noise included.
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
        if render_mode == "human":
            try:
                import pygame  # noqa: F401
            except ImportError:
                raise gym.error.DependencyNotInstalled('render_mode="human" needs pygame: pip install pygame') from None
        self.config = make_config(config)
        self.world = LearnedWorld(load_model(checkpoint, self.config.device), 1, self.config)
        self.render_mode = render_mode
        self.actions = self.world.actions
        self.height, self.width, self.frames_per_step = self.world.H, self.world.W, self.world.F
        self.action_space = Sentences() if self.config.text_actions else spaces.Discrete(len(self.actions))
        self.observation_space = observation_space(self.height, self.width)
        self._seeded = False
        self._window = self._clock = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        image = options.pop("image", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; the only option is 'image'")
        images = None if image is None else check_images(image, self.height, self.width)
        if seed is not None or not self._seeded:
            self.world.generator.manual_seed(int(self.np_random.integers(2**63)))
            self._seeded = True
        self.world.start(np.ones(1, dtype=bool), images, None if seed is None else [seed])
        if self.render_mode == "human":
            self._show()
        info = {"scale": float(self.world.rollout.scale[0]), "scene_seed": int(self.world.scene_seeds[0])}
        return self._obs(), info

    def step(self, action):
        if self.world.td is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        i = action_id(action, self.actions, self.config.text_actions)
        chunk, reward, terminated = self.world.step(np.array([i]))
        if self.render_mode == "human":
            self._show()
        info = {
            "frames": {k: chunk[k][0].cpu().numpy() for k in FRAME_KEYS},
            "sentence": self.world.sentences[i],
            "scale": float(self.world.rollout.scale[0]),
        }
        return self._obs(), float(reward[0]), bool(terminated[0]), False, info

    def render(self):
        if self.render_mode != "rgb_array" or self.world.td is None:
            return None
        return self.world.panel(0)

    def close(self):
        if self._window is not None:
            import pygame

            pygame.display.quit()
            pygame.quit()
            self._window = None

    # ---- planner API -----------------------------------------------------------------------------

    def imagine(self, action_sequences, state: WorldState | None = None, seed: int | None = None) -> TensorDict:
        """Imagine N candidate futures in one batched rollout, from the current state or a snapshot.

        Args:
            action_sequences: (N, L) integer action ids (indices into the action set; in text mode,
                indices into ``world_model.text.SENTENCES``).
            state: a ``get_state()`` snapshot to start from (default: now).
            seed: of the imagined noise (default: drawn from ``np_random``).
        Returns:
            TensorDict (N, L): ``rgb``, ``depth``, ``pose``, ``intrinsics`` after each step, ``action``,
            ``reward`` and ``terminated`` from the hooks, ``scale``. The env itself is left as it was.
        """
        if self.world.td is None:
            raise gym.error.ResetNeeded("call reset() before imagine()")
        a = np.asarray(action_sequences)
        n = len(self.world.sentences)
        if a.ndim != 2 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"action_sequences must be a non-empty (N, L) integer array, got {a.dtype} {a.shape}")
        if a.min() < 0 or a.max() >= n:
            raise ValueError(f"action_sequences hold ids outside [0, {n - 1}]")
        if seed is None:
            seed = int(self.np_random.integers(2**63))
        return self.world.imagine(np.zeros(len(a), dtype=np.int64), a, state, seed)

    def get_state(self) -> WorldState:
        """A snapshot of the env's world (windows, memory, hook state, noise, map)."""
        if self.world.td is None:
            raise gym.error.ResetNeeded("call reset() before get_state()")
        return self.world.get_state()

    def set_state(self, state: WorldState) -> None:
        """Restore a ``get_state()`` snapshot (it stays valid for further restores)."""
        self.world.set_state(state)

    def export_point_cloud(self, path: str | Path, binary: bool = True) -> Path:
        """Write the accumulated predicted point cloud of this episode (``map_points`` at most) as ``.ply``."""
        cloud = self.world.clouds[0]
        return write_ply(path, cloud.points, cloud.colours, binary=binary)

    # ---- helpers ---------------------------------------------------------------------------------

    def _obs(self) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.world.observation().items()}

    def _show(self) -> None:
        import pygame

        frame = self.world.panel(0)
        if self._window is None:
            pygame.init()
            pygame.display.init()
            self._window = pygame.display.set_mode((frame.shape[1], frame.shape[0]))
            self._clock = pygame.time.Clock()
        self._window.blit(pygame.surfarray.make_surface(frame.swapaxes(0, 1)), (0, 0))
        pygame.event.pump()
        pygame.display.flip()
        self._clock.tick(self.metadata["render_fps"])
