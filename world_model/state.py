"""Frames in metres <-> the model's normalised 4D state, both ways (DESIGN M1, M2, M13).

A *frame* is what the environments observe (DESIGN §3): ``rgb`` uint8 (H, W, 3), ``depth`` (H, W, 1) z-depth
in metres, ``pose`` (4, 4) camera-to-world in the episode frame, ``intrinsics`` (3, 3) in pixels.

A *state* is what the codec encodes and decodes for one window: ``rgb`` (3, H, W) in [-1, 1], ``depth``
(1, H, W) square-root disparity (``geometry.encode_depth``), ``raymap`` (6, H, W), and the camera as a
``pose`` (4, 4) relative to the window's first camera with translations divided by the window ``scale``
(metres per unit, ``geometry.window_scale``).

``normalize_frames`` (and ``normalize_window``, which takes the window from its first frame) goes one way;
``to_frames`` (and ``true_frames``, for a batch of clips) goes back. The dataset, the rollout, the Lightning
module and the metrics all convert here.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import Tensor

from world_model import geometry as G

FRAME_KEYS = ("rgb", "depth", "pose", "intrinsics")  # the observation keys of a frame


def frame_keys(depth: bool) -> tuple[str, ...]:
    """The keys of a frame: ``FRAME_KEYS``, without ``depth`` for a model whose codec has none."""
    return FRAME_KEYS if depth else tuple(k for k in FRAME_KEYS if k != "depth")


def normalize_frames(frames: TensorDict, ref_pose: Tensor, scale: Tensor) -> TensorDict:
    """Frames (..., T) as states of the window whose first camera is ``ref_pose`` (..., 4, 4) in the frames'
    coordinates and whose scale is ``scale`` (...,) metres per unit.

    Returns:
        TensorDict with batch size (...): ``rgb`` (T, 3, H, W) in [-1, 1], ``depth`` (T, 1, H, W) encoded
        (when the frames have depth: a codec without depth encodes none), ``raymap`` (T, 6, H, W), ``pose``
        (T, 4, 4) normalised, ``intrinsics`` (T, 3, 3).
    """
    H, W = frames["rgb"].shape[-3:-1]
    pose = G.relative_pose(ref_pose[..., None, :, :], frames["pose"])  # (..., T, 4, 4)
    pose = G.scale_poses(pose, scale[..., None])
    K = frames["intrinsics"].float()
    depth = {}
    if "depth" in frames.keys():  # (..., T, 1, H, W)
        depth["depth"] = G.encode_depth(frames["depth"][..., 0].float(), scale[..., None]).unsqueeze(-3)
    return TensorDict(
        {
            "rgb": frames["rgb"].movedim(-1, -3).float() / 127.5 - 1.0,  # (..., T, 3, H, W)
            **depth,
            "raymap": G.camera_to_raymap(K, pose, H, W),  # (..., T, 6, H, W)
            "pose": pose,
            "intrinsics": K,
        },
        batch_size=frames.batch_size[:-1],
    )


def normalize_window(frames: TensorDict, lam: float = G.DISPARITY_LAMBDA) -> TensorDict:
    """Frames (..., T) as one window starting at their first frame: ``normalize_frames`` with the first
    camera as reference and the scale from the first depth map (disparity headroom ``lam``), plus
    ``scale`` (...,) to undo it."""
    scale = G.window_scale(frames["depth"][..., 0, :, :, 0].float(), lam)  # (...,)
    out = normalize_frames(frames, frames["pose"][..., 0, :, :], scale)
    out["scale"] = scale
    return out


def to_rgb8(rgb: Tensor) -> Tensor:
    """State colours (..., 3, H, W) in [-1, 1] -> frame colours (..., H, W, 3) uint8."""
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1)


def to_frames(
    rgb: Tensor, depth: Tensor | None, pose: Tensor, intrinsics: Tensor, scale: Tensor, anchor: Tensor | None = None
) -> TensorDict:
    """States of a window (..., T) back to frames: the inverse of ``normalize_frames``.

    Args:
        rgb: (..., T, 3, H, W) in [-1, 1].  depth: (..., T, 1, H, W) encoded, or None (a codec without depth).
        pose: (..., T, 4, 4) normalised.  intrinsics: (..., T, 3, 3).
        scale: (...,) metres per unit of the window.
        anchor: (..., 4, 4) the window's first camera in the episode frame; None = it is the origin.
    Returns:
        TensorDict (..., T) of frames: ``rgb``, ``depth`` (when given), ``pose``, ``intrinsics``.
    """
    pose = G.unscale_poses(pose, scale[..., None])  # (..., T, 4, 4) metres, window frame
    if anchor is not None:
        pose = anchor[..., None, :, :] @ pose  # episode frame
    out = {"rgb": to_rgb8(rgb), "pose": pose, "intrinsics": intrinsics}
    if depth is not None:
        out["depth"] = G.decode_depth(depth[..., 0, :, :].float(), scale[..., None])[..., None]  # (..., T, H, W, 1)
    return TensorDict(out, batch_size=pose.shape[:-2])


def true_frames(batch: TensorDict) -> TensorDict:
    """The frames (B, T) of a batch of clips (``EpisodeClips``: states with ``scale``), the window's first
    camera as origin."""
    return to_frames(batch["rgb"], batch["depth"], batch["pose"], batch["intrinsics"], batch["scale"])
