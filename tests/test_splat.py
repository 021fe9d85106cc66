"""The z-buffered point renderer: exact against the simulator, nearest surface wins, batched, bad shapes."""
import pytest
import torch

from deepverse_env.sim.env import DeepVerseSimEnv
from world_model import geometry as G
from world_model.splat import splat


def true_points(frame: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, H*W, 3) world points and (1, H*W, 3) colours of a simulator frame with its exact depth and pose."""
    f = {k: torch.as_tensor(v)[None] for k, v in frame.items()}
    return G.unproject(f["depth"][..., 0], f["intrinsics"], f["pose"]).flatten(1, 2), f["rgb"].flatten(1, 2).float()


@pytest.mark.parametrize("seed, action", [(0, 1), (3, 5), (7, 3)])  # forward, turn left, strafe
def test_frame_t_rendered_into_camera_t1_is_frame_t1_where_both_see_the_surface(seed, action):
    env = DeepVerseSimEnv()
    first, _ = env.reset(seed=seed)
    _, *_, info = env.step(action)
    nxt = {k: torch.as_tensor(v[0])[None] for k, v in info["frames"].items()}  # the next frame
    points, colours = true_points(first)
    same = splat(points, colours, torch.as_tensor(first["intrinsics"])[None], torch.as_tensor(first["pose"])[None], 64, 64)
    assert same.mask.all() and torch.equal(same.values.to(torch.uint8)[0], torch.as_tensor(first["rgb"]))
    torch.testing.assert_close(same.depth[0], torch.as_tensor(first["depth"])[..., 0], rtol=1e-5, atol=1e-5)

    r = splat(points, colours, nxt["intrinsics"], nxt["pose"], 64, 64)
    # Co-visible: the rendered surface is the one frame t+1 sees at that pixel (depth within 1%).
    covisible = r.mask & ((r.depth - nxt["depth"][..., 0]).abs() < 0.01 * nxt["depth"][..., 0])
    assert covisible.float().mean() > 0.5
    error = (r.values - nxt["rgb"].float()).abs().mean(-1)[covisible]  # nearest-pixel resampling only
    copy = (torch.as_tensor(first["rgb"]).float() - nxt["rgb"][0].float()).abs().mean(-1)
    assert error.median() <= 1.0 and error.mean() < 0.6 * copy.mean(), (error.mean(), copy.mean())


def test_nearest_surface_wins_whatever_the_order_and_holes_are_empty():
    K = torch.tensor([[[2.0, 0, 1], [0, 2.0, 1], [0, 0, 1]]])
    eye = torch.eye(4)[None]
    # Two points on the optical axis (pixel (1, 1)), far first; one behind the camera; one off-image.
    points = torch.tensor([[[0, 0, 5.0], [0, 0, 2.0], [0, 0, -1.0], [10.0, 0, 1.0]]])
    values = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    for order in ([0, 1, 2, 3], [1, 0, 3, 2]):
        r = splat(points[:, order], values[:, order], K, eye, 3, 3)
        assert r.values[0, 1, 1, 0] == 2.0 and r.depth[0, 1, 1] == 2.0 and r.mask.sum() == 1
        assert r.source[0, 1, 1] == order.index(1) and (r.source[~r.mask] == -1).all()
        assert (r.values[~r.mask] == 0).all() and (r.depth[~r.mask] == 0).all()
    hidden = splat(points, values, K, eye, 3, 3, valid=torch.tensor([[True, False, True, True]]))
    assert hidden.values[0, 1, 1, 0] == 1.0  # the nearer point is not drawn: the far one shows


def test_batched_clouds_render_independently():
    env = DeepVerseSimEnv()
    frames = [env.reset(seed=s)[0] for s in (1, 2)]
    pts, cols = zip(*(true_points(f) for f in frames))
    K = torch.stack([torch.as_tensor(f["intrinsics"]) for f in frames])
    c2w = torch.stack([torch.as_tensor(f["pose"]) for f in frames])
    both = splat(torch.cat(pts), torch.cat(cols), K, c2w, 64, 64)
    for i in range(2):
        alone = splat(pts[i], cols[i], K[i : i + 1], c2w[i : i + 1], 64, 64)
        assert torch.equal(both.values[i], alone.values[0]) and torch.equal(both.depth[i], alone.depth[0])


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"splat needs points \(B, N, 3\).*\(2, 5, 3\), \(2, 4, 3\)"):
        splat(torch.zeros(2, 5, 3), torch.zeros(2, 4, 3), torch.eye(3).expand(2, 3, 3), torch.eye(4).expand(2, 4, 4), 4, 4)
