"""LightningDataModule over episodes recorded from the ground-truth world.

Splits are separate seed ranges, so validation and test scenes are never seen in training:
``train`` uses world seeds ``seed + i``, ``val`` ``seed + 1_000_000 + i``, ``test`` ``seed + 2_000_000 + i``.
Each split lives in ``data_dir/<split>``; ``prepare_data`` has the ``recorder`` record whatever episodes
are missing there, so an empty directory becomes a dataset on first use and an interrupted collection
resumes. Each split directory's ``dataset.json`` (or, for an older one, its episodes) must say it was
recorded with this module's ``steps``, ``frames_per_step``, ``height``, ``width``, ``fov_deg`` and the split's
seed, whether or not episodes are missing (``world_model.episodes.check_recording``). The recorder is
handed in (``configs/tiny.yaml`` names the simulator's): the model package does not
depend on the environments.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from world_model.episodes import ClipConfig, EpisodeClips, check_recording, episode_dir
from world_model.motion_data import MotionChunks
from world_model.resume import ResumableLoader

SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}


class DeepVerseDataModule(L.LightningDataModule):
    """Clips of simulator episodes, normalised per window (``world_model.episodes.EpisodeClips``).

    Args:
        data_dir: root holding ``train/``, ``val/`` and ``test/`` episode directories.
        train_episodes, val_episodes, test_episodes: episodes per split (collected if missing).
        steps: env steps per recorded episode.
        seed: base world seed of the splits.
        frames_per_step, height, width, fov_deg: simulator settings of the recording (must match the codec).
        chunks: env steps per training clip (history + future); the world model needs its m
            (``DeepVerse.clip_config``).
        memory: add the ψ-retrieved memory frame to each clip (off for the no-memory ablation and the codec).
        future_chunks: the memory query is the camera this many chunks before the clip's end.
        max_chunk_rotation_deg, min_motion: the M14 clip filters.
        batch_size, num_workers: DataLoader settings.
        collect_envs: simulator worlds stepped at once while collecting.
        samples: ``clips`` (the world model's, ``EpisodeClips``) or ``chunks`` (every chunk, for the motion model:
            ``world_model.motion_data.MotionChunks``; ``chunks``, ``memory`` and the clip filters do not apply).
        motion_history, motion_points: with ``chunks``, the keyframes of depth before each chunk and the points kept
            (the motion model's ``history`` and ``points``; training draws 0..motion_history of them per chunk).
        recorder: records missing episodes, called as ``recorder(dir, episodes=, steps=, seed=,
            frames_per_step=, height=, width=, fov_deg=, num_envs=)``, an import path in YAML (the simulator's
            recorder in ``configs/tiny.yaml``); None = the episodes must already be on disk.
    """

    def __init__(
        self,
        data_dir: str = "data/sim",
        train_episodes: int = 256,
        val_episodes: int = 16,
        test_episodes: int = 16,
        steps: int = 64,
        seed: int = 0,
        frames_per_step: int = 4,
        height: int = 64,
        width: int = 64,
        fov_deg: float = 75.0,
        chunks: int = 4,
        memory: bool = True,
        future_chunks: int = 1,
        max_chunk_rotation_deg: float = 30.0,
        min_motion: float = 0.05,
        batch_size: int = 16,
        num_workers: int = 0,
        collect_envs: int = 16,
        samples: str = "clips",
        motion_history: int = 5,
        motion_points: int = 1024,
        recorder: Callable[..., Any] | None = None,
    ):
        super().__init__()
        if samples not in ("clips", "chunks"):
            raise ValueError(f"samples must be 'clips' or 'chunks', got {samples!r}")
        for name in ("train_episodes", "val_episodes", "test_episodes", "steps", "chunks", "batch_size"):
            value = locals()[name]
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if chunks > steps:
            raise ValueError(f"chunks ({chunks}) cannot exceed the recorded steps per episode ({steps})")
        if not 1 <= future_chunks <= chunks:
            raise ValueError(f"future_chunks must be in 1..chunks ({chunks}), got {future_chunks!r}")
        self.save_hyperparameters(ignore=["recorder"])
        self.recorder = recorder
        self.root = Path(data_dir)
        self.clip_config = ClipConfig(
            chunks=chunks,
            memory=memory,
            future_chunks=future_chunks,
            max_chunk_rotation_deg=max_chunk_rotation_deg,
            min_motion=min_motion,
        )
        self.datasets: dict[str, EpisodeClips | MotionChunks] = {}

    def _episodes(self, split: str) -> int:
        return self.hparams[f"{split}_episodes"]

    @property
    def recording(self):
        """What the clips are (frame size, frames per step, chunks per clip, memory): the model checks it."""
        return self.hparams

    @property
    def train_clips(self) -> EpisodeClips | MotionChunks | None:
        """The training clips once ``setup("fit")`` has run."""
        return self.datasets.get("train")

    def prepare_data(self) -> None:
        hp = self.hparams
        for split, offset in SPLIT_SEED_OFFSET.items():
            recording = dict(
                steps=hp.steps, seed=hp.seed + offset, frames_per_step=hp.frames_per_step, height=hp.height,
                width=hp.width, fov_deg=hp.fov_deg,
            )
            check_recording(self.root / split, recording)  # ValueError listing the differing arguments
            if all(episode_dir(self.root / split, i).exists() for i in range(self._episodes(split))):
                continue  # recorded already: no empty progress bar
            if self.recorder is None:
                raise FileNotFoundError(
                    f"{self.root / split} lacks some of its {self._episodes(split)} episodes and no recorder is set "
                    "(set data.recorder: configs/tiny.yaml names the simulator's)"
                )
            self.recorder(
                self.root / split,
                episodes=self._episodes(split),
                steps=hp.steps,
                seed=hp.seed + offset,
                frames_per_step=hp.frames_per_step,
                height=hp.height,
                width=hp.width,
                fov_deg=hp.fov_deg,
                num_envs=hp.collect_envs,
            )

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, ("train", "val", "test")):
            if split in self.datasets:
                continue
            if self.hparams.samples == "chunks":
                self.datasets[split] = MotionChunks(
                    self.root / split, self.hparams.motion_history, self.hparams.motion_points, random_history=split == "train"
                )
            else:
                self.datasets[split] = EpisodeClips(self.root / split, self.clip_config)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        kwargs = dict(
            batch_size=hp.batch_size,
            num_workers=hp.num_workers,
            collate_fn=EpisodeClips.collate,  # MotionChunks' is the same stack
            persistent_workers=hp.num_workers > 0,
        )
        if shuffle:  # the train order, resumable mid-epoch from a checkpoint (world_model.resume)
            return ResumableLoader(self.datasets[split], seed=hp.seed, **kwargs)
        return DataLoader(self.datasets[split], shuffle=False, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
