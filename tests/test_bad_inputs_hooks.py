"""Bad reward/termination specs and reset options: each is a ValueError naming the value and what was
expected, raised before anything changes (seconds: 16x16 simulator frames)."""
import math
import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict

import deepverse_env  # noqa: F401  (registers the envs)
from deepverse_env import rewards as R
from deepverse_env.sim.env import DeepVerseSimEnv
from deepverse_env.sim.vector_env import DeepVerseSimVectorEnv
from world_model import geometry as G

SIZE = dict(height=16, width=16)
NAN, INF = float("nan"), float("inf")


def transition(z_before, z_after, action) -> TensorDict:
    """B cameras at (0, 0, z) looking along +z, 3 m from a wall, before and after a step."""
    B = len(z_before)

    def state(zs):
        pose = torch.eye(4).repeat(B, 1, 1)
        pose[:, 2, 3] = torch.tensor(zs, dtype=torch.float32)
        return {
            "rgb": torch.zeros(B, 8, 8, 3, dtype=torch.uint8),
            "depth": torch.full((B, 8, 8, 1), 3.0),
            "pose": pose,
            "intrinsics": G.default_intrinsics(8, 8).expand(B, 3, 3),
        }

    td = TensorDict(state(z_before), batch_size=[B])
    td["action"] = torch.as_tensor(action)
    td["next"] = TensorDict(state(z_after), batch_size=[B])
    return td


# ---- 1. a single hook's weight ---------------------------------------------------------------------


@pytest.mark.parametrize("weight", [2.0, -0.5, 0, 3])
def test_a_single_weighted_hook_is_weighted(weight):
    td = transition([0.0, 0.0], [1.0, -1.0], [1, 1])
    plain = R.make_reward({"name": "goal", "goal": [0, 0, 10]})(td)
    weighted = R.make_reward({"name": "goal", "goal": [0, 0, 10], "weight": weight})(td)
    assert torch.allclose(weighted, weight * plain) and torch.allclose(plain, torch.tensor([1.0, -1.0]))
    assert torch.allclose(R.make_reward([{"name": "goal", "goal": [0, 0, 10], "weight": weight}])(td), weighted)


def test_weight_one_keeps_the_hook_itself():
    hook = R.make_reward({"name": "goal", "weight": 1.0})
    assert isinstance(hook, R.GoalReward)  # callers may use its distance()


def test_a_weight_on_a_termination_or_a_task_is_refused():
    with pytest.raises(ValueError, match=r"termination hook 'collided' does not take the argument\(s\) \['weight'\]"):
        R.make_termination({"name": "collided", "weight": 2.0})
    from agents.tasks import make_task

    with pytest.raises(ValueError, match=r"task 'point_goal' does not take the argument\(s\) \['weight'\]; it takes \['radius'"):
        make_task({"name": "point_goal", "weight": 2.0})


# ---- 2. non-finite and non-numeric parameters -----------------------------------------------------


@pytest.mark.parametrize(
    "spec, named",
    [
        ({"name": "goal", "weight": NAN}, "weight of reward hook 'goal' must be a finite number, got nan"),
        ({"name": "goal", "weight": INF}, "weight of reward hook 'goal' must be a finite number, got inf"),
        ({"name": "goal", "weight": "2"}, "weight of reward hook 'goal' must be a finite number, got '2'"),
        ({"name": "goal", "weight": True}, "must be a finite number, got True"),
        ([{"name": "collision", "weight": -INF}], "weight of reward hook 'collision' must be a finite number, got -inf"),
        ({"name": "goal", "bonus": NAN}, "bonus must be a finite number, got nan"),
        ({"name": "goal", "bonus": INF}, "bonus must be a finite number, got inf"),
        ({"name": "goal", "radius": INF}, "radius must be a positive number, got inf"),
        ({"name": "goal", "radius": "1"}, "radius must be a positive number, got '1'"),
        ({"name": "goal", "goal": "big"}, "goal must be 3 finite numbers (x, y, z) in metres, got 'big'"),
        ({"name": "goal", "goal": [0, "a", 1]}, "goal must be 3 finite numbers (x, y, z) in metres, got [0, 'a', 1]"),
        ({"name": "goal", "goal": [0, [1], 1]}, "goal must be 3 finite numbers"),
        ({"name": "goal", "planar": "false"}, "planar must be True or False, got 'false'"),
        ({"name": "goal", "origin": "eye"}, "origin must be a finite 4x4 camera-to-world pose, got 'eye'"),
        ({"name": "goal", "origin": np.full((4, 4), NAN)}, "origin must be a finite 4x4"),
        ({"name": "collision", "penalty": "big"}, "penalty must be a finite number, got 'big'"),
        ({"name": "collision", "penalty": NAN}, "penalty must be a finite number, got nan"),
        ({"name": "collision", "min_depth": NAN}, "min_depth must be a positive number, got nan"),
        ({"name": "collision", "fraction": "half"}, "fraction must be a number in (0, 1], got 'half'"),
        ({"name": "collision", "fraction": NAN}, "fraction must be a number in (0, 1], got nan"),
        ({"name": "exploration", "voxel": INF}, "voxel must be a positive number, got inf"),
        ({"name": "exploration", "voxel": 0}, "voxel must be a positive number, got 0"),
        ({"name": "exploration", "per_voxel": NAN}, "per_voxel must be a finite number, got nan"),
        ({"name": "exploration", "grid": INF}, "grid must be a positive integer, got inf"),
        ({"name": "exploration", "grid": NAN}, "grid must be a positive integer, got nan"),
        ({"name": "exploration", "stride": 1.5}, "stride must be a positive integer, got 1.5"),
        ({"name": "action_cost", "default": INF}, "default must be a finite number, got inf"),
        ({"name": "action_cost", "default": "x"}, "default must be a finite number, got 'x'"),
        ({"name": "action_cost", "costs": [0, NAN]}, "costs must be a non-empty 1-D sequence of finite numbers"),
        ({"name": "action_cost", "costs": ["a", "b"]}, "costs must be a non-empty 1-D sequence of finite numbers, one cost per action id, got ['a', 'b']"),
        ({"name": "action_cost", "costs": []}, "costs must be a non-empty 1-D sequence of finite numbers, one cost per action id, got []"),
        ({"name": "image_goal", "goal": np.zeros((8, 8, 3), np.uint8), "pool": "x"}, "pool must be an integer in [1, 8] (the image size), got 'x'"),
        ({"name": "image_goal", "goal": np.zeros((8, 8, 3), np.uint8), "pool": INF}, "pool must be an integer in [1, 8] (the image size), got inf"),
        ({"name": "goal", "radiuss": 1.0}, "reward hook 'goal' does not take the argument(s) ['radiuss']; it takes ['goal', 'radius'"),
        ({"name": 3}, "unknown reward hook 3; expected one of"),
    ],
)
def test_bad_reward_parameters_are_named(spec, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        R.make_reward(spec)


@pytest.mark.parametrize(
    "spec, named",
    [
        ({"name": "goal_reached", "radius": NAN}, "radius must be a positive number, got nan"),
        ({"name": "collided", "min_depth": INF}, "min_depth must be a positive number, got inf"),
        ([{"name": "collided", "fraction": 2}], "fraction must be a number in (0, 1], got 2"),
    ],
)
def test_bad_termination_parameters_are_named(spec, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        R.make_termination(spec)


@pytest.mark.parametrize("weight", [NAN, INF, "x", None])
def test_combine_rejects_bad_weights(weight):
    with pytest.raises(ValueError, match=re.escape(f"the weight of the 'goal' hook must be a finite number, got {weight!r}")):
        R.combine((R.GoalReward(), weight))


def test_finite_parameters_give_finite_rewards():
    td = transition([0.0, 0.0], [1.0, -1.0], [1, 2])
    hook = R.make_reward(
        [{"name": "goal", "bonus": 1e30, "weight": 1e-30}, {"name": "action_cost", "default": -2.5}, "collision"]
    )
    assert torch.isfinite(hook(td)).all()


# ---- 3. action_cost tables that do not fit the action set -----------------------------------------


@pytest.mark.parametrize("action, shown", [([0, 3, 1], "action 3"), ([-1, 0, 1], "action -1")])
def test_action_cost_names_the_action_outside_its_table(action, shown):
    td = transition([0.0] * 3, [0.0] * 3, action)
    with pytest.raises(ValueError, match=re.escape(f"{shown} has no cost: the action_cost table has 3 entries (ids 0..2)")):
        R.ActionCost([0.0, 1.0, 2.0])(td)


@pytest.mark.parametrize("costs", [[0.0, 1.0, 2.0], list(range(10)), list(range(81))])
def test_sim_rejects_a_cost_table_of_the_wrong_length_at_make(costs):
    with pytest.raises(ValueError, match=re.escape(f"action_cost table has {len(costs)} costs but the env has 9 actions")):
        gym.make("DeepVerseSim-v0", reward={"name": "action_cost", "costs": costs}, **SIZE)
    with pytest.raises(ValueError, match=re.escape(f"has {len(costs)} costs but the env has 9 actions")):  # inside a list
        DeepVerseSimVectorEnv(2, reward=["exploration", {"name": "action_cost", "costs": costs, "weight": 2}], **SIZE)


def test_sim_accepts_a_fitting_cost_table_and_scores_it():
    env = gym.make("DeepVerseSim-v0", reward={"name": "action_cost", "costs": [float(i) for i in range(9)]}, **SIZE)
    env.reset(seed=0)
    assert env.step(4)[1] == -4.0


def test_sim_checks_hooks_installed_later_and_keeps_the_old_ones():
    env = DeepVerseSimEnv(reward="exploration", **SIZE)
    old = env.hooks
    with pytest.raises(ValueError, match="action_cost table has 2 costs but the env has 9 actions"):
        env.hooks = R.Hooks({"name": "action_cost", "costs": [0.0, 1.0]})
    with pytest.raises(ValueError, match=re.escape("cannot be compared with a goal image (8, 8, 3)")):
        env.hooks = R.Hooks(R.ImageGoalReward(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(ValueError, match="hooks must be a deepverse_env.rewards.Hooks, got 'goal'"):
        env.hooks = "goal"
    with pytest.raises(ValueError, match=re.escape("the reward hook must return one value per transition: shape (9,)")):
        env.hooks = R.Hooks(lambda td: td["action"].sum())  # a scalar, not one reward per transition
    assert env.hooks is old
    vec = DeepVerseSimVectorEnv(2, **SIZE)
    with pytest.raises(ValueError, match=r"dry run of action ids \[0, 1\].*action 1 has no cost"):
        vec.hooks = R.PerWorldHooks([R.Hooks("goal"), R.Hooks(lambda td: R.ActionCost([0.0])(td))])  # ids 1.. fail
    with pytest.raises(ValueError, match=re.escape("DeepVerseSim-v0 (world 0): the action_cost table has 1 costs")):
        vec.hooks = R.PerWorldHooks([R.Hooks(R.ActionCost([0.0])), R.Hooks("goal")])
    with pytest.raises(ValueError, match="PerWorldHooks holds hooks for 3 worlds, got a batch of 2"):
        vec.hooks = R.PerWorldHooks([R.Hooks("goal")] * 3)
    assert vec.hooks.reward is None
    with pytest.raises(ValueError, match="all tensordicts must have the same keys"):  # worlds' entries differ
        vec.hooks = R.PerWorldHooks([R.Hooks("goal"), R.Hooks("exploration")])
    vec.hooks = R.PerWorldHooks([R.Hooks("goal"), R.Hooks({"name": "goal", "goal": [1, 0, 2]})])  # a goal per world
    # the vector env scores num_envs transitions per call, and so does its dry run
    vec.hooks = R.Hooks(termination=lambda td: torch.tensor([True, False]))


def test_a_hook_that_fails_on_the_dry_run_is_named():
    with pytest.raises(ValueError, match=r"cannot score DeepVerseSim-v0.s transitions.*KeyError: key .nope. not found"):
        gym.make("DeepVerseSim-v0", reward=lambda td: td["nope"], **SIZE)


# ---- 4. reset options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, named",
    [
        ({"scene_sed": 3}, "unknown reset option(s) ['scene_sed'] for DeepVerseSim-v0; the known options are ['scene_seed']"),
        ({"scene_seed": 3, "image": 1}, "unknown reset option(s) ['image']"),
        ("scene_seed", "reset options must be a dict or None, got 'scene_seed'"),
        ({"scene_seed": -1}, "options['scene_seed'] must be None or a non-negative integer (a world seed below 2**63), got -1"),
        ({"scene_seed": 1.5}, "options['scene_seed'] must be None or a non-negative integer"),
        ({"scene_seed": "7"}, "got '7'"),
        ({"scene_seed": True}, "got True"),
        ({"scene_seed": 2**64}, f"got {2**64}"),
    ],
)
def test_bad_reset_options_change_nothing(options, named):
    env = gym.make("DeepVerseSim-v0", **SIZE)
    obs, info = env.reset(seed=5)
    state = env.unwrapped.np_random.bit_generator.state
    with pytest.raises(ValueError, match=re.escape(named)):
        env.reset(seed=6, options=options)
    assert env.unwrapped.np_random.bit_generator.state == state  # not reseeded
    assert env.unwrapped.scene.seed == info["scene_seed"]  # the episode goes on
    assert env.step(0)[0]["rgb"].shape == (16, 16, 3)


@pytest.mark.parametrize(
    "options, named",
    [
        ({"seed": [1, 2]}, "unknown reset option(s) ['seed']"),
        ({"scene_seed": [1, -2]}, "options['scene_seed'][1] must be None or a non-negative integer"),
        ({"scene_seed": "12"}, "options['scene_seed'] must hold 2 seeds, got '12'"),
        ({"scene_seed": [1]}, "must hold 2 seeds"),
    ],
)
def test_bad_vector_reset_options_change_nothing(options, named):
    envs = DeepVerseSimVectorEnv(2, **SIZE)
    _, info = envs.reset(seed=3)
    rngs = envs._rngs
    with pytest.raises(ValueError, match=re.escape(named)):
        envs.reset(seed=4, options=options)
    assert envs._rngs is rngs and list(info["scene_seed"]) == [s.seed for s in envs._scenes]


def test_good_reset_options_still_work():
    env = gym.make("DeepVerseSim-v0", **SIZE)
    assert env.reset(seed=0, options={"scene_seed": np.int64(42)})[1]["scene_seed"] == 42
    assert env.reset(seed=0, options={})[1]["scene_seed"] >= 0
    assert env.reset(options={"scene_seed": None})[1]["scene_seed"] >= 0
    envs = DeepVerseSimVectorEnv(2, **SIZE)
    assert list(envs.reset(options={"scene_seed": [7, None]})[1]["scene_seed"])[0] == 7
    assert math.isfinite(R.check_finite(np.float32(1.5), "x"))
