"""Pictures for people: depth colour maps, top-down maps, frames side by side, the panel both envs
render, a predicted world's map, a window to show them in. Plain numpy, uint8 out.

Top-down maps look at the horizontal x-z plane from above: x to the right, z up the image. For the
simulator that is its floor plan; for an episode frame (the first camera, level) it is "forward is up".
"""
from __future__ import annotations

import math
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from deepverse_env.export import PointCloud

DEPTH_RANGE = (0.0, 12.0)  # metres spanned by the depth colour map of a panel
PATH_STEPS = 10_000  # camera positions a WorldMap keeps (a ring: the most recent ones)

# Google's Turbo colour map as its widely used degree-5 polynomial fit, one per channel.
# Columns: red, green, blue; rows: coefficients of x^0 .. x^5.
_TURBO = np.array(
    [
        [0.13572138, 0.09140261, 0.10667330],
        [4.61539260, 2.19418839, 12.64194608],
        [-42.66032258, 4.84296658, -60.58204836],
        [132.13108234, -14.18503333, 110.36276771],
        [-152.94239396, 4.27729857, -89.90310912],
        [59.28637943, 2.82956604, 27.34824973],
    ]
)


def turbo(x: np.ndarray) -> np.ndarray:
    """Turbo colours of values in [0, 1] (clipped): (...,) -> (..., 3) float in [0, 1]; 0 blue, 1 red."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    powers = x[..., None] ** np.arange(6)  # (..., 6)
    return np.clip(powers @ _TURBO, 0.0, 1.0)


def colorize_depth(depth: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Depth to colours, near red and far blue: turbo over [0.95, 0.05] (its dark ends stay unused, so
    black can mean "no surface") as depth runs over [vmin, vmax].

    Args:
        depth: (..., H, W) metres; non-finite or non-positive values (no surface) come out black.
        vmin, vmax: the range mapped onto the colour map; default: the valid depths' min and max.
    Returns:
        (..., H, W, 3) uint8.
    """
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    if vmin is None:
        vmin = float(depth[valid].min()) if valid.any() else 0.0
    if vmax is None:
        vmax = float(depth[valid].max()) if valid.any() else 1.0
    scaled = (np.where(valid, depth, vmax) - vmin) / max(vmax - vmin, 1e-6)
    rgb = turbo(0.95 - 0.9 * scaled) * valid[..., None]
    return np.round(rgb * 255).astype(np.uint8)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W, C) image by an integer factor."""
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def side_by_side(*images: np.ndarray, gap: int = 2) -> np.ndarray:
    """(H_i, W_i, 3) uint8 images in a row, top-aligned on a black canvas, ``gap`` pixels apart."""
    height = max(im.shape[0] for im in images)
    width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    x = 0
    for im in images:
        canvas[: im.shape[0], x : x + im.shape[1]] = im
        x += im.shape[1] + gap
    return canvas


def draw_topdown(
    size: int,
    extent: tuple[float, float, float, float],
    *,
    rects: np.ndarray | None = None,
    rect_colours: np.ndarray | None = None,
    circles: np.ndarray | None = None,
    circle_colours: np.ndarray | None = None,
    points: np.ndarray | None = None,
    point_colours: np.ndarray | None = None,
    trajectory: np.ndarray | None = None,
    heading: float | None = None,
    background: tuple[int, int, int] = (235, 235, 225),
) -> np.ndarray:
    """A square map of the x-z plane seen from above.

    Args:
        size: image side in pixels.
        extent: (x_min, x_max, z_min, z_max) in metres, fitted into the square with equal scales.
        rects: (N, 4) filled axis-aligned rectangles (x0, z0, x1, z1); colours (N, 3) in 0..255
            (default dark grey).
        circles: (N, 3) filled discs (x, z, radius); colours (N, 3).
        points: (N, 2) single pixels (x, z), e.g. a point cloud; colours (N, 3) (default blue).
        trajectory: (T, 2) camera positions (x, z), drawn as a red line, the last one as a dot.
        heading: yaw of the last camera in radians (0 looks along +z, + turns left, i.e. towards -x),
            drawn as a short line from the dot.
    Returns:
        (size, size, 3) uint8.
    """
    x0, x1, z0, z1 = extent
    scale = (size - 4) / max(x1 - x0, z1 - z0, 1e-6)  # pixels per metre, 2 px margin
    cx, cz = 0.5 * (x0 + x1), 0.5 * (z0 + z1)

    def to_px(x, z):  # metres -> (column, row)
        return (np.asarray(x) - cx) * scale + size / 2, size / 2 - (np.asarray(z) - cz) * scale

    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = background
    rows, cols = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    if rects is not None and len(rects):
        colours = np.full((len(rects), 3), 60) if rect_colours is None else rect_colours
        for (a, b, c, d), colour in zip(rects, colours):
            (ca, rb), (cc, rd) = to_px(a, b), to_px(c, d)
            inside = (cols >= min(ca, cc)) & (cols <= max(ca, cc)) & (rows >= min(rb, rd)) & (rows <= max(rb, rd))
            inside |= _dot_mask(rows, cols, 0.5 * (ca + cc), 0.5 * (rb + rd), 0.5)  # keep thin walls visible
            img[inside] = colour
    if circles is not None and len(circles):
        colours = np.full((len(circles), 3), 60) if circle_colours is None else circle_colours
        for (x, z, r), colour in zip(circles, colours):
            c, r_ = to_px(x, z)
            img[_dot_mask(rows, cols, c, r_, max(r * scale, 0.7))] = colour
    if points is not None and len(points):
        c, r = to_px(points[:, 0], points[:, 1])
        ok = (c >= 0) & (c < size) & (r >= 0) & (r < size)
        colours = np.array([40, 90, 220]) if point_colours is None else np.asarray(point_colours)[ok]
        img[r[ok].astype(int), c[ok].astype(int)] = colours
    if trajectory is not None and len(trajectory):
        _polyline(img, *to_px(trajectory[:, 0], trajectory[:, 1]), (220, 40, 40))
        c, r = to_px(*trajectory[-1])
        img[_dot_mask(rows, cols, c, r, max(2.0, size / 100))] = (220, 40, 40)
        if heading is not None:
            tip = trajectory[-1] + 0.6 * np.array([-np.sin(heading), np.cos(heading)])  # 0.6 m ahead
            tc, tr = to_px(*tip)
            _polyline(img, np.array([c, tc]), np.array([r, tr]), (20, 20, 20))
    return img


def _dot_mask(rows: np.ndarray, cols: np.ndarray, c: float, r: float, radius: float) -> np.ndarray:
    return (cols - c) ** 2 + (rows - r) ** 2 <= radius**2


def _polyline(img: np.ndarray, cols: np.ndarray, rows: np.ndarray, colour) -> None:
    """Draw the segments between consecutive (column, row) points, sampled every half pixel or finer."""
    h, w = img.shape[:2]
    cols, rows = np.atleast_1d(cols), np.atleast_1d(rows)
    if len(cols) == 1:
        cols, rows = np.repeat(cols, 2), np.repeat(rows, 2)
    longest = np.max(np.maximum(np.abs(np.diff(cols)), np.abs(np.diff(rows))))
    s = np.linspace(0.0, 1.0, int(2 * longest) + 2)  # (n,) samples along every segment
    c = (cols[:-1, None] + s * np.diff(cols)[:, None]).astype(int).ravel()
    r = (rows[:-1, None] + s * np.diff(rows)[:, None]).astype(int).ravel()
    ok = (c >= 0) & (c < w) & (r >= 0) & (r < h)
    img[r[ok], c[ok]] = colour


def draw_cloud_map(
    size: int, points: np.ndarray, colours: np.ndarray, trajectory: np.ndarray, heading: float | None = None
) -> np.ndarray:
    """Top-down map of a predicted world: its point cloud below eye level and the camera's path.

    Points above the first camera's eye level (y < 0 in the episode frame, y down) are left out, so
    ceilings do not hide the floor; the rest are painted lowest first, so walls and objects stand on
    the floor. The view fits the trajectory and the middle 98% of the points.

    Args:
        points: (N, 3) episode-frame positions; colours: (N, 3) uint8.
        trajectory: (T, 3) camera positions; heading: yaw of the last camera (as ``draw_topdown``).
    Returns:
        (size, size, 3) uint8.
    """
    below = points[:, 1] > 0
    points, colours = points[below], colours[below]
    order = np.argsort(-points[:, 1], kind="stable")  # floor first
    xz = points[order][:, [0, 2]]
    path = trajectory[:, [0, 2]]
    corners = [path.min(0), path.max(0)]
    if len(xz):
        corners += [np.percentile(xz, 1, axis=0), np.percentile(xz, 99, axis=0)]
    lo, hi = np.min(corners, axis=0), np.max(corners, axis=0)
    pad = 0.1 * (hi - lo).max() + 0.5
    extent = (lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad)
    return draw_topdown(size, extent, points=xz, point_colours=colours[order], trajectory=path, heading=heading)


def panel(rgb: np.ndarray, depth: np.ndarray | None, draw_map: Callable[[int], np.ndarray]) -> np.ndarray:
    """RGB | depth colour map | a top-down map, upscaled to at least 256 pixels high: what both envs render.

    Args:
        rgb: (H, W, 3) uint8.  depth: (H, W, 1) metres, or None (a world without depth: a black tile, as
            ``colorize_depth`` draws "no surface", so the layout stays that of every other panel).
        draw_map: size -> (size, size, 3) uint8 top-down map; it is asked for the upscaled frame height.
    Returns:
        (H * k, W', 3) uint8 with k = max(1, 256 // H).
    """
    k = max(1, 256 // rgb.shape[0])
    depth_colours = np.zeros_like(rgb) if depth is None else colorize_depth(depth[..., 0], *DEPTH_RANGE)
    return side_by_side(upscale(rgb, k), upscale(depth_colours, k), draw_map(rgb.shape[0] * k))


class WorldMap:
    """The map of one predicted world this episode: a bounded uniform sample of its point cloud and the
    camera's last ``PATH_STEPS`` positions, drawn beside the frame by ``panel``. Its memory is fixed when
    it is made: ``points`` x 15 bytes plus ``PATH_STEPS`` x 12 bytes."""

    def __init__(self, points: int):
        self.cloud = PointCloud(points)
        self.path = np.zeros((PATH_STEPS, 3), dtype=np.float32)  # camera positions, a ring
        self.count = 0  # positions ever recorded this episode

    def add(self, points: np.ndarray, colours: np.ndarray, position: np.ndarray) -> None:
        """Record a frame: its (P, 3) points with (P, 3) uint8 colours and its (3,) camera position."""
        self.path[self.count % PATH_STEPS] = position
        self.count += 1
        self.cloud.add(points, colours)

    def clear(self) -> None:
        self.cloud.clear()
        self.count = 0

    def copy(self) -> WorldMap:
        out = WorldMap.__new__(WorldMap)
        out.cloud, out.path, out.count = self.cloud.copy(), self.path.copy(), self.count
        return out

    def nbytes(self) -> int:
        return self.cloud.nbytes() + self.path.nbytes

    def positions(self) -> np.ndarray:
        """(n, 3) the camera positions held, oldest first."""
        if self.count <= PATH_STEPS:
            return self.path[: self.count]
        return np.roll(self.path, -(self.count % PATH_STEPS), axis=0)

    def panel(self, rgb: np.ndarray, depth: np.ndarray | None, pose: np.ndarray) -> np.ndarray:
        """``panel`` of the current frame, rgb (H, W, 3), depth (H, W, 1) or None, pose (4, 4), beside this map."""
        axis = pose[:3, 2]  # optical axis
        heading = math.atan2(-axis[0], axis[2])  # 0 looks along +z, + turns left
        return panel(
            rgb, depth, lambda size: draw_cloud_map(size, self.cloud.points, self.cloud.colours, self.positions(), heading)
        )


class HumanWindow:
    """A pygame window for ``render_mode="human"``, opened by the first ``show``. Making one checks that
    pygame is installed (``DependencyNotInstalled`` if not)."""

    def __init__(self, fps: float):
        try:
            import pygame  # noqa: F401
        except ImportError:
            raise gym.error.DependencyNotInstalled('render_mode="human" needs pygame: pip install pygame') from None
        self.fps = fps
        self._window = self._clock = None

    def show(self, frame: np.ndarray) -> None:
        """Show an (H, W, 3) uint8 frame and wait out the rest of 1 / fps."""
        import pygame

        if self._window is None:
            pygame.init()
            pygame.display.init()
            self._window = pygame.display.set_mode((frame.shape[1], frame.shape[0]))
            self._clock = pygame.time.Clock()
        self._window.blit(pygame.surfarray.make_surface(frame.swapaxes(0, 1)), (0, 0))
        pygame.event.pump()
        pygame.display.flip()
        self._clock.tick(self.fps)

    def close(self) -> None:
        if self._window is not None:
            import pygame

            pygame.display.quit()
            pygame.quit()
            self._window = None
