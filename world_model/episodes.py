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

Episodes are written atomically: into a hidden temporary directory, then renamed. A killed writer
leaves only a ``.tmp-*`` directory, which loaders never read (and the next writer removes).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

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
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


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
    """Open one episode (memory-mapped) and check it. Raises ``EpisodeError`` naming the bad file."""
    path = Path(path)
    meta_file = path / "episode.json"
    try:
        with open(meta_file) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise EpisodeError(f"{meta_file} is missing: {path} is not a complete episode") from None
    except json.JSONDecodeError as e:
        raise EpisodeError(f"{meta_file} is not valid JSON ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise EpisodeError(
            f"{meta_file}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    try:
        frames = TensorDict.load_memmap(path)
    except Exception as e:  # tensordict raises many kinds for truncated or missing files
        raise EpisodeError(f"{path}: cannot read the frame memmaps ({type(e).__name__}: {e})") from None
    validate_frames(frames, meta, where=str(path))
    return frames, meta


def validate_frames(frames: TensorDict, meta: dict, where: str) -> None:
    """Check keys, dtypes, shapes and the per-chunk metadata of an episode; raise EpisodeError."""
    for key in ("frames_per_step", "captions", "actions", "blocked"):
        if key not in meta:
            raise EpisodeError(f"{where}: metadata lacks {key!r}")
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
    depth = frames["depth"]
    if not bool(torch.isfinite(depth).all()) or not bool((depth > 0).all()):
        raise EpisodeError(f"{where}: depth must be finite and > 0 everywhere")


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

    @property
    def clip_frames(self) -> int:
        return 1 + self.config.chunks * self.frames_per_step

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> TensorDict:
        e, s = self.index[i]
        first = s * self.frames_per_step
        raw = self.episodes[e][first : first + self.clip_frames]  # (T,) memmap view
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
