"""Metrics and baselines on cases with known answers."""
import math

import torch

from world_model import metrics as M


def test_psnr_ssim_known_values():
    a = torch.full((2, 8, 8, 3), 100, dtype=torch.uint8)
    b = a.clone()
    b[0] += 10  # MSE = (10/255)^2 on frame 0
    p = M.psnr(b, a)
    assert math.isclose(float(p[0]), 20 * math.log10(255 / 10), rel_tol=1e-5)
    assert p[1] > 90
    s = M.ssim(a, a)
    assert s.shape == (2,) and torch.allclose(s, torch.ones(2), atol=1e-3)
    noisy = (a.float() + 40 * torch.randn(2, 8, 8, 3)).clamp(0, 255).to(torch.uint8)
    assert (M.ssim(noisy, a) < 0.9).all()


def test_depth_and_camera_errors():
    gt = torch.full((3, 4, 4, 1), 2.0)
    pred = gt.clone()
    pred[0] *= 1.1
    pred[1, :2] = 3.0  # half the pixels off by 50 %
    assert torch.allclose(M.depth_abs_rel(pred, gt), torch.tensor([0.1, 0.25, 0.0]))
    assert torch.allclose(M.depth_delta(pred, gt), torch.tensor([1.0, 0.5, 1.0]))
    a = torch.eye(4).expand(2, 4, 4).clone()
    b = a.clone()
    b[1, :3, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    b[1, :3, 3] = torch.tensor([3.0, 4.0, 0.0])
    assert torch.allclose(M.rotation_error_deg(a, b), torch.tensor([0.0, 90.0]), atol=1e-4)
    assert torch.allclose(M.translation_error(a, b), torch.tensor([0.0, 5.0]))


def test_copy_last_frame_shapes():
    last = {"rgb": torch.zeros(2, 5, 6, 3), "depth": torch.ones(2, 5, 6, 1), "pose": torch.eye(4).expand(2, 4, 4)}
    out = M.copy_last_frame(last, 3)
    assert out["rgb"].shape == (2, 3, 5, 6, 3) and out["pose"].shape == (2, 3, 4, 4)


def test_warp_identity_and_one_pixel_shift():
    H, W = 6, 8
    rgb = torch.randint(0, 256, (1, H, W, 3), dtype=torch.uint8)
    depth = torch.full((1, H, W, 1), 2.0)
    K = torch.tensor([[10.0, 0, (W - 1) / 2], [0, 10.0, (H - 1) / 2], [0, 0, 1]])[None]
    c2w = torch.eye(4)[None]
    target = torch.eye(4).repeat(1, 2, 1, 1)
    target[0, 1, 0, 3] = 0.2  # camera moves right by fx * 0.2 / 2 = 1 pixel of parallax
    out, d, hit = M.warp_with_true_motion(rgb, depth, K, c2w, target)
    assert torch.equal(out[0, 0], rgb[0]) and hit[0, 0].all()
    assert torch.equal(out[0, 1, :, : W - 1], rgb[0, :, 1:])  # content moved one pixel left
    assert not hit[0, 1, :, W - 1].any() and torch.equal(out[0, 1, :, W - 1], rgb[0, :, W - 1])
    assert torch.allclose(d[0, 1], depth[0])


def test_exact_camera_cache_fills_the_warps_holes_with_the_nearest_rendered_pixel():
    H, W = 6, 8
    rgb = torch.randint(0, 256, (1, H, W, 3), dtype=torch.uint8)
    depth = torch.full((1, H, W, 1), 2.0)
    K = torch.tensor([[10.0, 0, (W - 1) / 2], [0, 10.0, (H - 1) / 2], [0, 0, 1]])[None]
    target = torch.eye(4).repeat(1, 2, 1, 1)
    target[0, 1, 0, 3] = 0.4  # two pixels of parallax: the last two columns are holes of the warp
    warped, _, hit = M.warp_with_true_motion(rgb, depth, K, torch.eye(4)[None], target)
    out, d = M.exact_camera_cache(rgb, depth, K, torch.eye(4)[None], target)
    assert torch.equal(out[0, 0], rgb[0]) and torch.equal(out[0, 1][hit[0, 1]], warped[0, 1][hit[0, 1]])
    assert torch.equal(out[0, 1, :, W - 2], rgb[0, :, W - 1]) and torch.equal(out[0, 1, :, W - 1], rgb[0, :, W - 1])
    assert not torch.equal(warped[0, 1, :, W - 2], out[0, 1, :, W - 2]) and torch.allclose(d[0, 1], depth[0])


def test_warp_respects_occlusion():
    """Of several source points landing on one target pixel, the nearest one wins."""
    W = 5
    rgb = torch.zeros(1, 1, W, 3, dtype=torch.uint8)
    rgb[0, 0, 0] = torch.tensor([255, 0, 0])  # red, 1 m away
    rgb[0, 0, 1] = torch.tensor([0, 255, 0])  # green, 2 m away, on the same line x = -2
    depth = torch.tensor([1.0, 2.0, 10.0, 10.0, 10.0]).reshape(1, 1, W, 1)
    K = torch.tensor([[[1.0, 0, 2.0], [0, 1.0, 0], [0, 0, 1]]])
    target = torch.eye(4)[None, None].clone()
    target[0, 0, 0, 3] = -2.0  # both points lie on this camera's optical axis: pixel u = cx = 2
    out, d, hit = M.warp_with_true_motion(rgb, depth, K, torch.eye(4)[None], target)
    assert hit[0, 0, 0, 2]
    assert torch.equal(out[0, 0, 0, 2], rgb[0, 0, 0]) and float(d[0, 0, 0, 2, 0]) == 1.0


def test_sharpness_ratio_sees_blur_that_psnr_forgives():
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 256, (2, 16, 16, 3), generator=g, dtype=torch.uint8)
    gray = torch.full_like(truth, 128)
    blur = torch.nn.functional.avg_pool2d(truth.float().permute(0, 3, 1, 2), 3, 1, 1).permute(0, 2, 3, 1).round().to(torch.uint8)
    torch.testing.assert_close(M.sharpness_ratio(truth, truth), torch.ones(2))
    assert (M.sharpness_ratio(gray, truth) == 0).all()
    assert (M.sharpness_ratio(blur, truth) < 0.5).all() and (M.psnr(blur, truth) > M.psnr(gray, truth)).all()
    assert set(M.frame_metrics({"rgb": truth}, {"rgb": truth})) == {"psnr", "ssim", "sharpness"}


def test_chroma_is_zero_for_gray_and_the_ratio_compares_colourfulness():
    from world_model.metrics import chroma, chroma_ratio

    gray = torch.full((2, 4, 4, 3), 100, dtype=torch.uint8)
    blue = gray.clone()
    blue[..., 2] = 250  # (100, 100, 250): mean 150, |deviations| 50, 50, 100
    assert torch.equal(chroma(gray), torch.zeros(2))
    assert torch.allclose(chroma(blue), torch.full((2,), 200 / 3 / 255))
    assert torch.allclose(chroma_ratio(gray, blue), torch.zeros(2)) and torch.allclose(chroma_ratio(blue, blue), torch.ones(2))


def test_masked_psnr_and_ssim_score_only_the_covered_pixels():
    a = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    b = a.clone()
    b[:, :, 4:] = 255 - b[:, :, 4:]  # the right half differs
    left = torch.zeros(2, 8, 8, dtype=torch.bool)
    left[:, :, :4] = True
    assert torch.allclose(M.psnr(b, a, left), torch.full((2,), 100.0))  # identical where scored
    assert (M.psnr(b, a) < 20).all()
    torch.testing.assert_close(M.psnr(b, a, torch.ones_like(left)), M.psnr(b, a))
    torch.testing.assert_close(M.ssim(b, a, torch.ones_like(left)), M.ssim(b, a))
    assert (M.ssim(b, a, left) > M.ssim(b, a)).all()
    assert M.psnr(b, a, torch.zeros_like(left)).isnan().all() and M.ssim(b, a, torch.zeros_like(left)).isnan().all()


def test_self_consistency_exact_on_a_plane_seen_from_two_cameras():
    """A fronto-parallel plane and a camera that moves one pixel of parallax: the warp reproduces frame 1 exactly
    on every pixel it covers (all but the column that enters the view)."""
    H, W = 6, 8
    K = torch.tensor([[10.0, 0, (W - 1) / 2], [0, 10.0, (H - 1) / 2], [0, 0, 1]])
    pose = torch.eye(4).repeat(1, 2, 1, 1)  # (1, 2, 4, 4)
    pose[0, 1, 0, 3] = 0.2  # 1 pixel at 2 m
    rgb = torch.randint(0, 256, (1, 2, H, W, 3), dtype=torch.uint8)
    rgb[0, 1, :, : W - 1] = rgb[0, 0, :, 1:]  # frame 1 sees the plane one pixel further right
    frames = {"rgb": rgb, "depth": torch.full((1, 2, H, W, 1), 2.0), "pose": pose, "intrinsics": K.expand(1, 2, 3, 3)}
    c = M.self_consistency(frames)
    assert set(c) == {"consistency_4d", "temporal_consistency", "consistency_coverage"}
    assert all(v.shape == (1, 1) for v in c.values())
    assert float(c["consistency_4d"]) == 100.0 and math.isclose(float(c["consistency_coverage"]), (W - 1) / W)
    assert float(c["temporal_consistency"]) > 0.5
    frames["pose"] = pose.clone()
    frames["pose"][0, 1, 0, 3] = -0.2  # the camera claimed to move the other way
    wrong = M.self_consistency(frames)
    assert float(wrong["consistency_4d"]) < 30 and float(wrong["temporal_consistency"]) < float(c["temporal_consistency"])


def test_self_consistency_of_the_simulator_truth_and_of_a_wrong_camera():
    """The simulator's true frames with their exact depth, cameras and intrinsics agree with themselves (up to the
    nearest-pixel resampling of its point-sampled textures: ~25-32 dB at 64x64; even a bilinear backward warp with an
    occlusion test stays near 30-34 dB); cameras that drift sideways 0.1 m per frame score far lower."""
    import numpy as np

    from deepverse_env.actions import get_action_set
    from deepverse_env.sim.vector_env import DeepVerseSimVectorEnv

    actions = get_action_set("basic")
    sims = DeepVerseSimVectorEnv(1, height=64, width=64, frames_per_step=4)
    first, _ = sims.reset(seed=[0])
    keys = ("rgb", "depth", "pose", "intrinsics")
    seq = {k: [torch.from_numpy(first[k])[:, None]] for k in keys}
    for name in ("turn_left", "forward", "left", "turn_right"):
        *_, info = sims.step(np.array([actions.index(name)]))
        assert not info["blocked"].any()  # a blocked move would repeat a frame (a trivial 100 dB pair)
        for k in keys:
            seq[k].append(torch.from_numpy(info["frames"][k]))
    seq = {k: torch.cat(v, dim=1) for k, v in seq.items()}  # (1, 17, ...)
    true = M.self_consistency(seq)
    assert all(v.shape == (1, 16) for v in true.values())
    assert true["consistency_4d"].mean() > 27 and (true["consistency_4d"] > 20).all()
    assert (true["consistency_coverage"] > 0.8).all()
    seq["pose"] = seq["pose"].clone()
    seq["pose"][0, :, 0, 3] += 0.1 * torch.arange(17)  # each pair's relative camera off by 0.1 m
    wrong = M.self_consistency(seq)
    assert wrong["consistency_4d"].mean() < true["consistency_4d"].mean() - 5
    assert wrong["temporal_consistency"].mean() < true["temporal_consistency"].mean() - 0.1
