"""State conversions: frames in metres <-> the normalised 4D state, and back exactly."""
import pytest
import torch
from scipy.spatial.transform import Rotation
from tensordict import TensorDict

from world_model import geometry as G
from world_model.state import normalize_frames, normalize_window, to_frames, to_rgb8


def random_frames(B: int, T: int, H: int = 6, W: int = 8, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    pose = torch.eye(4).repeat(B, T, 1, 1)
    pose[..., :3, :3] = torch.as_tensor(Rotation.random(B * T, random_state=seed).as_matrix(), dtype=torch.float32).view(B, T, 3, 3)
    pose[..., :3, 3] = torch.randn(B, T, 3, generator=g) * 2
    return TensorDict(
        {
            "rgb": torch.randint(0, 256, (B, T, H, W, 3), generator=g, dtype=torch.uint8),
            "depth": 0.5 + 8 * torch.rand(B, T, H, W, 1, generator=g),
            "pose": pose,
            "intrinsics": G.default_intrinsics(H, W).expand(B, T, 3, 3).clone(),
        },
        [B, T],
    )


@pytest.mark.parametrize("anchored", [False, True])
def test_to_frames_inverts_normalize_frames(anchored):
    frames = random_frames(2, 3)
    anchor = frames["pose"][:, 0] if anchored else torch.eye(4).expand(2, 4, 4)
    scale = torch.tensor([0.7, 3.0])
    states = normalize_frames(frames, anchor, scale)
    assert states["rgb"].shape == (2, 3, 3, 6, 8) and states["raymap"].shape == (2, 3, 6, 6, 8)
    back = to_frames(states["rgb"], states["depth"], states["pose"], states["intrinsics"], scale, anchor if anchored else None)
    assert torch.equal(back["rgb"], frames["rgb"])
    torch.testing.assert_close(back["depth"], frames["depth"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(back["pose"], frames["pose"], rtol=1e-5, atol=1e-5)
    assert torch.equal(back["intrinsics"], frames["intrinsics"])


def test_to_frames_without_depth_and_rgb_rounding():
    frames = random_frames(1, 2)
    states = normalize_window(frames)
    back = to_frames(states["rgb"], None, states["pose"], states["intrinsics"], states["scale"])
    assert "depth" not in back.keys() and back.batch_size == torch.Size([1, 2])
    levels = torch.tensor([-2.0, -1.0, 0.0, 1.0, 5.0]).view(1, 1, 5).expand(3, 1, 5)  # (3, H=1, W=5)
    assert to_rgb8(levels)[0, :, 0].tolist() == [0, 0, 128, 255, 255]  # clamped, then [-1, 1] -> 0..255


def test_normalize_window_batched_and_anchored_on_its_first_frame():
    frames = random_frames(2, 5)
    out = normalize_window(frames)  # (2,) windows of 5 frames
    assert out.batch_size == torch.Size([2]) and out["rgb"].shape[:2] == (2, 5)
    torch.testing.assert_close(out["pose"][:, 0], torch.eye(4).expand(2, 4, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["scale"], G.window_scale(frames["depth"][:, 0, ..., 0]))
