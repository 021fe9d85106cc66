"""Training runs that survive between sessions (issue 31): a run resumes on any machine from what is committed,
continuing its schedule exactly (step, learning rate, optimizer, EMA, data order, random state).

Lightning's checkpoint holds the step, the optimizer, the LR scheduler, the module (EMA included) and its loops.
What it does not hold, and this module adds:

- ``ResumableLoader``: the shuffled train loader, whose place in its epoch is part of the checkpoint (Lightning
  saves and restores the ``state_dict`` of a stateful train loader). Epoch ``e`` visits a permutation drawn from
  ``(seed, e)`` alone, so a run resumed after ``k`` batches visits the rest of that epoch in the same order, whatever
  machine it runs on. Datasets that draw at random (``seeded = True``) get, with each index, a seed of its own.
- ``RandomState``: the Python, NumPy and torch random states at a checkpoint, put back before the first training
  batch after a resume (after Lightning's sanity validation, which draws noise).
- ``StopAfter``: ends a piece of a run after so many minutes, at a step's end, leaving the schedule alone.
- ``commit_checkpoint`` / ``restore_run``: ``last.ckpt`` mirrored into a folder that is committed to the repository
  (``checkpoints/NAME/``: ``manifest.json`` and parts of at most ``PART_BYTES``, each rewritten in place as the
  run goes on), and put back together (its SHA-256 checked) into the run directory of a fresh clone.

    deepverse-train fit --config configs/tiny.yaml --resume tiny_long --session.minutes 140
    git add checkpoints/tiny_long && git commit -m "tiny_long: 2.3 more hours"     # next session: the same command
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, DistributedSampler

PART_BYTES = 25 * 2**20  # committed checkpoint parts stay below the repository's ~30 MB a file
MANIFEST = "manifest.json"
SEED_SPACE = 2**62  # seeds drawn for epochs and samples


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % SEED_SPACE)


class EpochOrder(DistributedSampler):
    """Indices of ``n`` samples in the order of epoch ``epoch`` (a permutation drawn from ``(seed, epoch)``), this
    process's share of it (every ``replicas``-th from ``rank``, as ``DistributedSampler``: Lightning then keeps it as
    it is), from position ``start`` of that share on; with ``seeded``, ``(index, seed)`` pairs, each seed drawn with
    the order."""

    def __init__(self, dataset: Dataset, seed: int, seeded: bool = False):
        ddp = torch.distributed.is_available() and torch.distributed.is_initialized()
        replicas, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if ddp else (1, 0)
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.n, self.seeded, self.start = len(dataset), seeded, 0

    def __iter__(self) -> Iterator:
        g = _epoch_generator(self.seed, self.epoch)
        order = torch.randperm(self.n, generator=g)
        seeds = torch.randint(SEED_SPACE, (self.n,), generator=g)
        share = slice(self.rank, self.num_samples * self.num_replicas, self.num_replicas)
        order, seeds = order[share][self.start :].tolist(), seeds[share][self.start :].tolist()
        return iter(zip(order, seeds) if self.seeded else order)

    def __len__(self) -> int:
        return self.num_samples


class ResumableLoader(DataLoader):
    """A shuffling, ``drop_last`` DataLoader whose place (epoch, batches given) is saved in the checkpoint.

    ``state_dict()`` counts the batches handed to the training loop, not those the workers prefetched; after
    ``load_state_dict`` the next iteration goes on with the rest of that epoch. Worker seeds come from the epoch too.
    """

    def __init__(self, dataset: Dataset, seed: int, batch_size: int, **kwargs):
        for bad in ("shuffle", "sampler", "batch_sampler", "generator", "drop_last"):
            if bad in kwargs:
                raise ValueError(f"ResumableLoader chooses its own order: {bad!r} cannot be given")
        self.order = EpochOrder(dataset, seed, seeded=getattr(dataset, "seeded", False))
        super().__init__(dataset, batch_size=batch_size, sampler=self.order, drop_last=True,
                         generator=torch.Generator(), **kwargs)
        self.seed = seed
        self._epoch, self._given, self._next = 0, 0, 0  # epoch being given, batches given of it, next epoch

    def __iter__(self) -> Iterator:
        epoch, skip = self._next, 0
        if self._given and self._epoch == self._next:  # a loaded place: the rest of that epoch
            skip = self._given
        if skip >= len(self):
            epoch, skip = epoch + 1, 0
        self._epoch, self._given, self._next = epoch, skip, epoch
        self.order.epoch, self.order.start = epoch, skip * self.batch_size
        self.generator.manual_seed(int(torch.randint(SEED_SPACE, (), generator=_epoch_generator(~self.seed, epoch))))
        for batch in super().__iter__():
            self._given += 1
            if self._given == len(self):
                self._next = epoch + 1
            yield batch
        self._next = epoch + 1

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batches": self._given, "seed": self.seed, "length": len(self)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed or state.get("length") != len(self):
            raise ValueError(
                f"the checkpoint's train loader had seed {state.get('seed')} and {state.get('length')} batches an "
                f"epoch; this one has seed {self.seed} and {len(self)}: the data order cannot be resumed"
            )
        self._epoch, self._given = int(state["epoch"]), int(state["batches"])
        self._next = self._epoch


class RandomState(Callback):
    """Keeps the Python, NumPy and torch (CPU, and CUDA where there is one) random states in the checkpoint and puts
    them back before the first training batch of a resumed fit."""

    def __init__(self):
        self._loaded: dict | None = None

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {  # tensors and plain values: the checkpoint loads with weights_only=True
            "python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = state_dict

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._loaded is None:
            return
        state, self._loaded = self._loaded, None
        random.setstate(state["python"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class StopAfter(Callback):
    """Ends this piece of a run after ``minutes`` of wall-clock time, at the end of a training step, without touching
    the schedule (``trainer.max_time`` is the whole run's budget, resumed with it, and the learning rate follows it):
    Lightning then writes ``last.ckpt`` as on any stop. None: no limit."""

    def __init__(self, minutes: float | None = None):
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes > 0):
            raise ValueError(f"minutes must be a number > 0 or None, got {minutes!r}")
        self.minutes = minutes
        self._start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.minutes is not None and time.monotonic() - self._start >= 60 * self.minutes:
            trainer.should_stop = True


def commit_checkpoint(ckpt: str | Path, folder: str | Path, step: int | None = None) -> Path:
    """Write checkpoint ``ckpt`` into ``folder`` as parts of at most ``PART_BYTES`` and ``manifest.json`` (the
    parts' names, sizes, the whole file's SHA-256 and step), in one read of ``ckpt``. The parts are named after the
    checksum and the manifest is replaced last, by rename, before the old parts go: at every moment the manifest
    names a complete set of parts, so a commit cut off half-way leaves the previous one whole."""
    ckpt, folder = Path(ckpt), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h, written = hashlib.sha256(), []
    with open(ckpt, "rb") as f:
        for i, block in enumerate(iter(lambda: f.read(PART_BYTES), b"")):
            h.update(block)
            tmp = folder / f".part{i:03d}.tmp"
            tmp.write_bytes(block)
            written.append((tmp, len(block)))
    digest = h.hexdigest()
    parts = []
    for i, (tmp, size) in enumerate(written):
        name = f"last.ckpt.{digest[:12]}.part{i:03d}"
        os.replace(tmp, folder / name)
        parts.append({"name": name, "bytes": size})
    manifest = {"file": "last.ckpt", "sha256": digest, "bytes": sum(p["bytes"] for p in parts), "step": step,
                "parts": parts}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, folder / MANIFEST)
    kept = {p["name"] for p in parts}
    for old in folder.glob("last.ckpt.*part*"):  # the previous commit's parts, now named by no manifest
        if old.name not in kept:
            old.unlink()
    return folder


def read_manifest(folder: str | Path) -> dict:
    """The ``manifest.json`` of a committed run; ValueError if ``folder`` holds none that can be read."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if not isinstance(manifest["sha256"], str) or not all(
            isinstance(p["name"], str) and int(p["bytes"]) >= 0 for p in manifest["parts"]
        ):
            raise ValueError("a part or the checksum is malformed")
        return manifest
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{folder} holds no committed run ({MANIFEST} unreadable: {e})") from None


def restore_run(folder: str | Path, ckpt: str | Path) -> dict:
    """Put the committed checkpoint of ``folder`` back together as ``ckpt``; returns its manifest. ValueError if a
    part is missing or the whole does not match its SHA-256 (``ckpt`` is then left as it was)."""
    folder, ckpt = Path(folder), Path(ckpt)
    manifest = read_manifest(folder)
    parts = [(folder / p["name"], int(p["bytes"])) for p in manifest["parts"]]
    for path, size in parts:
        if not path.is_file() or path.stat().st_size != size:
            raise ValueError(f"{path} is missing or not {size} bytes: the committed run in {folder} is incomplete")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp, h = ckpt.with_name(f".{ckpt.name}.tmp"), hashlib.sha256()
    with open(tmp, "wb") as out:
        for path, _ in parts:
            block = path.read_bytes()
            h.update(block)
            out.write(block)
    if h.hexdigest() != manifest["sha256"]:
        tmp.unlink()
        raise ValueError(f"the parts in {folder} do not add up to the checkpoint its {MANIFEST} names (SHA-256 differs)")
    os.replace(tmp, ckpt)
    return manifest
