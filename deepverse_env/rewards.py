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
``ActionCost``; ``GoalReached`` and ``Collided`` terminate. ``combine`` sums weighted hooks;
``make_reward`` / ``make_termination`` build them from names (so configs and ``gym.make`` can).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDict
from torch import Tensor

from world_model import geometry as G

Hook = Callable[[TensorDict], Tensor]


class RewardHook:
    """Base for built-in hooks: ``__call__(td) -> (B,)``."""

    name = "hook"

    def __call__(self, td: TensorDict) -> Tensor:
        raise NotImplementedError


def _vec3(value, what: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.shape != (3,) or not torch.isfinite(t).all():
        raise ValueError(f"{what} must be 3 finite numbers (x, y, z) in metres, got {value!r}")
    return t


def _positive(value, what: str) -> float:
    if not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return float(value)


class GoalReward(RewardHook):
    """Progress towards a goal point: the decrease in camera-to-goal distance (m) this step, plus
    ``bonus`` once within ``radius``. Goal in the episode frame (the first camera's, metres)."""

    name = "goal"

    def __init__(self, goal=(0.0, 0.0, 3.0), radius: float = 0.5, bonus: float = 1.0):
        self.goal, self.radius, self.bonus = _vec3(goal, "goal"), _positive(radius, "radius"), float(bonus)

    def distance(self, pose: Tensor) -> Tensor:
        return (pose[..., :3, 3] - self.goal.to(pose)).norm(dim=-1)

    def __call__(self, td: TensorDict) -> Tensor:
        before, after = self.distance(td["pose"]), self.distance(td["next", "pose"])
        return (before - after) + self.bonus * (after < self.radius).float()


class GoalReached(GoalReward):
    """Termination: the camera is within ``radius`` of the goal."""

    name = "goal_reached"

    def __call__(self, td: TensorDict) -> Tensor:
        return self.distance(td["next", "pose"]) < self.radius


class CollisionPenalty(RewardHook):
    """``-penalty`` when the nearest seen surface in the central ``fraction`` of the image is closer
    than ``min_depth`` metres (walking into something)."""

    name = "collision"

    def __init__(self, min_depth: float = 0.3, penalty: float = 1.0, fraction: float = 0.5):
        self.min_depth, self.penalty = _positive(min_depth, "min_depth"), float(penalty)
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        self.fraction = fraction

    def near(self, depth: Tensor) -> Tensor:
        H, W = depth.shape[-3:-1]
        h, w = max(1, round(H * self.fraction)), max(1, round(W * self.fraction))
        centre = depth[..., (H - h) // 2 : (H + h) // 2, (W - w) // 2 : (W + w) // 2, 0]
        return centre.flatten(-2).amin(-1) < self.min_depth

    def __call__(self, td: TensorDict) -> Tensor:
        return -self.penalty * self.near(td["next", "depth"]).float()


class Collided(CollisionPenalty):
    """Termination: the camera is closer than ``min_depth`` to a surface ahead."""

    name = "collided"

    def __call__(self, td: TensorDict) -> Tensor:
        return self.near(td["next", "depth"])


class ExplorationReward(RewardHook):
    """New space seen: the number of voxels of a ``grid``³ lattice of ``voxel`` metres (centred on the
    first camera) that the predicted point cloud of this step touches for the first time, times
    ``per_voxel``. Seen voxels are kept in the state entry ``explored`` (B, grid³) bool; points outside
    the lattice are ignored."""

    name = "exploration"
    key = "explored"

    def __init__(self, voxel: float = 0.5, grid: int = 32, per_voxel: float = 0.01, stride: int = 2):
        self.voxel, self.per_voxel = _positive(voxel, "voxel"), float(per_voxel)
        if int(grid) != grid or grid < 1 or int(stride) != stride or stride < 1:
            raise ValueError(f"grid and stride must be positive integers, got grid={grid!r}, stride={stride!r}")
        self.grid, self.stride = int(grid), int(stride)

    def __call__(self, td: TensorDict) -> Tensor:
        nxt = td["next"]
        B = td.batch_size[0]
        seen = td.get(self.key, None)
        if seen is None:
            seen = torch.zeros(B, self.grid**3, dtype=torch.bool, device=nxt["pose"].device)
        s = self.stride
        depth = nxt["depth"][:, ::s, ::s, 0]  # (B, h, w) every s-th pixel is enough for coverage
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
        self.costs = None if costs is None else torch.as_tensor(costs, dtype=torch.float32)
        if self.costs is not None and (self.costs.dim() != 1 or not torch.isfinite(self.costs).all()):
            raise ValueError(f"costs must be a 1-D sequence of finite numbers, got {costs!r}")
        self.default = float(default)

    def __call__(self, td: TensorDict) -> Tensor:
        a = td["action"].long().reshape(-1)
        if self.costs is None:
            return -self.default * (a != 0).float()
        if a.numel() and (a.min() < 0 or a.max() >= len(self.costs)):
            raise ValueError(f"action {int(a.max())} has no cost; the table has {len(self.costs)} entries")
        return -self.costs.to(a.device)[a]


class Combined:
    """Weighted sum of reward hooks: ``sum(w * hook(td))``."""

    def __init__(self, hooks: Sequence[tuple[Hook, float]]):
        if not hooks:
            raise ValueError("combine needs at least one (hook, weight) pair")
        for hook, w in hooks:
            if not callable(hook):
                raise ValueError(f"{hook!r} is not callable; a hook maps a TensorDict to (B,) rewards")
        self.hooks = [(hook, float(w)) for hook, w in hooks]

    def __call__(self, td: TensorDict) -> Tensor:
        return sum(w * hook(td).float() for hook, w in self.hooks)


class AnyOf:
    """Termination if any of the hooks says so."""

    def __init__(self, hooks: Sequence[Hook]):
        if not hooks:
            raise ValueError("AnyOf needs at least one termination hook")
        self.hooks = list(hooks)

    def __call__(self, td: TensorDict) -> Tensor:
        out = self.hooks[0](td).bool()  # on whatever device the hooks compute
        for hook in self.hooks[1:]:
            out = out | hook(td).bool()
        return out


def combine(*hooks: Hook | tuple[Hook, float]) -> Combined:
    """``combine(GoalReward(...), (CollisionPenalty(), 0.5))``: hooks with optional weights (default 1)."""
    return Combined([h if isinstance(h, tuple) else (h, 1.0) for h in hooks])


REWARDS: dict[str, type[RewardHook]] = {
    h.name: h for h in (GoalReward, CollisionPenalty, ExplorationReward, ActionCost)
}
TERMINATIONS: dict[str, type[RewardHook]] = {h.name: h for h in (GoalReached, Collided)}


def _build(spec, table: dict, what: str):
    if callable(spec):
        return spec
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, dict) and "name" in spec:
        kwargs = dict(spec)
        name = kwargs.pop("name")
        kwargs.pop("weight", None)
    else:
        raise ValueError(f"a {what} hook is a name, a dict with 'name', or a callable; got {spec!r}")
    if name not in table:
        raise ValueError(f"unknown {what} hook {name!r}; expected one of {sorted(table)} or a callable")
    return table[name](**kwargs)


def make_reward(spec) -> Hook | None:
    """Reward hook from a spec: None, a callable, a name (``"exploration"``), a dict
    (``{"name": "goal", "goal": [0, 0, 5], "weight": 2.0}``) or a list of those (summed with weights)."""
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)):
        return Combined([(_build(s, REWARDS, "reward"), s.get("weight", 1.0) if isinstance(s, dict) else 1.0) for s in spec])
    return _build(spec, REWARDS, "reward")


def make_termination(spec) -> Hook | None:
    """Termination hook from a spec, as ``make_reward`` (a list terminates if any member does)."""
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)):
        return AnyOf([_build(s, TERMINATIONS, "termination") for s in spec])
    return _build(spec, TERMINATIONS, "termination")
