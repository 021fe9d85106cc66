"""Batched torch ray caster: exact z-depth and shaded RGB of many scenes in one call.

Every primitive is intersected analytically in float32: the enclosure (floor, ceiling and outer
walls, as the exit of one box seen from inside), axis-aligned boxes (slab test), spheres and vertical
cylinders (side and top cap). Camera rays are un-normalised with z = 1 in the camera frame, so the ray
parameter of a hit *is* its z-depth.

Speed comes from tiles: the image is cut into 8x8 tiles; the rays of a tile lie in a thin pyramid,
and a primitive is intersected with a tile's pixels only if its bounding box is not wholly outside
that pyramid. The test is conservative, so the image is the same as testing everything. Surviving
(camera, tile, primitive) triples are intersected in one flat batch per primitive kind and reduced per
pixel with one scatter-min over keys that pack (depth, primitive id). Scenes of a batch are padded
to common primitive counts with empty primitives far below the floor, which no camera can see.

Shading: the hit's material is a periodic texture (nearest texel) times Lambert lighting from a fixed
direction plus ambient, dimmed mildly with distance from the camera.

Legend: B cameras, P primitives, Q pixels per camera, NT tiles, T = TILE * TILE pixels per tile,
M (camera, tile, primitive) triples.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from deepverse_env.sim.world import TEXTURE_SIZE, WALL, Scene

TILE = 8
_FAR = 1.0e6  # padding primitives sit this far below the floor, out of every view
_ENCLOSURE = 0xFFFF  # primitive id of the enclosure in packed keys (real ids are smaller)
_FLOOR = -2  # material placeholder, like WALL: resolved to the floor material of the room hit
LIGHT = (0.45, -0.8, 0.4)  # direction towards the light (y is down, so it shines from above)
AMBIENT = 0.5  # brightness of a face turned away from the light
FALLOFF = 15.0  # metres: brightness is scaled by 1 / (1 + (distance / FALLOFF)^2)


@dataclass
class SceneBatch:
    """B scenes padded to common sizes, as torch tensors (see ``world.Scene`` for the fields).

    Materials index one texture atlas shared by the batch, so selecting or repeating scenes (e.g. one
    per camera) copies no textures.
    """

    bounds: Tensor  # (B, 2, 3) enclosure lo, hi
    box_lo: Tensor  # (B, NB, 3)
    box_hi: Tensor  # (B, NB, 3)
    box_material: Tensor  # (B, NB) int64 atlas index, WALL for interior walls
    spheres: Tensor  # (B, NS, 4)
    sphere_material: Tensor  # (B, NS)
    cylinders: Tensor  # (B, NC, 5)
    cylinder_material: Tensor  # (B, NC)
    x_inner: Tensor  # (B, GX - 1) room boundaries inside the enclosure along x, padded with +inf
    z_inner: Tensor  # (B, GZ - 1)
    room_wall_material: Tensor  # (B, GX, GZ)
    room_floor_material: Tensor  # (B, GX, GZ)
    ceiling_material: Tensor  # (B,)
    textures: Tensor  # (NM, S, S, 3) uint8 atlas of all the scenes' textures
    texture_size: Tensor  # (NM,) metres per repeat

    _SHARED = ("textures", "texture_size")

    @classmethod
    def stack(cls, scenes: list[Scene]) -> SceneBatch:
        """Pad and stack scenes; a primitive kind absent from all of them keeps one padding entry."""
        first = np.cumsum([0] + [len(s.textures) for s in scenes])  # each scene's first atlas index

        def atlas(material: np.ndarray, i: int) -> np.ndarray:
            return np.where(material == WALL, WALL, material + first[i])

        gx = max(len(s.x_edges) - 1 for s in scenes)
        gz = max(len(s.z_edges) - 1 for s in scenes)
        rooms_w = np.zeros((len(scenes), gx, gz), dtype=np.int64)
        rooms_f = np.zeros((len(scenes), gx, gz), dtype=np.int64)
        for i, s in enumerate(scenes):
            nx, nz = s.room_wall_material.shape
            rooms_w[i, :nx, :nz] = atlas(s.room_wall_material, i)
            rooms_f[i, :nx, :nz] = atlas(s.room_floor_material, i)
        boxes = _pad([s.boxes for s in scenes], [0.0, _FAR, 0.0, 0.0, _FAR, 0.0], np.float32)
        return cls(
            bounds=torch.from_numpy(np.stack([s.bounds for s in scenes]).astype(np.float32)),
            box_lo=boxes[..., :3].contiguous(),
            box_hi=boxes[..., 3:].contiguous(),
            box_material=_pad([atlas(s.box_material, i) for i, s in enumerate(scenes)], 0, np.int64),
            spheres=_pad([s.spheres for s in scenes], [0.0, _FAR, 0.0, 0.0], np.float32),
            sphere_material=_pad([atlas(s.sphere_material, i) for i, s in enumerate(scenes)], 0, np.int64),
            cylinders=_pad([s.cylinders for s in scenes], [0.0, 0.0, 0.0, _FAR, _FAR], np.float32),
            cylinder_material=_pad([atlas(s.cylinder_material, i) for i, s in enumerate(scenes)], 0, np.int64),
            x_inner=_pad([s.x_edges[1:-1] for s in scenes], np.inf, np.float32, gx - 1),
            z_inner=_pad([s.z_edges[1:-1] for s in scenes], np.inf, np.float32, gz - 1),
            room_wall_material=torch.from_numpy(rooms_w),
            room_floor_material=torch.from_numpy(rooms_f),
            ceiling_material=torch.tensor([s.ceiling_material + first[i] for i, s in enumerate(scenes)]),
            textures=torch.from_numpy(np.concatenate([s.textures for s in scenes])),
            texture_size=torch.from_numpy(np.concatenate([s.texture_size for s in scenes]).astype(np.float32)),
        )

    def __getitem__(self, index) -> SceneBatch:
        """Select or repeat scenes along the batch dim (``index``: int tensor or slice)."""
        return SceneBatch(
            **{f.name: getattr(self, f.name) if f.name in self._SHARED else getattr(self, f.name)[index] for f in fields(self)}
        )

    def __len__(self) -> int:
        return self.bounds.shape[0]


def _pad(arrays: list[np.ndarray], fill, dtype, length: int | None = None) -> Tensor:
    """Stack arrays of different lengths into (len(arrays), length, ...), the rest filled with ``fill``."""
    n = max(1, max(len(a) for a in arrays)) if length is None else length
    out = np.empty((len(arrays), n) + arrays[0].shape[1:], dtype=dtype)
    out[:] = np.asarray(fill, dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return torch.from_numpy(out)


# --------------------------------------------------------------------------------------------------
# Rays and tiles
# --------------------------------------------------------------------------------------------------


def _tiled_rays(c2w: Tensor, K: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """World ray directions (camera z = 1) of the image padded to whole tiles, and each tile's pyramid.

    Returns:
        dirs: (B, NT, T, 3), tile-major pixel order.
        length: (B, NT, T) norm of each direction (metres of ray per metre of depth).
        planes: (B, NT, 4, 3) inward normals of the four planes through the camera that bound the tile's
            rays (at the tile's outer pixel edges, half a pixel beyond its outer pixel centres).
    """
    ty, tx = -(-height // TILE), -(-width // TILE)
    v, u = torch.meshgrid(
        torch.arange(ty * TILE, dtype=torch.float32), torch.arange(tx * TILE, dtype=torch.float32), indexing="ij"
    )
    u = u.reshape(ty, TILE, tx, TILE).transpose(1, 2).reshape(ty * tx, TILE * TILE)  # (NT, T)
    v = v.reshape(ty, TILE, tx, TILE).transpose(1, 2).reshape(ty * tx, TILE * TILE)
    fx, fy = K[:, 0, 0, None, None], K[:, 1, 1, None, None]
    cx, cy = K[:, 0, 2, None, None], K[:, 1, 2, None, None]
    x, y = (u - cx) / fx, (v - cy) / fy  # (B, NT, T)
    cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (B, NT, T, 3)
    R = c2w[:, :3, :3]
    dirs = torch.einsum("bij,bntj->bnti", R, cam)
    # A tile covers x0 <= x <= x1, y0 <= y <= y1 on the plane z = 1, i.e. n . (x, y, 1) >= 0 for
    # n = (1, 0, -x0), (-1, 0, x1), (0, 1, -y0), (0, -1, y1).
    u0 = torch.arange(tx, dtype=torch.float32).repeat(ty) * TILE - 0.5  # (NT,)
    v0 = torch.arange(ty, dtype=torch.float32).repeat_interleave(tx) * TILE - 0.5
    x0, x1 = (u0 - cx[..., 0]) / fx[..., 0], (u0 + TILE - cx[..., 0]) / fx[..., 0]  # (B, NT)
    y0, y1 = (v0 - cy[..., 0]) / fy[..., 0], (v0 + TILE - cy[..., 0]) / fy[..., 0]
    one, zero = torch.ones_like(x0), torch.zeros_like(x0)
    planes = torch.stack(
        [
            torch.stack([one, zero, -x0], -1),
            torch.stack([-one, zero, x1], -1),
            torch.stack([zero, one, -y0], -1),
            torch.stack([zero, -one, y1], -1),
        ],
        dim=2,
    )  # (B, NT, 4, 3)
    return dirs, (x * x + y * y + 1).sqrt(), torch.einsum("bij,bnkj->bnki", R, planes)


def _tile_visibility(planes: Tensor, centre: Tensor, half: Tensor) -> Tensor:
    """Which boxes (centre and half size, relative to the camera) are not wholly outside a tile's pyramid.

    Args:
        planes: (B, NT, 4, 3).  centre, half: (B, P, 3).
    Returns:
        (B, NT, P) bool.
    """
    B, NT = planes.shape[:2]
    n = planes.reshape(B, NT * 4, 3)
    reach = n @ centre.transpose(1, 2) + n.abs() @ half.transpose(1, 2)  # (B, NT * 4, P) max of n . x over the box
    return (reach.reshape(B, NT, 4, -1) >= 0).all(dim=2)


def _pack(t: Tensor, prim: Tensor) -> Tensor:
    """Keys ordered by t, then by primitive id: the bits of a float32 >= 0 (or +inf) sort like the float."""
    return (t.view(torch.int32).to(torch.int64) << 16) | prim


# --------------------------------------------------------------------------------------------------
# Intersections of M (tile, primitive) pairs: (M, T) ray parameter, +inf where missed
# --------------------------------------------------------------------------------------------------


def _hit_boxes(inv_d: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Slab test. inv_d: (M, T, 3); lo, hi: (M, 3) relative to the camera, which is outside every box."""
    t1, t2 = lo[:, None] * inv_d, hi[:, None] * inv_d  # (M, T, 3)
    t_near = torch.minimum(t1, t2).amax(-1)  # (M, T)
    t_far = torch.maximum(t1, t2).amin(-1)
    return torch.where((t_near <= t_far) & (t_near > 0), t_near, torch.inf)


def _hit_spheres(d: Tensor, oc: Tensor, radius: Tensor) -> Tensor:
    """d: (M, T, 3); oc = camera - centre: (M, 3); radius: (M,). The camera is outside every sphere."""
    dd = (d * d).sum(-1)  # (M, T)
    half_b = (d * oc[:, None]).sum(-1)
    c = (oc * oc).sum(-1) - radius * radius  # (M,)
    disc = half_b * half_b - dd * c[:, None]
    t = (-half_b - disc.clamp_min(0).sqrt()) / dd
    return torch.where((disc >= 0) & (t > 0), t, torch.inf)


def _hit_cylinders(d: Tensor, oc: Tensor, oy: Tensor, cyl: Tensor) -> Tensor:
    """Vertical cylinders: the side between y_top and y_bottom, and the top cap (the bottom rests on the
    floor). The camera is outside every cylinder.

    Args:
        d: (M, T, 3).  oc: camera (x, z) - centre (x, z), (M, 2).  oy: camera y, (M,).  cyl: (M, 5).
    """
    dx, dy, dz = d.unbind(-1)  # (M, T)
    ox, oz = oc[:, 0, None], oc[:, 1, None]  # (M, 1)
    r, y_top, y_bot = cyl[:, 2, None], cyl[:, 3, None], cyl[:, 4, None]
    a = dx * dx + dz * dz
    half_b = dx * ox + dz * oz
    disc = half_b * half_b - a * (ox * ox + oz * oz - r * r)
    t_side = (-half_b - disc.clamp_min(0).sqrt()) / a
    y = oy[:, None] + t_side * dy
    side = (disc >= 0) & (t_side > 0) & (y >= y_top) & (y <= y_bot)
    t_cap = (y_top - oy[:, None]) / dy
    cx, cz = ox + t_cap * dx, oz + t_cap * dz
    cap = (t_cap > 0) & (cx * cx + cz * cz <= r * r)
    return torch.minimum(torch.where(side, t_side, torch.inf), torch.where(cap, t_cap, torch.inf))


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def render(scenes: SceneBatch, c2w: Tensor, K: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Ray-cast B cameras, camera i in scene i, in one call.

    Args:
        scenes: B scenes (``SceneBatch.stack``; index it to repeat a scene for several cameras).
        c2w: (B, 4, 4) camera-to-world poses in the scenes' absolute frames.
        K: (B, 3, 3) intrinsics in pixels for ``height`` x ``width`` images.
    Returns:
        rgb: (B, H, W, 3) uint8.  depth: (B, H, W, 1) float32 z-depth in metres, > 0 and finite (the
        enclosure closes every view).
    """
    B = c2w.shape[0]
    c2w, K = c2w.float(), K.float()
    origin = c2w[:, :3, 3]  # (B, 3)
    dirs, length, planes = _tiled_rays(c2w, K, height, width)  # (B, NT, T, 3), (B, NT, T), (B, NT, 4, 3)
    NT, T = dirs.shape[1:3]
    # Exactly axis-parallel rays would make 0 * inf = nan in the slab test; nudge them negligibly.
    dirs = torch.where(dirs == 0, 1e-20, dirs)
    inv_d = 1.0 / dirs

    # The enclosure, seen from inside: the ray leaves through the nearest far face.
    lo, hi = scenes.bounds[:, 0] - origin, scenes.bounds[:, 1] - origin  # (B, 3)
    t_exit = torch.where(dirs > 0, hi[:, None, None], lo[:, None, None]) * inv_d  # (B, NT, T, 3)
    t_room, axis = t_exit.min(dim=-1)  # (B, NT, T)
    key = _pack(t_room, _ENCLOSURE).reshape(-1)  # (B * NT * T,) running minimum over everything hit

    dirs_rows, inv_rows = dirs.reshape(B * NT, T, 3), inv_d.reshape(B * NT, T, 3)
    pixel = torch.arange(T)
    offset = 0

    def scatter(centre: Tensor, half: Tensor, hit) -> None:
        """Intersect the primitives of one kind (boxes around them: centre, half (B, P, 3)) where visible."""
        nonlocal offset
        b, tile, p = _tile_visibility(planes, centre, half).nonzero(as_tuple=True)  # (M,) each
        row = b * NT + tile
        t = hit(b, row, p)  # (M, T)
        key.scatter_reduce_(0, (row[:, None] * T + pixel).reshape(-1), _pack(t, p[:, None] + offset).reshape(-1), "amin")
        offset += centre.shape[1]

    box_c = 0.5 * (scenes.box_lo + scenes.box_hi) - origin[:, None]  # (B, NB, 3) relative to the camera
    box_h = 0.5 * (scenes.box_hi - scenes.box_lo)
    scatter(box_c, box_h, lambda b, row, p: _hit_boxes(inv_rows[row], (box_c - box_h)[b, p], (box_c + box_h)[b, p]))
    sph_c = scenes.spheres[..., :3] - origin[:, None]  # (B, NS, 3)
    sph_r = scenes.spheres[..., 3]
    scatter(
        sph_c, sph_r[..., None].expand_as(sph_c), lambda b, row, p: _hit_spheres(dirs_rows[row], -sph_c[b, p], sph_r[b, p])
    )
    cyl = scenes.cylinders  # (B, NC, 5)
    cyl_c = torch.stack([cyl[..., 0], 0.5 * (cyl[..., 3] + cyl[..., 4]), cyl[..., 1]], -1) - origin[:, None]
    cyl_h = torch.stack([cyl[..., 2], 0.5 * (cyl[..., 4] - cyl[..., 3]), cyl[..., 2]], -1)
    scatter(
        cyl_c, cyl_h, lambda b, row, p: _hit_cylinders(dirs_rows[row], -cyl_c[b, p][:, [0, 2]], origin[b, 1], cyl[b, p])
    )

    depth = (key >> 16).to(torch.int32).view(torch.float32).reshape(B, NT * T)
    hit_id = (key & 0xFFFF).reshape(B, NT * T)
    rgb = _shade(scenes, origin, dirs.reshape(B, -1, 3), depth, hit_id, axis.reshape(B, -1), length.reshape(B, -1))
    ty, tx = -(-height // TILE), -(-width // TILE)

    def untile(x: Tensor) -> Tensor:  # (B, NT * T, C) -> (B, H, W, C)
        x = x.reshape(B, ty, tx, TILE, TILE, -1).transpose(2, 3).reshape(B, ty * TILE, tx * TILE, -1)
        return x[:, :height, :width].contiguous()

    return untile(rgb), untile(depth[..., None])


def _shade(
    scenes: SceneBatch, origin: Tensor, d: Tensor, t: Tensor, hit_id: Tensor, axis: Tensor, length: Tensor
) -> Tensor:
    """Colour of every pixel: its material's texel times Lambert shading and a mild distance falloff.

    Args:
        origin: (B, 3) cameras.  d: (B, Q, 3) ray directions.  t: (B, Q) ray parameter of the hit.
        hit_id: (B, Q) primitive (boxes, then spheres, then cylinders), or _ENCLOSURE.
        axis: (B, Q) axis through which the ray leaves the enclosure.  length: (B, Q) norms of ``d``.
    Returns:
        (B, Q, 3) uint8.
    """
    B, Q = t.shape
    NB, NS = scenes.box_lo.shape[1], scenes.spheres.shape[1]
    light = torch.tensor(LIGHT) / torch.tensor(LIGHT).norm()
    p = origin[:, None] + t[..., None] * d  # (B, Q, 3) world hit points

    # Flat faces (enclosure, boxes) have normal sign * e_axis; curved ones get a full normal below.
    sign = -torch.sign(d.gather(2, axis[..., None])[..., 0])  # enclosure: the inward normal
    material = torch.where(axis != 1, WALL, torch.where(sign < 0, _FLOOR, scenes.ceiling_material[:, None]))
    b, j = (hit_id < NB).nonzero(as_tuple=True)
    i = hit_id[b, j]
    flat = b * NB + i
    lo, hi = scenes.box_lo.reshape(-1, 3)[flat], scenes.box_hi.reshape(-1, 3)[flat]
    rel = (p[b, j] - 0.5 * (lo + hi)) / (0.5 * (hi - lo))  # (n, 3), +-1 on the faces
    k = rel.abs().argmax(dim=1)
    axis = axis.index_put((b, j), k)
    sign = sign.index_put((b, j), torch.sign(rel.gather(1, k[:, None])[:, 0]))
    material = material.index_put((b, j), scenes.box_material.reshape(-1)[flat])
    lambert = sign * light[axis]

    # Curved surfaces: full normals, on the (few) pixels that see them.
    b, j = ((hit_id >= NB) & (hit_id < NB + NS)).nonzero(as_tuple=True)
    i = hit_id[b, j] - NB
    sph = scenes.spheres[b, i]
    curved = [(b, j, (p[b, j] - sph[:, :3]) / sph[:, 3:], scenes.sphere_material[b, i])]
    b, j = ((hit_id >= NB + NS) & (hit_id < _ENCLOSURE)).nonzero(as_tuple=True)
    i = hit_id[b, j] - NB - NS
    cyl = scenes.cylinders[b, i]
    rx, rz, r = p[b, j, 0] - cyl[:, 0], p[b, j, 2] - cyl[:, 1], cyl[:, 2]
    on_cap = rx * rx + rz * rz < (r * r) * (1 - 1e-3)  # side points sit at distance r
    side = torch.stack([rx / r, torch.zeros_like(r), rz / r], -1)
    curved.append((b, j, torch.where(on_cap[:, None], torch.tensor([0.0, -1.0, 0.0]), side), scenes.cylinder_material[b, i]))
    for b, j, normal, mat in curved:  # normal: (n, 3)
        axis = axis.index_put((b, j), normal.abs().argmax(dim=1))
        lambert = lambert.index_put((b, j), (normal * light).sum(-1))
        material = material.index_put((b, j), mat)

    # Walls and floors take the material of the room on the viewer's side of the surface.
    step = 0.05 * sign
    sx = p[..., 0] + torch.where(axis == 0, step, 0.0)
    sz = p[..., 2] + torch.where(axis == 2, step, 0.0)
    ix = torch.searchsorted(scenes.x_inner, sx.contiguous())  # (B, Q)
    iz = torch.searchsorted(scenes.z_inner, sz.contiguous())
    room = ix * scenes.room_wall_material.shape[2] + iz
    material = torch.where(material == WALL, scenes.room_wall_material.flatten(1).gather(1, room), material)
    material = torch.where(material == _FLOOR, scenes.room_floor_material.flatten(1).gather(1, room), material)

    # Texture axes: (z, y) on faces across x, (x, z) across y, (x, y) across z; nearest texel.
    u = torch.where(axis == 0, p[..., 2], p[..., 0])
    v = torch.where(axis == 1, p[..., 2], p[..., 1])
    S = TEXTURE_SIZE
    per_texel = S / scenes.texture_size[material]  # (B, Q) texels per metre
    iu = torch.remainder(u * per_texel, S).floor_().clamp_(max=S - 1)  # float: cheaper than int64 math
    iv = torch.remainder(v * per_texel, S).floor_().clamp_(max=S - 1)
    texel = material * (S * S) + (iv * S + iu).long()
    colour = scenes.textures.reshape(-1, 3)[texel]  # (B, Q, 3) uint8

    distance = t * length
    shade = (AMBIENT + (1 - AMBIENT) * lambert.clamp_min(0.0)) / (1 + (distance / FALLOFF) ** 2)
    return (colour * shade[..., None]).round_().clamp_(0, 255).to(torch.uint8)
