"""``deepverse bench train``: training steps per second of each stage's config, in float32 and in bfloat16 mixed
precision, measured in one run on this machine (the choice of precision is the CPU's: issue 31).

Each stage is the config's own module, data settings and batch size (``deepverse-train``'s CLI builds them), over a
few episodes recorded into a temporary folder; the first ``warmup`` steps are not timed.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
STAGES = {"codec": REPO / "configs" / "tiny_codec.yaml", "world_model": REPO / "configs" / "tiny.yaml"}
PRECISIONS = ("32-true", "bf16-mixed")


class StepTimer(Callback):
    """Seconds of the training steps after the first ``warmup``."""

    def __init__(self, warmup: int):
        self.warmup, self.times, self._t0 = warmup, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_step > self.warmup:
            self.times.append(time.perf_counter() - self._t0)


def time_stage(config: Path, precision: str, data_dir: Path, root: Path, steps: int, warmup: int,
               extra: tuple[str, ...] = ()) -> dict:
    """Steps per second (the median step) of ``steps`` timed training steps of ``config`` in ``precision``;
    ``extra``: more ``deepverse-train`` arguments after the config (e.g. another ``--config`` over it)."""
    from world_model.cli import DeepVerseCLI
    from world_model.datamodule import DeepVerseDataModule
    from world_model.lit_module import TrainingModule

    timer = StepTimer(warmup)
    args = [
        "--config", str(config), *extra, "--data.data_dir", str(data_dir), "--data.train_episodes", "4",
        "--data.val_episodes", "1", "--data.test_episodes", "1", "--data.num_workers", "0",
        "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(steps + warmup),
        "--trainer.precision", precision, "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--checkpoint.train_time_interval", "null", "--checkpoint.save_last", "false",
    ]
    cli = DeepVerseCLI(TrainingModule, DeepVerseDataModule, subclass_mode_model=True, auto_configure_optimizers=False,
                       seed_everything_default=0, run=False, args=args, save_config_callback=None)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = sorted(timer.times)[len(timer.times) // 2]  # the median step
    return {"steps_per_s": round(1 / seconds, 3), "seconds_per_step": round(seconds, 3),
            "batch_size": cli.datamodule.hparams.batch_size, "timed_steps": len(timer.times)}


def bench_train(stages: list[str], steps: int = 6, warmup: int = 2, extra: tuple[str, ...] = ()) -> dict:
    """Per stage (``STAGES``) and precision, training steps/s, and bf16 ÷ fp32; the faster precision per stage."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"unknown stages {unknown or stages}; expected some of {list(STAGES)}")
    result = {"torch_threads": torch.get_num_threads(), "steps": steps, "warmup": warmup, "stages": {}}
    with tempfile.TemporaryDirectory(prefix="deepverse-bench-train-") as tmp:
        for stage in stages:
            figures = {}
            for precision in PRECISIONS:
                figures[precision] = time_stage(STAGES[stage], precision, Path(tmp) / "data",
                                                Path(tmp) / f"{stage}-{precision}", steps, warmup, extra)
            figures["bf16_speedup"] = round(figures["bf16-mixed"]["steps_per_s"] / figures["32-true"]["steps_per_s"], 2)
            figures["faster"] = max(PRECISIONS, key=lambda p: figures[p]["steps_per_s"])
            result["stages"][stage] = figures
    return result
