"""Reward and termination hooks on batched states (DESIGN §4).

A hook scores a batch of transitions in one call, so the same hook serves one env step and thousands
of imagined planner states. The protocol (TorchRL's layout):

    hook(td: TensorDict) -> Tensor  # (B,) float rewards, or (B,) bool for termination hooks

``td`` has batch size (B,) and holds the state before the step under the observation keys
(``rgb`` (B, H, W, 3) uint8, ``depth`` (B, H, W, 1) m, ``pose`` (B, 4, 4), ``intrinsics`` (B, 3, 3)),
the ``action`` (B,) taken, and the state after under ``("next", key)``. A hook that needs memory across
steps (exploration) keeps it as a tensor entry of the state, reads it from ``td`` and writes the
updated value to ``td["next", ...]``; environments carry every ``next`` entry over to the next step,
and clone it with the rest of the state, so imagined branches stay independent.

Writing one: any callable with that signature works; subclass ``RewardHook`` to get a name and a
``weight`` for composition. Built-ins: ``GoalReward``, ``CollisionPenalty``, ``ExplorationReward``,
``ActionCost``, ``ImageGoalReward``; ``GoalReached`` and ``Collided`` terminate. ``combine`` sums weighted
hooks; ``make_reward`` / ``make_termination`` build them from names (so configs and ``gym.make`` can).

``Hooks`` is the one code path that scores: ``DeepVerseSim-v0``, ``DeepVerse-v0`` and both envs'
``imagine`` build the transition, call the hooks and carry their state entries with it (``start_state``
zeroes them when a world restarts), so a task means the same in the true world and in imagination.
``PerWorldHooks`` gives each world of a batched env its own ``Hooks`` (a goal per world, as
``agents.rl.TaskVecEnv`` trains PPO on), scoring each world through the same ``Hooks.step``.
``Hooks.check`` is what an env runs when hooks are installed: a hook's ``check_actions(n)`` (``ActionCost``:
its table must have one cost per action) and a dry-run transition per action id, so a hook that does not
fit the env fails at ``gym.make`` (or assignment), not mid-episode.

Bad arguments are ValueErrors naming the parameter and the value: numbers must be finite (a NaN or inf
weight, bonus or penalty would make every reward NaN), counts positive integers, flags booleans, and a
spec's arguments must be ones its hook takes. A dict spec's ``weight`` scales its hook, alone or in a list.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor

from world_model import geometry as G

Hook = Callable[[TensorDict], Tensor]


class RewardHook:
    """Base for built-in hooks: ``__call__(td) -> (B,)``."""

    name = "hook"

    def __call__(self, td: TensorDict) -> Tensor:
        raise NotImplementedError

    def check_actions(self, n: int) -> None:
        """ValueError unless the hook can score an env of ``n`` actions (ids 0..n-1); envs call it when the
        hook is installed. Most hooks work with any action set."""


def _real(value) -> bool:
    """Whether ``value`` is a real number (not a bool, a string or a complex)."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))


def _tensor(value, what: str, expected: str) -> Tensor:
    """``value`` (numbers, nested sequences, an array or a tensor) as float32; ValueError naming it otherwise."""
    if isinstance(value, Tensor):
        return value.detach().to(torch.float32)
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):  # ragged nesting
        array = np.zeros(0, dtype=object)
    if array.dtype.kind not in "biuf":  # strings, None, objects
        raise ValueError(f"{what} must be {expected}, got {value!r}")
    return torch.as_tensor(array.astype(np.float32))


def _vec3(value, what: str) -> Tensor:
    expected = "3 finite numbers (x, y, z) in metres"
    t = _tensor(value, what, expected)
    if t.shape != (3,) or not torch.isfinite(t).all():
        raise ValueError(f"{what} must be {expected}, got {value!r}")
    return t


def check_positive(value, what: str) -> float:
    """``value`` as a float, or a ValueError naming it unless it is a finite number > 0."""
    if not _real(value) or not 0 < value < math.inf:
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return float(value)


def check_finite(value, what: str) -> float:
    """``value`` as a float, or a ValueError naming it unless it is a finite number (NaN and inf would
    turn every reward into NaN)."""
    if not _real(value) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def check_count(value, what: str) -> int:
    """``value`` as an int, or a ValueError naming it unless it is an integer >= 1 (an integral float too)."""
    if not _real(value) or not math.isfinite(value) or int(value) != value or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _flag(value, what: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{what} must be True or False, got {value!r}")
    return bool(value)


def _pose(value, what: str) -> Tensor:
    expected = "a finite 4x4 camera-to-world pose"
    t = _tensor(value, what, expected)
    if t.shape != (4, 4) or not torch.isfinite(t).all():
        raise ValueError(f"{what} must be {expected}, got {value!r}")
    return t


class GoalReward(RewardHook):
    """Progress towards a goal point: the decrease in camera-to-goal distance (m) this step, plus
    ``bonus`` once within ``radius``.

    Args:
        goal: (x, y, z) metres in the goal's frame: the episode frame (the first camera's) unless
            ``origin`` says otherwise.
        planar: measure on the floor plan, the x/z plane of the goal's frame (camera height ignored).
        origin: (4, 4) pose, in the goal's frame, of the frame the scored poses are in (default: the
            same frame). A world re-synced to a later camera starts a new episode frame there: with
            ``origin`` that camera's true pose, the goal keeps its place.
    """

    name = "goal"

    def __init__(self, goal=(0.0, 0.0, 3.0), radius: float = 0.5, bonus: float = 1.0, planar: bool = False, origin=None):
        self.goal, self.radius = _vec3(goal, "goal"), check_positive(radius, "radius")
        self.bonus = check_finite(bonus, "bonus")
        self.planar = _flag(planar, "planar")
        self.origin = torch.eye(4) if origin is None else _pose(origin, "origin")

    def camera(self, pose: Tensor) -> Tensor:
        """Camera poses (..., 4, 4) in the goal's frame."""
        return self.origin.to(pose) @ pose

    def distance(self, pose: Tensor) -> Tensor:
        delta = self.camera(pose)[..., :3, 3] - self.goal.to(pose)  # (..., 3)
        return (delta[..., ::2] if self.planar else delta).norm(dim=-1)

    def __call__(self, td: TensorDict) -> Tensor:
        before, after = self.distance(td["pose"]), self.distance(td["next", "pose"])
        return (before - after) + self.bonus * (after < self.radius).float()


class GoalReached(GoalReward):
    """Termination: the camera is within ``radius`` of the goal."""

    name = "goal_reached"

    def __call__(self, td: TensorDict) -> Tensor:
        return self.distance(td["next", "pose"]) < self.radius


class ImageGoalReward(RewardHook):
    """Progress towards a goal image: the increase in similarity of the frame to ``goal`` this step. The
    similarity is minus the mean absolute difference, in [0, 1] units, of the two images average-pooled
    to ``pool`` x ``pool`` cells (coarse, so it rewards getting the view roughly right long before the
    pixels line up); 0 when they are equal.

    Args:
        goal: (H, W, 3) uint8, the size of the frames it scores.
    """

    name = "image_goal"

    def __init__(self, goal, pool: int = 8):
        image = torch.as_tensor(np.asarray(goal))
        if image.dim() != 3 or image.shape[-1] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"goal must be an (H, W, 3) uint8 image, got {image.dtype} {tuple(image.shape)}")
        if not _real(pool) or not math.isfinite(pool) or int(pool) != pool or not 1 <= pool <= min(image.shape[:2]):
            raise ValueError(f"pool must be an integer in [1, {min(image.shape[:2])}] (the image size), got {pool!r}")
        self.goal, self.pool = image, int(pool)
        self.target = self.pooled(image[None])  # (1, 3, pool, pool)

    def pooled(self, rgb: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(rgb.movedim(-1, 1).float() / 255.0, self.pool)  # (B, 3, pool, pool)

    def similarity(self, rgb: Tensor) -> Tensor:
        if rgb.shape[1:] != self.goal.shape:
            raise ValueError(
                f"frames of shape {tuple(rgb.shape[1:])} cannot be compared with a goal image {tuple(self.goal.shape)}"
            )
        return -(self.pooled(rgb) - self.target.to(rgb.device)).abs().flatten(1).mean(-1)

    def __call__(self, td: TensorDict) -> Tensor:
        return self.similarity(td["next", "rgb"]) - self.similarity(td["rgb"])


def next_depth(td: TensorDict, hook: str) -> Tensor:
    """``td["next", "depth"]`` (B, H, W, 1); ValueError naming ``hook`` where the frames have no depth (a learned
    world whose model has none, the no-depth ablation)."""
    if "depth" not in td["next"].keys():
        raise ValueError(f"the {hook} hook needs depth, and these frames have none (a world model without depth)")
    return td["next", "depth"]


class CollisionPenalty(RewardHook):
    """``-penalty`` when the nearest seen surface in the central ``fraction`` of the image is closer
    than ``min_depth`` metres (walking into something)."""

    name = "collision"

    def __init__(self, min_depth: float = 0.3, penalty: float = 1.0, fraction: float = 0.5):
        self.min_depth, self.penalty = check_positive(min_depth, "min_depth"), check_finite(penalty, "penalty")
        if not _real(fraction) or not 0 < fraction <= 1:
            raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
        self.fraction = float(fraction)

    def near(self, depth: Tensor) -> Tensor:
        H, W = depth.shape[-3:-1]
        h, w = max(1, round(H * self.fraction)), max(1, round(W * self.fraction))
        centre = depth[..., (H - h) // 2 : (H + h) // 2, (W - w) // 2 : (W + w) // 2, 0]
        return centre.flatten(-2).amin(-1) < self.min_depth

    def __call__(self, td: TensorDict) -> Tensor:
        return -self.penalty * self.near(next_depth(td, self.name)).float()


class Collided(CollisionPenalty):
    """Termination: the camera is closer than ``min_depth`` to a surface ahead."""

    name = "collided"

    def __call__(self, td: TensorDict) -> Tensor:
        return self.near(next_depth(td, self.name))


class ExplorationReward(RewardHook):
    """New space seen: the number of voxels of a ``grid``³ lattice of ``voxel`` metres (centred on the
    first camera) that the predicted point cloud of this step touches for the first time, times
    ``per_voxel``. Seen voxels are kept in the state entry ``explored`` (B, grid³) bool; points outside
    the lattice are ignored."""

    name = "exploration"
    key = "explored"

    def __init__(self, voxel: float = 0.5, grid: int = 32, per_voxel: float = 0.01, stride: int = 2):
        self.voxel, self.per_voxel = check_positive(voxel, "voxel"), check_finite(per_voxel, "per_voxel")
        self.grid, self.stride = check_count(grid, "grid"), check_count(stride, "stride")

    def __call__(self, td: TensorDict) -> Tensor:
        nxt = td["next"]
        B = td.batch_size[0]
        seen = td.get(self.key, None)
        if seen is None:
            seen = torch.zeros(B, self.grid**3, dtype=torch.bool, device=nxt["pose"].device)
        s = self.stride
        depth = next_depth(td, self.name)[:, ::s, ::s, 0]  # (B, h, w) every s-th pixel is enough for coverage
        K = nxt["intrinsics"].clone()
        K[:, :2] = K[:, :2] / s  # pixel (i * s) of the full image is pixel i of the strided one
        pts = G.unproject(depth, K, nxt["pose"]).reshape(B, -1, 3)  # (B, N, 3)
        cell = torch.floor(pts / self.voxel).long() + self.grid // 2  # (B, N, 3)
        inside = ((cell >= 0) & (cell < self.grid)).all(-1) & torch.isfinite(pts).all(-1)
        flat = (cell[..., 0] * self.grid + cell[..., 1]) * self.grid + cell[..., 2]
        flat = torch.where(inside, flat, 0)
        now = torch.zeros_like(seen)
        now.scatter_(1, flat, inside)  # (B, grid^3) voxels hit this step
        new = now & ~seen
        td["next", self.key] = seen | now
        return self.per_voxel * new.sum(-1).float()


class ActionCost(RewardHook):
    """``-cost[action]``: a per-action cost table (e.g. energy), or ``-default`` for every action
    except index 0 (stay) when no table is given."""

    name = "action_cost"

    def __init__(self, costs: Sequence[float] | None = None, default: float = 0.01):
        expected = "a non-empty 1-D sequence of finite numbers, one cost per action id"
        self.costs = None if costs is None else _tensor(costs, "costs", expected)
        if self.costs is not None and (
            self.costs.dim() != 1 or not len(self.costs) or not torch.isfinite(self.costs).all()
        ):
            raise ValueError(f"costs must be {expected}, got {costs!r}")
        self.default = check_finite(default, "default")

    def check_actions(self, n: int) -> None:
        if self.costs is not None and len(self.costs) != n:
            raise ValueError(
                f"the action_cost table has {len(self.costs)} costs but the env has {n} actions (ids 0..{n - 1}); "
                "give one cost per action of its action set"
            )

    def __call__(self, td: TensorDict) -> Tensor:
        a = td["action"].long().reshape(-1)
        if self.costs is None:
            return -self.default * (a != 0).float()
        n = len(self.costs)
        outside = a[(a < 0) | (a >= n)]
        if outside.numel():
            raise ValueError(
                f"action {int(outside[0])} has no cost: the action_cost table has {n} entries (ids 0..{n - 1}); "
                "give one cost per action of the env's action set"
            )
        return -self.costs.to(a.device)[a]


class Combined:
    """Weighted sum of reward hooks: ``sum(w * hook(td))``."""

    def __init__(self, hooks: Sequence[tuple[Hook, float]]):
        if not hooks:
            raise ValueError("combine needs at least one (hook, weight) pair")
        for hook, w in hooks:
            if not callable(hook):
                raise ValueError(f"{hook!r} is not callable; a hook maps a TensorDict to (B,) rewards")
        self.hooks = [(hook, check_finite(w, f"the weight of {_name(hook)}")) for hook, w in hooks]

    def check_actions(self, n: int) -> None:
        for hook, _ in self.hooks:
            _check_actions(hook, n)

    def __call__(self, td: TensorDict) -> Tensor:
        return sum(w * hook(td).float() for hook, w in self.hooks)


class AnyOf:
    """Termination if any of the hooks says so."""

    def __init__(self, hooks: Sequence[Hook]):
        if not hooks:
            raise ValueError("AnyOf needs at least one termination hook")
        self.hooks = list(hooks)

    def check_actions(self, n: int) -> None:
        for hook in self.hooks:
            _check_actions(hook, n)

    def __call__(self, td: TensorDict) -> Tensor:
        out = self.hooks[0](td).bool()  # on whatever device the hooks compute
        for hook in self.hooks[1:]:
            out = out | hook(td).bool()
        return out


def combine(*hooks: Hook | tuple[Hook, float]) -> Combined:
    """``combine(GoalReward(...), (CollisionPenalty(), 0.5))``: hooks with optional weights (default 1)."""
    for h in hooks:
        if isinstance(h, tuple) and len(h) != 2:
            raise ValueError(f"combine takes hooks or (hook, weight) pairs, got {h!r}")
    return Combined([h if isinstance(h, tuple) else (h, 1.0) for h in hooks])


def _name(hook) -> str:
    """How error messages name a hook: its ``name`` (built-ins) or its repr."""
    name = getattr(hook, "name", None)
    return f"the {name!r} hook" if isinstance(name, str) else f"hook {hook!r}"


def _check_actions(hook, n: int) -> None:
    check = getattr(hook, "check_actions", None)
    if callable(check):
        check(n)


REWARDS: dict[str, type[RewardHook]] = {
    h.name: h for h in (GoalReward, CollisionPenalty, ExplorationReward, ActionCost, ImageGoalReward)
}
TERMINATIONS: dict[str, type[RewardHook]] = {h.name: h for h in (GoalReached, Collided)}


def from_spec(spec, table: dict, what: str, built: str = "a callable"):
    """``table[name](**arguments)`` from a spec: a name, or a dict with ``name`` and the arguments.
    ValueError naming a malformed spec, an unknown name or an argument ``table[name]`` does not take;
    ``built`` names what the caller takes ready-made instead."""
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, dict) and "name" in spec:
        kwargs = dict(spec)
        name = kwargs.pop("name")
    else:
        raise ValueError(f"a {what} is a name, a dict with 'name', or {built}; got {spec!r}")
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(table)} or {built}")
    try:
        inspect.signature(table[name]).bind(**kwargs)
    except TypeError:
        takes = [p for p in inspect.signature(table[name]).parameters if p != "self"]
        unknown = sorted(set(kwargs) - set(takes))
        raise ValueError(
            f"{what} {name!r} does not take the argument(s) {unknown or sorted(kwargs)}; it takes {takes}"
        ) from None
    return table[name](**kwargs)


def _build(spec, table: dict, what: str):
    return spec if callable(spec) else from_spec(spec, table, f"{what} hook")


def _weighted(spec) -> tuple[Hook, float]:
    """A reward spec's hook and weight (a dict's ``weight``, default 1)."""
    if isinstance(spec, dict) and "weight" in spec:
        spec = dict(spec)
        weight = check_finite(spec.pop("weight"), f"the weight of reward hook {spec.get('name')!r}")
        return _build(spec, REWARDS, "reward"), weight
    return _build(spec, REWARDS, "reward"), 1.0


def make_reward(spec) -> Hook | None:
    """Reward hook from a spec: None, a callable, a name (``"exploration"``), a dict
    (``{"name": "goal", "goal": [0, 0, 5], "weight": 2.0}``) or a list of those (summed with weights).
    A weight scales its hook alone too (a ``Combined`` of one)."""
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)):
        return Combined([_weighted(s) for s in spec])
    hook, weight = _weighted(spec)
    return hook if weight == 1.0 else Combined([(hook, weight)])


def make_termination(spec) -> Hook | None:
    """Termination hook from a spec, as ``make_reward`` (a list terminates if any member does)."""
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)):
        return AnyOf([_build(s, TERMINATIONS, "termination") for s in spec])
    return _build(spec, TERMINATIONS, "termination")


class Hooks:
    """An env's reward and termination hooks and how they score a step: the one code path of
    ``DeepVerseSim-v0``, ``DeepVerse-v0`` and their ``imagine``, so a task means the same in each.

    Args:
        reward: a ``make_reward`` spec (None: reward 0).  termination: a ``make_termination`` spec
            (None: never terminates).
    """

    def __init__(self, reward=None, termination=None):
        self.reward, self.termination = make_reward(reward), make_termination(termination)

    def check(self, frames: TensorDict, n_actions: int, where: str = "the env", batch: int | None = None) -> None:
        """What an env calls when it installs the hooks: ValueError, naming the cause, unless they take its
        action set and frames. Hooks that know the action count (``ActionCost``'s table) are asked
        (``check_actions``), then a dry-run transition for every action id 0..n_actions-1, from ``frames``
        to themselves, is scored in batches of ``batch`` (the env's own batch size; None: all ids in one
        batch), and the rewards and terminations must hold one value per transition. Nothing is kept.

        Args:
            frames: (1,) a frame of the env's observation keys (any content: e.g. zeros, the identity pose).
            n_actions: the size of the env's action set.  where: how messages name the env.
            batch: transitions per call (a vector env of N worlds: N; ids are cycled to fill the last one).
        """
        n = int(n_actions)
        self._check_actions(n, where)
        B = n if batch is None else int(batch)
        ids = torch.arange(-(-n // B) * B) % n  # every id at least once, in whole batches
        state = frames.expand(B).clone()
        for chunk in ids.split(B):
            try:
                _, reward, done = self.step(state, chunk, state.clone())
            except Exception as e:  # any failure here is a hook that does not fit the env: say so now, not mid-episode
                text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # KeyError's str is a repr
                detail = text if isinstance(e, ValueError) else f"{type(e).__name__}: {text}"
                shape = f"frames of shape {tuple(frames['rgb'].shape[1:])}" if "rgb" in frames.keys() else "its frames"
                raise ValueError(
                    f"the reward/termination hooks cannot score {where}'s transitions (a dry run of action ids "
                    f"{chunk.tolist()} on {shape}): {detail}"
                ) from e
            for what, value in (("reward", reward), ("termination", done)):
                if tuple(value.shape) != (B,):
                    raise ValueError(
                        f"the {what} hook must return one value per transition: shape ({B},) for a batch of {B}, "
                        f"got {tuple(value.shape)}"
                    )

    def _check_actions(self, n: int, where: str) -> None:
        for hook in (self.reward, self.termination):
            if hook is not None:
                try:
                    _check_actions(hook, n)
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from None

    def step(self, state: TensorDict, action, after: TensorDict) -> tuple[TensorDict, Tensor, Tensor]:
        """Score B transitions.

        Args:
            state: (B,) the frames before (the observation keys) and the hooks' state entries.
            action: (B,) action ids.
            after: (B,) the frames after.
        Returns:
            the state after (``after`` with the hooks' updated entries), rewards (B,) float32 and
            terminated (B,) bool.
        """
        B, device = state.batch_size[0], state.device
        td = state.copy()
        td["action"] = torch.as_tensor(action, dtype=torch.long, device=device)
        td["next"] = after.copy()  # the hooks add their entries to the copy, not to the caller's frames
        reward = self.reward(td).float() if self.reward is not None else torch.zeros(B, device=device)
        done = (
            self.termination(td).bool() if self.termination is not None
            else torch.zeros(B, dtype=torch.bool, device=device)
        )
        return td["next"], reward, done

    def rollout(self, state: TensorDict, actions: Tensor, frames: TensorDict) -> TensorDict:
        """Score N imagined sequences of L steps, the hooks' entries carried along each from ``state``.

        Args:
            state: (N,) where each sequence starts.  actions: (N, L) ids.  frames: (N, L) the frames after each step.
        Returns:
            TensorDict (N, L): ``frames`` with ``action``, ``reward`` and ``terminated`` added.
        """
        rewards, dones = [], []
        for t in range(actions.shape[1]):
            state, reward, done = self.step(state, actions[:, t], frames[:, t])
            rewards.append(reward)
            dones.append(done)
        out = frames.clone()
        out["action"] = actions.to(frames.device)
        out["reward"], out["terminated"] = torch.stack(rewards, 1), torch.stack(dones, 1)
        return out


def start_state(state: TensorDict | None, rows: Tensor, first: TensorDict) -> TensorDict:
    """The state of B worlds after worlds ``rows`` (re)start from the frames ``first`` (len(rows),): their
    frames replaced, their hook entries zeroed. A new TensorDict (``state`` is left as it is); ``state``
    None: every world starts now (``first`` holds all B)."""
    if state is None:
        return first.clone()
    state = state.clone()  # never write into frames a caller may hold
    for key in list(state.keys()):
        state[key][rows] = first[key] if key in first.keys() else 0
    return state


class PerWorldHooks(Hooks):
    """One ``Hooks`` per world of a batched env (B of them): each world's transitions are scored by its
    own hooks (a task with a goal per world), through the same ``Hooks.step``. Worlds' hooks must keep
    the same state entries (e.g. the same task with different goals). ``worlds[i]`` may be replaced when
    world i starts a new episode.
    """

    def __init__(self, worlds: Sequence[Hooks]):
        worlds = list(worlds)
        if not worlds or not all(isinstance(h, Hooks) for h in worlds):
            raise ValueError(f"PerWorldHooks needs a non-empty list of Hooks, got {worlds!r}")
        super().__init__()
        self.worlds = worlds

    def check(self, frames: TensorDict, n_actions: int, where: str = "the env", batch: int | None = None) -> None:
        """``Hooks.check`` in batches of ``batch`` transitions, one per world (as a vector env scores them: a
        ``batch`` other than the number of worlds fails); ``batch`` None: each world's hooks on their own."""
        if batch is not None:
            return super().check(frames, n_actions, where, batch)
        for i, hooks in enumerate(self.worlds):
            hooks.check(frames, n_actions, f"{where} (world {i})")

    def _check_actions(self, n: int, where: str) -> None:
        for i, hooks in enumerate(self.worlds):
            hooks._check_actions(n, f"{where} (world {i})")

    def step(self, state: TensorDict, action, after: TensorDict) -> tuple[TensorDict, Tensor, Tensor]:
        B = state.batch_size[0]
        if B != len(self.worlds):
            raise ValueError(f"PerWorldHooks holds hooks for {len(self.worlds)} worlds, got a batch of {B}")
        action = torch.as_tensor(action, dtype=torch.long, device=state.device)
        parts = [h.step(state[i : i + 1], action[i : i + 1], after[i : i + 1]) for i, h in enumerate(self.worlds)]
        states, rewards, dones = zip(*parts)
        return torch.cat(states), torch.cat(rewards), torch.cat(dones)
