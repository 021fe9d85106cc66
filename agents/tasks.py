"""Tasks that mean the same in the true and in the learned world: point goals and visual goals.

A task draws its episodes from the simulator (``reset(sim, seed)``: the world and start of ``seed`` and a
goal drawn for them, with the task's hooks installed in the simulator), gives the reward and termination
hooks that score it in either env (``hooks(origin)``: ``deepverse_env.rewards.Hooks``, the one code path
of ``DeepVerseSim-v0``, ``DeepVerse-v0`` and their ``imagine``), what a goal-conditioned agent sees of the
goal (``goal_space`` / ``goal_observation``, for ``deepverse_env.wrappers.GoalObservation``), and judges
success by the simulator's true camera (``success(pose)``, ``distance(pose)``).

Task seeds are simulator reset seeds. ``TASK_SEEDS`` holds the ranges: ``train`` from 0, ``eval`` from
3,000,000, beyond the world model's train / val / test worlds (``world_model.datamodule.SPLIT_SEED_OFFSET``:
0, 1M, 2M), so evaluation worlds are new to the model and to agents trained on the train range.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from deepverse_env.actions import PITCH_LIMIT
from deepverse_env.rewards import GoalReached, GoalReward, Hooks, ImageGoalReward, check_positive, from_spec
from deepverse_env.sim.agent import camera_pose
from deepverse_env.sim.env import DeepVerseSimEnv
from deepverse_env.sim.raycast import SceneBatch, render
from deepverse_env.sim.world import WALL, Scene
from world_model.geometry import unproject

TASK_SEEDS = {"train": range(0, 3_000_000), "eval": range(3_000_000, 4_000_000)}
PATH_STEP = 0.05  # metres between the points checked along a straight path


def task_seeds(split: str, n: int, start: int = 0) -> list[int]:
    """Seeds ``start`` .. ``start + n - 1`` of a split of ``TASK_SEEDS``; ValueError naming a bad split or count."""
    if split not in TASK_SEEDS:
        raise ValueError(f"unknown task seed split {split!r}; expected one of {sorted(TASK_SEEDS)}")
    seeds = TASK_SEEDS[split][start : start + check_positive_int(n, "n")]
    if len(seeds) < n:
        raise ValueError(f"the {split} split holds {len(TASK_SEEDS[split])} seeds; asked for {start} + {n}")
    return list(seeds)


def check_positive_int(value, what: str) -> int:
    """``value`` as an int, or a ValueError naming it unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _interval(value, what: str) -> tuple[float, float]:
    """(lo, hi) metres with 0 < lo <= hi."""
    try:
        lo, hi = (check_positive(v, what) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (lo, hi) metres with 0 < lo <= hi, got {value!r}") from None
    if lo > hi:
        raise ValueError(f"{what} must be (lo, hi) metres with 0 < lo <= hi, got {value!r}")
    return lo, hi


def free_path(scene: Scene, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether the agent fits everywhere on the straight floor path from ``a`` to ``b`` (x, z), absolute."""
    n = max(2, math.ceil(math.dist(a, b) / PATH_STEP) + 1)
    return not any(scene.collides(x, z) for x, z in np.linspace(a, b, n))


class Task(ABC):
    """A task of episodes drawn from the simulator: what ``run_mpc``, the envs and ``GoalObservation`` use.

    Subclasses draw the goal (``_draw``) and give the hooks, the true distance and the goal observation.
    After ``reset``: ``origin`` (4, 4) is the episode frame (the first camera) in the scene's frame.
    """

    name = "task"

    def __init__(self, radius: float, max_steps: int):
        self.radius = check_positive(radius, "radius")  # success within this many metres (true distance)
        self.max_steps = check_positive_int(max_steps, "max_steps")
        self.origin: np.ndarray | None = None

    def reset(self, sim: gym.Env, seed: int, **goal) -> tuple[dict, dict]:
        """Start the task's episode ``seed`` in the simulator: reset it with ``seed`` (its world and start),
        draw the goal (or check the one given in ``goal``, where the task takes one) and install the task's
        hooks in it.

        Returns:
            the simulator's reset observation and info.
        """
        env = sim.unwrapped
        if not isinstance(env, DeepVerseSimEnv):
            raise ValueError(f"tasks draw their episodes from DeepVerseSim-v0, got {type(env).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer (a task seed, see TASK_SEEDS), got {seed!r}")
        obs, info = sim.reset(seed=int(seed))
        self.origin = info["abs_pose"].astype(np.float64)
        self._draw(env, np.random.default_rng(int(seed)), **goal)
        env.hooks = self.hooks()
        return obs, info

    def success(self, pose: np.ndarray) -> bool:
        """Whether the camera at ``pose`` (4, 4), in the episode frame, has reached the goal."""
        return bool(self.distance(pose) < self.radius)

    def to_scene(self, point: np.ndarray) -> np.ndarray:
        """A point (3,) of the episode frame in the scene's frame."""
        return self.origin[:3, :3] @ point + self.origin[:3, 3]

    def _started(self) -> None:
        if self.origin is None:
            raise RuntimeError(f"{type(self).__name__} has no goal yet: call reset(sim, seed) first")

    @abstractmethod
    def _draw(self, env: DeepVerseSimEnv, rng: np.random.Generator, **goal) -> None:
        """Set the goal of the episode the simulator ``env`` has just started."""

    @abstractmethod
    def hooks(self, origin=None) -> Hooks:
        """The task's reward and termination hooks for an env whose episode frame is ``origin`` (4, 4), a
        pose in the task's episode frame (None: the same frame)."""

    @abstractmethod
    def distance(self, pose: np.ndarray) -> float:
        """The true distance (metres) to the goal from the camera at ``pose`` (4, 4) of the episode frame."""

    @abstractmethod
    def goal_space(self, height: int, width: int) -> dict[str, spaces.Space]:
        """The spaces of the goal keys ``goal_observation`` adds."""

    @abstractmethod
    def goal_observation(self, pose: np.ndarray) -> dict[str, np.ndarray]:
        """The goal as the camera at ``pose`` (4, 4) of the episode frame sees it."""


class PointGoal(Task):
    """Reach a point of the floor plan within ``max_steps`` steps: success when the simulator's true camera
    is within ``radius`` metres of it on the floor plan (the x/z plane of the episode frame; heights are
    ignored).

    Hooks: ``GoalReward`` (planar): the progress in metres each step plus ``bonus`` once within
    ``radius``; ``GoalReached`` terminates there. ``goal_observation``: ``goal`` = (distance m, sin, cos
    of the bearing), the bearing being the turn (+ = left, as the actions' yaw) that faces the goal.

    ``reset(sim, seed)`` draws a goal ``distance`` metres (a range) from the start, joined to it by a
    straight line of free floor (the agent's disc fits at every point, ``Scene.collides``), so it is
    reachable by turning and walking straight; ``reset(sim, seed, goal=(x, z))`` takes a given goal in the
    episode frame instead, a ValueError naming it when it is outside the world or inside a wall or object.

    Args:
        radius: success distance, metres.  max_steps: the step budget.
        distance: (lo, hi) metres from the start of drawn goals.  bonus: reward once reached.
    """

    name = "point_goal"

    def __init__(self, radius: float = 0.5, max_steps: int = 30, distance=(1.0, 3.0), bonus: float = 1.0):
        super().__init__(radius, max_steps)
        self.distance_range = _interval(distance, "distance")
        self.bonus = float(bonus)
        self.goal: np.ndarray | None = None  # (3,) (x, 0, z) metres in the episode frame

    def _draw(self, env: DeepVerseSimEnv, rng: np.random.Generator, goal=None) -> None:
        scene = env.scene
        if goal is not None:
            self.goal = self.check_goal(scene, goal)
            return
        start = (self.origin[0, 3], self.origin[2, 3])
        for _ in range(1000):
            d, angle = rng.uniform(*self.distance_range), rng.uniform(-math.pi, math.pi)
            x, z = start[0] + d * math.cos(angle), start[1] + d * math.sin(angle)
            if free_path(scene, start, (x, z)):
                inverse = np.linalg.inv(self.origin)
                self.goal = inverse[:3, :3] @ np.array([x, -scene.eye_height, z]) + inverse[:3, 3]
                self.goal[1] = 0.0  # the camera's height: the first camera is level
                return
        raise RuntimeError(f"no goal {self.distance_range} m from the start joined to it by free floor in scene {scene.seed}")

    def check_goal(self, scene: Scene, goal) -> np.ndarray:
        """The goal (x, z) of the episode frame as (x, 0, z); ValueError naming it when it is not 2 finite
        numbers, outside the world, or where the agent does not fit (in a wall or an object)."""
        g = np.asarray(goal, dtype=np.float64) if np.ndim(goal) == 1 else np.zeros(0)
        if g.shape != (2,) or not np.isfinite(g).all():
            raise ValueError(f"goal must be (x, z): 2 finite numbers, metres on the episode frame's floor plan, got {goal!r}")
        point = np.array([g[0], 0.0, g[1]])
        x, _, z = self.to_scene(point)
        (x0, _, z0), (x1, _, z1) = scene.bounds
        if not (x0 <= x <= x1 and z0 <= z <= z1):
            raise ValueError(
                f"goal {tuple(goal)} is outside the world: it is at ({x:.2f}, {z:.2f}) in the scene's frame, "
                f"whose floor spans x in [{x0:.2f}, {x1:.2f}], z in [{z0:.2f}, {z1:.2f}]"
            )
        if scene.collides(x, z):
            raise ValueError(
                f"goal {tuple(goal)} is inside a wall or an object of scene {scene.seed} (the agent does not fit there)"
            )
        return point

    def hooks(self, origin=None) -> Hooks:
        self._started()
        goal = dict(goal=self.goal, radius=self.radius, planar=True, origin=origin)
        return Hooks(GoalReward(bonus=self.bonus, **goal), GoalReached(**goal))

    def distance(self, pose: np.ndarray) -> float:
        return float(self.hooks().reward.distance(torch.as_tensor(pose, dtype=torch.float32)))

    def goal_space(self, height: int, width: int) -> dict[str, spaces.Space]:
        low = np.array([0.0, -1.0, -1.0], dtype=np.float32)
        return {"goal": spaces.Box(low, np.array([np.inf, 1.0, 1.0], dtype=np.float32), dtype=np.float32)}

    def goal_observation(self, pose: np.ndarray) -> dict[str, np.ndarray]:
        self._started()
        dx, dz = self.goal[0] - pose[0, 3], self.goal[2] - pose[2, 3]
        bearing = math.atan2(-dx, dz) - math.atan2(-pose[0, 2], pose[2, 2])  # goal's yaw minus the camera's
        return {"goal": np.array([math.hypot(dx, dz), math.sin(bearing), math.cos(bearing)], dtype=np.float32)}


class VisualGoal(Task):
    """Reach the object shown in a goal image: success when the simulator's true camera is within
    ``radius`` metres of the object's footprint on the floor plan.

    ``reset(sim, seed)`` picks an object (a box, pillar or sphere) whose footprint is ``distance`` metres
    (a range) from the start, and a free spot ``view`` metres (a range, inside ``radius``: the goal view
    itself succeeds) from it, looking at its centre (pitch within the agent's limit), from where it covers
    at least ``cover`` of the image; ``goal_image`` is that view, rendered at the simulator's frame size and
    field of view. ``target`` is the object: centre (3,), half extents (3,) in the scene's frame, and
    whether its footprint is round.

    Hooks: ``ImageGoalReward``: the progress in coarse similarity (``pool`` x ``pool`` cells) of the frame
    to the goal image, pixels being what a learned world predicts; no termination (success is the true
    distance). ``goal_observation``: ``goal_rgb``, the goal image.

    Args:
        radius: success distance, metres.  max_steps: the step budget.  distance, view: (lo, hi) metres.
        cover: least fraction of the goal image the object covers.  pool: the reward's cells per side.
    """

    name = "visual_goal"

    def __init__(
        self, radius: float = 1.0, max_steps: int = 30, distance=(1.0, 6.0), view=(0.4, 0.9), cover: float = 0.05,
        pool: int = 8,
    ):
        super().__init__(radius, max_steps)
        self.distance_range, self.view = _interval(distance, "distance"), _interval(view, "view")
        if self.view[1] >= self.radius:
            raise ValueError(f"view {view!r} must end inside radius {radius!r}: the goal view itself should succeed")
        if not 0 < cover <= 1:
            raise ValueError(f"cover must be in (0, 1], got {cover!r}")
        self.cover, self.pool = float(cover), check_positive_int(pool, "pool")
        self.goal_image: np.ndarray | None = None  # (H, W, 3) uint8
        self.target: tuple[np.ndarray, np.ndarray, bool] | None = None

    def _draw(self, env: DeepVerseSimEnv, rng: np.random.Generator) -> None:
        scene, batch = env.scene, SceneBatch.stack([env.scene])
        start = (self.origin[0, 3], self.origin[2, 3])
        near = [t for t in objects(scene) if self.distance_range[0] <= footprint_distance(t, *start) <= self.distance_range[1]]
        for k in rng.permutation(len(near)):
            centre, half, _ = target = near[k]
            for _ in range(20):
                angle, d = rng.uniform(-math.pi, math.pi), max(half[0], half[2]) + rng.uniform(*self.view)
                x, z = centre[0] + d * math.cos(angle), centre[2] + d * math.sin(angle)
                if not self.view[0] <= footprint_distance(target, x, z) <= self.view[1] or scene.collides(x, z):
                    continue
                yaw = math.atan2(-(centre[0] - x), centre[2] - z)  # forward (-sin, 0, cos) towards the centre
                up = math.atan2(-centre[1] - scene.eye_height, math.hypot(centre[0] - x, centre[2] - z))  # y is down
                pitch = min(max(up, -PITCH_LIMIT), PITCH_LIMIT)
                c2w = torch.from_numpy(camera_pose(np.array([x, z, yaw, pitch]), scene.eye_height)).float()[None]
                rgb, depth = render(batch, c2w, env.K[None], env.height, env.width)  # (1, H, W, 3), (1, H, W, 1)
                points = unproject(depth[0, ..., 0], env.K, c2w[0]).numpy()  # (H, W, 3) what each pixel sees
                on_target = (np.abs(points - centre) <= half + 0.05).all(-1)
                if on_target.mean() >= self.cover:
                    self.goal_image, self.target = rgb[0].numpy(), target
                    return
        raise RuntimeError(
            f"no object {self.distance_range} m from the start of scene {scene.seed} could be framed in a goal image"
        )

    def hooks(self, origin=None) -> Hooks:
        """The image reward; ``origin`` does not matter (an image is the goal in every frame)."""
        self._started()
        return Hooks(ImageGoalReward(self.goal_image, self.pool))

    def distance(self, pose: np.ndarray) -> float:
        self._started()
        x, _, z = self.to_scene(np.asarray(pose, dtype=np.float64)[:3, 3])
        return float(footprint_distance(self.target, x, z))

    def goal_space(self, height: int, width: int) -> dict[str, spaces.Space]:
        return {"goal_rgb": spaces.Box(0, 255, (height, width, 3), np.uint8)}

    def goal_observation(self, pose: np.ndarray) -> dict[str, np.ndarray]:
        self._started()
        return {"goal_rgb": self.goal_image}


def objects(scene: Scene) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """The scene's objects (not walls) as (centre (3,), half extents (3,), round footprint), absolute."""
    boxes = scene.boxes[scene.box_material != WALL]
    out = [((b[:3] + b[3:]) / 2, (b[3:] - b[:3]) / 2, False) for b in boxes]
    out += [
        (np.array([x, (top + bottom) / 2, z]), np.array([r, (bottom - top) / 2, r]), True)
        for x, z, r, top, bottom in scene.cylinders
    ]
    out += [(np.array([x, y, z]), np.full(3, r), True) for x, y, z, r in scene.spheres]
    return out


def footprint_distance(target: tuple[np.ndarray, np.ndarray, bool], x: float, z: float) -> float:
    """Floor-plan distance (metres) from (x, z) to an object's footprint (0 over it)."""
    centre, half, round_ = target
    dx, dz = abs(x - centre[0]), abs(z - centre[2])
    if round_:
        return max(math.hypot(dx, dz) - half[0], 0.0)
    return math.hypot(max(dx - half[0], 0.0), max(dz - half[2], 0.0))


TASKS: dict[str, type[Task]] = {t.name: t for t in (PointGoal, VisualGoal)}


def make_task(spec) -> Task:
    """A task from a spec: a ``Task`` (as it is), a name (``"point_goal"``) or a dict with ``name`` and
    arguments (``{"name": "point_goal", "radius": 0.3}``); ValueError naming an unknown one."""
    return spec if isinstance(spec, Task) else from_spec(spec, TASKS, "task", built="a Task")
