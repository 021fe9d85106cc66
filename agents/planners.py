"""Model-predictive control with sampling planners over discrete action sequences: CEM and MPPI.

A planner refines a categorical distribution per step over the allowed actions. Each of ``iterations``
rounds draws ``population`` sequences of ``horizon`` actions, imagines them in one batched call of the
model's ``imagine(action_sequences, seed=...)``, scores each by the sum of its hook rewards up to its
first termination, and moves the distribution towards the best (CEM: the action frequencies of the
``elites``; MPPI: frequencies weighted by exp(return / ``temperature``)). The model is ``DeepVerse-v0``
(the learned world) or ``DeepVerseSim-v0`` (the true world: the *oracle*, which separates planner quality
from model quality); both have the same ``imagine``. ``act`` re-plans and returns the plan's first action
(MPC); the rest of the plan joins the next call's first population (warm start).

``run_mpc`` runs one task episode in the simulator that way, re-syncing the learned world on the true 4D
frame before every plan (``resync=True``) or imagining open loop from the true first frame:

```python
sim, model = gym.make("DeepVerseSim-v0"), gym.make("DeepVerse-v0")
task, planner = PointGoal(), CEM(horizon=8, population=64)
for seed in task_seeds("eval", 20):
    oracle = run_mpc(task, planner, sim, sim, seed)  # the true world as the model
    synced = run_mpc(task, planner, model, sim, seed)  # the learned world, re-synced on the true frame
    open_loop = run_mpc(task, planner, model, sim, seed, resync=False)
```
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from tensordict import TensorDict

from agents.tasks import Task, check_positive_int
from deepverse_env.rewards import check_positive
from deepverse_env.sim.env import DeepVerseSimEnv


def sequence_returns(imagined: TensorDict) -> np.ndarray:
    """(N,) float64: each imagined sequence's rewards summed up to and including its first termination.

    Args:
        imagined: TensorDict (N, L) with ``reward`` and ``terminated`` (``imagine``'s output).
    """
    terminated = imagined["terminated"].bool()
    ended = terminated.cumsum(1) - terminated.long() > 0  # (N, L) terminated at an earlier step
    return imagined["reward"].masked_fill(ended, 0.0).sum(1).double().cpu().numpy()


class Planner(ABC):
    """A sampling planner over discrete action sequences; subclasses say how returns move the distribution.

    Args:
        horizon: actions per sequence, L.
        population: sequences imagined per round, N.
        iterations: rounds per plan.
        actions: the action ids it may choose (default: every action of the model's ``Discrete`` space).
        alpha: weight of a round's estimate in the distribution's update, in (0, 1] (1: replace it).
        seed: of the sampling and of the imagined noise: the same seed, model and state give the same plan.
        pixels: False imagines poses alone (``imagine(..., pixels=False)``: a learned world's motion model, no MM-DiT;
            the simulator skips its ray-cast): enough for tasks whose rewards read only the camera (point goals).
    """

    name = "planner"

    def __init__(
        self, horizon: int = 8, population: int = 64, iterations: int = 3, actions=None, alpha: float = 0.8, seed: int = 0,
        pixels: bool = True,
    ):
        self.horizon = check_positive_int(horizon, "horizon")
        self.population = check_positive_int(population, "population")
        self.iterations = check_positive_int(iterations, "iterations")
        if actions is not None:
            ids = np.asarray(actions)
            if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer) or len(set(ids.tolist())) != ids.size:
                raise ValueError(f"actions must be a non-empty list of distinct action ids, got {actions!r}")
            actions = ids
        self.actions = actions
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        if not isinstance(pixels, (bool, np.bool_)):
            raise ValueError(f"pixels must be True or False, got {pixels!r}")
        self.pixels = bool(pixels)
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Forget the warm start (a new episode); with ``seed``, restart the random stream from it."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._rest: np.ndarray | None = None  # (L - 1,) the last plan after its first action, as choice indices

    def choices(self, model) -> np.ndarray:
        """(A,) the action ids the planner chooses from for ``model``."""
        space = model.action_space
        if not isinstance(space, gym.spaces.Discrete):
            raise ValueError(f"planners choose among discrete actions; the model's action space is {space}")
        if self.actions is None:
            return np.arange(space.n)
        if self.actions.min() < 0 or self.actions.max() >= space.n:
            raise ValueError(f"actions {self.actions.tolist()} are not all ids of the model's {space.n} actions")
        return self.actions

    def plan(self, model) -> np.ndarray:
        """The action sequence (horizon,) of ids the planner finds from the model's current state."""
        choices = self.choices(model)
        A, L, N = len(choices), self.horizon, self.population
        probs = np.full((L, A), 1.0 / A)  # (L, A) the distribution per step
        best, best_return = None, -math.inf
        for i in range(self.iterations):
            cdf = probs.cumsum(1)
            index = np.minimum((self.rng.random((N, L, 1)) >= cdf[None]).sum(-1), A - 1)  # (N, L) into choices
            if i == 0 and self._rest is not None:  # the rest of the last plan, one fresh action at its end
                index[0] = np.append(self._rest, index[0, -1])
            seed = int(self.rng.integers(2**63))
            pose_only = {} if self.pixels else {"pixels": False}  # a model without the option keeps its signature
            returns = sequence_returns(model.imagine(choices[index], seed=seed, **pose_only))
            probs = (1 - self.alpha) * probs + self.alpha * self._estimate(index, returns, A)
            k = int(returns.argmax())
            if returns[k] > best_return:
                best, best_return = index[k], returns[k]
        plan = self._choose(probs, best)
        self._rest = plan[1:]
        return choices[plan]

    def act(self, model) -> int:
        """Plan from the model's current state and return the first action (MPC)."""
        return int(self.plan(model)[0])

    @staticmethod
    def frequencies(index: np.ndarray, weights: np.ndarray, A: int) -> np.ndarray:
        """(L, A) the weighted frequency of each action per step among sequences ``index`` (N, L)."""
        N, L = index.shape
        out = np.zeros((L, A))
        np.add.at(out, (np.broadcast_to(np.arange(L), (N, L)), index), weights[:, None])
        return out / weights.sum()

    @abstractmethod
    def _estimate(self, index: np.ndarray, returns: np.ndarray, A: int) -> np.ndarray:
        """(L, A) this round's estimate of the distribution, from sequences (N, L) and their returns (N,)."""

    @abstractmethod
    def _choose(self, probs: np.ndarray, best: np.ndarray) -> np.ndarray:
        """(L,) choice indices of the plan, from the final distribution and the best sequence imagined."""


class CEM(Planner):
    """The cross-entropy method: the distribution moves to the action frequencies of the ``elites`` best
    sequences of each round (default: a quarter of the population); the plan is the best sequence imagined.
    Other arguments: ``Planner``'s."""

    name = "cem"

    def __init__(self, horizon: int = 8, population: int = 64, iterations: int = 3, elites: int | None = None, **kwargs):
        population = check_positive_int(population, "population")
        self.elites = max(1, population // 4) if elites is None else check_positive_int(elites, "elites")
        if self.elites > population:
            raise ValueError(f"elites must be at most population ({population!r}), got {elites!r}")
        super().__init__(horizon, population, iterations, **kwargs)

    def _estimate(self, index: np.ndarray, returns: np.ndarray, A: int) -> np.ndarray:
        elite = np.argsort(-returns, kind="stable")[: self.elites]
        return self.frequencies(index[elite], np.ones(len(elite)), A)

    def _choose(self, probs: np.ndarray, best: np.ndarray) -> np.ndarray:
        return best


class MPPI(Planner):
    """Model-predictive path integral control, for discrete actions: the distribution moves to the action
    frequencies weighted by softmax(return / ``temperature``); the plan is its most likely action per step.
    The default temperature suits returns in metres of progress (point goals: a few tenths per step; on 8
    held-out point goals with the simulator as the model, horizon 4, population 16, 2 rounds: 7.4 steps to
    the goal at 0.1 against 12.3 at 1.0, both 8/8). Other arguments: ``Planner``'s."""

    name = "mppi"

    def __init__(self, horizon: int = 8, population: int = 64, iterations: int = 3, temperature: float = 0.1, **kwargs):
        self.temperature = check_positive(temperature, "temperature")
        super().__init__(horizon, population, iterations, **kwargs)

    def _estimate(self, index: np.ndarray, returns: np.ndarray, A: int) -> np.ndarray:
        return self.frequencies(index, np.exp((returns - returns.max()) / self.temperature), A)

    def _choose(self, probs: np.ndarray, best: np.ndarray) -> np.ndarray:
        return probs.argmax(1)


PLANNERS: dict[str, type[Planner]] = {p.name: p for p in (CEM, MPPI)}


def make_planner(name: str, **kwargs) -> Planner:
    """A planner by name (``"cem"``, ``"mppi"``) with its arguments; ValueError naming an unknown one."""
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; expected one of {sorted(PLANNERS)}")
    return PLANNERS[name](**kwargs)


@dataclass
class EpisodeResult:
    """One task episode run by MPC in the simulator."""

    seed: int  # the task seed
    success: bool  # the simulator's true camera reached the goal
    steps: int  # actions executed (at most the task's max_steps)
    episode_return: float  # the simulator's rewards summed: the task's hooks in the true world
    distance: float  # the true distance to the goal at the end, metres
    actions: list[int] = field(default_factory=list)


def run_mpc(task: Task, planner: Planner, model: gym.Env, sim: gym.Env, seed: int, resync: bool = True) -> EpisodeResult:
    """Run the task's episode ``seed`` in the simulator by MPC: plan, execute the plan's first action,
    re-plan, until success, termination, truncation or the task's ``max_steps``.

    Args:
        task: an ``agents.tasks`` task; it draws the episode and installs its hooks in ``sim``.
        planner: a ``Planner``, reset with ``seed`` (the same seed, the same episode).
        model: what the planner imagines with: a ``DeepVerse-v0`` env with the simulator's action set and
            frame size, or ``sim`` itself (the oracle: it plans in the true world).
        sim: a ``DeepVerseSim-v0`` env, where the episode is played and judged.
        seed: the task seed (``agents.tasks.task_seeds``).
        resync: before every plan, restart the learned world from the simulator's true frame (RGB, depth,
            intrinsics; ``DeepVerseEnv.resync``), with the task's hooks given the true pose as ``origin``
            so the goal keeps its place; False: start it from the true first frame only and imagine open
            loop, stepping it with the executed actions. The oracle needs neither.
    """
    learned = model.unwrapped
    oracle = learned is sim.unwrapped
    if not oracle:
        if isinstance(learned, DeepVerseSimEnv) or not hasattr(learned, "resync"):
            raise ValueError(
                f"model must be a DeepVerse-v0 env or the simulator env itself (the oracle), got {type(learned).__name__}"
            )
        if learned.actions.names != sim.unwrapped.actions.names:
            raise ValueError(
                f"the model's action set {learned.actions.name!r} is not the simulator's {sim.unwrapped.actions.name!r}"
            )
    obs, _ = task.reset(sim, seed)
    planner.reset(seed)
    if not oracle:
        model.reset(seed=seed)  # seeds the learned world's noise
    total, actions, success = 0.0, [], task.success(obs["pose"])
    for t in range(task.max_steps):
        if success:
            break
        if not oracle and (resync or t == 0):
            learned.resync(obs)
            learned.hooks = task.hooks(origin=obs["pose"])
        action = planner.act(learned)
        obs, reward, terminated, truncated, _ = sim.step(action)
        if not oracle and not resync:
            model.step(action)
        total += reward
        actions.append(action)
        success = task.success(obs["pose"])
        if terminated or truncated:
            break
    return EpisodeResult(int(seed), success, len(actions), total, task.distance(obs["pose"]), actions)
