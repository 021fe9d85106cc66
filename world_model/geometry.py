"""4D geometry: raymaps, camera recovery, square-root disparity, poses, interpolation and captions.

Conventions (DESIGN §3), kept by every function here:

- OpenCV camera axes: x right, y down, z forward. Poses are camera-to-world 4x4 (``c2w``).
- Intrinsics ``K`` are 3x3 in pixels; integer pixel (u, v) is the pixel centre, so a centred camera
  has ``cx = (W - 1) / 2``.
- Metres; ``depth`` is z-depth along the optical axis.
- Every function is torch and batched over any leading dims (written ``...``).

Legend: H, W image size; N points.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from world_model.text import PITCHES, SENTENCES, TRANSLATIONS, YAWS

# --------------------------------------------------------------------------------------------------
# Intrinsics and pixel grids
# --------------------------------------------------------------------------------------------------


def default_intrinsics(height: int, width: int, fov_deg: float = 75.0, dtype=torch.float32) -> Tensor:
    """Pinhole intrinsics with square pixels, horizontal field of view ``fov_deg``, centred principal point.

    Returns:
        K: (3, 3) in pixels.
    """
    _check_size(height, width)
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg!r}")
    f = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return torch.tensor(
        [[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]], dtype=dtype
    )


def scale_intrinsics(K: Tensor, factor: int) -> Tensor:
    """Intrinsics of an image average-pooled by ``factor`` (pixel centres move: u' = (u + 0.5) / f - 0.5).

    Args:
        K: (..., 3, 3).
    Returns:
        (..., 3, 3), so that ``camera_to_raymap(scale_intrinsics(K, f), c2w, H // f, W // f)`` is the
        raymap of the pooled image.
    """
    if int(factor) != factor or factor < 1:
        raise ValueError(f"pooling factor must be a positive integer, got {factor!r}")
    K = K.clone()
    K[..., 0, 0] = K[..., 0, 0] / factor
    K[..., 1, 1] = K[..., 1, 1] / factor
    K[..., 0, 2] = (K[..., 0, 2] + 0.5) / factor - 0.5
    K[..., 1, 2] = (K[..., 1, 2] + 0.5) / factor - 0.5
    return K


def unscale_intrinsics(K: Tensor, factor: int) -> Tensor:
    """Inverse of ``scale_intrinsics``: intrinsics of the image that pooling by ``factor`` shrank.

    Args:
        K: (..., 3, 3) at the pooled resolution.
    Returns:
        (..., 3, 3) at full resolution: f * factor, c = (c' + 0.5) * factor - 0.5.
    """
    if int(factor) != factor or factor < 1:
        raise ValueError(f"pooling factor must be a positive integer, got {factor!r}")
    K = K.clone()
    K[..., 0, 0] = K[..., 0, 0] * factor
    K[..., 1, 1] = K[..., 1, 1] * factor
    K[..., 0, 2] = (K[..., 0, 2] + 0.5) * factor - 0.5
    K[..., 1, 2] = (K[..., 1, 2] + 0.5) * factor - 0.5
    return K


def _check_size(height: int, width: int) -> None:
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise ValueError(f"image size must be positive integers, got height={height!r}, width={width!r}")


def _pixel_grid(height: int, width: int, dtype, device) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates u (column), v (row), each (H, W)."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device),
        torch.arange(width, dtype=dtype, device=device),
        indexing="ij",
    )
    return u, v


def camera_rays(K: Tensor, height: int, width: int) -> Tensor:
    """Un-normalised ray directions in the camera frame, z = 1: (..., H, W, 3)."""
    _check_size(height, width)
    u, v = _pixel_grid(height, width, K.dtype, K.device)  # (H, W)
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    x = (u - cx) / fx  # (..., H, W)
    y = (v - cy) / fy
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (..., H, W, 3)


# --------------------------------------------------------------------------------------------------
# Raymaps (M1, M3)
# --------------------------------------------------------------------------------------------------


def camera_to_raymap(K: Tensor, c2w: Tensor, height: int, width: int) -> Tensor:
    """Per-pixel rays of a camera, as image channels.

    Args:
        K: (..., 3, 3) intrinsics for an image of ``height`` x ``width``.
        c2w: (..., 4, 4) camera-to-world pose.
    Returns:
        raymap: (..., 6, H, W): unit ray direction (xyz), then ray origin (xyz), world frame.
    """
    rays = camera_rays(K, height, width)  # (..., H, W, 3)
    R, t = c2w[..., :3, :3], c2w[..., :3, 3]
    dirs = torch.einsum("...ij,...hwj->...hwi", R, rays)  # (..., H, W, 3)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = t[..., None, None, :].expand_as(dirs)  # (..., H, W, 3)
    return torch.cat([dirs, origins], dim=-1).movedim(-1, -3)  # (..., 6, H, W)


def raymap_to_camera(raymap: Tensor) -> tuple[Tensor, Tensor]:
    """Recover intrinsics and pose from a raymap in closed form (the paper's Algorithm 2).

    The camera centre is the mean ray origin; the optical axis is the mean ray direction (the principal
    point sits at the image centre, so the other components cancel); each ray is scaled onto the plane
    at unit depth, and a least-squares slope of those points along u (resp. v) gives the x (resp. y)
    axis divided by fx (resp. fy). The axes are orthonormalised around the optical axis. Works for
    un-normalised directions too (e.g. an average-pooled raymap).

    Args:
        raymap: (..., 6, H, W) as from ``camera_to_raymap``.
    Returns:
        K: (..., 3, 3) with the principal point at the centre; c2w: (..., 4, 4).
    """
    if raymap.dim() < 3 or raymap.shape[-3] != 6:
        raise ValueError(f"raymap must have shape (..., 6, H, W), got {tuple(raymap.shape)}")
    H, W = raymap.shape[-2:]
    if H < 2 or W < 2:
        raise ValueError(f"raymap must be at least 2x2 to recover focal lengths, got {H}x{W}")
    dirs = raymap[..., :3, :, :].movedim(-3, -1)  # (..., H, W, 3)
    origins = raymap[..., 3:, :, :]
    centre = origins.mean(dim=(-2, -1))  # (..., 3)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    z = dirs.mean(dim=(-3, -2))
    z = z / z.norm(dim=-1, keepdim=True)  # (..., 3) optical axis
    plane = dirs / (dirs * z[..., None, None, :]).sum(-1, keepdim=True)  # (..., H, W, 3) at z = 1
    u, v = _pixel_grid(H, W, raymap.dtype, raymap.device)
    du, dv = u - u.mean(), v - v.mean()  # (H, W)
    gx = (plane * du[..., None]).sum(dim=(-3, -2)) / (du**2).sum()  # (..., 3) = r_x / fx
    gy = (plane * dv[..., None]).sum(dim=(-3, -2)) / (dv**2).sum()  # (..., 3) = r_y / fy
    fx = 1.0 / gx.norm(dim=-1)
    fy = 1.0 / gy.norm(dim=-1)
    x = gx - (gx * z).sum(-1, keepdim=True) * z
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.cross(z, x, dim=-1)  # right-handed: x cross y = z
    c2w = _pose_from(torch.stack([x, y, z], dim=-1), centre)
    K = torch.zeros(*fx.shape, 3, 3, dtype=raymap.dtype, device=raymap.device)
    K[..., 0, 0], K[..., 1, 1], K[..., 2, 2] = fx, fy, 1.0
    K[..., 0, 2], K[..., 1, 2] = (W - 1) / 2.0, (H - 1) / 2.0
    return K, c2w


def _pose_from(R: Tensor, t: Tensor) -> Tensor:
    """(..., 3, 3), (..., 3) -> (..., 4, 4) rigid transform."""
    T = torch.zeros(*R.shape[:-2], 4, 4, dtype=R.dtype, device=R.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


# --------------------------------------------------------------------------------------------------
# Poses
# --------------------------------------------------------------------------------------------------


def invert_pose(T: Tensor) -> Tensor:
    """Inverse of a rigid transform (..., 4, 4), in closed form."""
    R, t = T[..., :3, :3], T[..., :3, 3]
    Rt = R.transpose(-1, -2)
    return _pose_from(Rt, -(Rt @ t[..., None])[..., 0])


def relative_pose(c2w_ref: Tensor, c2w: Tensor) -> Tensor:
    """Pose of ``c2w`` expressed in the camera frame of ``c2w_ref``: inv(ref) @ c2w, (..., 4, 4)."""
    return invert_pose(c2w_ref) @ c2w


def rotation_angle(R_a: Tensor, R_b: Tensor) -> Tensor:
    """Angle in radians of the rotation taking ``R_a`` to ``R_b`` (both (..., 3, 3)); stable near 0 and pi."""
    R = R_a.transpose(-1, -2) @ R_b
    cos = (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1.0) / 2.0
    skew = torch.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], dim=-1
    )
    return torch.atan2(skew.norm(dim=-1) / 2.0, cos)


def optical_axis_angle(c2w_a: Tensor, c2w_b: Tensor) -> Tensor:
    """Angle in radians between the optical axes (z columns) of two cameras (..., 4, 4)."""
    za, zb = c2w_a[..., :3, 2], c2w_b[..., :3, 2]
    cross = torch.cross(za, zb, dim=-1).norm(dim=-1)
    return torch.atan2(cross, (za * zb).sum(-1))


def matrix_to_quaternion(R: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) as (w, x, y, z) with w >= 0."""
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    # Four candidate forms; take per element the one with the largest denominator (Shepperd).
    cands = torch.stack(
        [
            torch.stack([1 + m00 + m11 + m22, R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1),
            torch.stack([R[..., 2, 1] - R[..., 1, 2], 1 + m00 - m11 - m22, R[..., 0, 1] + R[..., 1, 0], R[..., 0, 2] + R[..., 2, 0]], -1),
            torch.stack([R[..., 0, 2] - R[..., 2, 0], R[..., 0, 1] + R[..., 1, 0], 1 - m00 + m11 - m22, R[..., 1, 2] + R[..., 2, 1]], -1),
            torch.stack([R[..., 1, 0] - R[..., 0, 1], R[..., 0, 2] + R[..., 2, 0], R[..., 1, 2] + R[..., 2, 1], 1 - m00 - m11 + m22], -1),
        ],
        dim=-2,
    )  # (..., 4 candidates, 4)
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(dim=-1)  # (...,)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Quaternions (..., 4) as (w, x, y, z), not necessarily unit -> rotation matrices (..., 3, 3)."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def interpolate_cameras(c2w_0: Tensor, c2w_1: Tensor, alpha: Tensor | float) -> Tensor:
    """Cameras between two keyframes: slerp of rotation, linear translation (M4).

    Args:
        c2w_0, c2w_1: (..., 4, 4) keyframe poses.
        alpha: interpolation weights, broadcastable to the leading dims (0 -> c2w_0, 1 -> c2w_1); e.g.
            shape (T, 1...) against poses (1, ...) gives T in-between cameras.
    Returns:
        (..., 4, 4) poses at each alpha.
    """
    alpha = torch.as_tensor(alpha, dtype=c2w_0.dtype, device=c2w_0.device)
    q0 = matrix_to_quaternion(c2w_0[..., :3, :3])
    q1 = matrix_to_quaternion(c2w_1[..., :3, :3])
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)  # shortest arc
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)  # (..., 1)
    a = alpha[..., None]
    sin = torch.sin(theta)
    small = sin < 1e-6  # nearly equal rotations: linear blend is exact to float precision
    w0 = torch.where(small, 1 - a, torch.sin((1 - a) * theta) / torch.where(small, 1.0, sin))
    w1 = torch.where(small, a, torch.sin(a * theta) / torch.where(small, 1.0, sin))
    R = quaternion_to_matrix(w0 * q0 + w1 * q1)
    t = (1 - a) * c2w_0[..., :3, 3] + a * c2w_1[..., :3, 3]
    return _pose_from(R, t)


# --------------------------------------------------------------------------------------------------
# Square-root disparity and the per-window scale (M2)
# --------------------------------------------------------------------------------------------------

DISPARITY_LAMBDA = 0.95  # the release's headroom: the first frame's disparity fills (0, 0.95]


def window_scale(depth_first: Tensor, lam: float = DISPARITY_LAMBDA, quantile: float = 0.0) -> Tensor:
    """Metres per normalised unit for a window, from its first frame's depth.

    Normalised depth is ``depth / scale``, so the first frame's normalised disparity
    ``scale / depth`` lies in (0, lam], and later frames keep headroom up to 1 (nearer surfaces).

    Args:
        depth_first: (..., H, W) metric z-depth of the window's first frame, > 0.
        quantile: 0 takes the nearest pixel (exact depth: training); a small quantile ignores that share
            of nearest pixels (generated depth, whose few outlier pixels near zero would set the scale).
    Returns:
        scale: (...,) = lam * min(depth_first), or lam * the ``quantile`` of depth_first.
    """
    if not 0.0 < lam <= 1.0:
        raise ValueError(f"lam must be in (0, 1], got {lam!r}")
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile must be in [0, 0.5), got {quantile!r}")
    if quantile > 0:
        dmin = torch.quantile(depth_first.flatten(-2).float(), quantile, dim=-1).to(depth_first.dtype)
    else:
        dmin = depth_first.amin(dim=(-2, -1))
    if not torch.all(torch.isfinite(dmin) & (dmin > 0)):
        raise ValueError("depth_first must be finite and > 0 everywhere to set a window scale")
    return lam * dmin


def encode_depth(depth: Tensor, scale: Tensor) -> Tensor:
    """Metric depth -> model channel ``2 * sqrt(scale / depth) - 1``.

    Args:
        depth: (..., H, W) metres, > 0.  scale: (...,) from ``window_scale`` (leading dims broadcast).
    Returns:
        (..., H, W): the first frame of its window lies in (-1, 2 * sqrt(lam) - 1].
    """
    return 2.0 * torch.sqrt(scale[..., None, None] / depth) - 1.0


def decode_depth(x: Tensor, scale: Tensor, min_sqrt_disparity: float = 0.05) -> Tensor:
    """Inverse of ``encode_depth``. Predictions below ``min_sqrt_disparity`` are clamped to it: the farthest
    surface decodes to 1 / 0.05^2 = 400 window scales instead of infinite or negative depth. The recorded worlds
    reach ~55 scales (encoded -0.73 at the lowest); generated chunks put a few pixels at or below -1 (the render
    frame's holes are coded -1), which the old floor of 1e-3 decoded to 10^6 scales (mean AbsRel 10-150)."""
    e = ((x + 1.0) / 2.0).clamp_min(min_sqrt_disparity)
    return scale[..., None, None] / (e * e)


def scale_poses(c2w: Tensor, scale: Tensor) -> Tensor:
    """Divide pose translations by the window scale (depth and cameras stay consistent).

    Args:
        c2w: (..., 4, 4).  scale: broadcastable to (...,).
    """
    out = c2w.clone()
    out[..., :3, 3] = c2w[..., :3, 3] / scale[..., None]
    return out


def unscale_poses(c2w: Tensor, scale: Tensor) -> Tensor:
    """Inverse of ``scale_poses``."""
    out = c2w.clone()
    out[..., :3, 3] = c2w[..., :3, 3] * scale[..., None]
    return out


# --------------------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------------------


def level_pose(c2w: Tensor, height: Tensor | float = 0.0, max_pitch: float = math.pi / 2) -> Tensor:
    """The nearest pose of a camera on a body walking on a level floor: no roll, pitch within ``max_pitch``,
    its centre at ``y = height`` (OpenCV: y is down and the frame's y axis is the vertical).

    The heading (yaw about y) and the tilt come from the camera's optical axis; the rotation is rebuilt as
    R_yaw @ R_pitch, the simulator agent's convention (``deepverse_env.sim.agent``).

    Args:
        c2w: (..., 4, 4).  height: broadcastable to (...,).  max_pitch: radians.
    Returns:
        (..., 4, 4) level poses.
    """
    f = c2w[..., :3, 2]  # (..., 3) optical axis
    yaw = torch.atan2(-f[..., 0], f[..., 2])  # + = turned left (counter-clockwise seen from above)
    pitch = torch.atan2(-f[..., 1], torch.linalg.vector_norm(f[..., [0, 2]], dim=-1)).clamp(-max_pitch, max_pitch)
    cy, sy, cp, sp = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin()
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
    R_yaw = torch.stack([cy, zero, -sy, zero, one, zero, sy, zero, cy], -1).unflatten(-1, (3, 3))
    R_pitch = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).unflatten(-1, (3, 3))
    out = c2w.clone()
    out[..., :3, :3] = R_yaw @ R_pitch
    out[..., 1, 3] = torch.as_tensor(height, dtype=c2w.dtype, device=c2w.device).expand(c2w.shape[:-2])
    return out


def unproject(depth: Tensor, K: Tensor, c2w: Tensor) -> Tensor:
    """World-frame 3D points of every pixel.

    Args:
        depth: (..., H, W) z-depth.  K: (..., 3, 3).  c2w: (..., 4, 4).
    Returns:
        (..., H, W, 3).
    """
    H, W = depth.shape[-2:]
    cam = camera_rays(K, H, W) * depth[..., None]  # (..., H, W, 3) camera frame
    R, t = c2w[..., :3, :3], c2w[..., :3, 3]
    return torch.einsum("...ij,...hwj->...hwi", R, cam) + t[..., None, None, :]


def project(points: Tensor, K: Tensor, c2w: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points into a camera.

    Args:
        points: (..., N, 3).  K: (..., 3, 3).  c2w: (..., 4, 4).
    Returns:
        uv: (..., N, 2) pixel coordinates (pixel centres at integers); z: (..., N) depth in that camera.
    """
    w2c = invert_pose(c2w)
    cam = torch.einsum("...ij,...nj->...ni", w2c[..., :3, :3], points) + w2c[..., None, :3, 3]
    z = cam[..., 2]
    pix = torch.einsum("...ij,...nj->...ni", K, cam)
    return pix[..., :2] / z[..., None], z


# --------------------------------------------------------------------------------------------------
# Captions from measured motion (M10, M14)
# --------------------------------------------------------------------------------------------------

_TRANSLATION_NAMES = list(TRANSLATIONS)
# Direction of each moving translation class as an angle atan2(x, z): forward 0, right +90 degrees.
_SECTORS = torch.tensor([math.atan2(*TRANSLATIONS[n]) for n in _TRANSLATION_NAMES[1:]])


def motion_classes(
    c2w_start: Tensor,
    c2w_end: Tensor,
    *,
    move_threshold: float,
    yaw_threshold: float,
    pitch_threshold: float,
) -> Tensor:
    """Caption index (into ``world_model.text.SENTENCES``) of the camera motion between two poses.

    The motion is measured in the start camera's frame: translation is the displacement's component
    in the camera's x-z plane, binned into 8 directions of 45 degrees (or "stay" below
    ``move_threshold`` metres); yaw is the turn of the optical axis about the camera's vertical
    (+ left), pitch the change of its elevation (+ up), each "none" below its threshold (radians).

    Args:
        c2w_start, c2w_end: (..., 4, 4).
    Returns:
        (...,) long tensor of sentence indices.
    """
    rel = relative_pose(c2w_start, c2w_end)
    d = rel[..., :3, 3]  # (..., 3) displacement in the start camera frame
    horiz = torch.sqrt(d[..., 0] ** 2 + d[..., 2] ** 2)
    angle = torch.atan2(d[..., 0], d[..., 2])  # 0 = forward, +pi/2 = right
    diff = torch.remainder(angle[..., None] - _SECTORS.to(angle), 2 * math.pi)
    diff = torch.minimum(diff, 2 * math.pi - diff)  # (..., 8) angular distance to each direction
    t_idx = torch.where(horiz < move_threshold, 0, diff.argmin(-1) + 1)
    z = rel[..., :3, 2]  # end optical axis in the start frame
    yaw = torch.atan2(-z[..., 0], z[..., 2])  # + = turned left (towards -x)
    pitch = torch.atan2(-z[..., 1], torch.sqrt(z[..., 0] ** 2 + z[..., 2] ** 2))  # + = up (towards -y)
    # Class order of YAWS / PITCHES: none, positive, negative.
    y_idx = torch.where(yaw > yaw_threshold, 1, torch.where(yaw < -yaw_threshold, 2, 0))
    p_idx = torch.where(pitch > pitch_threshold, 1, torch.where(pitch < -pitch_threshold, 2, 0))
    return (t_idx * len(YAWS) + y_idx) * len(PITCHES) + p_idx


def caption_from_motion(
    c2w_start: Tensor,
    c2w_end: Tensor,
    *,
    move_threshold: float,
    yaw_threshold: float,
    pitch_threshold: float,
) -> str | list:
    """The sentence describing the measured camera motion of a chunk (see ``motion_classes``).

    Returns one sentence for single poses (4, 4), else a nested list matching the leading dims.
    """
    idx = motion_classes(
        c2w_start, c2w_end,
        move_threshold=move_threshold, yaw_threshold=yaw_threshold, pitch_threshold=pitch_threshold,
    )
    if idx.dim() == 0:
        return SENTENCES[int(idx)]
    return _nested_sentences(idx.tolist())


def _nested_sentences(idx):
    return SENTENCES[idx] if isinstance(idx, int) else [_nested_sentences(i) for i in idx]

