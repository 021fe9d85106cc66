"""``deepverse-train``: the Lightning CLI of both training stages, and checkpoint export (DESIGN M8, M16).

    deepverse-train fit --config configs/tiny_codec.yaml                      # stage 1: the codec
    deepverse-train export --ckpt runs/tiny_codec/checkpoints/last.ckpt --out world_model/pretrained/tiny_codec
    deepverse-train fit --config configs/tiny.yaml                            # stage 2: the world model
    deepverse-train fit --config configs/tiny.yaml --ckpt_path last           # resume the last run
    deepverse-train fit --config configs/tiny.yaml --config configs/ablation_no_memory.yaml
    deepverse-train test --config configs/tiny.yaml --ckpt_path runs/tiny/checkpoints/last.ckpt
    deepverse-train fit --config configs/tiny.yaml --print_config             # the whole resolved config

A config picks the stage (``model.class_path``: ``CodecModule`` or ``WorldModelModule`` of
``world_model.lit_module``); the data are ``world_model.datamodule.DeepVerseDataModule``, recorded on
first use. A run writes under ``trainer.default_root_dir``: ``checkpoints/last.ckpt`` (every
``checkpoint.train_time_interval``, 10 minutes by default, or ``checkpoint.every_n_train_steps``, and when
training stops), ``checkpoints/best-*.ckpt`` (best ``best_checkpoint.monitor``, ``val/loss`` by default),
and CSV and TensorBoard logs in ``csv/`` and ``tensorboard/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from datetime import timedelta

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.trainer.states import TrainerFn

from world_model.datamodule import DeepVerseDataModule
from world_model.flow import SamplerConfig
from world_model.lit_module import TrainingModule, export_pretrained
from world_model.resume import MANIFEST, RandomState, StopAfter, commit_checkpoint, read_manifest, restore_run

STORED_DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}  # export --dtype
EXPORT_HELP = (
    "the (EMA) DeepVerse of a training checkpoint as a save_pretrained directory (config.json + "
    "model.safetensors): the shipped model, or the stage-1 codec that stage 2's codec_weights loads."
)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` on a step or time schedule, refreshed after validation and when training stops.

    Lightning's ``ModelCheckpoint`` writes at most once per step, before that step's validation, and at the
    end only if it never saved: resuming would lose the validation's best-checkpoint bookkeeping, or the
    steps since the last scheduled save.

    Args:
        commit_to: a folder that is committed to the repository (``--resume NAME`` sets ``checkpoints/NAME``): every
            ``last.ckpt`` written is mirrored there in parts (``world_model.resume.commit_checkpoint``).
    """

    def __init__(self, *args, commit_to: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.commit_to = commit_to

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.commit_to and self.last_model_path and trainer.is_global_zero and os.path.isfile(self.last_model_path):
            commit_checkpoint(self.last_model_path, self.commit_to, step=trainer.global_step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_global_step_saved == trainer.global_step:  # saved just before this validation
            self._refresh(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._refresh(trainer)

    def _refresh(self, trainer: L.Trainer) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not (trainer.sanity_checking or trainer.fast_dev_run):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _checkpoint_dir(root: str) -> str:
    return os.path.join(root, "checkpoints")


def _loggers(root: str) -> list[dict]:
    """CSV and TensorBoard loggers writing into the run directory ``root``."""
    loggers = {"CSVLogger": "csv", "TensorBoardLogger": "tensorboard"}
    return [
        {"class_path": f"lightning.pytorch.loggers.{cls}", "init_args": {"save_dir": root, "name": name}}
        for cls, name in loggers.items()
    ]


class DeepVerseCLI(LightningCLI):
    """LightningCLI with the project's checkpointing, LR monitor and loggers (all under the run directory)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # best first: last.ckpt, refreshed after validation, then holds the updated best-model state
        parser.add_lightning_class_args(ModelCheckpoint, "best_checkpoint")
        parser.set_defaults(
            {
                "best_checkpoint.monitor": "val/loss",
                "best_checkpoint.mode": "min",
                "best_checkpoint.filename": "best-{step}",
                "best_checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LastCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 0,
                "checkpoint.save_on_exception": True,  # Ctrl-C or SIGTERM: last.ckpt (+ interrupted-*.ckpt)
                "checkpoint.filename": "interrupted-{step}",
                "checkpoint.train_time_interval": timedelta(minutes=10),
            }
        )
        parser.add_lightning_class_args(RandomState, "random_state")  # exact resumes: the noise goes on where it was
        parser.add_lightning_class_args(StopAfter, "session")  # --session.minutes M: one piece of a longer run
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        # One run directory: resuming with --ckpt_path last finds checkpoints/last.ckpt there.
        parser.set_defaults({"trainer.default_root_dir": "runs/deepverse"})
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir)
        parser.link_arguments("trainer.default_root_dir", "best_checkpoint.dirpath", compute_fn=_checkpoint_dir)
        parser.link_arguments("trainer.default_root_dir", "trainer.logger", compute_fn=_loggers)

    def before_fit(self) -> None:
        """Refuse a fresh fit into a run directory that holds ``last.ckpt``: Lightning would write ``last-v1.ckpt``
        beside it, and ``export --ckpt .../last.ckpt`` would then silently give the old run's model."""
        last = os.path.join(_checkpoint_dir(self.trainer.default_root_dir), "last.ckpt")
        if self.config["fit"]["ckpt_path"] is None and os.path.exists(last):
            raise ValueError(
                f"{last} exists: resume that run with --ckpt_path last, or train into another --trainer.default_root_dir"
            )

    def after_instantiate_classes(self) -> None:
        self.model.check_data(self.datamodule.recording)  # before prepare_data records a mismatched dataset


def export_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="deepverse-train export", description=f"Writes {EXPORT_HELP}")
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint of CodecModule or WorldModelModule")
    parser.add_argument("--out", required=True, help="directory to write (replaced if it exists)")
    parser.add_argument("--raw", action="store_true", help="export the raw weights instead of their EMA")
    parser.add_argument(
        "--refiner", metavar="DIR",
        help="an export with a trained 3D-cache refiner over the same codec: export it with this checkpoint's model "
        "(render_cache on), e.g. after a longer stage 2",
    )
    parser.add_argument(
        "--dtype", choices=sorted(STORED_DTYPES), default="float32",
        help="type the weights are stored in: float16 halves the files (they load back as float32)",
    )
    group = parser.add_argument_group(
        "sampling defaults stored with the export (default: the run's; tune them on validation with "
        "`deepverse-train validate --model.init_args.eval_sampler '{s_text: X}'`)"
    )
    types = typing.get_type_hints(SamplerConfig)
    for f in dataclasses.fields(SamplerConfig):  # one flag per sampler setting: --steps, --s-text, ...
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=types[f.name], help=f.metadata.get("help"))
    args = parser.parse_args(argv)
    sampler = {f.name: getattr(args, f.name) for f in dataclasses.fields(SamplerConfig)}
    try:
        print(export_pretrained(
            args.ckpt, args.out, ema=not args.raw, sampler=sampler, refiner=args.refiner,
            dtype=STORED_DTYPES[args.dtype],
        ))
    except (ValueError, FileNotFoundError) as e:  # a missing or foreign --ckpt, weights that do not fit, ...
        parser.error(str(e))


RESUME_HELP = (
    "`deepverse-train fit --config ... --resume NAME`: a run carried across sessions. It trains in runs/NAME and "
    "mirrors every last.ckpt into checkpoints/NAME/ (parts under 30 MB and a manifest: commit that folder); the same "
    "command later, on any machine, puts it back together and resumes it where it stopped (step, learning rate, "
    "optimizer, EMA, data order, random state)."
)


def resume_args(argv: list[str], committed: str = "checkpoints", runs: str = "runs") -> list[str]:
    """The LightningCLI arguments of ``fit ... --resume NAME`` (``RESUME_HELP``); others are returned as given.

    If ``committed/NAME`` holds a committed run, it is restored into ``runs/NAME/checkpoints/last.ckpt`` (unless
    the run directory already holds that step or a later one) and the fit resumes from it."""
    at = [i for i, a in enumerate(argv) if a == "--resume" or a.startswith("--resume=")]
    if not at:
        return argv
    i = at[0]
    name = argv[i].partition("=")[2] if "=" in argv[i] else (argv[i + 1] if i + 1 < len(argv) else "")
    rest = argv[:i] + argv[i + (1 if "=" in argv[i] else 2):]
    if len(at) > 1 or argv[:1] != ["fit"]:
        raise ValueError("--resume NAME is given once, to `deepverse-train fit`")
    if not name or name.startswith("-") or not all(c.isalnum() or c in "_-." for c in name) or name.startswith("."):
        raise ValueError(f"--resume needs a run name of letters, digits, '_', '-' or '.', got {name!r}")
    clashes = [a for a in rest if a.split("=")[0] in ("--ckpt_path", "--trainer.default_root_dir", "--checkpoint.commit_to")]
    if clashes:
        raise ValueError(f"--resume {name} sets the run directory and checkpoint itself; do not give {clashes[0].split('=')[0]} with it")
    folder, root = os.path.join(committed, name), os.path.join(runs, name)
    extra = ["--trainer.default_root_dir", root, "--checkpoint.commit_to", folder]
    if os.path.exists(os.path.join(folder, MANIFEST)):
        last = os.path.join(_checkpoint_dir(root), "last.ckpt")
        step = read_manifest(folder).get("step")
        local = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"] if os.path.exists(last) else -1
        if step is None or local < step:
            manifest = restore_run(folder, last)
            print(f"resuming {name} from {folder} (step {manifest['step']})", file=sys.stderr)
        extra += ["--ckpt_path", "last"]
    return rest + extra


def cli_main(args: list[str] | None = None) -> None:
    """``deepverse-train {fit,validate,test,predict} ...`` (LightningCLI), ``deepverse-train fit ... --resume NAME``
    (``resume_args``) or ``deepverse-train export ...``."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["export"]:
        export_main(argv[1:])
        return
    try:
        argv = resume_args(argv)
    except ValueError as e:
        sys.exit(f"deepverse-train: error: {e}")
    DeepVerseCLI(
        TrainingModule,
        DeepVerseDataModule,
        subclass_mode_model=True,
        auto_configure_optimizers=False,  # the modules own their AdamW + warm-up/cosine recipe
        seed_everything_default=0,
        parser_kwargs={
            "description": "Train the DeepVerse world model (configs/). Also `deepverse-train export --ckpt CKPT "
            f"--out DIR [--raw]` writes {EXPORT_HELP} Also {RESUME_HELP}"
        },
        args=None if argv == sys.argv[1:] else argv,  # LightningCLI reads sys.argv itself (and warns if given both)
    )


if __name__ == "__main__":
    cli_main()
