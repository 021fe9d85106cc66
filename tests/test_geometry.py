"""Round trips and properties of world_model.geometry (hypothesis draws fresh cameras every run)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation, Slerp

from deepverse_env.actions import ACTION_SETS, PITCH_LIMIT, caption_thresholds
from world_model import geometry as G
from world_model.text import SENTENCES, sentence_index

settings.register_profile("ci", max_examples=40, deadline=None)
settings.load_profile("ci")

seeds = st.integers(0, 2**31 - 1)


def random_pose(rng: np.random.Generator, max_translation: float = 10.0) -> torch.Tensor:
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=rng).as_matrix()
    T[:3, 3] = rng.uniform(-max_translation, max_translation, 3)
    return torch.tensor(T, dtype=torch.float32)


@given(seed=seeds, h=st.integers(2, 40), w=st.integers(2, 40), fov=st.floats(20.0, 120.0))
def test_raymap_round_trip(seed, h, w, fov):
    rng = np.random.default_rng(seed)
    K = G.default_intrinsics(h, w, fov)
    c2w = random_pose(rng)
    raymap = G.camera_to_raymap(K, c2w, h, w)
    assert raymap.shape == (6, h, w)
    assert torch.allclose(raymap[:3].norm(dim=0), torch.ones(h, w), atol=1e-6)
    K2, c2w2 = G.raymap_to_camera(raymap)
    # float32 throughout: 1e-4 relative on focal, 1e-4 on rotation entries, 1e-4 x scene size on position.
    assert torch.allclose(K2, K, rtol=1e-4, atol=1e-4)
    assert torch.allclose(c2w2[:3, :3], c2w[:3, :3], atol=1e-4)
    assert torch.allclose(c2w2[:3, 3], c2w[:3, 3], atol=1e-4 * 10)


@given(seed=seeds, factor=st.sampled_from([2, 4, 8]), cells=st.integers(2, 6))
def test_pooled_raymap_matches_scaled_intrinsics(seed, factor, cells):
    """The codec average-pools raymaps to latent size: that is the raymap of the pooled camera."""
    rng = np.random.default_rng(seed)
    h, w = cells * factor, (cells + 1) * factor
    K = G.default_intrinsics(h, w, float(rng.uniform(40, 100)))
    c2w = random_pose(rng)
    pooled = torch.nn.functional.avg_pool2d(G.camera_to_raymap(K, c2w, h, w), factor)
    Ks = G.scale_intrinsics(K, factor)
    direct = G.camera_to_raymap(Ks, c2w, h // factor, w // factor)
    dirs = pooled[:3] / pooled[:3].norm(dim=0, keepdim=True)
    # The mean of unit vectors over a block is its centre ray up to the block's angular size squared
    # ((factor / fx)^2 radians^2; measured worst ratio ~0.03 over 300 random cameras).
    block = (factor / float(K[0, 0])) ** 2
    assert torch.allclose(dirs, direct[:3], atol=0.1 * block + 1e-6)
    assert torch.allclose(pooled[3:], direct[3:], atol=1e-5)
    K2, c2w2 = G.raymap_to_camera(pooled)
    assert torch.allclose(K2, Ks, rtol=0.1 * block + 1e-4, atol=1e-4)
    assert G.rotation_angle(c2w2[:3, :3], c2w[:3, :3]) < 0.1 * block + 1e-4


def test_raymap_batched_leading_dims():
    rng = np.random.default_rng(0)
    c2w = torch.stack([random_pose(rng) for _ in range(6)]).reshape(2, 3, 4, 4)
    K = G.default_intrinsics(8, 12).expand(2, 3, 3, 3)
    raymap = G.camera_to_raymap(K, c2w, 8, 12)
    assert raymap.shape == (2, 3, 6, 8, 12)
    K2, c2w2 = G.raymap_to_camera(raymap)
    assert K2.shape == (2, 3, 3, 3) and c2w2.shape == (2, 3, 4, 4)
    assert torch.allclose(c2w2, c2w, atol=1e-3)


@given(seed=seeds, lam=st.floats(0.5, 1.0))
def test_disparity_round_trip_and_range(seed, lam):
    rng = np.random.default_rng(seed)
    depth = torch.tensor(rng.uniform(0.2, 30.0, (3, 5, 7)), dtype=torch.float32)  # (T, H, W)
    scale = G.window_scale(depth[0], lam)
    x = G.encode_depth(depth, scale)
    assert x[0].max() <= 2 * math.sqrt(lam) - 1 + 1e-6 and x[0].min() > -1
    assert torch.allclose(x[0].max(), torch.tensor(2 * math.sqrt(lam) - 1), atol=1e-6)
    assert torch.allclose(G.decode_depth(x, scale), depth, rtol=1e-5)


def test_decode_depth_bounds_a_prediction_past_zero_disparity():
    scale = torch.tensor([0.5, 2.0])
    x = torch.tensor([[-1.0, -3.0, 0.0], [-1.0, -0.9, 1.0]])[..., None]  # (B, H, W): at, past and inside the range
    depth = G.decode_depth(x, scale)
    assert torch.isfinite(depth).all()
    assert torch.allclose(depth[:, :2].amax(-1).amax(-1), 400 * scale)  # the floor: 400 window scales
    assert torch.allclose(depth[:, 2, 0], torch.tensor([2.0, 2.0]))  # inside the range: exact (scale / ((x+1)/2)^2)


def test_window_scale_quantile_ignores_a_few_near_pixels():
    depth = torch.full((2, 20, 20), 2.0)  # (B, H, W)
    depth[:, 0, :3] = 0.01  # 3 of 400 pixels
    assert torch.allclose(G.window_scale(depth, 0.9), torch.full((2,), 0.009))  # exact: the nearest pixel
    assert torch.allclose(G.window_scale(depth, 0.9, quantile=0.01), torch.full((2,), 1.8))


@given(seed=seeds)
def test_scaled_scene_is_consistent(seed):
    """Scaling depth and camera translation by the same window scale scales the 3D scene uniformly."""
    rng = np.random.default_rng(seed)
    depth = torch.tensor(rng.uniform(0.5, 8.0, (6, 7)), dtype=torch.float32)
    K, c2w = G.default_intrinsics(6, 7), random_pose(rng)
    scale = torch.tensor(float(rng.uniform(0.1, 5.0)))
    pts = G.unproject(depth, K, c2w)
    pts_scaled = G.unproject(depth / scale, K, G.scale_poses(c2w, scale))
    assert torch.allclose(pts_scaled * scale, pts, rtol=1e-4, atol=1e-4)
    assert torch.allclose(G.unscale_poses(G.scale_poses(c2w, scale), scale), c2w, atol=1e-5)


@given(seed=seeds)
def test_unproject_project_round_trip(seed):
    rng = np.random.default_rng(seed)
    h, w = 5, 9
    depth = torch.tensor(rng.uniform(0.3, 20.0, (h, w)), dtype=torch.float32)
    K, c2w = G.default_intrinsics(h, w, 60.0), random_pose(rng)
    pts = G.unproject(depth, K, c2w).reshape(-1, 3)
    uv, z = G.project(pts, K, c2w)
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    assert torch.allclose(uv, torch.stack([u, v], -1).reshape(-1, 2).float(), atol=2e-3)
    assert torch.allclose(z, depth.reshape(-1), rtol=1e-4)


@given(seed=seeds)
def test_pose_inverse_and_relative(seed):
    rng = np.random.default_rng(seed)
    a, b = random_pose(rng), random_pose(rng)
    assert torch.allclose(G.invert_pose(a) @ a, torch.eye(4), atol=1e-5)
    assert torch.allclose(a @ G.relative_pose(a, b), b, atol=1e-4)


@given(seed=seeds)
def test_quaternions_and_angles_match_scipy(seed):
    rng = np.random.default_rng(seed)
    r = Rotation.random(3, random_state=rng)
    R = torch.tensor(r.as_matrix(), dtype=torch.float64)
    q = G.matrix_to_quaternion(R)
    q_scipy = torch.tensor(r.as_quat(scalar_first=True))
    q_scipy = torch.where(q_scipy[:, :1] < 0, -q_scipy, q_scipy)
    assert torch.allclose(q, q_scipy, atol=1e-9)
    assert torch.allclose(G.quaternion_to_matrix(q), R, atol=1e-9)
    ang = G.rotation_angle(R[0], R[1])
    assert math.isclose(float(ang), (r[0].inv() * r[1]).magnitude(), abs_tol=1e-9)


@given(seed=seeds, alphas=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5))
def test_interpolate_cameras_matches_scipy_slerp(seed, alphas):
    rng = np.random.default_rng(seed)
    p0, p1 = random_pose(rng).double(), random_pose(rng).double()
    a = torch.tensor(alphas, dtype=torch.float64)
    out = G.interpolate_cameras(p0, p1, a[:, None, None][..., 0, 0])  # (A, 4, 4)
    slerp = Slerp([0.0, 1.0], Rotation.from_matrix(torch.stack([p0[:3, :3], p1[:3, :3]]).numpy()))
    ref = torch.tensor(slerp(np.asarray(alphas)).as_matrix())
    assert torch.allclose(out[:, :3, :3], ref, atol=1e-7)
    t_ref = (1 - a[:, None]) * p0[:3, 3] + a[:, None] * p1[:3, 3]
    assert torch.allclose(out[:, :3, 3], t_ref, atol=1e-9)
    assert torch.allclose(G.interpolate_cameras(p0, p1, 0.0), p0, atol=1e-7)
    assert torch.allclose(G.interpolate_cameras(p0, p1, 1.0), p1, atol=1e-7)


def _body_chunk(yaw0: float, pitch0: float, action, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end poses (world y down) of a chunk: yaw about the vertical, pitch about camera x,
    translation in the heading frame, as the simulator moves."""

    def pose(pos, yaw, pitch):
        R = Rotation.from_euler("y", -yaw).as_matrix() @ Rotation.from_euler("x", pitch).as_matrix()
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, pos
        return torch.tensor(T, dtype=torch.float32)

    pos, yaw, pitch = np.zeros(3), yaw0, pitch0
    start = pose(pos, yaw, pitch)
    for _ in range(frames):
        yaw, pitch = yaw + action.yaw, pitch + action.pitch
        pos = pos + Rotation.from_euler("y", -yaw).as_matrix() @ np.asarray(action.translation)
    return start, pose(pos, yaw, pitch)


@pytest.mark.parametrize("frames", [1, 4, 8])
@given(seed=seeds)
def test_caption_of_an_actions_motion_is_its_sentence(frames, seed):
    rng = np.random.default_rng(seed)
    for action in ACTION_SETS["full"].actions:
        room = PITCH_LIMIT - abs(action.pitch) * frames
        start, end = _body_chunk(rng.uniform(-math.pi, math.pi), rng.uniform(-room, room), action, frames)
        got = G.caption_from_motion(start, end, **caption_thresholds(frames))
        assert got == action.sentence, (action.name, got)


def test_caption_batched_and_stay():
    th = caption_thresholds(4)
    poses = torch.eye(4).expand(2, 3, 4, 4)
    caps = G.caption_from_motion(poses, poses, **th)
    assert caps == [[SENTENCES[0]] * 3] * 2
    assert G.motion_classes(poses, poses, **th).shape == (2, 3)
    assert sentence_index("The camera moves forward, turning left.") == SENTENCES.index(
        "The camera moves forward, turning left."
    )


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="-3"):
        G.default_intrinsics(-3, 4)
    with pytest.raises(ValueError, match="fov_deg"):
        G.default_intrinsics(4, 4, 190.0)
    with pytest.raises(ValueError, match=r"\(5, 4, 4\)"):
        G.raymap_to_camera(torch.zeros(5, 4, 4))
    with pytest.raises(ValueError, match="> 0"):
        G.window_scale(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 0.5\), got 0.5"):
        G.window_scale(torch.ones(3, 3), quantile=0.5)
    with pytest.raises(ValueError, match="0"):
        G.scale_intrinsics(torch.eye(3), 0)
    with pytest.raises(KeyError, match="not in the caption vocabulary"):
        sentence_index("fly to the moon")


def test_level_pose_matches_the_simulator_agent():
    """level_pose rebuilds R_yaw @ R_pitch (the simulator's convention) from a pose's optical axis, drops
    roll, clamps pitch and sets the height; a level pose is left as it is."""
    from deepverse_env.sim.agent import _rotation

    rng = np.random.default_rng(0)
    yaw, pitch = rng.uniform(-3, 3, 20), rng.uniform(-0.5, 0.5, 20)
    T = np.tile(np.eye(4), (20, 1, 1))
    T[:, :3, :3], T[:, :3, 3] = _rotation(yaw, pitch), rng.normal(size=(20, 3))
    level = torch.tensor(T, dtype=torch.float32)
    out = G.level_pose(level, 0.0)
    assert torch.allclose(out[:, :3, :3], level[:, :3, :3], atol=1e-5)
    assert torch.equal(out[:, [0, 2], 3], level[:, [0, 2], 3]) and (out[:, 1, 3] == 0).all()
    roll = torch.eye(4).repeat(20, 1, 1)
    c, s = np.cos(0.3), np.sin(0.3)
    roll[:, :2, :2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float32)  # 17 degrees about the optical axis
    rolled = G.level_pose(level @ roll, 0.0)
    assert torch.allclose(rolled[:, :3, :3], out[:, :3, :3], atol=1e-5)  # roll removed, heading and tilt kept
    steep = G.level_pose(level, 0.0, max_pitch=0.1)
    assert (torch.asin(-steep[:, 1, 2]).abs() <= 0.1 + 1e-5).all()
