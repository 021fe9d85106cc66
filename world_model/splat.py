"""Z-buffered point splatting: render a batch of point clouds into cameras (DESIGN §5, M18).

Each point lands on the pixel nearest its projection; where several land on one pixel the nearest surface
(smallest z-depth) wins, ties going to the point listed last. Pixels no point lands on are holes
(``mask`` False). This is the renderer of the 3D cache (``world_model.cache``) and of the
warp-with-true-motion baseline (``world_model.metrics``): frame t's points with its exact depth, rendered
into frame t+1's exact camera, reproduce frame t+1 wherever both see the same surface.

Legend: B clouds (one per camera), N points, C values per point, (H, W) image size.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from world_model import geometry as G


class Render(NamedTuple):
    values: Tensor  # (B, H, W, C) the winning point's values; zeros in holes
    depth: Tensor  # (B, H, W) its z-depth in the camera; 0 in holes
    mask: Tensor  # (B, H, W) bool, a point landed here
    source: Tensor  # (B, H, W) long, index of the winning point in N; -1 in holes


def splat(
    points: Tensor, values: Tensor, K: Tensor, c2w: Tensor, height: int, width: int, valid: Tensor | None = None,
    near: float = 1e-6, priority: Tensor | None = None,
) -> Render:
    """Render clouds into cameras, nearest surface first.

    Args:
        points: (B, N, 3) world coordinates.  values: (B, N, C) what each point carries (colour, ...).
        K: (B, 3, 3) intrinsics.  c2w: (B, 4, 4) camera-to-world.  height, width: image size.
        valid: (B, N) bool, points to draw (None: all).  near: points at z <= near are behind the camera.
        priority: (B, N) in [0, 1): the z-test compares z * (1 - priority), so a point with priority p wins
            against surfaces up to a fraction p nearer (real pixels over generated ones); None: plain z.
    Returns:
        ``Render(values, depth, mask, source)``.
    """
    B, N, _ = points.shape
    if values.shape[:2] != (B, N) or K.shape != (B, 3, 3) or c2w.shape != (B, 4, 4):
        raise ValueError(
            f"splat needs points (B, N, 3), values (B, N, C), K (B, 3, 3), c2w (B, 4, 4) with one B and N; got "
            f"{tuple(points.shape)}, {tuple(values.shape)}, {tuple(K.shape)}, {tuple(c2w.shape)}"
        )
    P = height * width
    uv, z = G.project(points.float(), K.float(), c2w.float())  # (B, N, 2), (B, N)
    u, v = uv[..., 0].round(), uv[..., 1].round()
    ok = (z > near) & (u >= 0) & (u < width) & (v >= 0) & (v < height) & torch.isfinite(z)
    if valid is not None:
        ok &= valid.bool()
    pixel = torch.where(ok, v.clamp(0, height - 1).long() * width + u.clamp(0, width - 1).long(), P)  # (B, N); P = dump
    key = z if priority is None else z * (1 - priority)  # (B, N) what the z-test compares
    zbuf = torch.full((B, P + 1), float("inf"), dtype=z.dtype, device=z.device)
    zbuf.scatter_reduce_(1, pixel, torch.where(ok, key, float("inf")), reduce="amin")
    winner = ok & (key <= zbuf.gather(1, pixel))  # (B, N) the nearest point of its pixel (or a tie)
    index = torch.arange(N, device=z.device).expand(B, N)
    source = torch.full((B, P + 1), -1, dtype=torch.long, device=z.device)
    source.scatter_reduce_(1, pixel, torch.where(winner, index, -1), reduce="amax")  # ties: the last point
    source = source[:, :P]  # (B, P)
    mask = source >= 0
    take = source.clamp_min(0)
    out = values.gather(1, take[..., None].expand(B, P, values.shape[2])) * mask[..., None]  # (B, P, C)
    depth = z.gather(1, take) * mask  # (B, P) the winner's z-depth
    return Render(
        out.view(B, height, width, -1), depth.view(B, height, width), mask.view(B, height, width),
        source.view(B, height, width),
    )
