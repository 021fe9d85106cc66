"""Quality against the ground truth (M15): image, depth and camera errors, the trivial baselines, and the
self-consistency of a predicted 4D sequence.

Every metric is per frame and batched over leading dims, so callers can average per horizon. Numbers
only mean something beside the baselines here: ``copy_last_frame`` (predict nothing moves) and
``warp_with_true_motion`` (forward-splat the last real frame with its true depth into the true next
cameras: the best a model that knew the motion but not the unseen content could do without inpainting).
``self_consistency`` needs no truth: it asks whether a sequence's frames agree with its own depth and cameras
(score the true frames with it too, as the reference).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from world_model import geometry as G
from world_model.splat import splat


def _unit(rgb: Tensor) -> Tensor:
    """uint8 (..., H, W, 3) or float in [0, 1] -> float (..., H, W, 3) in [0, 1]."""
    return rgb.float() / 255.0 if rgb.dtype == torch.uint8 else rgb.float()


def _pixel_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of per-pixel values (..., H, W) over all pixels, or over those where ``mask`` (..., H, W) is True
    -> (...,); NaN where the mask is empty (a score of no pixel is undefined, not perfect)."""
    if mask is None:
        return x.mean(dim=(-2, -1))
    m = mask.to(x.dtype)
    return (x * m).sum(dim=(-2, -1)) / m.sum(dim=(-2, -1))  # 0 / 0 = NaN where nothing is covered


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio in dB of RGB frames (..., H, W, 3) -> (...,), over all pixels or over those
    where ``mask`` (..., H, W) is True (NaN for an empty mask); identical frames score 100 dB."""
    mse = _pixel_mean((_unit(pred) - _unit(target)).pow(2).mean(-1), mask)  # (...,)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def ssim(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Structural similarity of RGB frames (..., H, W, 3) -> (...,) (torchmetrics, Gaussian 11x11 window
    shrunk to fit small images, reflection-padded borders): the mean of the per-pixel SSIM map over all pixels,
    or over those where ``mask`` (..., H, W) is True (NaN for an empty mask). Windows centred on a masked pixel
    still see its unmasked neighbours."""
    p, t = _unit(pred), _unit(target)
    lead = p.shape[:-3]
    H, W = p.shape[-3:-1]
    k = min(11, H - (1 - H % 2), W - (1 - W % 2))  # odd and no larger than the image
    p = p.reshape(-1, H, W, 3).permute(0, 3, 1, 2)
    t = t.reshape(-1, H, W, 3).permute(0, 3, 1, 2)
    _, image = structural_similarity_index_measure(
        p, t, data_range=1.0, kernel_size=k, sigma=1.5 * k / 11, reduction="none", return_full_image=True
    )  # (B', 3, H, W) the SSIM map per channel
    return _pixel_mean(image.mean(1).reshape(*lead, H, W), mask)


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


def warp(
    rgb: Tensor, depth: Tensor, K: Tensor, c2w: Tensor, target_c2w: Tensor, target_K: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward-splat each frame into its own target camera with its depth (nearest pixel, z-buffered).

    Pixels no source point lands on keep the source frame's value (the copy baseline), so the result
    is never worse-defined than copying.

    Args:
        rgb: (..., H, W, 3); depth: (..., H, W, 1) z-depth; K: (..., 3, 3); c2w: (..., 4, 4) source cameras;
        target_c2w: (..., 4, 4) the camera to render each frame into; target_K: (..., 3, 3) its intrinsics
        (None: ``K``).
    Returns:
        rgb (..., H, W, 3), depth (..., H, W, 1) of the warped views, and the hit mask (..., H, W).
    """
    lead, (H, W) = rgb.shape[:-3], rgb.shape[-3:-1]
    points = G.unproject(depth[..., 0], K, c2w).reshape(-1, H * W, 3)  # (B', H * W, 3) world points
    r = splat(
        points, rgb.reshape(-1, H * W, 3).float(), (K if target_K is None else target_K).reshape(-1, 3, 3),
        target_c2w.reshape(-1, 4, 4), H, W,
    )
    hit = r.mask.view(*lead, H, W)
    out_rgb = torch.where(hit[..., None], r.values.view(*lead, H, W, 3).to(rgb.dtype), rgb)  # holes: copy
    out_depth = torch.where(hit[..., None], r.depth.view(*lead, H, W, 1), depth)
    return out_rgb, out_depth, hit


def warp_with_true_motion(
    rgb: Tensor, depth: Tensor, K: Tensor, c2w: Tensor, target_c2w: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward-splat one frame into several cameras with its true depth (``warp``; holes keep the frame).

    Args:
        rgb: (B, H, W, 3); depth: (B, H, W, 1) z-depth; K: (B, 3, 3); c2w: (B, 4, 4) source camera;
        target_c2w: (B, T, 4, 4) cameras to render.
    Returns:
        rgb (B, T, H, W, 3), depth (B, T, H, W, 1) of the warped views, and the hit mask (B, T, H, W).
    """
    B, T = target_c2w.shape[:2]
    each = lambda x: x[:, None].expand(B, T, *x.shape[1:])  # noqa: E731  (B, ...) -> (B, T, ...)
    return warp(each(rgb), each(depth), each(K), each(c2w), target_c2w)


def exact_camera_cache(
    rgb: Tensor, depth: Tensor, K: Tensor, c2w: Tensor, target_c2w: Tensor
) -> tuple[Tensor, Tensor]:
    """The no-generation upper bound of a grounded world (M19): one frame rendered into the *true* cameras with its
    true depth, every hole filled with the nearest rendered pixel (``scipy.ndimage.distance_transform_edt``).
    Arguments as ``warp_with_true_motion``; returns rgb (B, T, H, W, 3) and depth (B, T, H, W, 1)."""
    from scipy.ndimage import distance_transform_edt

    out_rgb, out_depth, hit = warp_with_true_motion(rgb, depth, K, c2w, target_c2w)
    out_rgb, out_depth = out_rgb.clone(), out_depth.clone()
    for b, t in torch.nonzero(~hit.flatten(2).all(-1)).tolist():  # frames with holes
        covered = hit[b, t].cpu().numpy()
        if not covered.any():
            continue  # nothing rendered: the frame keeps what the warp left (the source frame)
        _, (i, j) = distance_transform_edt(~covered, return_indices=True)
        i, j = torch.from_numpy(i).to(rgb.device), torch.from_numpy(j).to(rgb.device)
        out_rgb[b, t], out_depth[b, t] = out_rgb[b, t][i, j], out_depth[b, t][i, j]
    return out_rgb, out_depth


def blocked_scores(pred, true) -> dict:
    """Precision and recall of predicted blocked moves against the true ones (bool arrays or tensors of one shape),
    and how many each side blocked of how many moves."""
    pred, true = (torch.as_tensor(np.asarray(x), dtype=torch.bool) for x in (pred, true))
    tp = int((pred & true).sum())
    return {"precision": round(tp / max(int(pred.sum()), 1), 4), "recall": round(tp / max(int(true.sum()), 1), 4),
            "blocked_model": int(pred.sum()), "blocked_sim": int(true.sum()), "steps": int(true.numel())}


# --------------------------------------------------------------------------------------------------
# Self-consistency of a 4D sequence (no truth needed)
# --------------------------------------------------------------------------------------------------


def self_consistency(frames) -> dict[str, Tensor]:
    """Does a sequence of 4D frames agree with its own geometry? Each frame t is forward-splatted (``warp``)
    with its own depth, intrinsics and camera into the camera of frame t+1 and compared with frame t+1 on the
    pixels the splat covers (co-visible pixels; holes are unseen content, which no geometry predicts).

    Both scores are scale-free (scaling depth and camera translations together warps alike), so they are
    defined for a world in unknown units (an RGB start) too. They reward a world that does not change: a frame
    held still is perfectly consistent. Read them beside the truth's own scores and the accuracy metrics.

    - ``consistency_4d``: PSNR (dB) of the warped frame t vs frame t+1 over the covered pixels: is the 4D world
      self-consistent (do the predicted depth and cameras explain the predicted motion of the pixels)?
    - ``temporal_consistency``: SSIM of the same pair, the per-pixel SSIM map averaged over the covered pixels:
      a feature-free stand-in for VBench's subject / background consistency (DINO / CLIP feature similarity of
      consecutive frames). Warped rather than plain consecutive SSIM, because plain SSIM falls with every camera
      motion (a turn shifts the whole image) and so measures the action, not flicker; after the warp only
      content that changed against the world's own motion lowers it. Windows at the edge of a hole still see
      the hole's pixels, filled with frame t's own pixels (``warp``), which lowers it rather than raises it.
    - ``consistency_coverage``: the fraction of frame t+1's pixels the splat covers (what the two scores
      were computed on; near 0 flags depth or cameras that throw the frame out of view).

    A pair with no covered pixel scores NaN. Identical frames (a blocked move of the simulator) score 100 dB
    and SSIM 1.

    Args:
        frames: dict or TensorDict of T+1 frames: ``rgb`` (B, T+1, H, W, 3) uint8 or in [0, 1], ``depth``
            (B, T+1, H, W, 1) z-depth, ``pose`` (B, T+1, 4, 4) camera-to-world, ``intrinsics`` (B, T+1, 3, 3).
    Returns:
        consistency_4d, temporal_consistency, consistency_coverage, each (B, T): pair t -> t+1 at index t.
    """
    rgb, depth, pose, K = (frames[k] for k in ("rgb", "depth", "pose", "intrinsics"))
    warped, _, hit = warp(rgb[:, :-1], depth[:, :-1], K[:, :-1], pose[:, :-1], pose[:, 1:], K[:, 1:])  # (B, T, ...)
    return {
        "consistency_4d": psnr(warped, rgb[:, 1:], hit),
        "temporal_consistency": ssim(warped, rgb[:, 1:], hit),
        "consistency_coverage": hit.float().mean(dim=(-2, -1)),
    }
