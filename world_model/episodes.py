"""Recorded episodes on disk and the clip dataset the world model trains on (DESIGN §3, M2, M14).

On disk, one directory per episode, ``DIR/episode_000042/``:

- TensorDict memmap files (tensordict's own ``meta.json`` plus one ``.memmap`` per key), batch dim = frames:
  ``rgb`` uint8 (T, H, W, 3), ``depth`` float32 (T, H, W, 1) metres, ``pose`` float32 (T, 4, 4)
  camera-to-world relative to the episode's first camera, ``intrinsics`` float32 (T, 3, 3);
- ``episode.json``: format version, seeds, ``frames_per_step``, and per chunk (env step) the action
  taken, whether it was blocked, and the caption of the *measured* camera motion.

T = 1 + steps * frames_per_step: the first frame alone, then one chunk per step (the causal codec's
layout). Memmaps give random access to clips without reading whole episodes, and the format is plain
tensors plus JSON: nothing is unpickled on load.

Episodes are written atomically: into a hidden temporary directory whose files are fsynced, then
renamed (and the parent directory fsynced). A killed writer leaves only a ``.tmp-*`` directory, which
loaders never read (and the next writer removes).

Episodes are read without ever writing: each ``.memmap`` file's size is checked against the shape that
``episode.json`` implies (frames x frame shape x dtype) before it is mapped copy-on-write (``numpy.memmap``
mode ``"c"``; tensordict's own loader maps files shared and would grow a truncated one with zeros), and
the contents are checked (finite rigid poses, finite intrinsics with positive focal lengths, finite
positive depth); errors name the episode directory, the file and the first bad frame.

A dataset directory records the arguments it was recorded with in ``dataset.json`` (``write_recording``,
before its first episode), so that a later recording with other arguments is refused
(``check_recording``) instead of mixing incompatible episodes.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict
from torch.utils.data import Dataset

from world_model import geometry as G
from world_model.memory import psi
from world_model.state import normalize_frames, normalize_window
from world_model.text import SENTENCES

FORMAT_VERSION = 1
EPISODE_RE = re.compile(r"^episode_(\d{6})$")
_KEYS = {"rgb": torch.uint8, "depth": torch.float32, "pose": torch.float32, "intrinsics": torch.float32}
_NUMPY = {torch.uint8: np.uint8, torch.float32: np.float32}
ROTATION_TOL = 1e-3  # max |R^T R - I| of a stored camera rotation (float32 poses are ~1e-7 off)
DATASET_FILE = "dataset.json"
# What a recording depends on besides the episode index (episode i is world seed ``seed + i``); the number of
# episodes may grow and the number of worlds stepped at once does not change the content.
RECORDING_KEYS = ("steps", "seed", "frames_per_step", "height", "width", "fov_deg")


class EpisodeError(ValueError):
    """An episode directory that is missing, partial or malformed (the message names the file)."""


def episode_dir(root: str | Path, index: int) -> Path:
    return Path(root) / f"episode_{index:06d}"


def write_episode(root: str | Path, index: int, frames: TensorDict, meta: dict) -> Path:
    """Write one episode atomically and return its directory.

    Args:
        frames: TensorDict with batch size (T,) and the keys ``rgb``, ``depth``, ``pose``, ``intrinsics``.
        meta: JSON-serialisable dict with at least ``frames_per_step``, ``captions``, ``actions``,
            ``blocked`` (one entry per chunk).
    """
    validate_frames(frames, meta, where=f"episode {index} (before writing)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = episode_dir(root, index)
    if final.exists():
        raise FileExistsError(f"{final} already exists; refusing to overwrite a recorded episode")
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    frames.memmap(prefix=tmp, num_threads=0)
    with open(tmp / "episode.json", "w") as f:
        json.dump({"format_version": FORMAT_VERSION, **meta}, f, indent=1)
    # Every file's data on disk before the rename makes the episode visible (fsync also writes back pages
    # dirtied through tensordict's shared memory maps), then the directory entries.
    for file in tmp.iterdir():
        _fsync(file)
    _fsync(tmp)
    os.replace(tmp, final)
    _fsync(root)
    return final


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's data (its entries, for a directory) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomically(file: Path, data: dict) -> None:
    tmp = file.with_name(f".tmp-{file.name}-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, file)
    _fsync(file.parent)


def remove_partial(root: str | Path) -> int:
    """Delete leftover temporary directories of killed writers; returns how many were removed."""
    n = 0
    for p in Path(root).glob(".tmp-episode_*"):
        shutil.rmtree(p, ignore_errors=True)
        n += 1
    return n


def list_episodes(root: str | Path) -> list[Path]:
    """Complete episode directories under ``root``, sorted by index."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory {root} does not exist")
    return sorted(p for p in root.iterdir() if p.is_dir() and EPISODE_RE.match(p.name))


def load_episode(path: str | Path) -> tuple[TensorDict, dict]:
    """Open one episode (memory-mapped copy-on-write: nothing is ever written to its files) and check it.

    Returns a TensorDict (T,) of tensors over the mapped files (edits stay in memory) and the metadata.
    Raises ``EpisodeError`` naming the episode, the bad file and, for bad contents, the first bad frame.
    """
    path = Path(path)
    meta_file = path / "episode.json"
    try:
        with open(meta_file) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise EpisodeError(f"{meta_file} is missing: {path} is not a complete episode") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EpisodeError(f"{meta_file} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise EpisodeError(f"{meta_file} holds a {type(meta).__name__}, expected a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise EpisodeError(
            f"{meta_file}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    _check_meta(meta, where=str(path))
    shapes = _expected_shapes(path, meta)
    frames = TensorDict({key: _map(path, key, shape) for key, shape in shapes.items()}, batch_size=shapes["rgb"][:1])
    validate_frames(frames, meta, where=str(path))
    return frames, meta


def _check_meta(meta: dict, where: str) -> None:
    for key in ("frames_per_step", "captions", "actions", "blocked"):
        if key not in meta:
            raise EpisodeError(f"{where}: metadata lacks {key!r}")
    fps = meta["frames_per_step"]
    if not isinstance(fps, int) or isinstance(fps, bool) or fps < 1:
        raise EpisodeError(f"{where}: frames_per_step is {fps!r}, expected a positive integer")
    for key in ("captions", "actions", "blocked"):
        if not isinstance(meta[key], list):
            raise EpisodeError(f"{where}: {key} is {type(meta[key]).__name__}, expected a list (one entry per step)")


def _expected_shapes(path: Path, meta: dict) -> dict[str, tuple[int, ...]]:
    """Each key's (T, ...) shape as ``episode.json`` implies it (T = 1 + steps x frames_per_step; the frame
    size from its height/width, or from tensordict's ``meta.json`` for episodes that lack them), checked
    against ``meta.json`` where that exists."""
    fps, steps = meta["frames_per_step"], len(meta["captions"])
    T = 1 + steps * fps
    td_file = path / "meta.json"
    td_meta: dict = {}
    if td_file.is_file():
        try:
            td_meta = json.loads(td_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EpisodeError(f"{td_file} is not valid JSON ({e})") from None
        if not isinstance(td_meta, dict):
            raise EpisodeError(f"{td_file} holds a {type(td_meta).__name__}, expected a JSON object")

    def recorded_shape(key: str) -> tuple | None:
        entry = td_meta.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("shape"), list):
            return tuple(entry["shape"])
        return None

    H, W = meta.get("height"), meta.get("width")
    if H is None or W is None:
        rgb = recorded_shape("rgb")
        if rgb is None or len(rgb) != 4:
            raise EpisodeError(f"{path}: neither episode.json (height, width) nor {td_file.name} gives the frame size")
        H, W = rgb[1:3]
    for name, value in (("height", H), ("width", W)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EpisodeError(f"{path}: frame {name} {value!r}, expected a positive integer")
    shapes = {"rgb": (T, H, W, 3), "depth": (T, H, W, 1), "pose": (T, 4, 4), "intrinsics": (T, 3, 3)}
    for key, shape in shapes.items():
        got = recorded_shape(key)
        if got is None:
            continue
        if got[:1] != shape[:1]:
            raise EpisodeError(
                f"{path}: {got[0] if got else 0} frames in {td_file.name}, expected 1 + {steps} captions x {fps} "
                f"frames per step = {T} (episode.json)"
            )
        if got != shape:
            raise EpisodeError(f"{td_file}: {key} has shape {got}, expected {shape} (from episode.json)")
        dtype = td_meta[key].get("dtype")
        if dtype is not None and dtype != str(_KEYS[key]):
            raise EpisodeError(f"{td_file}: {key} has dtype {dtype}, expected {_KEYS[key]}")
    return shapes


def _map(path: Path, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The file of ``key`` mapped copy-on-write, after checking that its size is exactly ``shape``'s."""
    file = path / f"{key}.memmap"
    dtype = np.dtype(_NUMPY[_KEYS[key]])
    expected = math.prod(shape) * dtype.itemsize
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        raise EpisodeError(f"{file} is missing: {path} is not a complete episode") from None
    if not file.is_file():
        raise EpisodeError(f"{file} is not a regular file")
    if size != expected:
        raise EpisodeError(
            f"{file} has {size} bytes, expected {expected} ({key}: {dtype} of shape {shape} from episode.json): "
            f"the file is {'truncated' if size < expected else 'too long'}; re-record this episode"
        )
    # mode "c": the file is opened read-only and pages written in memory are private copies.
    return torch.from_numpy(np.memmap(file, dtype=dtype, mode="c", shape=shape))


def _first(bad: torch.Tensor) -> int:
    return int(bad.nonzero()[0, 0])


def validate_frames(frames: TensorDict, meta: dict, where: str) -> None:
    """Check keys, dtypes, shapes, contents and the per-chunk metadata of an episode; raise EpisodeError.

    Contents: poses finite and rigid (rotation orthonormal within ``ROTATION_TOL`` with determinant > 0,
    last row 0 0 0 1), intrinsics finite with positive fx, fy and last row 0 0 1, depth finite and > 0.
    The error names the first bad frame.
    """
    _check_meta(meta, where)
    for key, dtype in _KEYS.items():
        if key not in frames.keys():
            raise EpisodeError(f"{where}: frames lack {key!r}")
        if frames[key].dtype != dtype:
            raise EpisodeError(f"{where}: {key} has dtype {frames[key].dtype}, expected {dtype}")
    T = frames.batch_size[0] if frames.batch_dims else 0
    fps, steps = meta["frames_per_step"], len(meta["captions"])
    if T != 1 + steps * fps:
        raise EpisodeError(f"{where}: {T} frames, expected 1 + {steps} captions x {fps} frames per step")
    if len(meta["actions"]) != steps or len(meta["blocked"]) != steps:
        raise EpisodeError(f"{where}: actions/blocked/captions have different lengths")
    bad = [c for c in meta["captions"] if c not in SENTENCES]
    if bad:
        raise EpisodeError(f"{where}: caption {bad[0]!r} is not in the caption vocabulary")
    H, W = frames["rgb"].shape[1:3]
    expect = {"rgb": (T, H, W, 3), "depth": (T, H, W, 1), "pose": (T, 4, 4), "intrinsics": (T, 3, 3)}
    for key, shape in expect.items():
        if tuple(frames[key].shape) != shape:
            raise EpisodeError(f"{where}: {key} has shape {tuple(frames[key].shape)}, expected {shape}")
    _check_contents(frames, where)


def _check_contents(frames: TensorDict, where: str) -> None:
    pose = torch.as_tensor(frames["pose"]).double()  # (T, 4, 4)
    finite = torch.isfinite(pose).flatten(1).all(1)
    if not finite.all():
        t = _first(~finite)
        raise EpisodeError(f"{where}: pose of frame {t} is not finite ({pose[t].tolist()})")
    R = pose[:, :3, :3]
    ortho = (R.transpose(1, 2) @ R - torch.eye(3, dtype=R.dtype)).abs().amax((1, 2))  # (T,)
    bottom = (pose[:, 3] - pose.new_tensor([0, 0, 0, 1])).abs().amax(1)  # (T,)
    rigid = (ortho <= ROTATION_TOL) & (torch.linalg.det(R) > 0) & (bottom <= 1e-6)
    if not rigid.all():
        t = _first(~rigid)
        raise EpisodeError(
            f"{where}: pose of frame {t} is not a rigid camera-to-world transform (|R^T R - I| = {float(ortho[t]):.3g}, "
            f"tolerance {ROTATION_TOL}; det R = {float(torch.linalg.det(R[t])):.3g}, expected > 0; "
            f"last row {pose[t, 3].tolist()}, expected [0, 0, 0, 1])"
        )
    K = torch.as_tensor(frames["intrinsics"]).double()  # (T, 3, 3)
    good = torch.isfinite(K).flatten(1).all(1) & (K[:, 0, 0] > 0) & (K[:, 1, 1] > 0)
    good &= (K[:, 2] - K.new_tensor([0, 0, 1])).abs().amax(1) <= 1e-6
    if not good.all():
        t = _first(~good)
        raise EpisodeError(
            f"{where}: intrinsics of frame {t} are {K[t].tolist()}: expected finite values, fx and fy > 0 "
            f"and last row [0, 0, 1]"
        )
    depth = torch.as_tensor(frames["depth"])
    good = (torch.isfinite(depth) & (depth > 0)).flatten(1).all(1)  # (T,)
    if not good.all():
        t = _first(~good)
        d = depth[t]
        raise EpisodeError(
            f"{where}: depth must be finite and > 0 everywhere; frame {t} has "
            f"{int((~torch.isfinite(d)).sum())} non-finite and {int((d <= 0).sum())} non-positive values"
        )


# --------------------------------------------------------------------------------------------------
# Dataset directories: the arguments they were recorded with
# --------------------------------------------------------------------------------------------------


def normalize_recording(recording: dict) -> dict:
    """The ``RECORDING_KEYS`` of ``recording`` as ints (``fov_deg`` a float), in that order."""
    missing = [k for k in RECORDING_KEYS if k not in recording]
    if missing:
        raise ValueError(f"recording arguments lack {missing}")
    return {k: float(recording[k]) if k == "fov_deg" else int(recording[k]) for k in RECORDING_KEYS}


def read_recording(root: str | Path) -> dict | None:
    """The recording arguments in ``root/dataset.json``, or None where there is no such file."""
    file = Path(root) / DATASET_FILE
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EpisodeError(f"{file} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION or not isinstance(data.get("recording"), dict):
        raise EpisodeError(f"{file} is not a dataset record (expected format_version {FORMAT_VERSION} and 'recording')")
    try:
        return normalize_recording(data["recording"])
    except (ValueError, TypeError) as e:
        raise EpisodeError(f"{file}: {e}") from None


def infer_recording(root: str | Path) -> tuple[dict, Path] | None:
    """For a directory recorded before ``dataset.json`` existed: the recording arguments that its episodes'
    ``episode.json`` files give (those they record), and the episode they were read from; None without
    episodes. Raises EpisodeError where two episodes disagree."""
    found: dict = {}
    first: Path | None = None
    for path in list_episodes(root):
        meta_file = path / "episode.json"
        try:
            meta = json.loads(meta_file.read_text())
        except FileNotFoundError:
            continue  # an incomplete episode: load_episode names it
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EpisodeError(f"{meta_file} is not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            continue
        index = int(EPISODE_RE.match(path.name).group(1))
        here = {k: meta[k] for k in ("frames_per_step", "height", "width", "fov_deg") if k in meta}
        if isinstance(meta.get("captions"), list):
            here["steps"] = len(meta["captions"])
        if isinstance(meta.get("seed"), int):
            here["seed"] = meta["seed"] - index
        if first is None:
            found, first = here, path
            continue
        differ = {k: (found[k], v) for k, v in here.items() if k in found and found[k] != v}
        if differ:
            raise EpisodeError(
                f"{root} mixes recordings: {first.name} and {path.name} differ in "
                + ", ".join(f"{k} ({a} vs {b})" for k, (a, b) in differ.items())
            )
    return (found, first) if first is not None else None


def check_recording(root: str | Path, recording: dict) -> bool:
    """Refuse (ValueError) to add episodes recorded with ``recording`` (``RECORDING_KEYS``) to ``root`` where
    its ``dataset.json``, or for an older directory without one its episodes, say it was recorded with other
    arguments. Writes nothing. Returns whether ``root`` has a ``dataset.json``."""
    want = normalize_recording(recording)
    root = Path(root)
    if not root.exists():
        return False
    if not root.is_dir():
        raise ValueError(f"dataset directory {root} is not a directory")
    have = read_recording(root)
    source = str(root / DATASET_FILE)
    if have is None:
        inferred = infer_recording(root)
        if inferred is None:
            return False
        have, first = inferred
        source = f"{first / 'episode.json'} (no {DATASET_FILE})"
    differ = [k for k in RECORDING_KEYS if k in have and have[k] != want[k]]
    if differ:
        raise ValueError(
            f"{root} holds episodes recorded with "
            + ", ".join(f"{k}={have[k]}" for k in differ)
            + f" ({source}), but this recording asks for "
            + ", ".join(f"{k}={want[k]}" for k in differ)
            + ": record into another directory, or repeat the recorded arguments to resume"
        )
    return source == str(root / DATASET_FILE)


def write_recording(root: str | Path, recording: dict) -> Path:
    """Write ``root/dataset.json`` (atomically) recording ``recording``'s ``RECORDING_KEYS``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    file = root / DATASET_FILE
    _write_json_atomically(file, {"format_version": FORMAT_VERSION, "recording": normalize_recording(recording)})
    return file


# --------------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------------


@dataclass
class ClipConfig:
    """Which clips of recorded episodes the model sees."""

    chunks: int = 4  # env steps per clip (history + future); a clip has 1 + chunks * frames_per_step frames
    memory: bool = False  # add a spatial-memory frame retrieved by ψ from earlier in the episode (M11)
    future_chunks: int = 1  # the memory query is the camera at the end of history, this many chunks early
    memory_k: int = 5  # ψ's k nearest positions
    max_chunk_rotation_deg: float = 30.0  # δ_rot: drop clips with a chunk turning more than this (M14)
    min_motion: float = 0.05  # δ_move: drop near-static clips; metres of path + 1 m per radian turned
    lam: float = G.DISPARITY_LAMBDA  # disparity headroom of the window normalisation (M2)


def chunk_motion(pose: torch.Tensor, frames_per_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per chunk: cumulative rotation (rad) and path length (m) of the camera over its frames.

    Args:
        pose: (T, 4, 4) with T = 1 + n * frames_per_step.
    Returns:
        rotation (n,), path (n,).
    """
    rot = G.rotation_angle(pose[:-1, :3, :3], pose[1:, :3, :3])  # (T-1,) per frame
    step = (pose[1:, :3, 3] - pose[:-1, :3, 3]).norm(dim=-1)  # (T-1,)
    return rot.reshape(-1, frames_per_step).sum(-1), step.reshape(-1, frames_per_step).sum(-1)


class EpisodeClips(Dataset):
    """Clips of ``ClipConfig.chunks`` env steps from recorded episodes, normalised per window.

    Each item is a TensorDict (no batch dims; ``torch.stack`` collates a batch, see ``collate``) with
    the entries of ``state.normalize_window`` over T = 1 + chunks * frames_per_step frames, plus
    ``caption_ids`` (chunks,) into ``world_model.text.SENTENCES``. Clips start on chunk boundaries
    and pass the M14 filters of ``ClipConfig``.

    With ``ClipConfig.memory``, also ``memory`` (a TensorDict with the same entries over 1 frame, in
    this clip's window) and ``has_memory`` (): the keyframe (chunk-end frame) from before the clip that
    ψ retrieves for the camera at the end of the history, as the rollout's memory would at inference;
    zeros and False for clips at the start of an episode.
    """

    def __init__(self, root: str | Path, config: ClipConfig = ClipConfig()):
        if int(config.chunks) != config.chunks or config.chunks < 1:
            raise ValueError(f"ClipConfig.chunks must be a positive integer, got {config.chunks!r}")
        if not 1 <= config.future_chunks <= config.chunks:
            raise ValueError(f"ClipConfig.future_chunks must be in 1..{config.chunks}, got {config.future_chunks!r}")
        self.root, self.config = Path(root), config
        paths = list_episodes(root)
        if not paths:
            raise EpisodeError(f"no complete episodes (episode_NNNNNN/) under {root}")
        self.episodes: list[TensorDict] = []
        self.captions: list[torch.Tensor] = []  # (steps,) sentence ids per episode
        self.index: list[tuple[int, int]] = []  # (episode, first chunk) of every kept clip
        self.frames_per_step: int = 0
        self.paths = paths
        for path in paths:
            frames, meta = load_episode(path)
            fps = meta["frames_per_step"]
            if self.frames_per_step and fps != self.frames_per_step:
                raise EpisodeError(
                    f"{path}: frames_per_step {fps}, but earlier episodes have {self.frames_per_step}"
                )
            self.frames_per_step = fps
            size = tuple(frames["rgb"].shape[1:3])
            if self.episodes and size != tuple(self.episodes[0]["rgb"].shape[1:3]):
                raise EpisodeError(
                    f"{path}: frames are {size[0]}x{size[1]}, but earlier episodes are "
                    f"{self.episodes[0]['rgb'].shape[1]}x{self.episodes[0]['rgb'].shape[2]}"
                )
            e = len(self.episodes)
            self.episodes.append(frames)
            self.captions.append(torch.tensor([SENTENCES.index(c) for c in meta["captions"]]))
            rot, path_len = chunk_motion(torch.as_tensor(frames["pose"]).clone(), fps)
            for s in range(len(meta["captions"]) - config.chunks + 1):
                r, p = rot[s : s + config.chunks], path_len[s : s + config.chunks]
                if r.max() > math.radians(config.max_chunk_rotation_deg):
                    continue
                if float(p.sum() + r.sum()) < config.min_motion:
                    continue
                self.index.append((e, s))
        if not self.index:
            raise EpisodeError(
                f"no clip of {config.chunks} chunks under {root} passes the filters "
                f"(episodes too short, or every clip static or turning too fast)"
            )

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn get the episode paths and map the files themselves, instead of
        # a pickled copy of every frame.
        state = dict(self.__dict__)
        state["episodes"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.episodes is None:
            self.episodes = [load_episode(path)[0] for path in self.paths]

    @property
    def clip_frames(self) -> int:
        return 1 + self.config.chunks * self.frames_per_step

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> TensorDict:
        e, s = self.index[i]
        first = s * self.frames_per_step
        raw = self.episodes[e][first : first + self.clip_frames]  # (T,) view of the mapped files
        clip = normalize_window(raw.to_tensordict(), self.config.lam)
        clip["caption_ids"] = self.captions[e][s : s + self.config.chunks]
        if self.config.memory:
            clip["memory"], clip["has_memory"] = self._memory(e, s, raw, clip["scale"])
        return clip

    def _memory(self, e: int, s: int, raw: TensorDict, scale: torch.Tensor) -> tuple[TensorDict, torch.Tensor]:
        fps, cfg = self.frames_per_step, self.config
        query = raw["pose"][(cfg.chunks - cfg.future_chunks) * fps]  # (4, 4) end of history
        keys = torch.as_tensor(self.episodes[e]["pose"][0 : s * fps : fps])  # (s, 4, 4) earlier keyframes
        if len(keys) == 0:  # nothing earlier: a zero frame, masked out by has_memory
            zeros = normalize_frames(raw[:1].to_tensordict(), raw["pose"][0], scale).apply(torch.zeros_like)
            return zeros, torch.tensor(False)
        index, _ = psi(query[None], keys[None], torch.ones(1, len(keys), dtype=torch.bool), cfg.memory_k)
        j = int(index[0]) * fps
        frame = self.episodes[e][j : j + 1].to_tensordict()  # (1,)
        return normalize_frames(frame, raw["pose"][0], scale), torch.tensor(True)

    @staticmethod
    def collate(items: list[TensorDict]) -> TensorDict:
        """Stack items into a batch TensorDict (B,) for a ``DataLoader(collate_fn=...)``."""
        return torch.stack(items)
