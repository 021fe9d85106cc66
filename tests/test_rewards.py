"""Batched reward and termination hooks."""
import pytest
import torch
from tensordict import TensorDict

from world_model import geometry as G
from deepverse_env import rewards as R

H = W = 8


def transition(z_before, z_after, depth_after=5.0, action=None) -> TensorDict:
    """B cameras at (0, 0, z) looking along +z, before and after a step."""
    B = len(z_before)

    def state(zs, depth):
        pose = torch.eye(4).repeat(B, 1, 1)
        pose[:, 2, 3] = torch.tensor(zs, dtype=torch.float32)
        return {
            "rgb": torch.zeros(B, H, W, 3, dtype=torch.uint8),
            "depth": torch.full((B, H, W, 1), depth),
            "pose": pose,
            "intrinsics": G.default_intrinsics(H, W).expand(B, 3, 3),
        }

    td = TensorDict(state(z_before, 5.0), batch_size=[B])
    td["action"] = torch.zeros(B, dtype=torch.long) if action is None else torch.as_tensor(action)
    td["next"] = TensorDict(state(z_after, depth_after), batch_size=[B])
    return td


def test_goal_reward_and_termination():
    td = transition([0.0, 0.0, 2.6], [1.0, -1.0, 2.8])
    r = R.GoalReward(goal=(0, 0, 3), radius=0.5, bonus=1.0)(td)
    assert torch.allclose(r, torch.tensor([1.0, -1.0, 0.2 + 1.0]), atol=1e-5)
    assert R.GoalReached(goal=(0, 0, 3), radius=0.5)(td).tolist() == [False, False, True]


def test_collision_reward_and_termination():
    td = transition([0.0, 0.0], [0.0, 0.0], depth_after=0.2)
    td["next", "depth"][1] = 3.0
    assert R.CollisionPenalty(min_depth=0.3, penalty=2.0)(td).tolist() == [-2.0, 0.0]
    assert R.Collided(min_depth=0.3)(td).tolist() == [True, False]


def test_exploration_counts_new_voxels_once():
    hook = R.ExplorationReward(voxel=0.5, grid=32)
    td = transition([0.0, 0.0], [0.0, 0.0])
    r1 = hook(td)
    assert (r1 > 0).all() and td["next", "explored"].shape == (2, 32**3)
    td2 = transition([0.0, 0.0], [0.0, 0.0])  # the same view again: nothing new
    td2["explored"] = td["next", "explored"]
    assert torch.equal(hook(td2), torch.zeros(2))
    td3 = transition([0.0, 0.0], [0.0, 0.0], depth_after=2.0)  # a nearer wall: new voxels
    td3["explored"] = td["next", "explored"]
    assert (hook(td3) > 0).all()


def test_action_cost_and_combination():
    td = transition([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], action=[0, 1, 2])
    assert R.ActionCost(default=0.1)(td).tolist() == pytest.approx([0.0, -0.1, -0.1])
    assert R.ActionCost([0.0, 1.0, 3.0])(td).tolist() == [0.0, -1.0, -3.0]
    combo = R.combine(R.ActionCost([0.0, 1.0, 3.0]), (R.ActionCost(default=1.0), 0.5))
    assert combo(td).tolist() == pytest.approx([0.0, -1.5, -3.5])
    made = R.make_reward([{"name": "action_cost", "default": 1.0, "weight": 2.0}, "collision"])
    assert made(td).tolist() == pytest.approx([0.0, -2.0, -2.0])
    with pytest.raises(ValueError, match="action 2 has no cost"):
        R.ActionCost([0.0, 1.0])(td)


def test_hook_specs_are_checked():
    with pytest.raises(ValueError, match="unknown reward hook 'treasure'"):
        R.make_reward("treasure")
    with pytest.raises(ValueError, match="unknown termination hook 'goal'"):
        R.make_termination("goal")
    with pytest.raises(ValueError, match="goal must be 3 finite numbers"):
        R.GoalReward(goal=(0, float("nan"), 1))
    with pytest.raises(ValueError, match="radius"):
        R.GoalReward(radius=-1)
    assert R.make_reward(None) is None
    custom = R.make_reward(lambda td: td["next", "pose"][:, 2, 3])
    assert custom(transition([0.0], [2.0])).tolist() == [2.0]
    term = R.make_termination(["goal_reached", {"name": "collided", "min_depth": 10.0}])
    assert term(transition([0.0], [0.0])).tolist() == [True]
