"""Planners: CEM and MPPI on a toy model with a known optimum, seeded determinism, the oracle (the simulator
as the model) reaching a point goal, re-syncing the learned world on the true frame, run_mpc, bad arguments."""
import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from test_learned_env import fast_model

import deepverse_env  # noqa: F401  (registers the envs)
from agents.planners import CEM, MPPI, Planner, make_planner, run_mpc, sequence_returns
from agents.tasks import PointGoal, task_seeds
from deepverse_env.sim.env import DeepVerseSimEnv

SIZE = dict(height=16, width=16)
TARGET = np.array([3, 1, 4, 1, 0])


class ToyModel:
    """``imagine`` scores a sequence by how many of its steps match ``TARGET``, plus seeded noise below the
    value of one match; it records what it was asked."""

    action_space = gym.spaces.Discrete(5)

    def __init__(self, noise: float = 0.0):
        self.noise, self.calls = noise, []

    def imagine(self, action_sequences, seed=None) -> TensorDict:
        self.calls.append((action_sequences.copy(), seed))
        a = torch.as_tensor(action_sequences)
        reward = (a == torch.as_tensor(TARGET[: a.shape[1]])).float()
        reward += self.noise * torch.rand(a.shape, generator=torch.Generator().manual_seed(seed % 2**32))
        return TensorDict({"reward": reward, "terminated": torch.zeros(a.shape, dtype=torch.bool)}, batch_size=a.shape)


@pytest.mark.parametrize("planner", [CEM(horizon=5, population=64, iterations=6, elites=6, seed=0),
                                     MPPI(horizon=5, population=64, iterations=6, temperature=0.2, seed=0)])
def test_planners_find_the_optimum_of_a_known_model(planner):
    model = ToyModel(noise=0.1)
    plan = planner.plan(model)
    assert plan.tolist() == TARGET.tolist()
    assert len(model.calls) == 6 and model.calls[0][0].shape == (64, 5)
    assert planner.act(model) == TARGET[0]
    warm = model.calls[6][0][0]  # the next plan's first population starts from the rest of the last plan
    assert warm[:4].tolist() == TARGET[1:].tolist()


def test_planners_are_deterministic_given_a_seed():
    for make in (lambda s: CEM(horizon=3, population=8, iterations=2, elites=2, seed=s),
                 lambda s: MPPI(horizon=3, population=8, iterations=2, seed=s)):
        runs = []
        for seed in (4, 4, 5):
            model = ToyModel(noise=0.5)
            plans = [make(seed).plan(model).tolist() for _ in range(2)]
            runs.append((plans, [(a.tolist(), s) for a, s in model.calls]))
        assert runs[0] == runs[1] and runs[0][1] != runs[2][1]
        planner = make(4)
        first = planner.plan(model := ToyModel(noise=0.5))
        planner.reset(4)  # a new episode with the same seed plans the same
        assert np.array_equal(planner.plan(ToyModel(noise=0.5)), first) and model.calls


def test_returns_stop_at_the_first_termination():
    td = TensorDict(
        {"reward": torch.tensor([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]]),
         "terminated": torch.tensor([[False, True, True], [False, False, False]])},
        batch_size=[2, 3],
    )
    assert sequence_returns(td).tolist() == [3.0, 7.0]


def test_planner_arguments_are_checked():
    for call, match in [
        (lambda: CEM(horizon=0), "horizon must be a positive integer, got 0"),
        (lambda: MPPI(population=2.5), "population must be a positive integer, got 2.5"),
        (lambda: CEM(iterations=-1), "iterations must be a positive integer, got -1"),
        (lambda: CEM(population=4, elites=5), r"elites must be at most population \(4\), got 5"),
        (lambda: MPPI(temperature=0.0), "temperature must be a positive number, got 0.0"),
        (lambda: CEM(alpha=1.5), r"alpha must be in \(0, 1\], got 1.5"),
        (lambda: CEM(actions=[1, 1]), "actions must be a non-empty list of distinct action ids"),
        (lambda: CEM(actions=[0, 7]).plan(ToyModel()), r"actions \[0, 7\] are not all ids of the model's 5 actions"),
        (lambda: make_planner("beam", horizon=2), r"unknown planner 'beam'; expected one of \['cem', 'mppi'\]"),
        (lambda: CEM().plan(gym.make("DeepVerse-v0", checkpoint=fast_model(), text_actions=True).unwrapped), "discrete actions"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()
    assert isinstance(make_planner("mppi", horizon=2), MPPI)


def test_the_oracle_reaches_a_near_point_goal():
    """The planner with the simulator as its model (the oracle) walks to goals 1-1.3 m away and at most 60
    degrees off its heading (a 4-step horizon sees the progress); standing still does not get there (so the
    check can fail)."""
    sim = gym.make("DeepVerseSim-v0", **SIZE)
    task = PointGoal(distance=(1.0, 1.3), max_steps=12)
    ahead = [s for s in task_seeds("eval", 10) if task.goal_observation(task.reset(sim, s)[0]["pose"])["goal"][2] > 0.5]
    for seed in ahead[:2]:
        planner = CEM(horizon=4, population=16, iterations=2, elites=3, actions=[0, 1, 5, 6], seed=0)
        result = run_mpc(task, planner, sim, sim, seed)
        start = np.hypot(task.goal[0], task.goal[2])
        assert result.success and result.distance < 0.5 and result.steps <= 12, result
        assert result.episode_return == pytest.approx(start - result.distance + 1.0, abs=1e-4)  # progress + bonus
    assert run_mpc(task, planner, sim, sim, seed).actions == result.actions, "deterministic given the seed"
    stay = CEM(horizon=1, population=1, iterations=1, elites=1, actions=[0])
    still = run_mpc(PointGoal(distance=(1.0, 1.3), max_steps=3), stay, sim, sim, seed)
    assert not still.success and still.steps == 3 and still.episode_return == 0.0


class Recorder(Planner):
    """A planner that records the learned world it is handed, then acts as a fixed script."""

    def __init__(self, script):
        super().__init__(horizon=1, population=1, iterations=1)
        self.script, self.seen = list(script), []

    def act(self, model) -> int:
        td = model.world.td
        self.seen.append({k: td[k][0].numpy().copy() for k in ("rgb", "depth", "pose")} | {
            "origin": model.hooks.reward.origin.numpy().copy(), "length": int(model.world.rollout.length[0])})
        return self.script[len(self.seen) - 1]

    def _estimate(self, index, returns, A):
        raise AssertionError("not used")

    def _choose(self, probs, best):
        raise AssertionError("not used")


def test_run_mpc_resyncs_the_learned_world_on_the_true_frame():
    sim = gym.make("DeepVerseSim-v0", **SIZE)
    model = gym.make("DeepVerse-v0", checkpoint=fast_model())
    task = PointGoal(max_steps=3)
    seed = task_seeds("eval", 1)[0]
    truth = DeepVerseSimEnv(**SIZE)  # the same episode, to see the true frames
    true_obs = [truth.reset(seed=seed)[0]] + [truth.step(a)[0] for a in (1, 5)]

    planner = Recorder([1, 5, 1])
    result = run_mpc(task, planner, model, sim, seed, resync=True)
    assert result.steps == 3 and result.actions == [1, 5, 1] and not result.success
    for seen, obs in zip(planner.seen, true_obs, strict=True):  # before each plan: the true frame, a new episode frame
        assert np.array_equal(seen["rgb"], obs["rgb"]) and np.array_equal(seen["depth"], obs["depth"])
        assert np.array_equal(seen["pose"], np.eye(4)) and seen["length"] == 1
        assert np.allclose(seen["origin"], obs["pose"]), "the goal is carried by the true pose"

    planner = Recorder([1, 5, 1])
    run_mpc(task, planner, model, sim, seed, resync=False)
    assert [s["length"] for s in planner.seen] == [1, 2, 3], "open loop: the world steps on its own predictions"
    assert np.array_equal(planner.seen[0]["rgb"], true_obs[0]["rgb"])
    assert not np.array_equal(planner.seen[2]["rgb"], true_obs[2]["rgb"])
    assert all(np.array_equal(s["origin"], np.eye(4)) for s in planner.seen)

    learned = run_mpc(task, CEM(horizon=2, population=4, iterations=1, elites=1, seed=1), model, sim, seed)
    assert learned.steps == 3 and np.isfinite(learned.episode_return)

    with pytest.raises(ValueError, match="DeepVerse-v0 env or the simulator env itself"):
        run_mpc(task, planner, DeepVerseSimEnv(**SIZE), sim, seed)
    with pytest.raises(ValueError, match="action set 'deepverse' is not the simulator's 'basic'"):
        run_mpc(task, planner, gym.make("DeepVerse-v0", checkpoint=fast_model(), action_set="deepverse"), sim, seed)


def test_resync_restarts_the_learned_world_from_the_given_frame():
    env = gym.make("DeepVerse-v0", checkpoint=fast_model(), reward="exploration").unwrapped
    frame, _ = DeepVerseSimEnv(**SIZE).reset(seed=9)
    with pytest.raises(gym.error.ResetNeeded):
        env.resync(frame)
    env.reset(seed=0)
    for _ in range(2):
        env.step(1)
    assert env.world.td["explored"].any() and int(env.world.rollout.length[0]) == 3
    obs = env.resync(frame)
    for k in ("rgb", "depth", "intrinsics"):
        assert np.array_equal(obs[k], frame[k]), k
    assert np.array_equal(obs["pose"], np.eye(4, dtype=np.float32))
    assert not np.array_equal(obs["rgb"], env.reset(seed=0)[0]["rgb"])
    env.resync(frame)
    assert int(env.world.rollout.length[0]) == 1 and not env.world.td["explored"].any(), "the world starts afresh"
    assert env.world.scene_seeds[0] == -1 and env.observation_space.contains(env.step(1)[0])
    with pytest.raises(ValueError, match=r"the frame lacks \['depth'\]"):
        env.resync({"rgb": frame["rgb"], "intrinsics": frame["intrinsics"]})
    with pytest.raises(ValueError, match="depth must have dtype torch.float32"):
        env.resync({**frame, "depth": frame["depth"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"rgb must be a tensor of shape \(1, 16, 16, 3\)"):
        env.resync({**frame, "rgb": frame["rgb"][:8]})
    with pytest.raises(ValueError, match="hooks must be a deepverse_env.rewards.Hooks"):
        env.hooks = "goal"
