"""The Lightning training stack: both stages fit, resume after a kill, export, schedule, DDP on CPU, configs."""
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from safetensors.torch import save_file

from conftest import perturb_zero_init, tiny_config
from deepverse_env.collect import collect
from world_model.cli import LastCheckpoint, cli_main
from world_model.resume import RandomState
from world_model.datamodule import DeepVerseDataModule
from world_model.lit_module import (
    CodecModule,
    WorldModelModule,
    export_pretrained,
    _timed_schedule,
    load_codec_weights,
    warmup_cosine,
)
from world_model.model import DeepVerse
from world_model.refine import RenderNoise, cache_renders
from world_model.state import true_frames

pytestmark = pytest.mark.filterwarnings("ignore:no codec_weights given")  # most tests need no trained codec

REPO = Path(__file__).resolve().parents[1]
DATA = dict(
    train_episodes=2, val_episodes=1, test_episodes=1, steps=6, height=16, width=16, batch_size=2, collect_envs=2
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Train / val / test splits of 16x16 episodes, recorded by the data module itself."""
    root = tmp_path_factory.mktemp("sim")
    DeepVerseDataModule(str(root), **DATA, recorder=collect).prepare_data()
    return root


def datamodule(root: Path, **changes) -> DeepVerseDataModule:
    return DeepVerseDataModule(str(root), **{**DATA, **changes})


def trainer(root: Path, max_steps: int, *callbacks: Callback, **settings) -> L.Trainer:
    """A quiet CPU Trainer validating one batch every 2 steps."""
    return L.Trainer(
        default_root_dir=root, max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
        callbacks=list(callbacks), enable_checkpointing=bool(callbacks), enable_progress_bar=False,
        enable_model_summary=False, **{"num_sanity_val_steps": 0, "limit_val_batches": 1, "val_check_interval": 2, **settings},
    )


def last_checkpoint(root: Path) -> LastCheckpoint:
    return LastCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=1, save_last=True, save_top_k=0)


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# --------------------------------------------------------------------------------------------------
# The two stages
# --------------------------------------------------------------------------------------------------


def test_codec_stage_trains_only_the_codec_and_exports_its_ema(data_dir, tmp_path):
    module = CodecModule(model=tiny_config(), lr=1e-3, ema_decay=0.5)
    codec0, dit0 = [{k: v.clone() for k, v in p.state_dict().items()} for p in (module.model.codec, module.model.dit)]
    fit = trainer(tmp_path, 2, last_checkpoint(tmp_path))
    fit.fit(module, datamodule=datamodule(data_dir, memory=False))
    assert fit.global_step == 2 and fit.lr_scheduler_configs[0].interval == "step"
    assert any(not torch.equal(codec0[k], v) for k, v in module.model.codec.state_dict().items())
    assert all(torch.equal(dit0[k], v) for k, v in module.model.dit.state_dict().items())
    logged = fit.callback_metrics
    expected = {"val/loss", "val/recon/psnr", "val/recon/ssim", "val/recon/depth_abs_rel", "val/recon/trans_err_m"}
    assert expected <= set(logged)
    assert logged["val/recon/rot_err_deg"] < 1.0  # the raymap channels carry the cameras exactly

    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ema = DeepVerse.from_pretrained(export_pretrained(ckpt, tmp_path / "ema"))
    raw = DeepVerse.from_pretrained(export_pretrained(ckpt, tmp_path / "raw", ema=False))
    assert same(ema, module.ema.module) and same(raw, module.model) and not same(ema.codec, raw.codec)
    assert ema.config == module.model.config
    half = DeepVerse.from_pretrained(export_pretrained(ckpt, tmp_path / "half", dtype=torch.float16))
    assert all(torch.equal(v.half().float(), half.state_dict()[k]) for k, v in ema.state_dict().items() if v.is_floating_point())
    # A checkpoint from before the latent statistics existed exports with the identity statistics.
    old = torch.load(ckpt, map_location="cpu", weights_only=True)
    old["state_dict"] = {k: v for k, v in old["state_dict"].items() if "latent_s" not in k}
    torch.save(old, tmp_path / "old.ckpt")
    legacy = DeepVerse.from_pretrained(export_pretrained(tmp_path / "old.ckpt", tmp_path / "legacy"))
    assert same(legacy.codec, ema.codec) and not legacy.latent_statistics_fitted

    # A later run continues from the export when the Lightning checkpoint is gone.
    again = CodecModule(model=tiny_config(), init_weights=str(tmp_path / "ema"))
    assert same(again.model.codec, ema.codec) and same(again.ema.module.codec, ema.codec)
    with pytest.raises(ValueError, match="init_weights .*nowhere does not exist"):
        CodecModule(model=tiny_config(), init_weights=str(tmp_path / "nowhere"))


def test_world_model_stage_loads_a_frozen_codec_and_reports_metrics_beside_baselines(data_dir, tmp_path):
    stage1 = DeepVerse(tiny_config())
    stage1.save_pretrained(tmp_path / "codec")
    module = WorldModelModule(model=tiny_config(), codec_weights=str(tmp_path / "codec"), eval_sampler={"steps": 1})
    assert same(module.model.codec, stage1.codec) and same(module.ema.module.codec, stage1.codec)
    dit0 = {k: v.clone() for k, v in module.model.dit.state_dict().items()}
    fit = trainer(tmp_path, 2)
    fit.fit(module, datamodule=datamodule(data_dir))
    assert same(module.model.codec, stage1.codec) and same(module.ema.module.codec, stage1.codec)
    assert any(not torch.equal(dit0[k], v) for k, v in module.model.dit.state_dict().items())
    assert module.model.latent_statistics_fitted  # fitted on training clips before the first step, EMA alike
    for name in ("latent_shift", "latent_scale"):
        assert torch.equal(getattr(module.model, name), getattr(module.ema.module, name))
    logged = fit.callback_metrics
    m = module.model.history_frames
    for group in ["next"] + [f"ar_chunk{k}" for k in range(1, m + 1)]:
        for name in ("psnr", "ssim", "depth_abs_rel", "depth_delta1"):
            for suffix in ("", "_copy", "_warp"):
                assert torch.isfinite(logged[f"val/{group}/{name}{suffix}"])
        for name in ("rot_err_deg", "trans_err_m"):
            assert torch.isfinite(logged[f"val/{group}/{name}"]) and torch.isfinite(logged[f"val/{group}/{name}_copy"])
    for name in ("psnr", "ssim", "depth_abs_rel", "depth_delta1", "rot_err_deg"):
        assert torch.isfinite(logged[f"val/next/{name}_codec"])
    assert f"val/ar_chunk{m + 1}/psnr" not in logged
    # Evaluation noise is seeded per batch: the same weights score the same.
    again = fit.validate(module, datamodule=datamodule(data_dir), verbose=False)[0]
    assert again["val/next/psnr"] == pytest.approx(float(logged["val/next/psnr"]))



def test_world_model_stage_starts_from_a_whole_export(tmp_path):
    """``init_weights`` loads every part of a stage-2 export (how `deepverse-train test` scores the shipped
    model); an export of another config is refused, naming the fields that differ."""
    trained = DeepVerse(tiny_config())
    with torch.no_grad():
        for w in trained.parameters():
            w.add_(0.01)  # differs from any fresh initialisation
    trained.save_pretrained(tmp_path / "export")
    module = WorldModelModule(model=tiny_config(), init_weights=str(tmp_path / "export"))
    assert same(module.model, trained) and same(module.ema.module, trained) and module.model.training
    with pytest.raises(ValueError, match="another config than model: .*'use_memory'"):
        WorldModelModule(model=tiny_config(use_memory=False), init_weights=str(tmp_path / "export"))
    with pytest.raises(ValueError, match="init_weights .*nowhere does not exist"):
        WorldModelModule(model=tiny_config(), init_weights=str(tmp_path / "nowhere"))

    # Sampler settings are not weights: an export tuned to other guidance loads; the model's own settings win.
    trained.set_sampler(s_text=1.0)
    trained.save_pretrained(tmp_path / "tuned")
    module = WorldModelModule(model=tiny_config(), init_weights=str(tmp_path / "tuned"))
    assert module.model.sampler.s_text == 1.0 and module.model.config.sampler == {"s_text": 1.0}
    module = WorldModelModule(model=tiny_config(sampler={"s_text": 2.0, "steps": 3}), init_weights=str(tmp_path / "tuned"))
    assert (module.model.sampler.s_text, module.model.sampler.steps) == (2.0, 3) and same(module.model, trained)
    with pytest.raises(ValueError, match="another config than model: .*'flow_overrides'"):
        WorldModelModule(model=tiny_config(flow_overrides={"text_drop": 0.5}), init_weights=str(tmp_path / "tuned"))
    with pytest.raises(ValueError, match=r"\['text_drop'\] are not sampler settings"):
        trained.set_sampler(text_drop=0.0)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        trained.set_sampler(steps=0)
    with pytest.raises(ValueError, match="s_text must be a finite guidance scale, got nan"):
        trained.set_sampler(s_text=float("nan"))


def test_bf16_mixed_precision_trains_and_keeps_fp32_weights(data_dir, tmp_path):
    module = WorldModelModule(model=tiny_config(), eval_sampler={"steps": 1})
    fit = trainer(tmp_path, 2, precision="bf16-mixed")
    fit.fit(module, datamodule=datamodule(data_dir))
    assert torch.isfinite(fit.callback_metrics["train/loss"]) and torch.isfinite(fit.callback_metrics["val/next/psnr"])
    assert all(p.dtype == torch.float32 for p in module.parameters())


def test_world_model_stage_with_a_render_frame_scores_next_with_exact_renders(data_dir, tmp_path, monkeypatch):
    """render_frame (M18): training batches render the clips' true keyframes, ``next/*`` conditions on them
    rendered without errors, and the autoregressive chunks (a rollout's first pass) on none."""
    module = WorldModelModule(model=tiny_config(dit_overrides={"render_frame": True}), eval_sampler={"steps": 1})
    fit = trainer(tmp_path, 2)
    fit.fit(module, datamodule=datamodule(data_dir))
    logged = fit.callback_metrics
    assert torch.isfinite(logged["train/loss"]) and torch.isfinite(logged["val/next/psnr"])
    assert 0 <= logged["train/render_cover"] <= 1 and 0 <= logged["val/render_cover"] <= 1  # 0: a completion batch
    model, batch = module.averaged, next(iter(fit.datamodule.val_dataloader()))
    renders = []
    original = model.next_latent

    def next_latent(*args, **kwargs):
        renders.append(args[4])
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "next_latent", next_latent)
    clips = module.conditions(model, batch)
    assert clips.render.shape == (2, 1, *clips.latents.shape[2:]) and 0 < clips.render_cover.mean() <= 1
    again = module.conditions(model, batch)
    assert torch.equal(clips.render, again.render)  # no render errors in evaluation
    assert torch.isfinite(module.evaluate(model, batch)["next/psnr"])
    assert renders[0] is not None and all(r is None for r in renders[1:])  # next/*, then ar_chunk1..n


def test_next_chunk_of_a_refiner_model_is_refined_against_the_true_history_in_its_predicted_cameras(data_dir):
    """``next/*`` of a grounded model (M18): the refiner sees the true keyframes 0..n-1 (a rollout's cache after
    real history) rendered into the generated chunk's own cameras."""
    module = WorldModelModule(model=tiny_config(render_cache=True), eval_sampler={"steps": 1})
    dm = datamodule(data_dir)
    dm.setup("validate")
    model, batch = module.averaged.eval(), next(iter(dm.val_dataloader()))
    clips, truth = module.conditions(model, batch), true_frames(batch)
    seen = []
    model.refiner.forward = lambda inputs: seen.append(inputs) or inputs[:, 4:7]  # the render's colours (0 in holes)
    with pytest.raises(ValueError, match="pass truth"):
        module.forecast_next(model, clips)
    torch.manual_seed(0)
    refined = module.forecast_next(model, clips, truth)
    torch.manual_seed(0)
    model.refiner = None
    plain = module.forecast_next(model, clips)  # the same sample, unrefined
    n, tf = clips.captions.shape[1], model.frames_per_chunk
    exact = RenderNoise(rotation_deg=0.0, translation=0.0, depth=0.0, blur=0.0)
    render = cache_renders(
        truth, torch.arange(n * tf - tf + 1, n * tf + 1), torch.arange(0, n * tf, tf), clips.scale, exact,
        cameras=(plain["intrinsics"], plain["pose"]),
    )
    B = clips.scale.shape[0]
    expected = torch.where(render.mask[..., None], render.values, 127.5).round().to(torch.uint8)  # (B * tf, H, W, 3)
    assert len(seen) == 1 and seen[0].shape[0] == B * tf and 0 < render.mask.float().mean() < 1
    assert (refined["rgb"].flatten(0, 1).int() - expected.int()).abs().max() <= 1
    assert torch.equal(refined["pose"], plain["pose"]) and torch.equal(refined["depth"], plain["depth"])
    assert not torch.equal(refined["rgb"], plain["rgb"])


def test_codec_weights_files_and_mismatches(tmp_path):
    stage1 = DeepVerse(tiny_config())
    save_file(stage1.codec.state_dict(), str(tmp_path / "codec.safetensors"))  # a codec alone, as a file
    module = WorldModelModule(model=tiny_config(), codec_weights=str(tmp_path / "codec.safetensors"))
    assert same(module.model.codec, stage1.codec)
    no_depth = DeepVerse(tiny_config(codec_overrides={"use_depth": False}))
    load_codec_weights(no_depth.codec, tmp_path / "codec.safetensors")  # the RGB half of a depth codec
    assert same(no_depth.codec.encoders["rgb"], stage1.codec.encoders["rgb"])
    wider = DeepVerse(tiny_config(codec_overrides={"width": 8}))
    with pytest.raises(ValueError, match="codec.safetensors do not fit this codec"):
        load_codec_weights(wider.codec, tmp_path / "codec.safetensors")
    (tmp_path / "junk.safetensors").write_text("not weights")
    with pytest.raises(ValueError, match="junk.safetensors is not a safetensors file"):
        load_codec_weights(stage1.codec, tmp_path / "junk.safetensors")
    with pytest.warns(UserWarning, match="untrained codec"):
        WorldModelModule(model=tiny_config(), codec_weights=str(tmp_path / "nowhere"))


def test_codec_weights_of_another_norm_are_refused(tmp_path):
    """LayerNorm and GroupNorm weights share names and shapes: the export's config.json tells them apart."""
    channel = DeepVerse(tiny_config(codec_overrides={"norm": "channel"}))
    channel.save_pretrained(tmp_path / "channel")
    group = DeepVerse(tiny_config())
    before = {k: v.clone() for k, v in group.codec.state_dict().items()}
    with pytest.raises(ValueError, match="norm 'channel' there, 'group' here"):
        load_codec_weights(group.codec, tmp_path / "channel")
    assert all(torch.equal(v, group.codec.state_dict()[k]) for k, v in before.items())  # nothing loaded
    load_codec_weights(DeepVerse(tiny_config(codec_overrides={"norm": "channel"})).codec, tmp_path / "channel")


# --------------------------------------------------------------------------------------------------
# Resume, schedule
# --------------------------------------------------------------------------------------------------


class Killed(Exception):
    pass


class KillAt(Callback):
    """Dies right after optimizer step ``step``, before any checkpoint of that step (as a kill -9 would)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise Killed


class AtStart(Callback):
    """Records the step and optimizer state a fit starts from."""

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())  # it holds live tensors


def test_kill_and_resume_continues_step_optimizer_schedule_and_ema(data_dir, tmp_path):
    def module():
        return WorldModelModule(model=tiny_config(), lr=1e-3, warmup_fraction=0.25, min_lr_ratio=0.1, eval_sampler={"steps": 1})

    with pytest.raises(Killed):
        trainer(tmp_path, 4, KillAt(3), last_checkpoint(tmp_path)).fit(module(), datamodule=datamodule(data_dir))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2

    start, resumed = AtStart(), module()
    fit = trainer(tmp_path, 4, start, last_checkpoint(tmp_path))
    fit.fit(resumed, datamodule=datamodule(data_dir), ckpt_path="last")
    assert start.step == 2 and fit.global_step == 4
    restored = start.optimizer["state"]
    assert restored and all(
        torch.equal(restored[i]["exp_avg"], saved["optimizer_states"][0]["state"][i]["exp_avg"]) for i in restored
    )
    state = fit.optimizers[0].state_dict()["state"]
    assert max(s["step"] for s in state.values()) == 4  # Adam counts on (a parameter without a gradient lags)
    assert all(state[i]["step"] >= restored[i]["step"] for i in restored)
    assert int(resumed.ema.n_averaged) == 4
    # 4 steps, 1 of warm-up: the cosine has come down to min_lr_ratio at the end.
    assert fit.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 0.1)


class Batches(Callback):
    """Records a fingerprint of every training batch and the loss by step."""

    def __init__(self):
        self.seen = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.seen[trainer.global_step] = (float(batch["rgb"].float().sum()), float(loss))


def test_a_resumed_run_is_the_uninterrupted_run(data_dir, tmp_path):
    """Killed mid-epoch and resumed, a run takes the same batches in the same order, draws the same noise and
    ends with the same weights as the run that was never stopped (bit for bit on one CPU)."""
    def fit(root, *callbacks, ckpt_path=None):
        L.seed_everything(0)
        module = WorldModelModule(model=tiny_config(), lr=1e-3, warmup_fraction=0.25, eval_sampler={"steps": 1})
        batches = Batches()
        t = trainer(root, 9, RandomState(), batches, *callbacks, num_sanity_val_steps=1)
        t.fit(module, datamodule=datamodule(data_dir, batch_size=1), ckpt_path=ckpt_path)
        return module, batches.seen, t

    full, seen, t = fit(tmp_path / "full")
    per_epoch = t.num_training_batches
    assert 2 < per_epoch < 9 and 5 % per_epoch  # the kill below lands mid-epoch, and the run crosses epochs
    with pytest.raises(Killed):
        fit(tmp_path / "cut", KillAt(5), last_checkpoint(tmp_path / "cut"))
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == 4 % per_epoch
    resumed, after, _ = fit(tmp_path / "cut", last_checkpoint(tmp_path / "cut"), ckpt_path="last")
    assert sorted(after) == list(range(5, 10)) and all(after[k] == seen[k] for k in after)  # same batches, same losses
    assert same(resumed, full)


def test_lr_schedule_warms_up_then_decays():
    lrs = [warmup_cosine(s, total=1000, warmup=10, min_ratio=0.1) for s in range(1100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # linear warm-up
    assert all(a >= b for a, b in zip(lrs[9:1000], lrs[10:1001]))  # cosine decay
    assert lrs[1000] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.1)
    assert warmup_cosine(0, total=10, warmup=0, min_ratio=0.0) == pytest.approx(1.0)  # no warm-up


def test_lr_schedule_under_max_time_follows_the_budget_spent_first():
    class Clock:  # Lightning's Timer: seconds of training spent and left
        def __init__(self, elapsed, remaining):
            self.elapsed, self.remaining = elapsed, remaining

        def time_elapsed(self, stage):
            return self.elapsed

        def time_remaining(self, stage):
            return self.remaining

    schedule = lambda step: warmup_cosine(step, total=1000, warmup=10, min_ratio=0.1)  # noqa: E731
    assert _timed_schedule(schedule, Clock(1.0, 99.0), 1000, 500) == schedule(500)  # steps further on
    assert _timed_schedule(schedule, Clock(75.0, 25.0), 1000, 100) == schedule(750)  # time further on
    assert _timed_schedule(schedule, Clock(120.0, -20.0), 1000, 100) == pytest.approx(0.1)  # time out: the floor
    assert _timed_schedule(schedule, Clock(0.0, None), 1000, 100) == schedule(100)


# --------------------------------------------------------------------------------------------------
# The CLI and its configs
# --------------------------------------------------------------------------------------------------


def overlay(tmp_path: Path, data_dir: Path) -> Path:
    """configs/tiny.yaml shrunk to seconds: 16x16 frames, a one-block DiT, checkpoints every step."""
    small = {
        "model": {"init_args": {"model": tiny_config().to_dict(), "codec_weights": None, "eval_sampler": {"steps": 1}}},
        "data": {"data_dir": str(data_dir), **DATA},
        "trainer": {
            "default_root_dir": str(tmp_path / "run"), "max_steps": 2, "val_check_interval": 2,
            "num_sanity_val_steps": 0, "enable_progress_bar": False,
        },
        "checkpoint": {"every_n_train_steps": 1, "train_time_interval": None},
    }
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(small))
    return path


def cli(monkeypatch, *args: str) -> None:
    """``deepverse-train ARGS`` in this process."""
    monkeypatch.setattr(sys, "argv", ["deepverse-train", *args])
    cli_main()


def test_cli_fit_resume_and_export(data_dir, tmp_path, monkeypatch, capsys):
    base = ["fit", "--config", str(REPO / "configs" / "tiny.yaml"), "--config", str(overlay(tmp_path, data_dir))]
    cli(monkeypatch, *base)
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2
    assert list(run.glob("checkpoints/best-*.ckpt")) and list(run.glob("csv/version_0/metrics.csv"))
    assert list(run.glob("tensorboard/version_0/events.*"))
    with pytest.raises(ValueError, match="last.ckpt exists: resume that run with --ckpt_path last"):
        cli(monkeypatch, *base)  # a fresh fit would write last-v1.ckpt beside the old run's last.ckpt
    assert sorted(p.name for p in run.glob("checkpoints/last*.ckpt")) == ["last.ckpt"]
    cli(monkeypatch, *base, "--ckpt_path", "last", "--trainer.max_steps", "3")
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3
    cli(monkeypatch, "export", "--ckpt", str(ckpt), "--out", str(tmp_path / "export"))
    exported = DeepVerse.from_pretrained(tmp_path / "export")
    assert exported.config.weights_dict() == tiny_config().weights_dict()
    # Guidance tuned after training goes into the export's config; the weights are the same.
    cli(monkeypatch, "export", "--ckpt", str(ckpt), "--out", str(tmp_path / "tuned"), "--s-text", "1.5", "--steps", "6")
    tuned = DeepVerse.from_pretrained(tmp_path / "tuned")
    assert (tuned.sampler.s_text, tuned.sampler.steps) == (1.5, 6) and same(tuned, exported)
    with pytest.raises(SystemExit):
        cli(monkeypatch, "export", "--ckpt", str(ckpt), "--out", str(tmp_path / "bad"), "--steps", "0")
    assert not (tmp_path / "bad").exists()

    # --refiner: a refiner trained over the same codec goes with the checkpoint's model (after a longer stage 2).
    donor = DeepVerse(dataclasses.replace(exported.config, render_cache=True))
    donor.load_state_dict(exported.state_dict(), strict=False)
    perturb_zero_init(donor.refiner)
    donor.save_pretrained(tmp_path / "refined_donor")
    cli(monkeypatch, "export", "--ckpt", str(ckpt), "--out", str(tmp_path / "refined"), "--refiner", str(tmp_path / "refined_donor"))
    refined = DeepVerse.from_pretrained(tmp_path / "refined")
    assert refined.config.render_cache and same(refined.refiner, donor.refiner)
    assert all(torch.equal(v, exported.state_dict()[k]) for k, v in refined.state_dict().items() if not k.startswith("refiner."))
    with torch.no_grad():
        next(donor.codec.parameters()).add_(1.0)  # another codec: its refiner does not fit
    donor.save_pretrained(tmp_path / "other_codec")
    for bad, message in ((tmp_path / "other_codec", "trained over another codec"), (tmp_path / "export", "has no refiner")):
        with pytest.raises(SystemExit):
            cli(monkeypatch, "export", "--ckpt", str(ckpt), "--out", str(tmp_path / "bad"), "--refiner", str(bad))
        assert message in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_cli_resume_carries_a_run_across_fresh_clones(data_dir, tmp_path, monkeypatch, capsys):
    import world_model.resume as R

    monkeypatch.setattr(R, "PART_BYTES", 2**20)  # several parts
    monkeypatch.chdir(tmp_path)
    base = ["fit", "--config", str(REPO / "configs" / "tiny.yaml"), "--config", str(overlay(tmp_path, data_dir))]
    cli(monkeypatch, *base, "--resume", "long")
    folder = tmp_path / "checkpoints" / "long"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["step"] == 2 and len(manifest["parts"]) > 1
    assert all((folder / p["name"]).stat().st_size <= 2**20 for p in manifest["parts"])
    assert torch.load(tmp_path / "runs" / "long" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    shutil.rmtree(tmp_path / "runs")  # the next session: a fresh clone holds only what was committed
    cli(monkeypatch, *base, "--resume", "long", "--trainer.max_steps", "9", "--session.minutes", "1e-6")  # one step
    assert "resuming long from checkpoints/long (step 2)" in capsys.readouterr().err
    assert json.loads((folder / "manifest.json").read_text())["step"] == 3
    assert torch.load(tmp_path / "runs" / "long" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3

    for bad, message in ((["--resume", "long", "--ckpt_path", "last"], "do not give --ckpt_path with it"),
                         (["--resume", "../x"], "needs a run name"), (["--resume"], "needs a run name")):
        with pytest.raises(SystemExit, match=message):
            cli(monkeypatch, *base, *bad)
    with pytest.raises(ValueError, match="minutes must be a number > 0"):
        cli(monkeypatch, *base, "--resume", "long", "--session.minutes", "0")
    before = (folder / "manifest.json").read_text()
    part = folder / json.loads(before)["parts"][0]["name"]  # the step-3 commit's parts (step 2's are gone)
    part.write_bytes(b"x" + part.read_bytes()[1:])  # one byte changed: the checksum catches it
    shutil.rmtree(tmp_path / "runs")
    with pytest.raises(SystemExit, match="do not add up to the checkpoint"):
        cli(monkeypatch, *base, "--resume", "long")
    assert not (tmp_path / "runs" / "long" / "checkpoints" / "last.ckpt").exists() and (folder / "manifest.json").read_text() == before
    with pytest.raises(ValueError, match="holds no committed run"):
        R.restore_run(tmp_path / "nothing", tmp_path / "x.ckpt")


def test_bench_train_times_both_precisions_of_a_stage(data_dir, tmp_path):
    from deepverse_env.bench_train import bench_train

    result = bench_train(["world_model"], steps=2, warmup=1, extra=("--config", str(overlay(tmp_path, data_dir))))
    figures = result["stages"]["world_model"]
    assert {"32-true", "bf16-mixed"} <= set(figures) and all(figures[p]["timed_steps"] == 2 for p in ("32-true", "bf16-mixed"))
    assert figures["faster"] == max(("32-true", "bf16-mixed"), key=lambda p: figures[p]["steps_per_s"])
    assert figures["bf16_speedup"] == pytest.approx(figures["bf16-mixed"]["steps_per_s"] / figures["32-true"]["steps_per_s"], abs=0.01)
    with pytest.raises(ValueError, match="unknown stages"):
        bench_train(["vae"])


@pytest.mark.parametrize(
    "ablation",
    [
        "ablation_no_depth.yaml",
        "ablation_no_memory.yaml",
        "ablation_channel_history.yaml",
    ],
)
def test_cli_ablations_train(ablation, data_dir, tmp_path, monkeypatch):
    configs = [REPO / "configs" / "tiny.yaml", overlay(tmp_path, data_dir), REPO / "configs" / ablation]
    args = [a for c in configs for a in ("--config", str(c))] + ["--trainer.default_root_dir", str(tmp_path / "run")]
    cli(monkeypatch, "fit", *args)
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_cli_ddp_on_two_cpu_processes(data_dir, tmp_path):
    """DDP over two CPU processes (gloo), in a subprocess: Lightning launches the second rank itself."""
    done = subprocess.run(
        [
            sys.executable, "-m", "world_model.cli", "fit", "--config", "configs/tiny.yaml",
            "--config", str(overlay(tmp_path, data_dir)), "--trainer.strategy", "ddp_find_unused_parameters_true",
            "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        ],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def resolved(capsys, monkeypatch, *configs: str) -> dict:
    """The full config ``--print_config`` resolves from ``configs`` (nothing is built)."""
    args = ["fit"] + [a for c in configs for a in ("--config", str(REPO / "configs" / c))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit:
        cli(monkeypatch, *args)
    assert exit.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_configs_resolve_and_override_only_what_differs(capsys, monkeypatch):
    codec = resolved(capsys, monkeypatch, "tiny_codec.yaml")
    assert codec["model"]["class_path"].endswith("CodecModule") and codec["data"]["memory"] is False
    tiny = resolved(capsys, monkeypatch, "tiny.yaml")
    assert tiny["model"]["class_path"].endswith("WorldModelModule")
    assert tiny["trainer"]["default_root_dir"] == "runs/tiny" and tiny["checkpoint"]["save_last"] is True
    assert tiny["checkpoint"]["train_time_interval"] == "0:10:00"  # a long CPU run checkpoints every 10 minutes
    no_depth = resolved(capsys, monkeypatch, "tiny.yaml", "ablation_no_depth.yaml")["model"]["init_args"]["model"]
    assert no_depth["codec_overrides"] == {"use_depth": False} and no_depth["dit"] == "tiny"
    channel = resolved(capsys, monkeypatch, "tiny.yaml", "ablation_channel_history.yaml")["model"]["init_args"]["model"]
    assert channel["dit_overrides"] == {"history_mode": "channel"}
    no_memory = resolved(capsys, monkeypatch, "tiny.yaml", "ablation_no_memory.yaml")
    assert no_memory["model"]["init_args"]["model"]["use_memory"] is False and no_memory["data"]["memory"] is False
    paper = resolved(capsys, monkeypatch, "paper.yaml")
    assert paper["trainer"]["precision"] == "bf16-mixed" and paper["model"]["init_args"]["model"]["dit"] == "paper"
    assert paper["data"]["chunks"] == 7 and paper["data"]["frames_per_step"] == 8
    assert resolved(capsys, monkeypatch, "paper_codec.yaml")["model"]["class_path"].endswith("CodecModule")
    linear = {"linear_path": True, "rgb_latent_channels": 16}
    codec16 = resolved(capsys, monkeypatch, "tiny_codec.yaml", "codec_linear16.yaml")
    assert codec16["model"]["init_args"]["model"]["codec_overrides"] == linear
    grounded = resolved(capsys, monkeypatch, "tiny.yaml", "tiny_grounded.yaml")["model"]["init_args"]["model"]
    assert grounded["codec_overrides"] == linear and grounded["dit_overrides"] == {"render_frame": True}
    fsdp = resolved(capsys, monkeypatch, "paper.yaml", "fsdp_gpu.yaml")
    assert fsdp["trainer"]["strategy"]["class_path"].endswith("FSDPStrategy")
    assert fsdp["model"]["init_args"]["ema_decay"] is None and fsdp["model"]["init_args"]["model"]["dit"] == "paper"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=0.0), "lr must be > 0"),
        (dict(weight_decay=-1.0), "weight_decay must be >= 0"),
        (dict(warmup_fraction=1.0), r"warmup_fraction must be in \[0, 1\)"),
        (dict(ema_decay=1.0), r"ema_decay must be in \(0, 1\) or null"),
        (dict(betas=(0.9,)), "betas must be two values"),
        (dict(eval_sampler={"steps": 0}), "steps must be a positive integer, got 0"),
        (dict(eval_sampler={"flavour": 1}), r"\['flavour'\] are not sampler settings"),
        (dict(model={"dit": "huge"}), "unknown preset 'huge'"),
        (dict(model={"colour": 3}), r"unknown DeepVerseConfig field\(s\) \['colour'\]"),
    ],
)
def test_bad_module_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorldModelModule(codec_weights=None, **kwargs)


def test_data_that_does_not_fit_the_model_is_refused(data_dir):
    module = WorldModelModule(model=tiny_config(), codec_weights=None)
    checks = [
        (dict(height=32), "data.height/width 32x16 differ from model height/width 16x16"),
        (dict(frames_per_step=2), "data.frames_per_step 2 must equal the codec's temporal factor 4"),
        (dict(chunks=2), r"data.chunks \(2\) must be >= the model's history m = 4"),
        (dict(memory=False), "model.use_memory needs data.memory: true"),
    ]
    for changes, message in checks:
        with pytest.raises(ValueError, match=message):
            module.check_data(datamodule(data_dir, **changes).recording)
    CodecModule(model=tiny_config()).check_data(datamodule(data_dir, chunks=1, memory=False).recording)


def test_missing_episodes_without_a_recorder_are_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train lacks some of its 2 episodes and no recorder is set"):
        datamodule(tmp_path / "empty").prepare_data()
    assert not list(tmp_path.glob("empty/*/episode_*"))


def test_cli_reports_bad_values(capsys, monkeypatch):
    tiny = str(REPO / "configs" / "tiny.yaml")
    with pytest.raises(ValueError, match="lr must be > 0, got -1.0"):
        cli(monkeypatch, "fit", "--config", tiny, "--model.init_args.lr", "-1")
    with pytest.raises(SystemExit):
        cli(monkeypatch, "fit", "--config", tiny, "--model.init_args.latent_stat_clips", "two")
    assert "latent_stat_clips" in capsys.readouterr().err
