"""The ground-truth simulator: env contract, determinism, poses, collisions, vector env and exact geometry.

Seeds are drawn fresh on every run (printed in failure messages) or by hypothesis, so the properties
are checked on worlds the tests never saw before.
"""
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import deepverse_env  # noqa: F401  (registers the envs)
from deepverse_env.actions import MOVE_PER_FRAME, PITCH_LIMIT, get_action_set
from deepverse_env.sim import raycast
from deepverse_env.sim.agent import camera_pose, start_episode
from deepverse_env.sim.env import DeepVerseSimEnv
from deepverse_env.sim.world import SceneConfig, generate_scene
from world_model import geometry as G

SIZE = dict(height=32, width=32)
BASIC = {name: i for i, name in enumerate(get_action_set("basic").names)}


@pytest.fixture
def seed() -> int:
    return int(np.random.SeedSequence().entropy % 2**31)


def make(**kwargs) -> gym.Env:
    return gym.make("DeepVerseSim-v0", **{**SIZE, **kwargs})


def rollout(env: gym.Env, seed: int, actions) -> list:
    obs, info = env.reset(seed=seed)
    out = [(obs, info)]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out.append((obs, info))
    return out


@pytest.mark.filterwarnings("ignore:.*infinity")  # pose and depth are unbounded by design
def test_check_env():
    check_env(make().unwrapped)


def test_same_seed_same_episode(seed):
    actions = np.random.default_rng(seed).integers(0, 27, size=6)
    a = rollout(make(action_set="deepverse"), seed, actions)
    b = rollout(make(action_set="deepverse"), seed, actions)
    for (obs_a, info_a), (obs_b, info_b) in zip(a, b):
        for k in obs_a:
            assert np.array_equal(obs_a[k], obs_b[k]), f"seed {seed}: {k} differs"
        for k in info_a.get("frames", {}):
            assert np.array_equal(info_a["frames"][k], info_b["frames"][k]), f"seed {seed}: frames {k} differ"
    c = rollout(make(action_set="deepverse"), seed + 1, actions[:1])
    assert not np.array_equal(a[0][0]["rgb"], c[0][0]["rgb"]), "different seeds gave the same world and view"


def test_spaces_poses_and_depth(seed):
    env = make(action_set="full", frames_per_step=3)
    obs, info = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    assert np.array_equal(obs["pose"], np.eye(4, dtype=np.float32)), "the first camera defines the world frame"
    assert np.array_equal(obs["intrinsics"], G.default_intrinsics(32, 32, 75.0).numpy())
    abs0 = info["abs_pose"].astype(np.float64)
    rng = np.random.default_rng(seed)
    for _ in range(8):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(81)))
        frames = info["frames"]
        assert frames["rgb"].shape == (3, 32, 32, 3) and frames["depth"].shape == (3, 32, 32, 1)
        assert np.array_equal(frames["rgb"][-1], obs["rgb"]) and np.array_equal(frames["pose"][-1], obs["pose"])
        assert np.all(np.isfinite(frames["depth"])) and np.all(frames["depth"] > 0), f"seed {seed}"
        assert env.observation_space.contains(obs) and reward == 0.0 and not terminated
        expected = np.linalg.inv(abs0) @ info["abs_pose"].astype(np.float64)
        assert np.allclose(obs["pose"], expected, atol=1e-5), f"seed {seed}: pose is not relative to the first camera"
        R = obs["pose"][:3, :3].astype(np.float64)
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-6)
        pitch = math.asin(-R[1, 2])  # optical axis elevation (y is down)
        assert abs(pitch) <= PITCH_LIMIT + 1e-5
        assert abs(obs["pose"][1, 3]) < 1e-5, "the camera stays at eye height"


def test_action_semantics(seed):
    """forward = +z of the current camera, turn left = optical axis towards -x, look up = towards -y."""
    env = make(frames_per_step=2)
    env.reset(seed=seed)
    for name in ("forward", "turn_left", "look_up"):
        before = env.unwrapped._state.copy()
        *_, info = env.step(BASIC[name])
        pose0 = camera_pose(before, 1.5)
        rel = np.linalg.inv(pose0) @ info["abs_pose"].astype(np.float64)
        if name == "forward" and not info["blocked"]:
            assert np.allclose(rel[:3, 3], [0, 0, 2 * MOVE_PER_FRAME], atol=1e-5)
        if name == "turn_left":
            assert rel[0, 2] < -0.05 and np.allclose(rel[:3, 3], 0, atol=1e-5)
        if name == "look_up":
            assert rel[1, 2] < -0.05


def test_walking_into_walls_is_blocked(seed):
    env = make(frames_per_step=4)
    obs, info = env.reset(seed=seed)
    scene = env.unwrapped.scene
    lo, hi = scene.bounds[0], scene.bounds[1]
    blocked = []
    for _ in range(120):  # 38 m straight ahead: longer than any world
        obs, _, _, _, info = env.step(BASIC["forward"])
        blocked.append(info["blocked"])
        x, z = info["abs_pose"][0, 3], info["abs_pose"][2, 3]
        assert lo[0] < x < hi[0] and lo[2] < z < hi[2], f"seed {seed}: left the world at {x, z}"
        assert not scene.collides(float(x), float(z)), f"seed {seed}: inside a wall or object at {x, z}"
        assert np.all(obs["depth"] > 0)
    assert any(blocked), f"seed {seed}: never blocked walking straight for 38 m"
    assert blocked[-1], f"seed {seed}: a wall stops the agent for good"
    moved = np.diff(info["frames"]["pose"][:, :3, 3], axis=0)
    assert np.allclose(moved, 0, atol=1e-6), "a blocked move is not applied"


def test_bad_inputs_raise_value_error():
    for kwargs, bad in [
        (dict(action_set="dance"), "dance"),
        (dict(height=0), "0"),
        (dict(width=-3), "-3"),
        (dict(frames_per_step=0), "0"),
        (dict(fov_deg=180.0), "180"),
        (dict(fov_deg=0), "0"),
        (dict(render_mode="human"), "human"),
    ]:
        with pytest.raises(ValueError, match=bad):
            DeepVerseSimEnv(**kwargs)
    env = make()
    with pytest.raises(gym.error.ResetNeeded):
        env.unwrapped.step(0)
    env.reset(seed=1)
    for action in (9, -1, 2.5, "forward"):
        with pytest.raises(ValueError, match=f"{action!r}.*0, 8"):
            env.unwrapped.step(action)
    obs, *_ = env.step(np.int64(1))  # still usable after rejected actions
    assert env.observation_space.contains(obs)
    with pytest.raises(ValueError, match="-4"):
        env.reset(options={"scene_seed": -4})


def test_scene_seed_option(seed):
    env = make()
    _, info_a = env.reset(seed=seed, options={"scene_seed": 1234567})
    _, info_b = env.reset(seed=seed + 1, options={"scene_seed": 1234567})
    assert info_a["scene_seed"] == info_b["scene_seed"] == 1234567
    assert np.array_equal(env.unwrapped.scene.boxes, generate_scene(1234567).boxes)


def test_worlds_differ_and_rooms_connect(seed):
    a, b = generate_scene(seed), generate_scene(seed + 1)
    assert a.boxes.shape != b.boxes.shape or not np.allclose(a.boxes, b.boxes)
    # Flood fill the free floor on a 0.25 m grid: every room must be reachable from the start.
    step = 0.25
    xs, zs = np.arange(step / 2, a.x_edges[-1], step), np.arange(step / 2, a.z_edges[-1], step)
    free = np.array([[not a.collides(x, z) for z in zs] for x in xs])
    x0, z0 = a.free_spot(np.random.default_rng(seed))
    start = (int(np.argmin(np.abs(xs - x0))), int(np.argmin(np.abs(zs - z0))))
    assert free[start]
    seen, todo = {start}, [start]
    while todo:
        i, j = todo.pop()
        for n in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
            if 0 <= n[0] < len(xs) and 0 <= n[1] < len(zs) and free[n] and n not in seen:
                seen.add(n)
                todo.append(n)
    for i in range(len(a.x_edges) - 1):
        for j in range(len(a.z_edges) - 1):
            reached = any(
                a.x_edges[i] < xs[p] < a.x_edges[i + 1] and a.z_edges[j] < zs[q] < a.z_edges[j + 1] for p, q in seen
            )
            assert reached, f"seed {seed}: room {(i, j)} unreachable"


def test_vector_env_matches_single_envs(seed):
    n, steps = 3, 3
    vec = gym.make_vec("DeepVerseSim-v0", num_envs=n, vectorization_mode="vector_entry_point", max_episode_steps=steps, **SIZE)
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    singles = [make() for _ in range(n)]
    actions = np.random.default_rng(seed).integers(0, 9, size=(steps + 1, n))
    obs, info = vec.reset(seed=seed)
    assert vec.observation_space.contains(obs)
    for i, env in enumerate(singles):
        single_obs, single_info = env.reset(seed=seed + i)  # SyncVectorEnv's seeding: seed + i
        for k in obs:
            assert np.array_equal(obs[k][i], single_obs[k]), f"seed {seed}: env {i} {k} differs at reset"
    for t in range(steps):
        obs, reward, terminated, truncated, info = vec.step(actions[t])
        assert info["frames"]["rgb"].shape == (n, 4, 32, 32, 3)
        for i, env in enumerate(singles):
            single_obs, _, _, _, single_info = env.step(actions[t, i])
            for k in obs:
                assert np.array_equal(obs[k][i], single_obs[k]), f"seed {seed}: env {i} {k} differs at step {t}"
                assert np.array_equal(info["frames"][k][i], single_info["frames"][k])
            assert info["blocked"][i] == single_info["blocked"] and info["sentence"][i] == single_info["sentence"]
        assert np.all(truncated == (t == steps - 1)) and not np.any(terminated)
    # Next-step autoreset: the action is ignored and each sub-env starts its next episode, as a single env
    # would on reset() without a seed.
    obs, reward, terminated, truncated, info = vec.step(actions[steps])
    assert not np.any(truncated) and np.all(reward == 0)
    for i, env in enumerate(singles):
        single_obs, _ = env.reset()
        for k in obs:
            assert np.array_equal(obs[k][i], single_obs[k]), f"seed {seed}: env {i} {k} differs after autoreset"


def test_vector_env_seed_list_and_bad_actions(seed):
    vec = gym.make_vec("DeepVerseSim-v0", num_envs=2, vectorization_mode="vector_entry_point", **SIZE)
    obs_a, _ = vec.reset(seed=[seed, seed + 7])
    obs_b, _ = vec.reset(seed=seed)
    assert np.array_equal(obs_a["rgb"][0], obs_b["rgb"][0]) and not np.array_equal(obs_a["rgb"][1], obs_b["rgb"][1])
    with pytest.raises(ValueError, match="12"):
        vec.step(np.array([0, 12]))
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.array([0, 1, 2]))
    vec.step(np.array([1, 2]))


def test_tile_culling_is_conservative(seed, monkeypatch):
    """Culling primitives per tile must not change a single pixel."""
    rng = np.random.default_rng(seed)
    starts = [start_episode(rng, SceneConfig()) for _ in range(4)]
    scenes = raycast.SceneBatch.stack([s for s, _ in starts])
    states = np.stack([x for _, x in starts])
    states[:, 3] = rng.uniform(-PITCH_LIMIT, PITCH_LIMIT, 4)
    c2w = torch.from_numpy(camera_pose(states, 1.5)).float()
    K = G.default_intrinsics(36, 44).expand(4, 3, 3)  # not a whole number of tiles
    rgb, depth = raycast.render(scenes, c2w, K, 36, 44)
    monkeypatch.setattr(raycast, "_tile_visibility", lambda planes, c, h: torch.ones(*planes.shape[:2], c.shape[1], dtype=torch.bool))
    rgb_all, depth_all = raycast.render(scenes, c2w, K, 36, 44)
    assert torch.equal(depth, depth_all) and torch.equal(rgb, rgb_all), f"seed {seed}"


# --------------------------------------------------------------------------------------------------
# Reprojection exactness
# --------------------------------------------------------------------------------------------------
# On a plane, inverse depth is an affine function of the pixel coordinates (n . X = c with
# X = z K^-1 (u, v, 1) gives 1/z = n . K^-1 (u, v, 1) / c). So bilinear interpolation of 1/depth between
# four pixel centres that see the same plane is exact. We check every pixel whose surrounding 4x4 pixel
# blocks are planar (affine 1/depth up to float32 noise) in both frames: there the interpolated inverse
# depth of the other frame must equal the reprojected point's 1/z to float32 precision (TOL, relative;
# rendering, poses and depth are float32, the check itself runs in float64). A point that lands *behind*
# the other frame's surface is occluded there and skipped; one that lands *in front* would mean a frame
# sees through a surface, so it fails. Running the check both ways makes the pair consistent: depth too
# small in one frame shows up as see-through from the other.
TOL = 1e-4
PLANAR_TOL = 1e-5


def _planar_blocks(inv_depth: torch.Tensor) -> torch.Tensor:
    """(H, W) -> (H - 3, W - 3) bool: whether the 4x4 block with that top-left pixel is affine in (u, v)."""
    blocks = inv_depth.unfold(0, 4, 1).unfold(1, 4, 1).reshape(inv_depth.shape[0] - 3, inv_depth.shape[1] - 3, 16)
    v, u = torch.meshgrid(torch.arange(4.0, dtype=torch.float64), torch.arange(4.0, dtype=torch.float64), indexing="ij")
    A = torch.stack([torch.ones(16, dtype=torch.float64), u.reshape(-1), v.reshape(-1)], 1)  # (16, 3)
    fit = blocks @ (A @ torch.linalg.pinv(A)).T  # least-squares affine fit of each block
    return ((blocks - fit).abs().amax(-1) / blocks.mean(-1)) < PLANAR_TOL


def _reprojection(depth_a, pose_a, depth_b, pose_b, K):
    """Relative errors of 1/z of frame a's points against frame b's interpolated inverse depth.

    Returns:
        errors (n,) on the checked pixels (co-visible and planar in both frames), and n / (H * W).
    """
    H, W = depth_a.shape
    X = G.unproject(depth_a, K, pose_a).reshape(-1, 3)  # (HW, 3)
    uv, z = G.project(X, K, pose_b)
    u0, v0 = torch.floor(uv[:, 0]), torch.floor(uv[:, 1])
    inside = (z > 0) & (u0 >= 1) & (u0 <= W - 3) & (v0 >= 1) & (v0 <= H - 3)
    src_planar = torch.zeros(H, W, dtype=torch.bool)
    src_planar[1 : H - 2, 1 : W - 2] = _planar_blocks(1 / depth_a)  # the 4x4 block around each source pixel
    idx = (inside & src_planar.reshape(-1)).nonzero()[:, 0]
    ui, vi = u0[idx].long(), v0[idx].long()
    keep = _planar_blocks(1 / depth_b)[vi - 1, ui - 1]  # the 4x4 block around the landing point
    idx, ui, vi = idx[keep], ui[keep], vi[keep]
    fu, fv = uv[idx, 0] - ui, uv[idx, 1] - vi
    w = 1 / depth_b
    w_interp = (w[vi, ui] * (1 - fu) + w[vi, ui + 1] * fu) * (1 - fv) + (w[vi + 1, ui] * (1 - fu) + w[vi + 1, ui + 1] * fu) * fv
    return w_interp * z[idx] - 1, len(idx) / (H * W)


def _check_frames(frames: dict, label: str) -> float:
    """Check consecutive frames both ways; returns the mean fraction of pixels checked and matched."""
    depth = torch.from_numpy(frames["depth"][..., 0]).double()
    pose = torch.from_numpy(frames["pose"]).double()
    K = torch.from_numpy(frames["intrinsics"][0]).double()
    coverage = []
    for t in range(len(depth) - 1):
        for a, b in ((t, t + 1), (t + 1, t)):
            err, frac = _reprojection(depth[a], pose[a], depth[b], pose[b], K)
            assert err.numel() == 0 or err.min() >= -TOL, f"{label}: frame {b} sees through a surface of frame {a} (error {err.min():.2e})"
            matched = (err.abs() <= TOL).float().mean() if err.numel() else 0.0
            coverage.append(frac * matched)
    return float(np.mean(coverage))


def _episode_frames(seed: int, actions: list[int], action_set: str = "full") -> dict:
    env = make(action_set=action_set, frames_per_step=2)
    obs, _ = env.reset(seed=seed)
    chunks = [{k: v[None] for k, v in obs.items()}]
    for a in actions:
        *_, info = env.step(a)
        chunks.append(info["frames"])
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def test_reprojection_pure_yaw(seed):
    """Turning in place: every pixel the two frames share must agree exactly."""
    frames = _episode_frames(seed, [BASIC["turn_left"]] * 3 + [BASIC["turn_right"]] * 2, action_set="basic")
    coverage = _check_frames(frames, f"seed {seed}")
    assert coverage > 0.1, f"seed {seed}: only {coverage:.0%} of pixels were checkable"


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), actions=st.lists(st.integers(0, 80), min_size=3, max_size=3))
def test_reprojection_any_motion(seed, actions):
    """Any motion (translation, yaw, pitch, blocked or not): co-visible planar pixels agree exactly."""
    frames = _episode_frames(seed, actions)
    coverage = _check_frames(frames, f"seed {seed}, actions {actions}")
    assert coverage > 0.05, f"seed {seed}: only {coverage:.0%} of pixels were checkable"


def test_a_rejected_first_reset_through_gym_make_leaves_the_env_usable():
    env = gym.make("DeepVerseSim-v0")
    with pytest.raises(ValueError, match="unknown"):
        env.reset(seed=0, options={"scene": 3})
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(1)
    twin = gym.make("DeepVerseSim-v0")
    twin.reset(seed=0)
    assert np.array_equal(obs["rgb"], twin.step(1)[0]["rgb"])
