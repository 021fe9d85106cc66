"""LightningModules of the two training stages (DESIGN M4, M8, M15).

    deepverse-train fit --config configs/tiny_codec.yaml        # stage 1: the codec (CodecModule)
    deepverse-train export --ckpt runs/tiny_codec/checkpoints/last.ckpt --out world_model/pretrained/tiny_codec
    deepverse-train fit --config configs/tiny.yaml              # stage 2: MM-DiT + text encoder (WorldModelModule)

Both stages share one recipe (M8): AdamW (weight decay on matrices only); a linear warm-up over the first
``warmup_fraction`` of the run's optimizer steps, then cosine decay to ``min_lr_ratio`` x lr, stepped per
optimizer step; an exponential moving average (EMA) of the weights, kept in the module (``ema``) so it is
checkpointed, used for validation, test and prediction, and exported. Gradient clipping, precision
(``bf16-mixed``) and the strategy (DDP, FSDP) are Trainer settings in ``configs/``.

Validation and test measure against the ground truth (M15), every number beside its trivial baselines
(``world_model.metrics``: ``_copy`` = the last real frame repeated, ``_warp`` = it forward-splatted with
its true depth into the true next cameras). Depth is in metres (the clip's scale undone), camera
translation error in metres. Noise is seeded per batch (``eval_seed``), so epochs are comparable.
"""
from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from functools import partial
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_warn
from safetensors.torch import load_file
from tensordict import TensorDict
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryPrecision, BinaryRecall

from world_model import metrics as M
from world_model.codec import Codec
from world_model.episodes import EpisodeClips
from world_model.flow import SamplerConfig
from world_model.model import CONFIG_FILE, WEIGHTS_FILE, DeepVerse, DeepVerseConfig
from world_model.motion import MOVE_EPS, chunk_errors
from world_model.refine import EXACT, RenderNoise, cache_renders, refine_frames, refiner_inputs
from world_model.state import to_frames, to_rgb8, true_frames
from world_model.text import SENTENCES

Frames = TensorDict  # (B, T): rgb uint8 (H, W, 3), depth (H, W, 1) metres, pose (4, 4) metres, intrinsics (3, 3)


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate factor at optimizer step ``step`` (0-based) of ``total``: linear warm-up to 1 over
    ``warmup`` steps, then a cosine down to ``min_ratio`` at ``total`` (and flat after)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def load_codec_weights(codec: Codec, path: str | Path) -> None:
    """Load a stage-1 codec into ``codec``.

    Args:
        path: a ``save_pretrained`` directory or a safetensors file, of a whole DeepVerse (keys ``codec.*``)
            or of a codec alone. A codec with depth may be loaded into one without (the no-depth ablation
            reuses the RGB half); anything else must match exactly.
    Raises:
        ValueError naming the file when the weights do not fit, or when a directory's ``config.json`` describes
        a codec of another architecture (a norm or linear path differs: same parameter names and shapes).
    """
    path = Path(path)
    file = path / WEIGHTS_FILE if path.is_dir() else path
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        _check_codec_architecture(codec, path / CONFIG_FILE)
    try:
        state = load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for missing or foreign files
        raise ValueError(f"codec_weights {file} is not a safetensors file ({type(e).__name__}: {e})") from None
    if any(k.startswith("codec.") for k in state):
        state = {k.removeprefix("codec."): v for k, v in state.items() if k.startswith("codec.")}
    own = codec.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(k for k in set(state) - set(own) if codec.use_depth or ".depth." not in f".{k}")
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"codec_weights {file} do not fit this codec (model.codec / codec_overrides): missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]} "
            f"(of {len(missing)}, {len(unexpected)}, {len(wrong)})"
        )
    codec.load_state_dict({k: state[k] for k in own})


ARCHITECTURE_ONLY = ("norm", "linear_path")  # codec fields the weights' names and shapes do not tell apart


def _check_codec_architecture(codec: Codec, config_file: Path) -> None:
    theirs = DeepVerseConfig.from_dict(json.loads(config_file.read_text())).codec_config()
    ours = getattr(codec, "config", None)
    if type(theirs) is not type(ours):
        return  # a different codec class: the state-dict comparison names the mismatch
    differ = {f: (getattr(theirs, f), getattr(ours, f)) for f in ARCHITECTURE_ONLY
              if hasattr(ours, f) and getattr(theirs, f) != getattr(ours, f)}
    if differ:
        detail = ", ".join(f"{f} {a!r} there, {b!r} here" for f, (a, b) in differ.items())
        raise ValueError(
            f"codec_weights {config_file.parent} were trained as another codec ({detail}): "
            f"set model.codec_overrides to match"
        )


def check_init_weights(path: str | None) -> None:
    """ValueError unless ``init_weights`` is None or an existing path (checked before anything is built)."""
    if path is not None and not Path(path).exists():
        raise ValueError(f"init_weights {path} does not exist")


def check_same_config(path: str | Path, saved: DeepVerseConfig, model: DeepVerseConfig, ignore: tuple[str, ...] = ()) -> None:
    """ValueError naming every field where the config an ``init_weights`` export was saved with differs from
    ``model``'s, sampler settings (not weights) and ``ignore`` aside."""
    theirs, ours = saved.weights_dict(), model.weights_dict()
    keys = sorted((set(theirs) | set(ours)) - set(ignore))
    differ = {k: (theirs.get(k), ours.get(k)) for k in keys if theirs.get(k) != ours.get(k)}
    if differ:
        raise ValueError(f"init_weights {path} was saved with another config than model: {{field: (saved, model)}} = {differ}")


def export_pretrained(
    ckpt_path: str | Path, out_dir: str | Path, ema: bool = True, sampler: dict | None = None,
    refiner: str | Path | None = None, dtype: torch.dtype | None = None,
) -> Path:
    """Write the DeepVerse of a training checkpoint (either stage) as a ``save_pretrained`` directory.

    Args:
        ckpt_path: a Lightning checkpoint of ``CodecModule`` or ``WorldModelModule``.
        out_dir: the directory to write (``config.json`` + ``model.safetensors``), replaced if present.
        ema: export the EMA weights (the default, and what validation measured) or the raw ones.
        sampler: changes to the run's sampling defaults to store with it (``SamplerConfig`` fields), e.g.
            guidance scales tuned on validation after training; None keeps the run's.
        refiner: a ``save_pretrained`` export with a trained refiner (M18) over the same codec weights: its
            refiner is exported with the checkpoint's model (``render_cache`` on). The refiner learns from the
            codec's reconstructions alone, so a longer stage 2 over the same codec keeps it.
        dtype: store the weights in this floating-point type (``save_pretrained``); None keeps float32.
    """
    ckpt = load_training_checkpoint(ckpt_path)
    prefix = "ema.module." if ema else "model."
    state = {k.removeprefix(prefix): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{ckpt_path} holds no EMA weights (trained with ema_decay=null): export with ema=False")
    try:
        config = DeepVerseConfig.from_dict(ckpt["hyper_parameters"]["model"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{ckpt_path}: hyper_parameters.model is not a DeepVerse config ({e})") from None
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, Tensor)}
    DeepVerse.check_weights(  # before the model is built: the config may name a preset of billions of parameters
        config, shapes, f"{ckpt_path} ({prefix}* weights)", "its hyper_parameters.model",
        optional=("latent_shift", "latent_scale"),
    )
    if refiner is not None:
        config, refiner_state = _refiner_of(refiner, config, state)
        state |= refiner_state
    model = DeepVerse(config)
    for name in ("latent_shift", "latent_scale"):  # checkpoints from before the latent statistics: identity
        state.setdefault(name, getattr(model, name))
    model.load_state_dict(state)
    model.set_sampler(**(sampler or {}))
    return model.save_pretrained(out_dir, dtype=dtype)


def _refiner_of(path: str | Path, config: DeepVerseConfig, state: dict) -> tuple[DeepVerseConfig, dict]:
    """The config with ``path``'s refiner switched on, and that refiner's weights; ValueError naming ``path`` unless
    it is an export with a refiner over the same codec (config and weights) as ``state``."""
    donor = DeepVerse.from_pretrained(path)  # FileNotFoundError / ValueError naming the path
    if donor.refiner is None:
        raise ValueError(f"refiner {path} has no refiner (render_cache false); expected an export of RefinerModule")
    theirs = donor.state_dict()
    codec = {k: v for k, v in state.items() if k.startswith("codec.")}
    same = donor.config.codec_config() == config.codec_config() and codec.keys() == {
        k for k in theirs if k.startswith("codec.")
    } and all(torch.equal(v, theirs[k]) for k, v in codec.items())
    if not same:
        raise ValueError(
            f"refiner {path} was trained over another codec than this checkpoint's; expected an export whose codec "
            f"config and weights equal the checkpoint's (the refiner refines that codec's reconstructions)"
        )
    config = dataclasses.replace(config, render_cache=True, refiner_overrides=donor.config.refiner_overrides)
    return config, {k: v for k, v in theirs.items() if k.startswith("refiner.")}


CHECKPOINT_EXPECTED = "a Lightning checkpoint (.ckpt) of world_model.lit_module's CodecModule or WorldModelModule"


def load_training_checkpoint(ckpt_path: str | Path) -> dict:
    """A training checkpoint read with ``torch.load(weights_only=True)`` (no pickled code runs), checked to
    hold a model config and a state dict. FileNotFoundError / ValueError naming the path and what was
    expected."""
    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; expected {CHECKPOINT_EXPECTED}")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is not a file; expected {CHECKPOINT_EXPECTED}")
    if _is_safetensors(path):  # torch.load would read it as a bare state dict
        raise ValueError(
            f"{path} is a safetensors file (weights without training state, e.g. of a save_pretrained export, "
            f"which needs no export); expected {CHECKPOINT_EXPECTED}"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, KeyError, ... for foreign or damaged files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"{path} is not a PyTorch checkpoint; expected {CHECKPOINT_EXPECTED} "
            f"(torch.load with weights_only=True: {type(e).__name__}: {reason[:200]})"
        ) from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not isinstance(hp.get("model"), dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(
            f"{path} is a PyTorch file but not a checkpoint of a world_model.lit_module module (it lacks "
            f"hyper_parameters.model or state_dict); expected {CHECKPOINT_EXPECTED}"
        )
    return ckpt


def _is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file (an 8-byte header length, then a JSON header)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


class TrainingModule(L.LightningModule, ABC):
    """What both stages share: the ``DeepVerse`` (``model``), its EMA (``ema``), the optimiser and schedule,
    and seeded evaluation. Subclasses name the parts they train (``trained``); the rest is frozen.

    Args:
        model: the ``DeepVerseConfig`` (or its dict); None = the defaults (tiny).
        lr: peak AdamW learning rate.
        weight_decay: AdamW decay of weight matrices and embeddings (not of biases, norms, gains).
        betas: AdamW betas.
        warmup_fraction: share of the run's optimizer steps spent warming up linearly (paper: 1%).
        min_lr_ratio: the cosine ends at this fraction of ``lr``.
        ema_decay: EMA decay per optimizer step; None = no EMA (needed with FSDP sharding).
        eval_seed: seed of the noise of validation / test batch i (``eval_seed + i``).
    """

    trained: tuple[str, ...] = ()  # DeepVerse children this stage trains

    def __init__(
        self,
        model: DeepVerseConfig | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_fraction: float = 0.01,
        min_lr_ratio: float = 0.1,
        ema_decay: float | None = 0.999,
        eval_seed: int = 0,
    ):
        super().__init__()
        checks = {
            "lr": (lr, lr > 0, "> 0"),
            "weight_decay": (weight_decay, weight_decay >= 0, ">= 0"),
            "betas": (betas, len(betas) == 2 and all(0 <= b < 1 for b in betas), "two values in [0, 1)"),
            "warmup_fraction": (warmup_fraction, 0 <= warmup_fraction < 1, "in [0, 1)"),
            "min_lr_ratio": (min_lr_ratio, 0 <= min_lr_ratio <= 1, "in [0, 1]"),
            "ema_decay": (ema_decay, ema_decay is None or 0 < ema_decay < 1, "in (0, 1) or null"),
        }
        for name, (value, ok, want) in checks.items():
            if not ok:
                raise ValueError(f"{name} must be {want}, got {value!r}")
        config = model if isinstance(model, DeepVerseConfig) else DeepVerseConfig.from_dict(model or {})
        self.save_hyperparameters()  # with the subclass's arguments (Lightning collects the __init__ chain)
        self.hparams["model"] = config.to_dict()  # plain JSON: checkpoints load with weights_only=True
        self.model = self.build_model(config)
        for name, part in self.model.named_children():
            part.requires_grad_(name in self.trained)
        self.ema = None
        if ema_decay is not None:  # a full copy: evaluation and export need the frozen parts beside it
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)

    def build_model(self, config: DeepVerseConfig) -> DeepVerse:
        return DeepVerse(config)

    @property
    def averaged(self) -> DeepVerse:
        """The model to evaluate and export: the EMA when there is one."""
        return self.model if self.ema is None else self.ema.module

    # ---- data contract --------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        recording = getattr(self.trainer.datamodule, "recording", None)
        if recording is not None:
            self.check_data(recording)

    def check_data(self, data) -> None:
        """Raise ValueError if the recorded clips do not fit the model. ``data``: what the data module's
        ``recording`` says of them (height, width, frames_per_step, chunks, memory)."""
        c = self.model.config
        if (data.height, data.width) != (c.height, c.width):
            raise ValueError(
                f"data.height/width {data.height}x{data.width} differ from model height/width {c.height}x{c.width}"
            )
        if data.frames_per_step != self.model.frames_per_chunk:
            raise ValueError(
                f"data.frames_per_step {data.frames_per_step} must equal the codec's temporal factor "
                f"{self.model.frames_per_chunk} (one env step = one latent frame)"
            )

    # ---- steps ----------------------------------------------------------------------------------

    def training_step(self, batch: TensorDict, batch_idx: int) -> Tensor:
        return self._common_step(batch, batch_idx, "train")

    def validation_step(self, batch: TensorDict, batch_idx: int) -> Tensor:
        return self._common_step(batch, batch_idx, "val")

    def test_step(self, batch: TensorDict, batch_idx: int) -> Tensor:
        return self._common_step(batch, batch_idx, "test")

    def _common_step(self, batch: TensorDict, batch_idx: int, stage: str) -> Tensor:
        B = batch.batch_size[0]
        if stage == "train":
            loss, logs = self.stage_loss(self.model, batch)
            self.log("train/loss", loss, prog_bar=True, batch_size=B)
            self.log_dict({f"train/{k}": v for k, v in logs.items() if k != "loss"}, batch_size=B)
            return loss
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.hparams.eval_seed + batch_idx)
            loss, logs = self.stage_loss(self.averaged, batch)
            logs.update(self.evaluate(self.averaged, batch))
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=B, sync_dist=True)
        self.log_dict({f"{stage}/{k}": v for k, v in logs.items() if k != "loss"}, batch_size=B, sync_dist=True)
        return loss

    @abstractmethod
    def stage_loss(self, model: DeepVerse, batch: TensorDict) -> tuple[Tensor, dict[str, Tensor]]:
        """This stage's training loss of ``model`` on a batch, and detached scalars to log."""

    @abstractmethod
    def evaluate(self, model: DeepVerse, batch: TensorDict) -> dict[str, Tensor]:
        """Metrics of one validation / test batch, name -> scalar (averaged over the epoch)."""

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # once per optimizer step, also under gradient accumulation
            self.ema.update_parameters(self.model)

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": hp.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("set trainer.max_steps (or max_epochs): the cosine schedule needs the run's length")
        warmup = math.ceil(hp.warmup_fraction * total)
        schedule = partial(warmup_cosine, total=int(total), warmup=warmup, min_ratio=hp.min_lr_ratio)
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)  # trainer.max_time
        if timer is not None:
            schedule = partial(_timed_schedule, schedule, timer, int(total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _timed_schedule(schedule, timer: Timer, total: int, step: int) -> float:
    """``schedule`` at the step or at the share of ``trainer.max_time`` spent, whichever is further on: a run
    capped by wall-clock time still ends its cosine when the time runs out."""
    elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
    if remaining is None or elapsed + remaining <= 0:
        return schedule(step)
    return schedule(max(step, math.floor(total * elapsed / (elapsed + remaining))))


# --------------------------------------------------------------------------------------------------
# Frames in metric units, and scoring
# --------------------------------------------------------------------------------------------------


def decoded_frames(model: DeepVerse, latents: Tensor, scale: Tensor) -> Frames:
    """Decode latents (B, T', C, h, w) of a window with scale (B,) into frames (depth only with depth)."""
    out = model.codec.decode(latents)
    return to_frames(out["rgb"], out.get("depth"), out["c2w"], out["K"], scale)


def score(pred: Frames, truth: Frames, group: str, suffix: str = "") -> dict[str, Tensor]:
    """Mean per-frame metrics (``metrics.frame_metrics``) of ``pred`` against ``truth`` (same frames), named
    ``group/metric[suffix]``."""
    return {f"{group}/{name}{suffix}": value.mean() for name, value in M.frame_metrics(pred, truth).items()}


def baselines(truth: Frames, last: int, frames: slice, group: str) -> dict[str, Tensor]:
    """Copy-last-frame and warp-with-true-motion scores of predicting ``truth[frames]`` from frame ``last``."""
    target = {k: v[:, frames] for k, v in truth.items()}
    T = target["rgb"].shape[1]
    copy = M.copy_last_frame({k: truth[k][:, last] for k in ("rgb", "depth", "pose")}, T)
    source = [truth[k][:, last].cpu() for k in ("rgb", "depth", "intrinsics", "pose")]  # the warp indexes on CPU
    rgb, depth, _ = M.warp_with_true_motion(*source, target["pose"].cpu())
    warp = {"rgb": rgb.to(target["rgb"].device), "depth": depth.to(target["rgb"].device)}
    return {**score(copy, target, group, "_copy"), **score(warp, target, group, "_warp")}


# --------------------------------------------------------------------------------------------------
# Stage 1: the codec
# --------------------------------------------------------------------------------------------------


class CodecModule(TrainingModule):
    """Stage 1: trains ``DeepVerse.codec`` with ``codec_loss`` (reconstruction + KL); the rest stays frozen.

    Logs ``recon/*``: PSNR, SSIM, depth AbsRel and delta<1.25 (metres) and camera errors of
    decode(encode(clip)) against the clip.

    Args:
        init_weights: start from these codec weights (a ``deepverse-train export`` directory or safetensors
            file, see ``load_codec_weights``) instead of random ones: continues a run whose Lightning
            checkpoint is gone, with a fresh optimiser and schedule. ``--ckpt_path`` resumes take precedence.
        **kwargs: the arguments of ``TrainingModule``.
    """

    trained = ("codec",)

    def __init__(self, init_weights: str | None = None, **kwargs):
        check_init_weights(init_weights)
        super().__init__(**kwargs)

    def build_model(self, config: DeepVerseConfig) -> DeepVerse:
        model = DeepVerse(config)
        if self.hparams.init_weights is not None:
            load_codec_weights(model.codec, self.hparams.init_weights)
        return model

    def stage_loss(self, model: DeepVerse, batch: TensorDict) -> tuple[Tensor, dict[str, Tensor]]:
        return model.codec_loss(batch)

    def evaluate(self, model: DeepVerse, batch: TensorDict) -> dict[str, Tensor]:
        return score(self.reconstruct(model, batch), true_frames(batch), "recon")

    @torch.no_grad()
    def reconstruct(self, model: DeepVerse, batch: TensorDict) -> Frames:
        return decoded_frames(model, model.encode(batch), batch["scale"])

    def predict_step(self, batch: TensorDict, batch_idx: int) -> Frames:
        """Reconstructions of the clips, metric frames (B, T, ...)."""
        return self.reconstruct(self.averaged, batch)


# --------------------------------------------------------------------------------------------------
# Stage 1b: the render-conditioned refiner (M18)
# --------------------------------------------------------------------------------------------------


class RefinerModule(TrainingModule):
    """Trains ``DeepVerse.refiner`` over a frozen codec (and MM-DiT): decoded frames + renders of the 3D cache
    -> sharp frames. Needs ``model.render_cache: true``.

    Each batch picks one chunk k of the clips (frames 4k-3..4k with tf = 4). The decoded frames are the codec's
    reconstruction of that chunk with noise added to its latent (a generated latent is worse than an encoded
    one); the render is of the keyframes before it (frames 0, 4, ..., 4k - 4: what a rollout's cache holds),
    made realistic with ``RenderNoise`` (camera, depth and colour errors), into the chunk's true cameras.
    Loss: L1 of the colours plus ``grad_weight`` x L1 of their finite differences (keeps high frequencies).

    Logs ``refine/*`` (the refined chunk) beside ``refine/*_decoded`` (the decoded chunk alone) and
    ``refine/render_cover`` (share of pixels the render covers).

    Args:
        init_weights: the whole model to refine (a ``save_pretrained`` directory, e.g. the shipped
            ``world_model/pretrained/tiny``); its config must equal ``model`` but for ``render_cache`` and
            ``refiner_overrides``; its refiner, if it has one, is the starting point (a fine-tune). None =
            untrained codec (tests).
        latent_noise: the decoded chunk's latent gets noise ~ N(0, sigma^2) x its channel scale, sigma ~ U(0, this).
        noise: ``RenderNoise`` of the cache renders.
        grad_weight: weight of the gradient term.
        edge_weight: weight of an edge-energy term, L1 of |gradient| magnitudes: unlike the gradient term it
            does not reward blurring an edge the render misplaces by a pixel.
        **kwargs: the arguments of ``TrainingModule``.
    """

    trained = ("refiner",)

    def __init__(
        self,
        init_weights: str | None = None,
        latent_noise: float = 0.5,
        noise: RenderNoise | None = None,
        grad_weight: float = 1.0,
        edge_weight: float = 0.0,
        **kwargs,
    ):
        check_init_weights(init_weights)
        for name, value in (("latent_noise", latent_noise), ("grad_weight", grad_weight), ("edge_weight", edge_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        super().__init__(**kwargs)
        if self.model.refiner is None:
            raise ValueError("RefinerModule trains the refiner: set model.render_cache: true")
        self.noise = noise or RenderNoise()
        self.hparams["noise"] = dataclasses.asdict(self.noise)  # plain JSON: checkpoints load with weights_only=True

    def build_model(self, config: DeepVerseConfig) -> DeepVerse:
        model = DeepVerse(config)
        path = self.hparams.init_weights
        if path is None:
            return model
        base = DeepVerse.from_pretrained(path)
        check_same_config(path, base.config, config, ignore=("render_cache", "refiner_overrides"))
        missing, _ = model.load_state_dict(base.state_dict(), strict=False)
        if any(not k.startswith("refiner.") for k in missing):
            raise ValueError(f"init_weights {path} lacks {[k for k in missing if not k.startswith('refiner.')][:3]}")
        model.set_sampler(**base.config.sampler)
        return model

    def refine_chunk(self, model: DeepVerse, batch: TensorDict, generator: torch.Generator | None = None):
        """(refined rgb (N, 3, H, W) in [-1, 1], the decoded chunk and the true chunk as frames (N,), render cover)
        for one chunk of every clip, N = B x tf."""
        tf = model.frames_per_chunk
        chunks = (batch["rgb"].shape[1] - 1) // tf
        device = batch["rgb"].device
        k = 1 + int(torch.randint(chunks, (1,), generator=generator, device="cpu"))
        first, last = (k - 1) * tf, k * tf
        truth = true_frames(batch)  # (B, T)
        with torch.no_grad():
            z = model.codec.encode(*(batch[key][:, first : last + 1] for key in ("rgb", "depth", "raymap")))  # (B, 2, ...)
            B = z.shape[0]
            sigma = self.hparams.latent_noise * torch.rand(B, 1, 1, 1, generator=generator, device="cpu").to(device)
            z[:, 1] = z[:, 1] + sigma * model.latent_scale[:, None, None] * torch.randn(
                z[:, 1].shape, generator=generator, device="cpu"
            ).to(device)
            decoded = model.codec.decode(z)
            scale = batch["scale"]
            base = to_frames(decoded["rgb"][:, 1:], decoded["depth"][:, 1:], decoded["c2w"][:, 1:], decoded["K"][:, 1:], scale)
            targets = torch.arange(first + 1, last + 1)
            render = cache_renders(truth, targets, torch.arange(0, first + 1, tf), scale, self.noise, generator)
        scale_n = scale.repeat_interleave(tf)
        inputs = refiner_inputs(
            base["rgb"].flatten(0, 1), base["depth"][..., 0].flatten(0, 1), render.values, render.depth, render.mask, scale_n
        )
        target = truth[:, targets]
        return model.refiner(inputs), base.flatten(0, 1), target.flatten(0, 1), render.mask.float().mean()

    def stage_loss(self, model: DeepVerse, batch: TensorDict) -> tuple[Tensor, dict[str, Tensor]]:
        pred, _, target, cover = self.refine_chunk(model, batch)
        truth = target["rgb"].movedim(-1, 1).float() / 127.5 - 1.0  # (N, 3, H, W)
        l1 = (pred - truth).abs().mean()
        grad = sum((pred.diff(dim=d) - truth.diff(dim=d)).abs().mean() for d in (-1, -2))
        edge = sum((pred.diff(dim=d).abs() - truth.diff(dim=d).abs()).abs().mean() for d in (-1, -2))
        loss = l1 + self.hparams.grad_weight * grad + self.hparams.edge_weight * edge
        logs = {"loss": loss.detach(), "l1": l1.detach(), "grad": grad.detach(), "edge": edge.detach()}
        return loss, {**logs, "render_cover": cover}

    def evaluate(self, model: DeepVerse, batch: TensorDict) -> dict[str, Tensor]:
        with torch.no_grad():
            pred, base, target, cover = self.refine_chunk(model, batch)
        return {
            **score({"rgb": to_rgb8(pred)}, target, "refine"),
            **score({"rgb": base["rgb"]}, target, "refine", "_decoded"),
            "refine/render_cover": cover,
        }


# --------------------------------------------------------------------------------------------------
# Stage 1c: the motion model (M19)
# --------------------------------------------------------------------------------------------------


class MotionModule(TrainingModule):
    """Trains ``DeepVerse.motion`` (``world_model.motion``) on every chunk of the recorded episodes
    (``world_model.motion_data.MotionChunks``: ``data.samples: chunks``); the rest of the model stays frozen.
    Needs ``model.motion: true``.

    Logs ``motion/*`` with the model rolling each chunk on its own (no teacher forcing): ``rot_deg`` and ``pos_m``, the
    camera's error at the chunk's end (mean, and ``*_p95``), and ``blocked_precision`` / ``blocked_recall`` of its
    blocked frames (``*_forward``: moves with a forward component, into what the camera sees).

    Args:
        init_weights: the whole model to give a motion model (a ``save_pretrained`` directory, e.g. the shipped
            ``world_model/pretrained/tiny``); its config must equal ``model`` but for ``motion`` and
            ``motion_overrides``; its motion model, if it has one, is the starting point. None = untrained rest.
        **kwargs: the arguments of ``TrainingModule``.
    """

    trained = ("motion",)

    def __init__(self, init_weights: str | None = None, **kwargs):
        check_init_weights(init_weights)
        super().__init__(**kwargs)
        if self.model.motion is None:
            raise ValueError("MotionModule trains the motion model: set model.motion: true")
        stats = {f"{k}{part}": BinaryPrecision() if k == "precision" else BinaryRecall()
                 for k in ("precision", "recall") for part in ("", "_forward")}
        self.blocked = torch.nn.ModuleDict({stage: MetricCollection(dict(stats)).clone() for stage in ("val", "test")})

    def build_model(self, config: DeepVerseConfig) -> DeepVerse:
        model = DeepVerse(config)
        path = self.hparams.init_weights
        if path is None:
            return model
        base = DeepVerse.from_pretrained(path)
        check_same_config(path, base.config, config, ignore=("motion", "motion_overrides"))
        missing, _ = model.load_state_dict(base.state_dict(), strict=False)
        if any(not k.startswith("motion.") for k in missing):
            raise ValueError(f"init_weights {path} lacks {[k for k in missing if not k.startswith('motion.')][:3]}")
        model.set_sampler(**base.config.sampler)
        return model

    def check_data(self, data) -> None:
        if getattr(data, "samples", "clips") != "chunks":
            raise ValueError("MotionModule learns from every chunk: set data.samples: chunks")
        cfg = self.model.motion.config
        theirs = (data.motion_history, data.motion_points)
        if theirs != (cfg.history, cfg.points):
            raise ValueError(
                f"data.motion_history/motion_points {theirs} differ from the motion model's history/points "
                f"{(cfg.history, cfg.points)} (model.motion_overrides)"
            )

    def stage_loss(self, model: DeepVerse, batch: TensorDict) -> tuple[Tensor, dict[str, Tensor]]:
        return model.motion.loss(batch["points"], batch["mask"], batch["command"], batch["truth"], batch["blocked"])

    def evaluate(self, model: DeepVerse, batch: TensorDict) -> dict[str, Tensor]:
        truth, blocked, command = batch["truth"], batch["blocked"], batch["command"]
        with torch.no_grad():
            out = model.motion(batch["points"], batch["mask"], command, truth[:, 0], truth.shape[1] - 1)
        rot, pos = chunk_errors(out["state"], truth)
        moves = (command[:, [0, 2]].norm(dim=-1) > MOVE_EPS)[:, None].expand_as(blocked)
        forward = moves & (command[:, 2:3] > 0)
        pred = out["blocked_logit"] > 0
        stage = "test" if self.trainer.testing else "val"
        metrics = self.blocked[stage]
        for name, where in (("", moves), ("_forward", forward)):
            metrics[f"precision{name}"].update(pred[where], blocked[where])
            metrics[f"recall{name}"].update(pred[where], blocked[where])
        return {
            "motion/rot_deg": rot.mean(), "motion/pos_m": pos.mean(),
            "motion/rot_deg_p95": rot.quantile(0.95), "motion/pos_m_p95": pos.quantile(0.95),
            **{f"motion/blocked_{k}": m for k, m in metrics.items()},
        }


# --------------------------------------------------------------------------------------------------
# Stage 2: the world model
# --------------------------------------------------------------------------------------------------


class Conditions(NamedTuple):
    """A batch of clips as the world model conditions on it (n chunks: latent frames 0..n)."""

    latents: Tensor  # (B, n + 1, C, h, w)
    captions: Tensor  # (B, n) sentence ids; chunk k's caption is captions[:, k - 1]
    spatial: Tensor | None  # (B, 1, C, h, w) the memory frame's latent, or None
    spatial_mask: Tensor | None  # (B,) True where a memory frame was found
    scale: Tensor  # (B,) metres per normalised unit of each clip's window
    render: Tensor | None  # (B, 1, C, h, w) render_frame: true keyframes 0..n-1 rendered into chunk n's camera
    render_cover: Tensor | None  # (B, 1, h, w) its coverage


class WorldModelModule(TrainingModule):
    """Stage 2: trains the MM-DiT and the text encoder with ``DeepVerse.loss``; the codec is frozen.

    Evaluation (``evaluate``) on clips of n chunks, frame 0 + n * tf frames:

    - ``next/*``: one chunk ahead from real history (latents n-m..n-1, the chunk's caption and memory
      frame, and with ``render_frame`` the true keyframes 0..n-1 rendered without errors into chunk n's true
      keyframe camera): the decoded chunk n against the truth, beside ``_copy`` / ``_warp`` from the last real
      frame and ``_codec``, the true chunk decoded from its own latent (the codec's ceiling);
    - ``ar_chunk{k}/*``: autoregressive from frame 0 alone, generated chunks fed back, k = 1..n (no render:
      a rollout's first pass).

    Longer rollouts (``world_model.rollout``) join as another metric group of ``evaluate``.

    Args:
        codec_weights: stage-1 codec to load (see ``load_codec_weights``); None or a missing path = the
            untrained codec, with a warning.
        init_weights: a whole stage-2 model to start from (a ``save_pretrained`` / ``deepverse-train export``
            directory, e.g. the shipped ``world_model/pretrained/tiny``) whose config must equal ``model``;
            replaces ``codec_weights``. Evaluates an export (``deepverse-train test``) or continues a run
            whose Lightning checkpoint is gone, with a fresh optimiser and schedule.
        latent_stat_clips: training clips whose codec latents fix the per-channel latent statistics
            (``DeepVerse.fit_latent_statistics``) when a fit starts from a model without them.
        eval_sampler: changes to the model's sampler in evaluation (``SamplerConfig`` fields, e.g.
            ``{steps: 4}`` for cheap validation or guidance scales to try); None = the model's own.
        **kwargs: the arguments of ``TrainingModule`` (model, lr, weight_decay, ..., ema_decay, eval_seed).
    """

    trained = ("dit", "text_encoder")

    def __init__(
        self,
        codec_weights: str | None = None,
        init_weights: str | None = None,
        latent_stat_clips: int = 256,
        eval_sampler: dict | None = None,
        **kwargs,
    ):
        SamplerConfig().merged(eval_sampler)  # ValueError naming an unknown field or a bad value
        if latent_stat_clips < 1:
            raise ValueError(f"latent_stat_clips must be >= 1, got {latent_stat_clips!r}")
        check_init_weights(init_weights)
        super().__init__(**kwargs)

    def build_model(self, config: DeepVerseConfig) -> DeepVerse:
        if self.hparams.init_weights is not None:
            model = DeepVerse.from_pretrained(self.hparams.init_weights)
            check_same_config(self.hparams.init_weights, model.config, config)
            model.set_sampler(**config.sampler)  # sampler settings are the export's unless model names its own
            return model.train()
        model = DeepVerse(config)
        path = self.hparams.codec_weights
        if path is not None and Path(path).exists():
            load_codec_weights(model.codec, path)
        else:
            missing = "no codec_weights given" if path is None else f"codec_weights {path} not found"
            rank_zero_warn(
                f"{missing}: the world model trains on an untrained codec (train one with "
                "configs/tiny_codec.yaml, then `deepverse-train export`)"
            )
        return model

    def setup(self, stage: str) -> None:
        super().setup(stage)
        clips = getattr(self.trainer.datamodule, "train_clips", None)
        fresh = self.hparams.init_weights is None and not self.model.latent_statistics_fitted  # an export keeps its own
        if stage == "fit" and fresh and clips is not None:
            self.model.codec.to(self.trainer.strategy.root_device)  # Lightning moves the module after setup
            self.fit_latent_statistics(clips)

    @torch.no_grad()
    def fit_latent_statistics(self, clips, count: int | None = None, batch: int = 16) -> None:
        """Fit ``DeepVerse.fit_latent_statistics`` on ``count`` (default ``latent_stat_clips``) training clips
        spread evenly over ``clips``: the same clips on every rank, so DDP ranks agree. A resumed run's
        checkpoint then restores the same values."""
        count = min(len(clips), count or self.hparams.latent_stat_clips)
        picks = torch.linspace(0, len(clips) - 1, count).long().tolist()
        device = next(self.model.codec.parameters()).device
        latents = torch.cat([
            self.model.encode(EpisodeClips.collate([clips[i] for i in picks[k : k + batch]]).to(device))
            for k in range(0, count, batch)
        ])  # (count, T', C, h, w)
        for model in {id(self.model): self.model, id(self.averaged): self.averaged}.values():
            model.fit_latent_statistics(latents)

    def check_data(self, data) -> None:
        super().check_data(data)
        m = self.model.history_frames
        if data.chunks < m:
            raise ValueError(f"data.chunks ({data.chunks}) must be >= the model's history m = {m}")
        if self.model.config.use_memory and not data.memory:
            raise ValueError("model.use_memory needs data.memory: true (the no-memory ablation sets both false)")

    def stage_loss(self, model: DeepVerse, batch: TensorDict) -> tuple[Tensor, dict[str, Tensor]]:
        return model.loss(batch)

    def evaluate(self, model: DeepVerse, batch: TensorDict) -> dict[str, Tensor]:
        clips, truth = self.conditions(model, batch), true_frames(batch)
        return {**self.next_chunk_metrics(model, clips, truth), **self.autoregressive_metrics(model, clips, truth)}

    # ---- generation -----------------------------------------------------------------------------

    @staticmethod
    def conditions(model: DeepVerse, batch: TensorDict) -> Conditions:
        """Encode a batch of clips once for every forecast made from it."""
        spatial = mask = render = cover = None
        if model.config.use_memory and "memory" in batch.keys():
            spatial, mask = model.encode(batch["memory"]), batch["has_memory"].bool()
        if model.dit.config.render_frame:
            render, cover = model.clip_render(batch, batch["caption_ids"].shape[1], EXACT)
        return Conditions(model.encode(batch), batch["caption_ids"], spatial, mask, batch["scale"], render, cover)

    def _generate(
        self, model: DeepVerse, history: Tensor, chunk: int, clips: Conditions, with_render: bool = False
    ) -> Tensor:
        """Latent of chunk ``chunk`` (B, 1, C, h, w) after ``history``, with that chunk's caption and the memory,
        and with ``with_render`` the clips' render (made for their last chunk)."""
        render, cover = (clips.render, clips.render_cover) if with_render else (None, None)
        return model.next_latent(
            history, [SENTENCES[i] for i in clips.captions[:, chunk - 1].tolist()], clips.spatial,
            clips.spatial_mask, render, cover, sampler=self.hparams.eval_sampler,
        )

    @torch.no_grad()
    def forecast_next(self, model: DeepVerse, clips: Conditions, truth: Frames | None = None) -> Frames:
        """The last chunk n of each clip generated from its real history: metric frames (B, tf, ...). A model
        with a refiner refines its colours against the true keyframes 0..n-1 (``truth``, what a rollout's 3D
        cache holds after real history) rendered into the chunk's predicted cameras."""
        n, tf = clips.captions.shape[1], model.frames_per_chunk
        history = clips.latents[:, :n]  # (B, n, C, h, w); next_latent keeps the last m
        window = torch.cat([history, self._generate(model, history, n, clips, with_render=True)], dim=1)
        frames = {k: v[:, -tf:] for k, v in decoded_frames(model, window, clips.scale).items()}  # (B, tf)
        if model.refiner is None:
            return frames
        if truth is None:
            raise ValueError("a model with a refiner forecasts against the true history: pass truth")
        render = cache_renders(
            truth, torch.arange(n * tf - tf + 1, n * tf + 1), torch.arange(0, n * tf, tf), clips.scale, EXACT,
            cameras=(frames["intrinsics"], frames["pose"]),
        )  # (B * tf, H, W)
        return frames | {"rgb": refine_frames(model.refiner, frames, render, clips.scale)}

    def next_chunk_metrics(self, model: DeepVerse, clips: Conditions, truth: Frames) -> dict[str, Tensor]:
        """``next/*`` beside the baselines and ``_codec``: the true chunk through the codec
        (decode(encode(truth))), the ceiling of anything the world model generates."""
        tf, T = model.frames_per_chunk, truth["rgb"].shape[1]
        target = {k: v[:, T - tf :] for k, v in truth.items()}
        with torch.no_grad():
            ceiling = {k: v[:, -tf:] for k, v in decoded_frames(model, clips.latents, clips.scale).items()}
        return {
            **score(self.forecast_next(model, clips, truth), target, "next"),
            **score(ceiling, target, "next", "_codec"),
            **baselines(truth, T - tf - 1, slice(T - tf, T), "next"),
        }

    @torch.no_grad()
    def autoregressive_metrics(self, model: DeepVerse, clips: Conditions, truth: Frames) -> dict[str, Tensor]:
        window = clips.latents[:, :1]  # (B, 1, C, h, w): frame 0 only
        n = clips.captions.shape[1]
        for k in range(1, n + 1):
            window = torch.cat([window, self._generate(model, window, k, clips)], dim=1)  # (B, 1 + k, C, h, w)
        pred = decoded_frames(model, window, clips.scale)
        tf, out = model.frames_per_chunk, {}
        for k in range(1, n + 1):
            chunk = slice(1 + (k - 1) * tf, 1 + k * tf)  # the frames of chunk k
            part = {key: v[:, chunk] for key, v in pred.items()}
            out |= score(part, {key: v[:, chunk] for key, v in truth.items()}, f"ar_chunk{k}")
            out |= baselines(truth, 0, chunk, f"ar_chunk{k}")
        return out

    def predict_step(self, batch: TensorDict, batch_idx: int) -> Frames:
        """The last chunk of each clip forecast from its real history, metric frames (B, tf, ...)."""
        return self.forecast_next(self.averaged, self.conditions(self.averaged, batch), true_frames(batch))
