"""DeepVerse-v0: env contract, the simulator's semantics, start loaders, determinism, bad inputs, bounded
memory, the native vector env, the planner API, SB3, rendering and export.

Models are untrained and tiny (a weight-free pixel codec and a one-block DiT, one flow step: a few ms
a chunk), so the checks are about the env, not about what the model has learned.
"""
import json
import mmap
import os
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TINY_DIT, tiny_config
from gymnasium.utils.env_checker import check_env

import deepverse_env  # noqa: F401  (registers the envs)
import world_model.model
from deepverse_env.export import read_ply
from deepverse_env.learned.env import DeepVerseEnv
from deepverse_env.learned.starts import EpisodeStarts, SimulatorStarts
from deepverse_env.learned.vector_env import DeepVerseVectorEnv
from deepverse_env.sim.env import DeepVerseSimEnv
from deepverse_env.spaces import Sentences
from deepverse_env.wrappers import SB3Observation
from world_model.episodes import list_episodes, load_episode
from world_model.model import DeepVerse, DeepVerseConfig
from world_model.text import SENTENCES

SIZE = 16


def fast_model(size: int = SIZE) -> DeepVerse:
    torch.manual_seed(0)
    config = DeepVerseConfig(
        codec="pixel", height=size, width=size, dit_overrides=TINY_DIT, sampler=dict(steps=1)
    )
    return DeepVerse(config)


@pytest.fixture(scope="module")
def model() -> DeepVerse:
    return fast_model()


def make(model, **kwargs) -> gym.Env:
    return gym.make("DeepVerse-v0", checkpoint=model, **kwargs)


def episode(env: gym.Env, seed: int, actions, options=None) -> list:
    obs, info = env.reset(seed=seed, options=options)
    out = [(obs, 0.0, info)]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out.append((obs, reward, info))
    return out


def assert_same(a: list, b: list) -> None:
    for (obs_a, r_a, info_a), (obs_b, r_b, info_b) in zip(a, b, strict=True):
        for k in obs_a:
            assert np.array_equal(obs_a[k], obs_b[k]), k
        for k in info_a.get("frames", {}):
            assert np.array_equal(info_a["frames"][k], info_b["frames"][k]), k
        assert r_a == r_b


def pygame_available() -> bool:
    try:
        import pygame  # noqa: F401
    except ImportError:
        return False
    return True


# ---- contract -------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*infinity")  # pose and depth are unbounded by design
def test_check_env(tmp_path, monkeypatch):
    """gymnasium's checker on the registered env, loaded from a saved checkpoint (the tiny VAE codec),
    also through the module-qualified id that needs no import, and in text-action mode."""
    DeepVerse(tiny_config()).save_pretrained(tmp_path / "ckpt")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    env = gym.make("deepverse_env:DeepVerse-v0", checkpoint=tmp_path / "ckpt", sampler={"steps": 1})
    check_env(env.unwrapped, skip_render_check=not pygame_available())
    check_env(make(fast_model(), text_actions=True).unwrapped, skip_render_check=True)


@pytest.mark.filterwarnings("ignore:.*infinity")  # pose is unbounded by design
def test_a_model_without_depth_observes_no_depth(model, tmp_path):
    """The no-depth ablation as DeepVerse-v0: no depth key in the spaces, observations and frames, nothing made up;
    rendering, snapshots, imagine and the vector env work, and what needs depth says so."""
    torch.manual_seed(0)
    config = DeepVerseConfig(codec="pixel", height=SIZE, width=SIZE, dit_overrides=TINY_DIT, sampler=dict(steps=1),
                             codec_overrides={"use_depth": False})
    DeepVerse(config).save_pretrained(tmp_path / "no_depth")
    env = gym.make("DeepVerse-v0", checkpoint=tmp_path / "no_depth", render_mode="rgb_array")
    assert set(env.observation_space.spaces) == {"rgb", "pose", "intrinsics"}
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    obs, _, _, _, info = env.step(1)
    assert env.observation_space.contains(obs) and set(info["frames"]) == {"rgb", "pose", "intrinsics"}
    with_depth = make(model, render_mode="rgb_array")
    with_depth.reset(seed=0)
    assert env.render().shape == with_depth.render().shape  # the same layout, a black depth tile
    snapshot = env.unwrapped.get_state()
    first = env.step(2)[0]
    env.unwrapped.set_state(snapshot)
    again = env.step(2)[0]
    assert all(np.array_equal(first[k], again[k]) for k in first)
    imagined = env.unwrapped.imagine(np.ones((2, 3), dtype=int), seed=0)
    assert "depth" not in imagined.keys() and imagined["rgb"].shape == (2, 3, SIZE, SIZE, 3)
    true, _ = DeepVerseSimEnv(height=SIZE, width=SIZE).reset(seed=1)
    assert "depth" not in env.unwrapped.resync(true)  # a true 4D frame re-syncs it: its depth sets the scale
    for hook in ("collision", "exploration"):
        with pytest.raises(ValueError, match=f"the {hook} hook needs depth, and these frames have none"):
            gym.make("DeepVerse-v0", checkpoint=tmp_path / "no_depth", reward=hook)
    with pytest.raises(ValueError, match="SB3Observation needs the depth key"):
        SB3Observation(env)
    with pytest.raises(ValueError, match="no depth .*no point cloud"):
        env.unwrapped.export_point_cloud(tmp_path / "cloud.ply")
    envs = DeepVerseVectorEnv(2, checkpoint=tmp_path / "no_depth")
    obs, _ = envs.reset(seed=0)
    obs, _, _, _, info = envs.step([1, 2])
    assert envs.observation_space.contains(obs) and "depth" not in info["frames"]


def test_spaces_and_step_match_the_simulator(model):
    env = make(model, action_set="deepverse")
    sim = DeepVerseSimEnv(action_set="deepverse", height=SIZE, width=SIZE)
    assert env.action_space == sim.action_space and env.observation_space == sim.observation_space
    obs, info = env.reset(seed=5)
    sim_obs, sim_info = sim.reset(seed=5)
    for k in obs:  # the same simulator world and view: its exact depth and intrinsics are the first frame
        assert np.array_equal(obs[k], sim_obs[k]), k
    assert info["scene_seed"] == sim_info["scene_seed"] and info["scale"] > 0
    for a in (1, 13, 26):
        obs, reward, terminated, truncated, info = env.step(a)
        assert env.observation_space.contains(obs)
        frames = info["frames"]
        assert {k: v.shape for k, v in frames.items()} == {
            "rgb": (4, SIZE, SIZE, 3), "depth": (4, SIZE, SIZE, 1), "pose": (4, 4, 4), "intrinsics": (4, 3, 3)
        }
        for k in obs:
            assert np.array_equal(frames[k][-1], obs[k]), "the observation is the chunk's last frame"
        assert info["sentence"] == env.unwrapped.actions[a].sentence and info["scale"] > 0
        assert reward == 0.0 and not terminated and not truncated
    assert env.spec.max_episode_steps == 500


def test_start_loaders(model, tiny_episodes, tmp_path):
    """First frames come from the ``starts`` loader: recorded episodes (seed s: episode s % n, no seed: the
    next one, also at a vector env's autoreset) or the simulator at another field of view."""
    firsts = [load_episode(path)[0][0] for path in list_episodes(tiny_episodes)]  # 6 episodes
    env = make(model, starts=EpisodeStarts(tiny_episodes))
    for seed, episode_index in ((1, 1), (7, 1), (None, 2), (None, 3)):
        obs, info = env.reset(seed=seed)
        for k in ("rgb", "depth", "intrinsics"):
            assert np.array_equal(obs[k], firsts[episode_index][k].numpy()), (seed, k)
        assert np.array_equal(obs["pose"], np.eye(4, dtype=np.float32)) and info["scene_seed"] == -1
    assert env.observation_space.contains(env.step(1)[0])

    envs = DeepVerseVectorEnv(2, checkpoint=model, starts=EpisodeStarts(tiny_episodes), max_episode_steps=1)
    obs, _ = envs.reset(seed=[0, 3])
    envs.step([1, 1])  # both truncate
    restarted, *_ = envs.step([1, 1])
    for i, (start, restart) in enumerate(((0, 4), (3, 5))):
        assert np.array_equal(obs["rgb"][i], firsts[start]["rgb"].numpy())
        assert np.array_equal(restarted["rgb"][i], firsts[restart]["rgb"].numpy())

    obs, info = make(model, starts=SimulatorStarts(SIZE, SIZE, fov_deg=60.0)).reset(seed=2)
    sim_obs, sim_info = DeepVerseSimEnv(height=SIZE, width=SIZE, fov_deg=60.0).reset(seed=2)
    for k in obs:
        assert np.array_equal(obs[k], sim_obs[k]), k
    assert info["scene_seed"] == sim_info["scene_seed"]
    assert not np.array_equal(obs["intrinsics"], make(model).reset(seed=2)[0]["intrinsics"])  # default: 75 degrees

    with pytest.raises(ValueError, match=r"SimulatorStarts.load gave rgb uint8 \(1, 32, 32, 3\); expected uint8 \(1, 16"):
        DeepVerseEnv(checkpoint=model, starts=SimulatorStarts(32, 32)).reset(seed=0)
    with pytest.raises(ValueError, match="no recorded episodes"):
        EpisodeStarts(tmp_path)


def test_same_seed_same_episode(model):
    actions = np.random.default_rng(0).integers(0, 9, size=6)
    a = episode(make(model, reward="exploration"), 11, actions)
    b = episode(make(model, reward="exploration"), 11, actions)
    assert_same(a, b)
    env = make(model)
    assert_same(episode(env, 11, actions), episode(env, 11, actions))  # reseeding repeats the episode
    c = episode(make(model), 12, actions[:1])
    assert not np.array_equal(a[0][0]["rgb"], c[0][0]["rgb"])


def test_start_from_any_image(model):
    env = make(model)
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    obs, info = env.reset(seed=0, options={"image": image})
    assert np.array_equal(obs["rgb"], image) and np.array_equal(obs["pose"], np.eye(4, dtype=np.float32))
    assert info["scene_seed"] == -1 and (obs["depth"] > 0).all() and obs["intrinsics"][0, 0] > 0
    for _ in range(3):
        obs, *_ = env.step(1)
        assert env.observation_space.contains(obs)
    again = env.reset(seed=0, options={"image": image})[0]  # generated depth is seeded too
    assert np.array_equal(again["depth"], env.reset(seed=0, options={"image": image})[0]["depth"])


def test_bad_inputs_raise_clear_errors_and_the_env_stays_usable(model, tmp_path, monkeypatch):
    env = make(model)
    with pytest.raises(gym.error.ResetNeeded):
        env.unwrapped.step(0)
    env.reset(seed=0)  # (gymnasium's passive checker breaks if the very first reset raises)
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    for bad, match in [
        (image[:, :8], r"shape \(16, 16, 3\).*got shape \(16, 8, 3\)"),
        (np.full((SIZE, SIZE, 3), np.nan, dtype=np.float32), "NaN"),
        (image.astype(np.float32), "uint8"),
    ]:
        with pytest.raises(ValueError, match=match):
            env.reset(options={"image": bad})
    with pytest.raises(ValueError, match="'depth'"):
        env.reset(options={"depth": 1})
    for kwargs, match in [
        (dict(reward="teleport"), "unknown reward hook 'teleport'"),
        (dict(termination=["collided", "bored"]), "unknown termination hook 'bored'"),
        (dict(frames_per_step=3), "frames_per_step=3 does not match the model's chunk of 4"),
        (dict(dtype="float8"), "dtype must be .auto. or one of"),
        (dict(flow_steps=3), r"unknown DeepVerse-v0 argument\(s\) \['flow_steps'\]"),
        (dict(sampler={"steps": 0}), "steps must be a positive integer, got 0"),
        (dict(sampler={"guidance": 2.0}), r"\['guidance'\] are not sampler settings"),
        (dict(starts="episodes/"), r"starts must be None or a StartLoader .*got 'episodes/'"),
        (dict(render_mode="ascii"), "render_mode"),
    ]:
        with pytest.raises(ValueError, match=match):
            DeepVerseEnv(checkpoint=model, **kwargs)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DeepVerseEnv(checkpoint=tmp_path / "nowhere")
    monkeypatch.setattr(world_model.model, "SHIPPED", tmp_path / "pretrained" / "tiny")
    with pytest.raises(FileNotFoundError, match=r"shipped model is missing.*pretrained/tiny"):
        DeepVerseEnv()

    reference = episode(make(model), 3, [1, 5])
    env.reset(seed=3)
    env.step(1)
    for action in (9, -1, 2.5, "forward", SENTENCES[1]):
        with pytest.raises(ValueError, match="0, 8"):
            env.step(action)
    obs, *_ = env.step(5)  # rejected actions changed nothing: the episode goes on as if they never came
    assert np.array_equal(obs["rgb"], reference[2][0]["rgb"]) and np.array_equal(obs["pose"], reference[2][0]["pose"])

    text = make(model, text_actions=True)
    assert isinstance(text.action_space, Sentences) and text.action_space.sample() in SENTENCES
    text.reset(seed=3)
    with pytest.raises(ValueError, match="not a sentence"):
        text.step("The camera flies.")
    obs, *_ = text.step(env.unwrapped.actions[1].sentence)  # text mode, same sentence, same world
    assert np.array_equal(obs["rgb"], reference[1][0]["rgb"])


def test_reward_and_termination_hooks(model):
    env = make(model, reward=["exploration", {"name": "action_cost", "weight": 2.0}])
    env.reset(seed=1)
    _, reward, *_ = env.step(1)
    assert reward != 0.0
    assert "explored" in env.unwrapped.world.td.keys()  # the hook's state rides along with the env's
    seen = env.unwrapped.world.td["explored"].sum()
    env.step(1)
    assert env.unwrapped.world.td["explored"].sum() >= seen
    env.reset(seed=2, options={"image": np.zeros((SIZE, SIZE, 3), dtype=np.uint8)})
    assert env.unwrapped.world.td.get("explored", torch.zeros(1)).sum() == 0, "reset empties hook state"

    pose_z = lambda td: td["next", "pose"][:, 2, 3]  # noqa: E731  any callable is a hook
    env = make(model, reward=pose_z, termination={"name": "collided", "min_depth": 1e9})
    env.reset(seed=1)
    obs, reward, terminated, truncated, _ = env.step(1)
    assert reward == pytest.approx(float(obs["pose"][2, 3])) and terminated


def test_bfloat16_autocast(model):
    """The networks run in bf16, geometry in float32: observations keep their float32 spaces."""
    env = make(model, dtype="bfloat16")
    env.reset(seed=0)
    for _ in range(3):
        obs, *_ = env.step(1)
        assert env.observation_space.contains(obs) and np.isfinite(obs["depth"]).all()


def walking_model(size: int = SIZE) -> DeepVerse:
    """A test double for the generative part only: the next latent is the last one with the camera
    moved forward (its raymap origin z), so the frames stay put while the camera walks. Codec, window
    sliding, rescaling, memory, hooks and maps are the real ones. (An untrained model cannot stand in
    here: its window scale shrinks geometrically at every slide until it underflows.)"""
    model = fast_model(size)
    move = torch.zeros(model.codec.latent_channels)
    move[model.codec.raymap_slice.stop - 1] = 0.3  # ray origin z, in window units
    model.next_latent = lambda history, *args, **kwargs: history[:, -1:] + move.view(1, 1, -1, 1, 1)
    return model


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def long_episode(env: gym.Env, steps: int) -> None:
    """Step ``steps`` times: finite outputs, state size fixed, process memory flat after a warm-up.

    The bound: per world, ``cache_max`` latents + ``1 + (cache_max - 1) * F`` frames + ``memory_capacity``
    keyframes + ``map_points`` points + ``PATH_STEPS`` camera positions + hook entries, allocated up front
    (``LearnedWorld.nbytes``); nothing grows with the episode. On top of that a step's working set
    (activations, decoded chunk) is allocated and freed; the C allocator returns it to the system or
    keeps it from one step to the next as it sees fit, so RSS sampled after a step jumps between a floor
    and the floor plus that working set (shipped model: 492 -> up to 600 MiB). A leak lifts the floor:
    the lowest RSS over the last 40% of steps must stay within 4 MiB of the lowest over the 40% before.
    """
    world = env.unwrapped.world
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, env.action_space.n, size=steps)
    sizes, rss = set(), []
    for t, a in enumerate(actions, start=1):
        obs, reward, *_, info = env.step(a)
        assert all(np.isfinite(v).all() for v in info["frames"].values()), f"step {t}"
        assert np.isfinite(reward) and (obs["depth"] > 0).all(), f"step {t}"
        sizes.add(world.nbytes())
        rss.append(rss_bytes())
    assert len(sizes) == 1, "state size changed during the episode"
    config = world.config
    assert int(world.rollout.length.max()) <= config.cache_max
    assert int(world.rollout.memory.sizes().max()) <= config.memory_capacity
    assert len(world.maps[0].cloud) <= config.map_points
    if rss[0] is not None:
        warm = steps // 5  # warm-up: caches, the memory pool and the map filling
        half = (steps - warm) // 2
        early, late = min(rss[warm : warm + half]), min(rss[warm + half :])
        assert late - early < 4 * 2**20, f"the RSS floor rose {(late - early) / 2**20:.1f} MiB after the warm-up"


def test_thousand_step_episode_is_finite_and_memory_is_bounded():
    env = make(walking_model(), cache_max=3, memory_capacity=8, map_points=500, reward="exploration", max_episode_steps=None)
    long_episode(env, 1000)
    world = env.unwrapped.world
    assert int(world.rollout.memory.sizes().max()) == 8 and world.maps[0].cloud.seen > 500  # bounds reached
    assert world.td["pose"][0, 2, 3] > 100  # walked 0.24 m a step, the window sliding all the way


@pytest.mark.skipif(rss_bytes() is None, reason="needs /proc/self/statm")
def test_long_episode_check_catches_a_leak():
    env = make(walking_model(), cache_max=3, memory_capacity=8, map_points=500, max_episode_steps=None)
    leaked, step = [], env.step

    def leaky_step(a):  # keeps 256 KiB more every step, in fresh pages the allocator cannot have spare
        page = mmap.mmap(-1, 2**18)
        page.write(b"\1" * 2**18)
        leaked.append(page)
        return step(a)

    env.step = leaky_step
    with pytest.raises(AssertionError, match="RSS floor rose"):
        long_episode(env, 200)


@pytest.mark.slow
@pytest.mark.skipif(not world_model.model.SHIPPED.is_dir(), reason="the shipped model is not there yet")
def test_thousand_steps_of_the_shipped_model():
    long_episode(gym.make("DeepVerse-v0", max_episode_steps=None, reward="exploration"), 1000)


# ---- vector env ------------------------------------------------------------------------------------


def test_vector_env_matches_single_envs(model, monkeypatch):
    N = 3
    envs = gym.make_vec("DeepVerse-v0", num_envs=N, vectorization_mode="vector_entry_point", checkpoint=model)
    assert isinstance(envs.unwrapped, DeepVerseVectorEnv) and envs.unwrapped.max_episode_steps == 500
    obs, info = envs.reset(seed=7)
    for i in range(N):  # sub-env i starts like a single env seeded 7 + i
        single, single_info = make(model).reset(seed=7 + i)
        for k in single:
            assert np.array_equal(obs[k][i], single[k]), (i, k)
        assert info["scene_seed"][i] == single_info["scene_seed"]

    calls = []
    next_latent = model.next_latent
    counted = lambda history, *a, **kw: calls.append(len(history)) or next_latent(history, *a, **kw)  # noqa: E731
    monkeypatch.setattr(model, "next_latent", counted)
    obs, reward, terminated, truncated, info = envs.step(np.array([1, 5, 0]))
    assert calls == [N], "one batched model call for all worlds"
    assert envs.observation_space.contains(obs) and info["frames"]["rgb"].shape == (N, 4, SIZE, SIZE, 3)
    assert list(info["sentence"]) == [envs.unwrapped.actions[a].sentence for a in (1, 5, 0)]
    monkeypatch.undo()

    # One world, across an autoreset: the vector env repeats the single env step for step.
    actions = [1, 5, 1, 6, 2]
    vec = DeepVerseVectorEnv(1, checkpoint=model, max_episode_steps=2)
    single = make(model, max_episode_steps=2)
    v_obs, _ = vec.reset(seed=4)
    s_obs, _ = single.reset(seed=4)
    for t, a in enumerate(actions):
        v_obs, v_r, v_term, v_trunc, v_info = vec.step([a])
        if t == 2:  # the step after truncation: a restart, its action ignored
            s_obs, _ = single.reset()
            assert v_r[0] == 0 and v_info["sentence"][0] == "" and not v_trunc[0]
            assert np.array_equal(v_info["frames"]["rgb"][0], np.repeat(s_obs["rgb"][None], 4, 0))
        else:
            s_obs, s_r, _, s_trunc, _ = single.step(a)
            assert v_trunc[0] == s_trunc
        for k in s_obs:
            assert np.array_equal(v_obs[k][0], s_obs[k]), (t, k)


def test_vector_env_partial_autoreset_from_images(model):
    first_world_ends = lambda td: torch.arange(td.batch_size[0]) == 0  # noqa: E731
    envs = DeepVerseVectorEnv(
        2, checkpoint=model, reward="exploration", termination=first_world_ends, render_mode="rgb_array"
    )
    image = np.full((SIZE, SIZE, 3), 90, dtype=np.uint8)
    obs, info = envs.reset(seed=0, options={"image": image})
    assert (obs["rgb"] == 90).all() and (info["scene_seed"] == -1).all()
    _, _, terminated, _, _ = envs.step([1, 1])
    assert terminated.tolist() == [True, False]
    obs, reward, terminated, _, info = envs.step([1, 1])  # world 0 restarts from its simulator, world 1 steps
    assert info["sentence"][0] == "" and info["sentence"][1] != "" and reward[0] == 0 and not terminated[0]
    assert info["scene_seed"][0] >= 0 and not envs.world.td["explored"][0].any() and envs.world.td["explored"][1].any()
    assert envs.world.rollout.length.tolist() == [1, 3]
    obs, *_ = envs.step([5, 5])  # worlds at different window lengths step together
    assert envs.observation_space.contains(obs)
    frames = envs.render()
    assert len(frames) == 2 and frames[0].shape == frames[1].shape


# ---- planner API -----------------------------------------------------------------------------------


def test_imagine_and_state_snapshots(model):
    env = make(model, reward="exploration", termination={"name": "collided", "min_depth": 0.1})
    twin = make(model, reward="exploration", termination={"name": "collided", "min_depth": 0.1})
    for e in (env, twin):
        e.reset(seed=2)
        e.step(1)
    u = env.unwrapped
    plans = np.random.default_rng(0).integers(0, 9, size=(6, 4))
    imagined = u.imagine(plans)
    assert imagined.batch_size == torch.Size([6, 4])
    assert imagined["rgb"].shape == (6, 4, SIZE, SIZE, 3) and imagined["pose"].shape == (6, 4, 4, 4)
    assert torch.equal(imagined["action"], torch.from_numpy(plans))
    assert imagined["reward"].shape == (6, 4) and (imagined["reward"][:, 0] > 0).all()  # new space seen
    assert imagined["terminated"].dtype == torch.bool and torch.isfinite(imagined["depth"]).all()
    again = u.imagine(plans, seed=5)
    assert torch.equal(again["rgb"], u.imagine(plans, seed=5)["rgb"])
    # Imagining left the env as it was: it goes on exactly like its twin that never imagined.
    a, b = env.step(5), twin.step(5)
    assert np.array_equal(a[0]["rgb"], b[0]["rgb"]) and a[1] == b[1]

    snapshot = u.get_state()
    world_map = u.world.maps[0]
    count, seen = world_map.count, world_map.cloud.seen
    first = env.step(1)
    env.step(2)
    assert u.world.maps[0].count == count + 2
    u.set_state(snapshot)
    assert (u.world.maps[0].count, u.world.maps[0].cloud.seen) == (count, seen)  # the map is restored too
    replay = env.step(1)  # restored windows, memory, hook state and noise: the same step again
    assert np.array_equal(first[0]["rgb"], replay[0]["rgb"]) and first[1] == replay[1]
    assert snapshot.maps[0].count == count, "the snapshot stays as it was taken"
    from_snapshot = u.imagine(plans[:, :1], state=snapshot, seed=1)
    assert from_snapshot.batch_size == torch.Size([6, 1])
    with pytest.raises(ValueError, match="outside"):
        u.imagine(np.full((2, 2), 9))
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        u.imagine(np.zeros(3, dtype=int))


# ---- agents, rendering, export -----------------------------------------------------------------------


def test_sb3_check_env_and_ppo_on_the_wrapped_env():
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = SB3Observation(make(fast_model(64), reward="exploration"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env)
    assert not [str(w.message) for w in caught]
    obs, _ = env.reset(seed=0)
    assert obs["rgbd"].shape == (64, 64, 4) and obs["rgbd"].dtype == np.uint8
    assert obs["pose"].shape == (12,) and obs["intrinsics"].shape == (4,)
    assert np.allclose(obs["pose"], np.eye(4)[:3].ravel())
    agent = PPO("MultiInputPolicy", env, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
    agent.learn(16)
    action, _ = agent.predict(obs)
    assert env.action_space.contains(int(action))


def test_state_size_counts_the_map(model):
    sizes = {}
    for points in (100, 300):
        env = make(model, map_points=points)
        env.reset(seed=0)
        env.step(1)
        sizes[points] = env.unwrapped.world.nbytes()
    assert sizes[300] - sizes[100] == 200 * 15  # 3 float32 + 3 uint8 per point of the map's cloud


def test_render_and_point_cloud_export(model, tmp_path, monkeypatch):
    env = make(model, render_mode="rgb_array", map_points=300)
    sim = DeepVerseSimEnv(height=SIZE, width=SIZE, render_mode="rgb_array")
    env.reset(seed=0)
    sim.reset(seed=0)
    for _ in range(5):
        env.step(1)
        sim.step(1)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == sim.render().shape  # the same layout, side by side
    for binary in (True, False):
        path = env.unwrapped.export_point_cloud(tmp_path / f"world{binary}.ply", binary=binary)
        points, colours = read_ply(path)
        cloud = env.unwrapped.world.maps[0].cloud
        assert len(points) == len(cloud) == 300
        assert np.allclose(points, cloud.points, rtol=1e-5) and np.array_equal(colours, cloud.colours)

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    if pygame_available():
        human = make(model, render_mode="human")
        human.reset(seed=0)
        human.step(1)
        assert human.render() is None
        human.close()
    else:
        with pytest.raises(gym.error.DependencyNotInstalled, match="pip install pygame"):
            make(model, render_mode="human")


def test_auto_dtype_measures_once_per_machine_and_model_and_caches_the_choice(tmp_path, monkeypatch):
    import world_model.precision as P
    from deepverse_env.learned.world import LearnedWorld

    monkeypatch.delenv("DEEPVERSE_DTYPE", raising=False)
    monkeypatch.setenv("DEEPVERSE_CACHE", str(tmp_path))
    model = DeepVerse(tiny_config())
    env = gym.make("DeepVerse-v0", checkpoint=model)  # dtype="auto" is the default
    chosen = env.unwrapped.world.dtype
    assert chosen in P.CANDIDATES and env.unwrapped.world.rollout.config.dtype == chosen
    cache = json.loads((tmp_path / "dtype.json").read_text())
    (key, entry), = cache.items()
    assert key.startswith(P.machine()) and entry["dtype"] == chosen and set(entry["seconds"]) == set(P.CANDIDATES)
    slower = max(entry["seconds"], key=entry["seconds"].get)
    assert chosen == "float32" or slower == "float32"

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(LearnedWorld, "seconds_per_step", staticmethod(no_measuring))
    assert gym.make("DeepVerse-v0", checkpoint=model).unwrapped.world.dtype == chosen  # from the cache
    monkeypatch.setenv("DEEPVERSE_DTYPE", "bfloat16")
    assert gym.make("DeepVerse-v0", checkpoint=model).unwrapped.world.dtype == "bfloat16"  # the override
    monkeypatch.setenv("DEEPVERSE_DTYPE", "float64")
    with pytest.raises(ValueError, match="DEEPVERSE_DTYPE must be one of .* got 'float64'"):
        gym.make("DeepVerse-v0", checkpoint=model)
    with pytest.raises(ValueError, match="dtype must be 'auto' or one of"):
        gym.make("DeepVerse-v0", checkpoint=model, dtype="int8")
    (tmp_path / "dtype.json").write_text("{not json")  # an unreadable cache: measured again, and rewritten
    monkeypatch.delenv("DEEPVERSE_DTYPE")
    assert P.auto_dtype("w", {"float32": 1.0, "bfloat16": 0.5}.get) == "bfloat16"
    assert P.auto_dtype("v", {"float32": 1.0, "bfloat16": 0.95}.get) == "float32"  # within the margin: exact wins
    assert set(json.loads((tmp_path / "dtype.json").read_text())) == {f"{P.machine()} | w", f"{P.machine()} | v"}
