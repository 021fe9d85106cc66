"""DeepVerse-v0 under bad inputs: each is a ValueError naming the bad value and what was expected, and
leaves the env as it was, so it goes on exactly like an untouched twin with the same seed and actions.

Snapshots from another world, hooks that cannot score the env (at install and in the middle of a step),
bad seeds and action sequences for ``imagine``, loosely typed settings, a rejected first reset through
``gym.make``; and ``imagine`` in chunks of bounded size. The model is untrained and tiny (a weight-free
pixel codec and a one-block DiT, one flow step: a few ms a chunk).
"""
import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TINY_DIT

import deepverse_env  # noqa: F401  (registers the envs)
from deepverse_env.learned.env import DeepVerseEnv
from deepverse_env.learned.vector_env import DeepVerseVectorEnv
from deepverse_env.learned.world import LearnedEnvConfig, chunk_seed
from deepverse_env.rewards import Hooks, ImageGoalReward, PerWorldHooks
from world_model.model import DeepVerse, DeepVerseConfig
from world_model.rollout import Rollout

SIZE, SEED = 16, 3


def fast_model() -> DeepVerse:
    torch.manual_seed(0)
    return DeepVerse(DeepVerseConfig(codec="pixel", height=SIZE, width=SIZE, dit_overrides=TINY_DIT, sampler=dict(steps=1)))


@pytest.fixture(scope="module")
def model() -> DeepVerse:
    return fast_model()


def started(model, **kwargs) -> DeepVerseEnv:
    """An env reset with SEED that has taken one step (action 1)."""
    env = DeepVerseEnv(checkpoint=model, **kwargs)
    env.reset(seed=SEED)
    env.step(1)
    return env


_TWINS: dict = {}


def twin_step(model, **kwargs) -> tuple:
    """The step (action 5) of an untouched twin: ``started(model, **kwargs)``, computed once per settings."""
    key = (id(model), repr(sorted(kwargs.items())))
    if key not in _TWINS:
        _TWINS[key] = started(model, **kwargs).step(5)
    return _TWINS[key]


def assert_goes_on_like_a_twin(env, **kwargs) -> None:
    """The next step (action 5) of ``env`` is its untouched twin's: same observation, frames and reward."""
    a, b = env.step(5), twin_step(env.world.rollout.model, **kwargs)
    for k in a[0]:
        assert np.array_equal(a[0][k], b[0][k]), k
    for k in a[4]["frames"]:
        assert np.array_equal(a[4]["frames"][k], b[4]["frames"][k]), k
    assert a[1] == b[1]


# ---- 1. snapshots from another world --------------------------------------------------------------


FOREIGN = {
    "cache_max": (lambda m: started(m, cache_max=3).get_state(), r"cache_max=3 \(this world: 6\)"),
    "memory_capacity": (lambda m: started(m, memory_capacity=8).get_state(), r"memory_capacity=8 \(this world: 256\)"),
    "map_points": (lambda m: started(m, map_points=100).get_state(), r"map_points=100 \(this world: 50000\)"),
    # the same weights in another object: its decoder stream is keyed by that model's modules
    "model": (lambda m: started(fast_model()).get_state(), r"model=another model object \(id 0x"),
    "worlds": (lambda m: vector_state(m), r"worlds=2 \(this world: 1\)"),
}


def vector_state(model):
    envs = DeepVerseVectorEnv(2, checkpoint=model)
    envs.reset(seed=SEED)
    return envs.world.get_state()


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_a_snapshot_of_another_world_is_refused_and_changes_nothing(model, name):
    make_state, match = FOREIGN[name]
    env = started(model)
    state = make_state(model)
    with pytest.raises(ValueError, match=f"snapshot was taken from another world: .*{match}"):
        env.set_state(state)
    with pytest.raises(ValueError, match=match):
        env.imagine([[1, 2]], state=state, seed=0)
    assert_goes_on_like_a_twin(env)


@pytest.mark.parametrize("bad", [None, "state", {"rollout": None}], ids=["None", "str", "dict"])
def test_set_state_of_a_non_snapshot_is_refused(model, bad):
    env = started(model)
    with pytest.raises(ValueError, match=rf"state must be a WorldState from get_state\(\), got {type(bad).__name__}"):
        env.set_state(bad)
    assert_goes_on_like_a_twin(env)
    state = env.get_state()  # a snapshot of its own still restores
    first = env.step(2)[0]
    env.set_state(state)
    assert np.array_equal(env.step(2)[0]["rgb"], first["rgb"])


# ---- 2. hooks that cannot score the env -----------------------------------------------------------


def test_hooks_that_cannot_score_every_action_fail_at_construction(model):
    short = {"name": "action_cost", "costs": [0.1, 0.2]}  # 2 costs, 9 actions
    match = r"dry run of every action id 0\.\.8 raised ValueError: action \d+ has no cost.* table has 2 entries"
    with pytest.raises(ValueError, match=match):
        DeepVerseEnv(checkpoint=model, reward=short)
    with pytest.raises(ValueError, match=match):
        DeepVerseVectorEnv(2, checkpoint=model, reward=short)
    with pytest.raises(ValueError, match=r"action \d+ has no cost.* table has 9 entries"):
        DeepVerseEnv(checkpoint=model, text_actions=True, reward={"name": "action_cost", "costs": [0.1] * 9})
    DeepVerseEnv(checkpoint=model, reward={"name": "action_cost", "costs": [0.1] * 9})  # a full table is fine


@pytest.mark.parametrize(
    "hooks, match",
    [
        (Hooks(reward={"name": "action_cost", "costs": [0.5]}), r"action \d+ has no cost.* table has 1 entries"),
        (Hooks(reward=ImageGoalReward(np.zeros((8, 8, 3), np.uint8))), r"goal image \(8, 8, 3\)"),
        (Hooks(reward=lambda td: torch.zeros(1)), r"reward hook gave \(1,\) for a batch of 9; expected \(9,\)"),
        ("goal", "hooks must be a deepverse_env.rewards.Hooks, got 'goal'"),
    ],
    ids=["short-cost-table", "goal-image-size", "reward-shape", "not-hooks"],
)
def test_installing_bad_hooks_is_refused_and_keeps_the_old_ones(model, hooks, match):
    env = started(model, reward="exploration")
    old = env.hooks
    with pytest.raises(ValueError, match=match):
        env.hooks = hooks
    assert env.hooks is old
    assert_goes_on_like_a_twin(env, reward="exploration")


def test_per_world_hooks_are_dry_run_on_every_world(model):
    envs = DeepVerseVectorEnv(2, checkpoint=model)
    envs.reset(seed=SEED)
    with pytest.raises(ValueError, match=r"action \d+ has no cost.* table has 5 entries"):
        envs.world.hooks = PerWorldHooks([Hooks(), Hooks(reward={"name": "action_cost", "costs": [0.1] * 5})])
    envs.world.hooks = PerWorldHooks([Hooks(), Hooks(reward={"name": "action_cost", "costs": [0.1] * 9})])
    assert envs.step([1, 8])[1].tolist() == [0.0, pytest.approx(-0.1)]


def moved_camera_is_an_error(td):
    """Passes the install-time dry run (a transition to the same frame), raises on a real step."""
    if not torch.equal(td["pose"], td["next", "pose"]):
        raise RuntimeError(f"the camera moved by {float((td['pose'] - td['next', 'pose']).abs().max()):.3g}")
    return torch.zeros(td.batch_size[0])


def test_a_hook_raising_mid_step_leaves_the_world_as_it_was(model):
    """The hooks score the chunk before the rollout commits it: a raising hook leaves windows, memory,
    noise, hook state and map untouched, and the env steps on as if the call never came."""
    env = started(model, cache_max=2)  # a window slides at every step: memory is written too
    env.hooks = Hooks(reward=moved_camera_is_an_error)
    world = env.world
    before = (world.rollout.latents.clone(), world.rollout.length.clone(), world.rollout.memory.state.clone(),
              world.generator.get_state(), world.td.clone(), world.maps[0].count)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="the camera moved"):
            env.step(5)
    after = (world.rollout.latents, world.rollout.length, world.rollout.memory.state, world.generator.get_state(),
             world.td, world.maps[0].count)
    for a, b in zip(before[:-1], after[:-1]):
        assert (a == b).all()
    assert before[-1] == after[-1]
    env.hooks = Hooks()
    assert_goes_on_like_a_twin(env, cache_max=2)


# ---- 3. imagine's seed and action sequences -------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seed=-1), r"imagine's seed must be None or an integer in [0, 2**64), got -1"),
        (dict(seed=2**64), r"imagine's seed must be None or an integer in [0, 2**64), got 18446744073709551616"),
        (dict(seed=2.5), r"imagine's seed must be None or an integer in [0, 2**64), got 2.5"),
        (dict(seed=True), r"imagine's seed must be None or an integer in [0, 2**64), got True"),
        (dict(action_sequences=[[0, 1], [2]]), "every sequence of the same length L; got sequences of lengths [2, 1]"),
        (dict(action_sequences=[[0, 9], [12, 1]]), "action_sequences hold ids outside [0, 8]: [9, 12]"),
        (dict(action_sequences=[[0.0, 1.0]]), "non-empty (N, L) integer array, got float64 (1, 2)"),
        (dict(action_sequences=[]), "non-empty (N, L) integer array, got float64 (0,)"),
    ],
    ids=["negative-seed", "seed-2**64", "float-seed", "bool-seed", "ragged", "out-of-range", "float-ids", "empty"],
)
def test_bad_imagine_arguments(model, kwargs, match):
    env = started(model)
    call = dict(action_sequences=[[1, 2]], seed=0) | kwargs
    with pytest.raises(ValueError, match=re.escape(match)):
        env.imagine(**call)
    assert_goes_on_like_a_twin(env)


def test_imagine_seeds_span_64_bits(model):
    env = started(model)
    for seed in (0, 2**63, 2**64 - 1, np.uint64(2**64 - 1)):
        assert torch.isfinite(env.imagine([[1]], seed=seed)["depth"]).all()


# ---- 4. imagine in chunks -------------------------------------------------------------------------


def test_imagine_in_chunks_is_bounded_and_repeatable(model, monkeypatch):
    """imagine_chunk=2: 5 candidates are rolled as 2 + 2 + 1 (a copy of at most 2 worlds at a time);
    chunk k's noise comes from chunk_seed(seed, k), so each chunk is the single call of its candidates."""
    env = started(model, reward="exploration", imagine_chunk=2)
    plans = np.random.default_rng(0).integers(0, 9, size=(5, 2))
    sizes = []
    select = Rollout.select
    monkeypatch.setattr(Rollout, "select", lambda self, index: sizes.append(len(index)) or select(self, index))
    out = env.imagine(plans, seed=7)
    assert sizes == [2, 2, 1]
    assert out.batch_size == torch.Size([5, 2]) and out["rgb"].shape == (5, 2, SIZE, SIZE, 3)
    assert torch.equal(out["action"], torch.from_numpy(plans))
    for k in ("depth", "pose", "intrinsics", "reward", "scale"):
        assert torch.isfinite(out[k]).all(), k
    for k, rows in enumerate((slice(0, 2), slice(2, 4), slice(4, 5))):
        alone = env.imagine(plans[rows], seed=chunk_seed(7, k))  # one chunk: seeded with the seed itself
        for key in ("rgb", "depth", "pose", "reward"):
            assert torch.equal(out[key][rows], alone[key]), (k, key)
    # a call that fits one chunk is what it was before chunking: the default (64) gives the same
    unchunked = started(model, reward="exploration").imagine(plans[:2], seed=7)
    assert torch.equal(unchunked["rgb"], out["rgb"][:2])
    assert chunk_seed(7, 0) == 7 and len({chunk_seed(7, k) for k in range(100)}) == 100


# ---- 5. settings are what they say ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("use_memory", "no", "True or False"),
        ("render_cache", 1, "True or False"),
        ("embodied", "yes", "True or False"),
        ("text_actions", "yes", "True or False"),
        ("cache_max", 6.0, "an integer >= 2"),
        ("cache_max", True, "an integer >= 2"),
        ("cache_max", 1, "an integer >= 2"),
        ("memory_capacity", 0, "an integer >= 1"),
        ("memory_capacity", "256", "an integer >= 1"),
        ("map_points", 1e4, "an integer >= 1"),
        ("imagine_chunk", 0, "an integer >= 1"),
        ("frames_per_step", 4.0, "an integer >= 1"),
        ("fov_deg", 200, r"a number of degrees in \(0, 180\)"),
        ("fov_deg", "wide", r"a number of degrees in \(0, 180\)"),
        ("dtype", 16, r"'auto' or one of \['bfloat16', 'float16', 'float32'\]"),
    ],
)
def test_settings_must_have_their_types(model, name, value, expected):
    match = f"{name} must be {expected}, got {re.escape(repr(value))}"
    with pytest.raises(ValueError, match=match):
        LearnedEnvConfig(**{name: value})
    with pytest.raises(ValueError, match=match):
        gym.make("DeepVerse-v0", checkpoint=model, **{name: value})


def test_numpy_settings_are_accepted(model):
    env = DeepVerseEnv(checkpoint=model, cache_max=np.int64(3), use_memory=np.bool_(False))
    assert env.config.cache_max == 3 and type(env.config.cache_max) is int and env.config.use_memory is False
    env.reset(seed=np.int64(SEED))
    assert env.observation_space.contains(env.step(1)[0])


# ---- 6., 7. resets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options", [{"image": np.zeros((SIZE, 8, 3), np.uint8)}, {"depth": 1.0}], ids=["bad-image", "unknown-option"]
)
def test_a_rejected_first_reset_through_gym_make_leaves_the_env_usable(model, options):
    env, twin = gym.make("DeepVerse-v0", checkpoint=model), gym.make("DeepVerse-v0", checkpoint=model)
    with pytest.raises(ValueError, match=r"options\['image'\] must be .*got shape \(16, 8, 3\)|unknown reset options \['depth'\]"):
        env.reset(seed=SEED, options=options)
    a, b = env.reset(seed=SEED), twin.reset(seed=SEED)
    assert all(np.array_equal(a[0][k], b[0][k]) for k in a[0])
    for action in (1, 5):
        a, b = env.step(action), twin.step(action)
        assert all(np.array_equal(a[0][k], b[0][k]) for k in a[0])


@pytest.mark.parametrize("seed", [-1, 2.5, "3", True], ids=["negative", "float", "str", "bool"])
def test_bad_reset_seeds(model, seed):
    env = started(model)
    with pytest.raises(ValueError, match=f"seed must be None or a non-negative integer, got {re.escape(repr(seed))}"):
        env.reset(seed=seed)
    assert_goes_on_like_a_twin(env)


def test_a_rejected_reset_does_not_reseed(model):
    """The options are checked before np_random is reseeded: the env's own draws (imagine's default
    seed) go on as the twin's."""
    env, twin = started(model), started(model)
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(seed=99, options={"depth": 1.0})
    assert torch.equal(env.imagine([[1, 2]])["rgb"], twin.imagine([[1, 2]])["rgb"])
    assert_goes_on_like_a_twin(env)
