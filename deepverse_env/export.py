"""The predicted 4D world to files people open: a bounded point cloud as ``.ply``, episodes as video.

    cloud = PointCloud(capacity=50_000)
    cloud.add(points, colours)                      # every step; memory never grows past capacity
    write_ply("world.ply", cloud.points, cloud.colours)
    with VideoWriter("episode.mp4", fps=4) as video:  # .gif where no ffmpeg is available
        video.append(env.render())

A ``.ply`` opens in MeshLab, CloudCompare, Blender or Open3D; the mp4 (H.264, yuv420p) in any player.
"""
from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np


class PointCloud:
    """A uniform random sample (reservoir) of every point added, at most ``capacity`` points.

    Memory is allocated once: ``capacity`` x (3 float32 + 3 uint8) = 15 bytes per point. A reservoir
    rather than a ring buffer, so the start of a long episode stays on the map as much as its end.
    The sampling draws from its own generator (``seed``), never from an env's.
    """

    def __init__(self, capacity: int = 50_000, seed: int = 0):
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.capacity = int(capacity)
        self._points = np.zeros((self.capacity, 3), dtype=np.float32)
        self._colours = np.zeros((self.capacity, 3), dtype=np.uint8)
        self.seen = 0  # points offered so far
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    @property
    def points(self) -> np.ndarray:
        """(n, 3) float32 positions held now."""
        return self._points[: len(self)]

    @property
    def colours(self) -> np.ndarray:
        """(n, 3) uint8 RGB of ``points``."""
        return self._colours[: len(self)]

    def add(self, points: np.ndarray, colours: np.ndarray) -> None:
        """Offer (N, 3) points with (N, 3) uint8 colours; non-finite points are dropped."""
        ok = np.isfinite(points).all(axis=1)
        points, colours = points[ok], colours[ok]
        n = len(points)
        slot = self.seen + np.arange(n)  # each point's index in the stream
        full = slot >= self.capacity
        slot[full] = (self._rng.random(int(full.sum())) * (slot[full] + 1)).astype(np.int64)  # keep w.p. cap/(i+1)
        keep = slot < self.capacity
        self._points[slot[keep]] = points[keep]
        self._colours[slot[keep]] = colours[keep]
        self.seen += n

    def clear(self) -> None:
        self.seen = 0

    def copy(self) -> PointCloud:
        out = PointCloud.__new__(PointCloud)
        out.capacity, out.seen = self.capacity, self.seen
        out._points, out._colours = self._points.copy(), self._colours.copy()
        out._rng = np.random.default_rng()
        out._rng.bit_generator.state = self._rng.bit_generator.state
        return out

    def nbytes(self) -> int:
        return self._points.nbytes + self._colours.nbytes


_PLY_VERTEX = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])


def write_ply(path: str | Path, points: np.ndarray, colours: np.ndarray, binary: bool = True) -> Path:
    """Write a coloured point cloud as PLY (binary little-endian, or ASCII).

    Args:
        points: (N, 3) positions (metres, the episode frame: OpenCV axes, y down).
        colours: (N, 3) uint8 RGB.
    Returns:
        the path written.
    """
    points, colours = np.asarray(points, dtype=np.float32), np.asarray(colours, dtype=np.uint8)
    if points.ndim != 2 or points.shape[1] != 3 or colours.shape != points.shape:
        raise ValueError(f"points and colours must both be (N, 3), got {points.shape} and {colours.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "binary_little_endian" if binary else "ascii"
    header = (
        f"ply\nformat {fmt} 1.0\ncomment DeepVerse predicted point cloud, metres, OpenCV axes (y down)\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    vertices = np.empty(len(points), dtype=_PLY_VERTEX)
    vertices["x"], vertices["y"], vertices["z"] = points.T
    vertices["red"], vertices["green"], vertices["blue"] = colours.T
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        if binary:
            f.write(vertices.tobytes())
        else:
            for p, c in zip(points, colours):
                f.write(f"{p[0]:.6g} {p[1]:.6g} {p[2]:.6g} {c[0]} {c[1]} {c[2]}\n".encode("ascii"))
    return path


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read back a PLY written by ``write_ply``: (N, 3) float32 points and (N, 3) uint8 colours."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path} is not a PLY file")
    header = data[:end].decode("ascii").splitlines()
    fmt = next(line.split()[1] for line in header if line.startswith("format"))
    count = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    body = data[end + len("end_header\n") :]
    if fmt == "binary_little_endian":
        vertices = np.frombuffer(body, dtype=_PLY_VERTEX, count=count)
        points = np.stack([vertices["x"], vertices["y"], vertices["z"]], axis=1)
        colours = np.stack([vertices["red"], vertices["green"], vertices["blue"]], axis=1)
    elif fmt == "ascii":
        rows = np.loadtxt(body.decode("ascii").splitlines(), ndmin=2).reshape(-1, 6)
        if len(rows) != count:
            raise ValueError(f"{path} announces {count} vertices but holds {len(rows)}")
        points, colours = rows[:, :3].astype(np.float32), rows[:, 3:].astype(np.uint8)
    else:
        raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    return points, colours


def ffmpeg_available() -> bool:
    """Whether imageio can write mp4 (imageio-ffmpeg and its bundled or system ffmpeg)."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return False
    return True


class VideoWriter:
    """Stream (H, W, 3) uint8 frames to an mp4 (H.264) or, without ffmpeg, an animated gif.

    Frames are padded with black to a multiple of 16 pixels (H.264 macro blocks), so none is rescaled.
    ``path`` is the file actually written: its suffix becomes ``.gif`` on the fallback.
    """

    def __init__(self, path: str | Path, fps: float = 4.0):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".mp4" and ffmpeg_available():
            self.path = path
            self._writer = imageio.get_writer(
                path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8, macro_block_size=1
            )
            self._block = 16
        else:
            self.path = path.with_suffix(".gif")
            self._writer = imageio.get_writer(self.path, format="GIF", mode="I", duration=1000.0 / fps, loop=0)
            self._block = 1
        self.frames = 0

    def append(self, frame: np.ndarray) -> None:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"a video frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
        h, w = frame.shape[:2]
        b = self._block
        padded = np.zeros((-(-h // b) * b, -(-w // b) * b, 3), dtype=np.uint8)
        padded[:h, :w] = frame
        self._writer.append_data(padded)
        self.frames += 1

    def close(self) -> Path:
        self._writer.close()
        return self.path

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
