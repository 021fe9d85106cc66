"""RL on tasks (agents.rl), the agents' evaluation (agents.evaluate) and their CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from agents.evaluate import AGENTS, eval_seeds, evaluate_agents, markdown, wilson
from agents.rl import TaskVecEnv, latest_checkpoint, policy_observation, run_policy, train_ppo
from agents.tasks import TASK_SEEDS, PointGoal
from deepverse_env.cli import main
from deepverse_env.rewards import GoalReward, Hooks, PerWorldHooks
from deepverse_env.sim.env import DeepVerseSimEnv

SHORT = {"name": "point_goal", "max_steps": 2}
TINY_PPO = {"n_steps": 8, "batch_size": 16, "n_epochs": 1}


def frames(poses: torch.Tensor) -> TensorDict:
    B = len(poses)
    return TensorDict({"pose": poses, "rgb": torch.zeros(B, 2, 2, 3, dtype=torch.uint8)}, [B])


def translation(x: float, z: float) -> torch.Tensor:
    pose = torch.eye(4)
    pose[0, 3], pose[2, 3] = x, z
    return pose


def test_per_world_hooks_score_each_world_with_its_own_goal():
    goals = [(0.0, 0.0, 2.0), (2.0, 0.0, 0.0)]
    hooks = PerWorldHooks([Hooks({"name": "goal", "goal": g, "bonus": 0.0}) for g in goals])
    before = frames(torch.eye(4).repeat(2, 1, 1))
    after = frames(torch.stack([translation(0.0, 1.0), translation(0.0, 1.0)]))  # both move 1 m along z
    _, reward, done = hooks.step(before, [1, 1], after)
    assert reward[0] == pytest.approx(1.0)  # straight towards its goal
    assert reward[1] == pytest.approx(2.0 - np.sqrt(5.0))  # away from its goal
    assert not done.any()
    with pytest.raises(ValueError, match="2 worlds, got a batch of 3"):
        hooks.step(frames(torch.eye(4).repeat(3, 1, 1)), [0, 0, 0], frames(torch.eye(4).repeat(3, 1, 1)))
    with pytest.raises(ValueError, match="list of Hooks"):
        PerWorldHooks([GoalReward()])


def test_sim_task_vec_env_steps_restarts_and_is_seeded():
    venv = TaskVecEnv(SHORT, "sim", num_envs=3, seed=5)
    venv.seed(5)
    obs = venv.reset()
    assert obs["goal"].shape == (3, 3) and venv.observation_space.contains({"goal": obs["goal"][0]})
    first_seeds = venv.episode_seeds.copy()
    assert all(s in TASK_SEEDS["train"] for s in first_seeds)
    for i in range(3):  # the goal a world sees is its own task's, from the simulator's camera
        assert np.allclose(obs["goal"][i], policy_observation(venv.tasks[i], venv._frames[i], ())["goal"], atol=1e-5)
    dones = []
    for _ in range(2):  # max_steps 2: every episode ends (terminated or truncated) by the second step
        obs, reward, done, infos = venv.step(np.array([1, 1, 1]))
        dones.append(done)
    assert dones[-1].all() or (dones[0] | dones[1]).all()
    ended = [i for i in range(3) if "terminal_observation" in infos[i]]
    assert ended and all(infos[i]["episode_seed"] == first_seeds[i] for i in ended)
    assert (venv.steps == 0).all()  # restarted at once
    fresh = TaskVecEnv(SHORT, "sim", num_envs=3, seed=5)
    fresh.seed(5)
    fresh.reset()
    assert np.array_equal(fresh.episode_seeds, first_seeds)  # the same seed, the same episodes


def test_learned_task_vec_env_scores_predicted_frames_with_each_worlds_goal():
    venv = TaskVecEnv(SHORT, "learned", num_envs=2, seed=0, render_cache=False)
    venv.seed(0)
    venv.reset()
    assert isinstance(venv.world.hooks, PerWorldHooks)
    before = venv.world.td.clone()
    obs, reward, done, infos = venv.step(np.array([1, 5]))
    for i in range(2):
        goal = venv.tasks[i].hooks().reward
        pose_before, pose_after = before["pose"][i], venv.world.td["pose"][i]
        expected = goal.distance(pose_before) - goal.distance(pose_after) + goal.bonus * float(goal.distance(pose_after) < goal.radius)
        assert reward[i] == pytest.approx(float(expected), abs=1e-5)
        if not done[i]:
            frame = {k: v[i] for k, v in venv.world.observation().items()}
            assert np.allclose(obs["goal"][i], venv.tasks[i].goal_observation(frame["pose"])["goal"], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"world": "moon"}, "world must be one of"),
        ({"split": "test"}, "unknown task seed split"),
        ({"keys": ["depth"]}, "unknown policy observation keys"),
        ({"num_envs": 0}, "num_envs must be a positive integer"),
        ({"world": "sim", "render_cache": False}, "the simulator takes no model arguments"),
        ({"task": "fly"}, "unknown task"),
    ],
)
def test_task_vec_env_bad_arguments(kwargs, match):
    kwargs = {"task": SHORT, "world": "sim", "num_envs": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        TaskVecEnv(**kwargs)


def test_task_vec_env_bad_actions_change_nothing():
    venv = TaskVecEnv(SHORT, "sim", num_envs=2, seed=0)
    venv.reset()
    steps = venv.steps.copy()
    for bad in ([1], [0, 9], [0.5, 1.0]):
        with pytest.raises(ValueError, match="actions must be"):
            venv.step(np.array(bad))
    assert np.array_equal(venv.steps, steps)


def test_train_ppo_resumes_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    train_ppo(SHORT, "sim", 16, out, num_envs=2, save_every=8, progress_bar=False, ppo=TINY_PPO)
    assert latest_checkpoint(out).name == "ppo_16_steps.zip"
    first = json.loads((out / "train.json").read_text())
    assert first["steps_done"] == 16 and first["wall_s"] > 0
    path = train_ppo(SHORT, "sim", 32, out, num_envs=2, save_every=8, progress_bar=False, ppo=TINY_PPO)
    record = json.loads((out / "train.json").read_text())
    assert record["steps_done"] == 32 and latest_checkpoint(out).name == "ppo_32_steps.zip"
    assert record["wall_s"] > first["wall_s"]  # the sessions' wall times add up
    assert path == out / "ppo.zip" and path.is_file()
    with pytest.raises(ValueError, match="other settings"):
        train_ppo(SHORT, "sim", 32, out, num_envs=4, save_every=8, progress_bar=False, ppo=TINY_PPO)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        train_ppo(SHORT, "sim", 0, tmp_path / "other")


def test_run_policy_plays_in_the_simulator():
    from stable_baselines3 import PPO

    venv = TaskVecEnv(SHORT, "sim", num_envs=1)
    policy = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=8, device="cpu")
    task, sim = PointGoal(max_steps=3), DeepVerseSimEnv()
    result = run_policy(task, policy, sim, TASK_SEEDS["eval"][0])
    assert result.steps == len(result.actions) <= 3 and all(0 <= a < 9 for a in result.actions)
    assert result.success == (result.distance < task.radius)
    assert run_policy(task, policy, sim, TASK_SEEDS["eval"][0]).actions == result.actions  # deterministic


def test_wilson_interval():
    assert wilson(0, 10)[0] == 0.0 and 0.2 < wilson(0, 10)[1] < 0.35
    lo, hi = wilson(10, 10)
    assert hi == pytest.approx(1.0) and 0.65 < lo < 0.75
    assert wilson(0, 0) == (0.0, 1.0)


def test_evaluate_agents_writes_results(tmp_path):
    planner = {"horizon": 2, "population": 4, "iterations": 1}
    report = evaluate_agents(SHORT, ["random", "oracle-cem"], 2, tmp_path, planner=planner, progress=False)
    assert report["episodes"] == 2 and report["seeds"] == eval_seeds(PointGoal(), DeepVerseSimEnv(), 2)[0]
    saved = json.loads((tmp_path / "results.json").read_text())
    for name in ("random", "oracle-cem"):
        summary = saved["agents"][name]["summary"]
        assert summary["episodes"] == 2 and 0 <= summary["success_rate"] <= 1
        assert all(e["seed"] in TASK_SEEDS["eval"] for e in saved["agents"][name]["episodes"])
    table = (tmp_path / "results.md").read_text()
    assert table == markdown(saved) and "| oracle-cem |" in table
    assert not any(saved["agents"][name]["partial"] for name in ("random", "oracle-cem"))


def test_an_interrupted_evaluation_keeps_the_episodes_played(tmp_path, monkeypatch):
    import agents.evaluate as E

    played = []

    def run_policy(*args):
        if played:
            raise KeyboardInterrupt  # the user stops a long evaluation during its second episode
        played.append(original(*args))
        return played[-1]

    original = E.run_policy
    monkeypatch.setattr(E, "run_policy", run_policy)
    with pytest.raises(KeyboardInterrupt):
        evaluate_agents(SHORT, ["random"], 3, tmp_path, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["agents"]["random"]["partial"] and saved["agents"]["random"]["summary"]["episodes"] == 1
    assert "| random (partial) | " in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"agents": ["genius"]}, "unknown agents"),
        ({"agents": []}, "unknown agents"),
        ({"agents": ["ppo-sim"]}, "needs a trained run"),
        ({"episodes": 0}, "episodes must be a positive integer"),
        ({"start": -1}, "start must be a non-negative integer"),
    ],
)
def test_evaluate_agents_bad_arguments(tmp_path, kwargs, match):
    kwargs = {"task": SHORT, "agents": ["random"], "episodes": 1, "out": tmp_path / "x", **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate_agents(**kwargs)
    assert not (tmp_path / "x").exists()  # nothing written


def test_cli_agents_eval_and_errors(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["agents", "eval", "--agents", "random", "--episodes", "1", "--out", str(out), "--no-progress",
                 "--task-args", '{"max_steps": 2}']) == 0
    assert json.loads(capsys.readouterr().out)["random"]["episodes"] == 1
    with pytest.raises(SystemExit) as e:
        main(["agents", "eval", "--agents", "genius", "--out", str(out)])
    assert e.value.code == 2 and "deepverse agents eval: error: unknown agents" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["agents", "train", "--world", "sim", "--steps", "8", "--out", str(tmp_path / "t"), "--task-args", "[1]"])
    assert "--task-args must be a JSON object" in capsys.readouterr().err
    assert set(AGENTS) >= {"random", "cem", "mppi", "oracle-cem", "ppo-imagination", "ppo-sim"}
