"""Quality against the ground truth (M15): image, depth and camera errors, and the trivial baselines.

Every metric is per frame and batched over leading dims, so callers can average per horizon. Numbers
only mean something beside the baselines here: ``copy_last_frame`` (predict nothing moves) and
``warp_with_true_motion`` (forward-splat the last real frame with its true depth into the true next
cameras: the best a model that knew the motion but not the unseen content could do without inpainting).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from world_model import geometry as G
from world_model.splat import splat


def _unit(rgb: Tensor) -> Tensor:
    """uint8 (..., H, W, 3) or float in [0, 1] -> float (..., H, W, 3) in [0, 1]."""
    return rgb.float() / 255.0 if rgb.dtype == torch.uint8 else rgb.float()


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB of RGB frames (..., H, W, 3) -> (...,)."""
    mse = (_unit(pred) - _unit(target)).pow(2).mean(dim=(-3, -2, -1))
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Structural similarity of RGB frames (..., H, W, 3) -> (...,) (torchmetrics, Gaussian 11x11 window
    shrunk to fit small images)."""
    p, t = _unit(pred), _unit(target)
    lead = p.shape[:-3]
    H, W = p.shape[-3:-1]
    k = min(11, H - (1 - H % 2), W - (1 - W % 2))  # odd and no larger than the image
    p = p.reshape(-1, H, W, 3).permute(0, 3, 1, 2)
    t = t.reshape(-1, H, W, 3).permute(0, 3, 1, 2)
    out = structural_similarity_index_measure(
        p, t, data_range=1.0, kernel_size=k, sigma=1.5 * k / 11, reduction="none"
    )
    return out.reshape(lead)


def laplacian_energy(rgb: Tensor) -> Tensor:
    """Mean |Laplacian| of the luminance of frames (..., H, W, 3) -> (...,): how much fine detail they hold."""
    y = (_unit(rgb) * torch.tensor([0.299, 0.587, 0.114], device=rgb.device)).sum(-1)  # (..., H, W)
    lap = y[..., :-2, 1:-1] + y[..., 2:, 1:-1] + y[..., 1:-1, :-2] + y[..., 1:-1, 2:] - 4 * y[..., 1:-1, 1:-1]
    return lap.abs().mean(dim=(-2, -1))


def sharpness_ratio(pred: Tensor, target: Tensor) -> Tensor:
    """Laplacian energy of predicted ÷ true frames (..., H, W, 3) -> (...,): 1 = as sharp as the truth, a
    gray blur ~0 (PSNR alone scores a gray mean image at ~20 dB here; this does not)."""
    return laplacian_energy(pred) / laplacian_energy(target).clamp_min(1e-6)


def chroma(rgb: Tensor) -> Tensor:
    """Mean |channel - the pixel's RGB mean| of frames (..., H, W, 3) -> (...,), in [0, 1] units: 0 = gray."""
    x = _unit(rgb)
    return (x - x.mean(-1, keepdim=True)).abs().mean(dim=(-3, -2, -1))


def chroma_ratio(pred: Tensor, target: Tensor) -> Tensor:
    """Chroma of predicted ÷ true frames (..., H, W, 3) -> (...,): 1 = as colourful as the truth, 0 = gray."""
    return chroma(pred) / chroma(target).clamp_min(1e-6)


def depth_abs_rel(pred: Tensor, target: Tensor) -> Tensor:
    """Mean |pred - target| / target over pixels, depth (..., H, W, 1) -> (...,)."""
    return ((pred - target).abs() / target).flatten(-3).mean(-1)


def depth_delta(pred: Tensor, target: Tensor, threshold: float = 1.25) -> Tensor:
    """Fraction of pixels with max(pred/target, target/pred) < threshold, depth (..., H, W, 1) -> (...,)."""
    ratio = torch.maximum(pred / target, target / pred)
    return (ratio < threshold).float().flatten(-3).mean(-1)


def rotation_error_deg(pred_c2w: Tensor, target_c2w: Tensor) -> Tensor:
    """Angle in degrees between predicted and true camera rotations (..., 4, 4) -> (...,)."""
    return torch.rad2deg(G.rotation_angle(pred_c2w[..., :3, :3], target_c2w[..., :3, :3]))


def translation_error(pred_c2w: Tensor, target_c2w: Tensor) -> Tensor:
    """Distance between predicted and true camera centres (same units as the poses) -> (...,)."""
    return (pred_c2w[..., :3, 3] - target_c2w[..., :3, 3]).norm(dim=-1)


def frame_metrics(pred, target) -> dict[str, Tensor]:
    """All per-frame metrics of predicted vs true frames: image always, depth and camera where ``pred`` has them.

    Args:
        pred, target: frames (dicts or TensorDicts) with ``rgb`` (..., H, W, 3) uint8 or in [0, 1], and
            optionally ``depth`` (..., H, W, 1) metres and ``pose`` (..., 4, 4), in one frame of reference.
    Returns:
        psnr, ssim, sharpness[, depth_abs_rel, depth_delta1][, rot_err_deg, trans_err_m], each (...,).
    """
    out = {
        "psnr": psnr(pred["rgb"], target["rgb"]),
        "ssim": ssim(pred["rgb"], target["rgb"]),
        "sharpness": sharpness_ratio(pred["rgb"], target["rgb"]),
    }
    if "depth" in pred.keys():
        out["depth_abs_rel"] = depth_abs_rel(pred["depth"], target["depth"])
        out["depth_delta1"] = depth_delta(pred["depth"], target["depth"])
    if "pose" in pred.keys():
        out["rot_err_deg"] = rotation_error_deg(pred["pose"], target["pose"])
        out["trans_err_m"] = translation_error(pred["pose"], target["pose"])
    return out


# --------------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------------


def copy_last_frame(last: dict, horizon: int) -> dict:
    """Predict that nothing changes: the last real frame (rgb, depth, pose) repeated ``horizon`` times.

    Args:
        last: dict of (..., *frame) tensors.
    Returns:
        dict of (..., horizon, *frame) tensors.
    """
    out = {}
    for k, v in last.items():
        dim = v.dim() - {"rgb": 3, "depth": 3, "pose": 2, "intrinsics": 2}[k]
        out[k] = v.unsqueeze(dim).expand(*v.shape[:dim], horizon, *v.shape[dim:])
    return out


def warp_with_true_motion(
    rgb: Tensor, depth: Tensor, K: Tensor, c2w: Tensor, target_c2w: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward-splat a frame into other cameras with its true depth (nearest pixel, z-buffered).

    Pixels no source point lands on keep the source frame's value (the copy baseline), so the result
    is never worse-defined than copying.

    Args:
        rgb: (B, H, W, 3); depth: (B, H, W, 1) z-depth; K: (B, 3, 3); c2w: (B, 4, 4) source camera;
        target_c2w: (B, T, 4, 4) cameras to render.
    Returns:
        rgb (B, T, H, W, 3), depth (B, T, H, W, 1) of the warped views, and the hit mask (B, T, H, W).
    """
    B, H, W, _ = rgb.shape
    T = target_c2w.shape[1]
    points = G.unproject(depth[..., 0], K, c2w).reshape(B, 1, H * W, 3).expand(B, T, H * W, 3)
    source = rgb.reshape(B, 1, H * W, 3).expand(B, T, H * W, 3)
    r = splat(
        points.reshape(B * T, H * W, 3), source.reshape(B * T, H * W, 3).float(), K.repeat_interleave(T, 0),
        target_c2w.reshape(B * T, 4, 4), H, W,
    )
    hit = r.mask.view(B, T, H, W)
    out_rgb = torch.where(hit[..., None], r.values.view(B, T, H, W, 3).to(rgb.dtype), rgb[:, None])  # holes: copy
    out_depth = torch.where(hit[..., None], r.depth.view(B, T, H, W, 1), depth[:, None])
    return out_rgb, out_depth, hit
