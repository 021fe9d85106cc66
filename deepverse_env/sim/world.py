"""Procedural worlds: rooms and corridors on a grid, doorways, boxes, pillars, spheres, textures.

A world is drawn from one integer seed (``numpy.random.default_rng(seed)`` and nothing else), so a
seed names a scene and unseen seeds are unseen scenes.

World frame of a scene (the *absolute* frame; episodes report poses relative to their first camera):
OpenCV-like with y pointing down along gravity. x and z span the floor plan, the floor is the plane
y = 0 and the ceiling y = -height. Rooms tile the rectangle [0, X] x [0, Z]; its border is the
enclosure (outer walls, floor and ceiling in one); interior walls of ``wall_thickness`` sit centred on
the grid lines between rooms, with a doorway (and a lintel above it) between connected neighbours.

Surfaces are textured: each material is a small periodic RGB texture drawn from one of ``PATTERNS``
(two colours, plus a fine grain) and the size in metres of one repeat. Walls and floors take the
material of the room they face, so every room has its own look.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

PATTERNS = ("checker", "stripes", "bands", "bricks", "tiles", "noise")
TEXTURE_SIZE = 32  # texels per repeat, along each axis
WALL = -1  # box material index of interior walls: they take the material of the room they face


@dataclass
class SceneConfig:
    """How worlds are drawn. Lengths in metres."""

    grid_min: int = 2  # rooms per side, drawn uniformly in [grid_min, grid_max] for x and z
    grid_max: int = 3
    room_min: float = 4.0  # extent of a room row/column
    room_max: float = 7.0
    corridor_prob: float = 0.2  # chance that a row/column is a narrow corridor instead
    corridor_min: float = 2.0
    corridor_max: float = 2.6
    height_min: float = 2.5  # ceiling height, one per scene
    height_max: float = 3.0
    wall_thickness: float = 0.2
    door_min: float = 1.0  # doorway width
    door_max: float = 1.6
    door_height: float = 2.1  # a lintel closes the wall above it
    extra_door_prob: float = 0.4  # neighbours joined beyond a spanning tree (loops make revisits)
    max_boxes: int = 2  # objects per room, each count drawn in [0, max]
    max_pillars: int = 1
    max_spheres: int = 1
    object_clearance: float = 0.9  # free band along walls: objects never block a doorway or a path
    eye_height: float = 1.5  # camera height above the floor
    agent_radius: float = 0.2  # the agent is a vertical cylinder of this radius for collisions
    agent_height: float = 1.7  # things whose lowest point is higher than this do not block it

    def __post_init__(self):
        if not 1 <= self.grid_min <= self.grid_max:
            raise ValueError(f"need 1 <= grid_min <= grid_max, got {self.grid_min!r}, {self.grid_max!r}")
        for name in ("room_min", "corridor_min", "height_min", "door_min", "eye_height", "agent_radius"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.eye_height >= self.height_min:
            raise ValueError(f"eye_height {self.eye_height!r} must be below the ceiling (height_min {self.height_min!r})")


@dataclass
class Scene:
    """One world, as flat arrays (the ray caster pads and stacks them)."""

    seed: int
    height: float
    x_edges: np.ndarray  # (nx + 1,) room boundaries along x, from 0 to X
    z_edges: np.ndarray  # (nz + 1,)
    boxes: np.ndarray  # (NB, 6) float: lo (x, y, z), hi (x, y, z)
    box_material: np.ndarray  # (NB,) int: index into ``textures``, or WALL
    spheres: np.ndarray  # (NS, 4): centre (x, y, z), radius
    sphere_material: np.ndarray  # (NS,)
    cylinders: np.ndarray  # (NC, 5) vertical: centre x, centre z, radius, y_top, y_bottom (y_top < y_bottom)
    cylinder_material: np.ndarray  # (NC,)
    textures: np.ndarray  # (NM, S, S, 3) uint8, one repeat; rows follow the second texture axis
    texture_size: np.ndarray  # (NM,) metres covered by one repeat
    room_wall_material: np.ndarray  # (nx, nz) int
    room_floor_material: np.ndarray  # (nx, nz) int
    ceiling_material: int
    agent_radius: float
    agent_height: float
    eye_height: float

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3) inner corners of the enclosure: (0, -height, 0) and (X, 0, Z)."""
        return np.array([[0.0, -self.height, 0.0], [self.x_edges[-1], 0.0, self.z_edges[-1]]])

    def collides(self, x: float, z: float, radius: float | None = None) -> bool:
        """Whether the agent standing at (x, z) overlaps the enclosure, a wall or an object.

        ``radius`` overrides the agent's radius (e.g. to keep a margin when choosing a start).
        """
        r = self.agent_radius if radius is None else radius
        if not (r <= x <= self.x_edges[-1] - r and r <= z <= self.z_edges[-1] - r):
            return True
        low = -self.agent_height  # y of the agent's top; obstacles must reach below it (y down)
        b = self.boxes[self.boxes[:, 4] > low]
        dx = np.maximum(np.maximum(b[:, 0] - x, x - b[:, 3]), 0.0)
        dz = np.maximum(np.maximum(b[:, 2] - z, z - b[:, 5]), 0.0)
        if np.any(dx * dx + dz * dz < r * r):
            return True
        c = self.cylinders[self.cylinders[:, 4] > low]
        if np.any(np.hypot(c[:, 0] - x, c[:, 1] - z) < c[:, 2] + r):
            return True
        s = self.spheres[self.spheres[:, 1] + self.spheres[:, 3] > low]
        return bool(np.any(np.hypot(s[:, 0] - x, s[:, 2] - z) < s[:, 3] + r))

    def free_spot(self, rng: np.random.Generator, margin: float = 0.1) -> tuple[float, float]:
        """A uniformly drawn room and a point in it where the agent (plus ``margin``) collides with nothing."""
        nx, nz = len(self.x_edges) - 1, len(self.z_edges) - 1
        for _ in range(1000):
            i, j = rng.integers(nx), rng.integers(nz)
            x = rng.uniform(self.x_edges[i], self.x_edges[i + 1])
            z = rng.uniform(self.z_edges[j], self.z_edges[j + 1])
            if not self.collides(x, z, self.agent_radius + margin):
                return float(x), float(z)
        raise RuntimeError(f"no free spot found in scene {self.seed}")


def _texture(rng: np.random.Generator, pattern: str, base: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One periodic repeat of ``pattern`` in two colours: (S, S, 3) uint8."""
    S = TEXTURE_SIZE
    v, u = np.meshgrid((np.arange(S) + 0.5) / S, (np.arange(S) + 0.5) / S, indexing="ij")  # (S, S) in [0, 1)
    if pattern == "checker":
        mix = (np.floor(2 * u) + np.floor(2 * v)) % 2
    elif pattern == "stripes":
        n = rng.choice([1, 2, 4])
        mix = np.floor(2 * n * (u if rng.uniform() < 0.5 else v)) % 2
    elif pattern == "bands":
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * u + 1.5 * np.sin(2 * np.pi * v))
    elif pattern == "bricks":  # 4 rows of 2 bricks, every other row shifted by half a brick
        row = np.floor(4 * v)
        mortar = ((2 * u + 0.5 * (row % 2)) % 1 < 0.08) | ((4 * v) % 1 < 0.12)
        mix = mortar.astype(float)
    elif pattern == "tiles":  # 4 x 4 tiles of random shades with grout
        shade = rng.uniform(0.0, 0.6, (4, 4))[np.floor(4 * v).astype(int), np.floor(4 * u).astype(int)]
        mix = np.where(((4 * u) % 1 < 0.1) | ((4 * v) % 1 < 0.1), 1.0, shade)
    else:  # noise: periodic value noise on an 8 x 8 lattice, bilinearly interpolated
        g = rng.uniform(size=(8, 8))
        x, y = u * 8, v * 8
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        fx, fy = x - x0, y - y0
        x1, y1 = (x0 + 1) % 8, (y0 + 1) % 8
        mix = (g[y0, x0] * (1 - fx) + g[y0, x1] * fx) * (1 - fy) + (g[y1, x0] * (1 - fx) + g[y1, x1] * fx) * fy
    grain = 1 + rng.normal(0.0, 0.04, (S, S, 1))  # texel-level variation, so no surface is flat colour
    colour = (base + (second - base) * mix[..., None]) * grain
    return np.round(np.clip(colour, 0, 1) * 255).astype(np.uint8)


def _colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val)))


class _Materials:
    """Textures of a scene under construction; ``add`` returns the new material's index."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.textures, self.sizes = rng, [], []

    def add(self, patterns: tuple[str, ...], sat, val, size) -> int:
        rng = self.rng
        base = _colour(rng, sat, val)
        # The second colour is the base darkened or lightened, sometimes a contrasting hue.
        second = _colour(rng, sat, val) if rng.uniform() < 0.3 else np.clip(base * rng.uniform(0.45, 0.8), 0, 1)
        self.textures.append(_texture(rng, patterns[rng.integers(len(patterns))], base, second))
        self.sizes.append(rng.uniform(*size))
        return len(self.textures) - 1


def _extents(rng: np.random.Generator, n: int, c: SceneConfig) -> np.ndarray:
    corridor = rng.uniform(size=n) < c.corridor_prob
    sizes = np.where(corridor, rng.uniform(c.corridor_min, c.corridor_max, n), rng.uniform(c.room_min, c.room_max, n))
    return np.concatenate([[0.0], np.cumsum(sizes)])


def _doors(rng: np.random.Generator, nx: int, nz: int, extra_prob: float) -> set:
    """Pairs of neighbouring rooms joined by a doorway: a random spanning tree plus extras."""
    pairs = [((i, j), (i + 1, j)) for i in range(nx - 1) for j in range(nz)]
    pairs += [((i, j), (i, j + 1)) for i in range(nx) for j in range(nz - 1)]
    order = rng.permutation(len(pairs))
    parent = {(i, j): (i, j) for i in range(nx) for j in range(nz)}

    def root(a):
        while parent[a] != a:
            a = parent[a]
        return a

    doors = set()
    for k in order:  # randomised Kruskal: every room is reachable
        a, b = pairs[k]
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[ra] = rb
            doors.add(pairs[k])
        elif rng.uniform() < extra_prob:
            doors.add(pairs[k])
    return doors


def generate_scene(seed: int, config: SceneConfig | None = None) -> Scene:
    """Draw the world of ``seed``."""
    c = config or SceneConfig()
    rng = np.random.default_rng(seed)
    nx, nz = (int(n) for n in rng.integers(c.grid_min, c.grid_max + 1, size=2))
    x_edges, z_edges = _extents(rng, nx, c), _extents(rng, nz, c)
    height = float(rng.uniform(c.height_min, c.height_max))

    materials = _Materials(rng)
    ceiling = materials.add(("tiles", "noise"), (0.0, 0.15), (0.8, 0.95), (1.0, 2.4))
    wall_mat = np.zeros((nx, nz), dtype=np.int64)
    floor_mat = np.zeros((nx, nz), dtype=np.int64)
    for i in range(nx):
        for j in range(nz):
            wall_mat[i, j] = materials.add(("stripes", "bricks", "bands", "tiles", "noise"), (0.1, 0.6), (0.5, 0.95), (0.6, 2.4))
            floor_mat[i, j] = materials.add(("checker", "tiles", "bands", "noise"), (0.1, 0.7), (0.3, 0.85), (0.6, 2.0))

    # Interior walls: per grid line, the solid intervals left between doorways, plus lintels.
    half_t = c.wall_thickness / 2
    doors = _doors(rng, nx, nz, c.extra_door_prob)
    boxes, box_mat = [], []

    def wall_line(axis: int, at: float, length: float, segments: list[tuple[float, float, bool]]):
        """Walls on the line {x or z = at} from 0 to length; segments = (start, end, has_door)."""
        cuts = []
        margin = half_t + 0.3
        for s0, s1, has_door in segments:
            room = s1 - s0 - 2 * margin
            if has_door and room >= 0.8:
                w = min(rng.uniform(c.door_min, c.door_max), room)
                mid = s0 + margin + w / 2 + rng.uniform() * (room - w)
                cuts.append((mid - w / 2, mid + w / 2))
            elif has_door:  # too short for a framed doorway: open the whole segment
                cuts.append((s0 + half_t, s1 - half_t))
        solid, start = [], 0.0
        for d0, d1 in cuts:
            solid.append((start, d0, -height, 0.0))
            solid.append((d0, d1, -height, -c.door_height))  # lintel
            start = d1
        solid.append((start, length, -height, 0.0))
        for s0, s1, y0, y1 in solid:
            if axis == 0:
                boxes.append([at - half_t, y0, s0, at + half_t, y1, s1])
            else:
                boxes.append([s0, y0, at - half_t, s1, y1, at + half_t])
            box_mat.append(WALL)

    for i in range(1, nx):
        segs = [(z_edges[j], z_edges[j + 1], ((i - 1, j), (i, j)) in doors) for j in range(nz)]
        wall_line(0, x_edges[i], z_edges[-1], segs)
    for j in range(1, nz):
        segs = [(x_edges[i], x_edges[i + 1], ((i, j - 1), (i, j)) in doors) for i in range(nx)]
        wall_line(2, z_edges[j], x_edges[-1], segs)

    # Objects in rooms wide enough, kept off the walls so doorways and paths stay free.
    spheres, sph_mat, cylinders, cyl_mat = [], [], [], []
    for i in range(nx):
        for j in range(nz):
            x0, x1 = x_edges[i] + half_t + c.object_clearance, x_edges[i + 1] - half_t - c.object_clearance
            z0, z1 = z_edges[j] + half_t + c.object_clearance, z_edges[j + 1] - half_t - c.object_clearance
            if x1 - x0 < 1.0 or z1 - z0 < 1.0:
                continue
            placed: list[tuple[float, float, float]] = []  # footprint circles (x, z, radius)

            def place(radius: float):
                for _ in range(20):
                    if x1 - x0 < 2 * radius or z1 - z0 < 2 * radius:
                        return None
                    x, z = rng.uniform(x0 + radius, x1 - radius), rng.uniform(z0 + radius, z1 - radius)
                    # 0.5 m gaps between objects: the agent (0.4 m wide) can walk between them.
                    if all(math.hypot(x - px, z - pz) >= radius + pr + 0.5 for px, pz, pr in placed):
                        placed.append((x, z, radius))
                        return x, z
                return None

            for _ in range(rng.integers(0, c.max_boxes + 1)):
                sx, sz = rng.uniform(0.3, 1.2, 2)
                h = rng.uniform(0.3, min(2.0, height - 0.3))
                at = place(0.5 * math.hypot(sx, sz))
                if at is None:
                    continue
                x, z = at
                boxes.append([x - sx / 2, -h, z - sz / 2, x + sx / 2, 0.0, z + sz / 2])
                box_mat.append(materials.add(PATTERNS, (0.3, 0.9), (0.4, 0.95), (0.3, 1.0)))
                if rng.uniform() < 0.3 and h < height - 0.8:  # a smaller box stacked on top
                    tx, tz, th = sx * rng.uniform(0.4, 0.9), sz * rng.uniform(0.4, 0.9), rng.uniform(0.2, 0.6)
                    boxes.append([x - tx / 2, -h - th, z - tz / 2, x + tx / 2, -h, z + tz / 2])
                    box_mat.append(materials.add(PATTERNS, (0.3, 0.9), (0.4, 0.95), (0.3, 1.0)))
            for _ in range(rng.integers(0, c.max_pillars + 1)):
                r = rng.uniform(0.12, 0.35)
                at = place(r)
                if at is None:
                    continue
                top = -height if rng.uniform() < 0.6 else -rng.uniform(0.5, 1.3)  # pillar or drum
                cylinders.append([at[0], at[1], r, top, 0.0])
                cyl_mat.append(materials.add(PATTERNS, (0.2, 0.8), (0.4, 0.95), (0.3, 1.0)))
            for _ in range(rng.integers(0, c.max_spheres + 1)):
                r = rng.uniform(0.2, 0.5)
                at = place(r)
                if at is None:
                    continue
                y = -r if rng.uniform() < 0.7 else -rng.uniform(max(1.0, r + 0.1), height - r - 0.2)
                spheres.append([at[0], y, at[1], r])
                sph_mat.append(materials.add(PATTERNS, (0.4, 1.0), (0.5, 1.0), (0.2, 0.8)))

    def arr(rows, width):
        return np.asarray(rows, dtype=np.float64).reshape(-1, width)

    return Scene(
        seed=int(seed),
        height=height,
        x_edges=x_edges,
        z_edges=z_edges,
        boxes=arr(boxes, 6),
        box_material=np.asarray(box_mat, dtype=np.int64),
        spheres=arr(spheres, 4),
        sphere_material=np.asarray(sph_mat, dtype=np.int64),
        cylinders=arr(cylinders, 5),
        cylinder_material=np.asarray(cyl_mat, dtype=np.int64),
        textures=np.stack(materials.textures),
        texture_size=np.asarray(materials.sizes),
        room_wall_material=wall_mat,
        room_floor_material=floor_mat,
        ceiling_material=ceiling,
        agent_radius=c.agent_radius,
        agent_height=c.agent_height,
        eye_height=c.eye_height,
    )
