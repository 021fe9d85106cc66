"""Tasks: one hook code path in both worlds, point goals and visual goals drawn from the simulator, the goal
observation wrapper. Frames are 16 x 16 (64 x 64 where SB3's CNN needs it)."""
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from test_learned_env import fast_model

import deepverse_env  # noqa: F401  (registers the envs)
from agents.tasks import TASK_SEEDS, PointGoal, VisualGoal, free_path, make_task, objects, task_seeds
from deepverse_env.learned.env import DeepVerseEnv
from deepverse_env.rewards import GoalReward, Hooks, ImageGoalReward
from deepverse_env.sim.env import DeepVerseSimEnv
from deepverse_env.sim.vector_env import DeepVerseSimVectorEnv
from deepverse_env.wrappers import GoalObservation, SB3Observation

SIZE = dict(height=16, width=16)
GOAL = {"goal": [0.0, 0.0, 1.0], "planar": True}
HOOKS = dict(
    reward=[{"name": "goal", **GOAL}, "exploration", {"name": "action_cost", "weight": 2.0}],
    termination={"name": "goal_reached", "radius": 0.5, **GOAL},
)
ACTIONS = [1, 5, 1, 1, 6, 2, 0]  # forward, turn left, forward x2, turn right, backward, stay


def episode_point(task, x: float, z: float) -> tuple[float, float]:
    """The (x, z) of the episode frame of a point (x, z) of the scene's frame."""
    inverse = np.linalg.inv(task.origin)
    p = inverse[:3, :3] @ np.array([x, -1.5, z]) + inverse[:3, 3]
    return float(p[0]), float(p[2])


def test_hooks_score_identical_transitions_identically_in_both_envs():
    """The learned world, its rollout replaced by a replay of the simulator's chunks, sees the simulator's
    transitions: the same hook specs give the same rewards and terminations step for step (carried
    exploration state included), as do the simulator's vector env and its ``imagine``."""
    sim = DeepVerseSimEnv(**SIZE, **HOOKS)
    vec = DeepVerseSimVectorEnv(1, **SIZE, **HOOKS)
    learned = DeepVerseEnv(checkpoint=fast_model(), **HOOKS)
    replayed = DeepVerseSimEnv(**SIZE)  # where the learned world's frames come from
    sim.reset(seed=5)
    vec.reset(seed=5)
    learned.reset(seed=5)
    replayed.reset(seed=5)
    world_sentences = learned.world.sentences

    def replay(sentences=None, before_commit=None, *, commands=None):  # Rollout.step's signature
        assert commands is None, "the fast model has no motion model: it is driven by sentences"
        *_, info = replayed.step(world_sentences.index(sentences[0]))
        learned.world.rollout.sentences = list(sentences)  # what Rollout.step records
        chunk = TensorDict({k: torch.from_numpy(v)[None] for k, v in info["frames"].items()}, batch_size=[1, 4])
        if before_commit is not None:
            before_commit(chunk)  # Rollout.step's contract: score before the step is committed
        return chunk

    learned.world.rollout.step = replay
    imagined = sim.imagine(np.array([ACTIONS]))
    rewards, ends = [], []
    for a in ACTIONS:
        _, reward, terminated, _, _ = sim.step(a)
        _, l_reward, l_terminated, _, _ = learned.step(a)
        assert reward == l_reward and terminated == l_terminated, a
        if not any(ends):  # the vector env restarts a world after it terminates
            _, v_reward, v_terminated, _, _ = vec.step([a])
            assert reward == v_reward[0] and terminated == v_terminated[0], a
        rewards.append(reward)
        ends.append(terminated)
    assert np.allclose(imagined["reward"][0].numpy(), rewards) and imagined["terminated"][0].tolist() == ends
    assert any(ends) and not all(ends) and len(set(rewards)) > 3, "a test of nothing: vary the goal or the actions"
    assert "explored" in sim._td.keys() and torch.equal(sim._td["explored"], learned.world.td["explored"])


def test_imagine_leaves_the_simulator_as_it_was():
    env, twin = DeepVerseSimEnv(**SIZE, reward="exploration"), DeepVerseSimEnv(**SIZE, reward="exploration")
    for e in (env, twin):
        e.reset(seed=2)
        e.step(1)
    imagined = env.imagine(np.array([[1, 1], [5, 6], [2, 0]]))
    assert imagined.batch_size == torch.Size([3, 2]) and imagined["rgb"].shape == (3, 2, 16, 16, 3)
    assert torch.equal(imagined["action"], torch.tensor([[1, 1], [5, 6], [2, 0]]))
    a, b = env.step(5), twin.step(5)
    assert np.array_equal(a[0]["rgb"], b[0]["rgb"]) and a[1] == b[1]
    assert np.array_equal(imagined["pose"][1, 0].numpy(), a[0]["pose"]), "imagined turn = true turn"
    with pytest.raises(ValueError, match="outside"):
        env.imagine(np.full((1, 2), 9))
    with pytest.raises(gym.error.ResetNeeded):
        DeepVerseSimEnv(**SIZE).imagine(np.zeros((1, 1), dtype=int))


def test_goal_origin_keeps_the_goal_in_place_in_a_resynced_frame():
    """A world re-synced at camera P measures poses from P: with ``origin=P`` its distances are the
    episode frame's."""
    g = torch.Generator().manual_seed(0)
    yaw, pitch = 0.7, -0.3
    R = torch.tensor([[math.cos(yaw), 0, -math.sin(yaw)], [0, 1, 0], [math.sin(yaw), 0, math.cos(yaw)]])
    R = R @ torch.tensor([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    P = torch.eye(4)
    P[:3, :3], P[:3, 3] = R, torch.tensor([1.0, 0.0, 2.0])
    later = torch.eye(4).repeat(5, 1, 1)
    later[:, :3, 3] = torch.randn(5, 3, generator=g)  # camera positions in P's frame
    for planar in (False, True):
        there = GoalReward(goal=(2.0, 0.0, 5.0), planar=planar, origin=P)
        here = GoalReward(goal=(2.0, 0.0, 5.0), planar=planar)
        assert torch.allclose(there.distance(later), here.distance(P @ later), atol=1e-5)
        assert not torch.allclose(here.distance(later), here.distance(P @ later))
    with pytest.raises(ValueError, match="origin must be a finite 4x4"):
        GoalReward(origin=torch.eye(3))


def test_point_goals_are_seeded_reachable_and_checked():
    sim = gym.make("DeepVerseSim-v0", **SIZE)
    task = PointGoal(distance=(1.0, 3.0))
    goals = {}
    for seed in task_seeds("eval", 4):
        obs, info = task.reset(sim, seed)
        goals[seed] = task.goal.copy()
        scene = sim.unwrapped.scene
        x, _, z = task.to_scene(task.goal)
        assert 1.0 - 1e-6 <= math.hypot(x - task.origin[0, 3], z - task.origin[2, 3]) <= 3.0 + 1e-6
        assert free_path(scene, (task.origin[0, 3], task.origin[2, 3]), (x, z)) and not scene.collides(x, z)
        assert task.goal[1] == 0.0
        assert task.distance(obs["pose"]) == pytest.approx(math.hypot(task.goal[0], task.goal[2]), abs=1e-5)
        assert not task.success(obs["pose"]) and sim.unwrapped.hooks.reward.goal.tolist() == pytest.approx(task.goal.tolist())
    assert len({tuple(g) for g in goals.values()}) == 4
    for seed, goal in goals.items():  # the same seed, the same world, start and goal
        task.reset(sim, seed)
        assert np.array_equal(task.goal, goal)

    task.reset(sim, seed)
    scene = sim.unwrapped.scene
    box = scene.boxes[scene.boxes[:, 4] > -scene.agent_height][0]  # a wall (or object) standing on the floor
    inside = episode_point(task, (box[0] + box[3]) / 2, (box[2] + box[5]) / 2)
    with pytest.raises(ValueError, match=r"goal \(.*\) is inside a wall or an object"):
        task.reset(sim, seed, goal=inside)
    with pytest.raises(ValueError, match=r"goal \(1000.0, 0.0\) is outside the world"):
        task.reset(sim, seed, goal=(1000.0, 0.0))
    with pytest.raises(ValueError, match="goal must be \\(x, z\\)"):
        task.reset(sim, seed, goal=(float("nan"), 1.0))
    task.reset(sim, seed, goal=(0.0, 0.0))  # the start is free
    assert task.goal.tolist() == [0.0, 0.0, 0.0]


def test_bad_task_arguments_name_the_value():
    sim = gym.make("DeepVerseSim-v0", **SIZE)
    for call, match in [
        (lambda: make_task("treasure_hunt"), r"unknown task 'treasure_hunt'; expected one of \['point_goal', 'visual_goal'\]"),
        (lambda: make_task(3), "a task is a name, a dict with 'name', or a Task; got 3"),
        (lambda: PointGoal(radius=0), "radius must be a positive number, got 0"),
        (lambda: PointGoal(max_steps=0), "max_steps must be a positive integer, got 0"),
        (lambda: PointGoal(distance=(3.0, 1.0)), r"distance must be \(lo, hi\) metres with 0 < lo <= hi, got \(3.0, 1.0\)"),
        (lambda: VisualGoal(radius=0.5, view=(0.4, 0.9)), "view .* must end inside radius 0.5"),
        (lambda: task_seeds("test", 3), r"unknown task seed split 'test'; expected one of \['eval', 'train'\]"),
        (lambda: task_seeds("eval", 0), "n must be a positive integer, got 0"),
        (lambda: PointGoal().reset(DeepVerseEnv(checkpoint=fast_model()), 0), "from DeepVerseSim-v0, got DeepVerseEnv"),
        (lambda: PointGoal().reset(sim, -1), "seed must be a non-negative integer"),
        (lambda: DeepVerseSimEnv(**SIZE, reward="teleport"), "unknown reward hook 'teleport'"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()
    assert isinstance(make_task({"name": "point_goal", "radius": 0.3}), PointGoal) and make_task("point_goal").radius == 0.5
    assert TASK_SEEDS["eval"].start >= 3_000_000 and set(TASK_SEEDS["train"]).isdisjoint(task_seeds("eval", 3))
    with pytest.raises(RuntimeError, match="call reset"):
        PointGoal().hooks()


def test_visual_goal_image_and_true_distance():
    sim = gym.make("DeepVerseSim-v0", **SIZE)
    task = VisualGoal()
    seed = next(s for s in task_seeds("eval", 20) if framed(task, sim, s))
    obs, _ = task.reset(sim, seed)
    image = task.goal_image
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert not np.array_equal(image, obs["rgb"])
    centre, half, _ = task.target
    assert 1.0 <= task.distance(obs["pose"]) <= 6.0 and not task.success(obs["pose"])
    at_object = np.linalg.inv(task.origin)  # a camera standing at the object's centre
    at_object[:3, 3] = at_object[:3, :3] @ centre + at_object[:3, 3]
    assert task.distance(at_object) == 0.0 and task.success(at_object)
    again = VisualGoal()
    again.reset(sim, seed)
    assert np.array_equal(again.goal_image, image), "the same seed, the same goal image"

    hook = task.hooks().reward
    assert isinstance(hook, ImageGoalReward)
    before = TensorDict({"rgb": torch.from_numpy(obs["rgb"])[None]}, [1])
    td = before.copy()
    td["next"] = TensorDict({"rgb": torch.from_numpy(image)[None]}, [1])
    assert hook(td).item() > 0 and hook.similarity(td["next", "rgb"]).item() == 0.0  # arriving at the view pays
    with pytest.raises(ValueError, match="cannot be compared with a goal image"):
        hook.similarity(torch.zeros(1, 8, 8, 3, dtype=torch.uint8))
    empty = next(s for s in range(50) if not objects(scene_of(s)))  # a world without objects
    with pytest.raises(RuntimeError, match="could be framed"):
        task.reset(sim, empty)


def scene_of(seed: int):
    env = DeepVerseSimEnv(**SIZE)
    env.reset(seed=seed)
    return env.scene


def framed(task, sim, seed: int) -> bool:
    try:
        task.reset(sim, seed)
    except RuntimeError:
        return False
    return True


@pytest.mark.filterwarnings("ignore:.*infinity")  # pose and depth are unbounded by design
def test_goal_observation_for_sb3_and_both_envs():
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    sim = gym.make("DeepVerseSim-v0", height=64, width=64)
    task = PointGoal()
    task.reset(sim, task_seeds("eval", 1)[0])
    env = SB3Observation(GoalObservation(sim, task))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env)
    assert not [str(w.message) for w in caught]
    obs, _ = task.reset(sim, 3_000_001)
    wrapped = GoalObservation(sim, task).observation(obs)
    distance, sin, cos = wrapped["goal"]
    assert distance == pytest.approx(task.distance(obs["pose"]), abs=1e-5) and sin**2 + cos**2 == pytest.approx(1.0)
    bearing = math.atan2(sin, cos)  # + = left: the goal's camera x (right) has the opposite sign
    assert math.copysign(1, bearing) == -math.copysign(1, task.goal[0])
    assert env.observation(wrapped)["goal"].tolist() == wrapped["goal"].tolist()  # passed through for SB3

    learned = GoalObservation(gym.make("DeepVerse-v0", checkpoint=fast_model()), task)
    obs, _ = learned.reset(seed=0)
    assert learned.observation_space.contains(obs) and obs["goal"][0] == pytest.approx(np.hypot(task.goal[0], task.goal[2]))
    assert learned.observation_space.contains(learned.step(1)[0])
    with pytest.raises(ValueError, match=r"goal keys \['goal'\] are in the observation already"):
        GoalObservation(GoalObservation(sim, task), task)
    visual = VisualGoal()
    assert set(GoalObservation(sim, visual).observation_space.spaces) == {"rgb", "depth", "pose", "intrinsics", "goal_rgb"}


def test_hooks_in_the_vector_simulator_restart_with_their_worlds():
    envs = DeepVerseSimVectorEnv(2, **SIZE, reward="exploration", termination=lambda td: torch.tensor([True, False]))
    envs.reset(seed=0)
    _, reward, terminated, _, _ = envs.step([1, 1])
    assert terminated.tolist() == [True, False] and (reward > 0).all()
    _, reward, terminated, _, _ = envs.step([1, 1])  # world 0 restarts: reward 0, its explored voxels cleared
    assert reward[0] == 0.0 and not terminated[0]
    assert not envs._td["explored"][0].any() and envs._td["explored"][1].any()
    assert isinstance(envs.hooks, Hooks)
