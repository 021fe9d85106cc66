"""``deepverse eval``: open-loop rollouts of the learned world against the simulator on held-out worlds (M15).

    deepverse eval --out eval/                          # shipped model, 8 test worlds, 60 frames, both starts
    deepverse eval --checkpoint DIR --seeds 2000000:2000016 --frames 120 --no-render-cache

For every world of ``--seeds`` (held out: training uses seeds 0.., validation 1,000,000.., test 2,000,000..)
the learned world (``DeepVerse-v0``) and the simulator take the same seeded random action script, from

- ``4d``: the simulator's first frame with its exact depth and intrinsics (what planners re-sync from);
- ``image``: its RGB alone (first-frame completion: depth and camera generated, in units of 1 m, so only
  the RGB and rotation metrics are scored).

Per frame of the horizon (1..frames) the mean over worlds of PSNR, SSIM, sharpness ratio (mean |Laplacian| of
predicted ÷ true luminance), depth AbsRel and δ<1.25, camera rotation and translation error, beside the
trivial baselines ``copy_first`` (the start frame held) and ``warp`` (the start frame forward-splatted with its
true depth into the true cameras). The **revisit** episode walks out and back (the demo's tour) and scores the
returning view against the truth.

Writes ``metrics.json``, ``report.md``, one PNG plot per metric against the horizon (matplotlib) and
``frames-<start>-<path>.png`` (predicted above true frames of the first world), and returns the summary.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deepverse_env.actions import get_action_set
from deepverse_env.learned.env import DeepVerseEnv
from deepverse_env.learned.vector_env import DeepVerseVectorEnv
from deepverse_env.learned.world import load_model
from deepverse_env.sim.vector_env import DeepVerseSimVectorEnv
from world_model import metrics as M

MOVES = ("forward", "backward", "left", "right", "turn_left", "turn_right")  # the random scripts
TOUR = ("forward",) * 6 + ("turn_left",) * 15 + ("forward",) * 6 + ("turn_left",) * 15  # out and back
SHOWN = ("psnr", "ssim", "sharpness", "depth_abs_rel", "rot_err_deg", "trans_err_m")


def parse_seeds(text: str) -> list[int]:
    """``"A:B"`` (B excluded) or ``"A,B,C"`` -> seeds; ValueError for an empty or malformed range."""
    try:
        if ":" in text:
            a, b = (int(x) for x in text.split(":"))
            seeds = list(range(a, b))
        else:
            seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be A:B or a comma-separated list of integers, got {text!r}") from None
    if not seeds:
        raise ValueError(f"--seeds {text!r} holds no seed")
    if min(seeds) < 0:
        raise ValueError(f"--seeds must be non-negative world seeds, got {text!r}")
    return seeds


def check_env_options(env: dict | None) -> dict:
    """``env`` as a dict of ``LearnedEnvConfig`` settings the evaluation does not set itself, checked (values by the
    config, before any model loads); ValueError naming a bad key or value."""
    import dataclasses

    from deepverse_env.learned.world import LearnedEnvConfig

    env = dict(env or {})
    allowed = {f.name for f in dataclasses.fields(LearnedEnvConfig)} - {
        "render_cache", "starts", "reward", "termination", "action_set", "text_actions",  # the evaluation sets these
    }
    bad = sorted(set(env) - allowed)
    if bad:
        raise ValueError(f"env options {bad} are not settings of the learned env the evaluation leaves open; "
                         f"expected some of {sorted(allowed)}")
    LearnedEnvConfig(**env)  # ValueError naming a bad value
    return env


def _frames(info: dict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(info["frames"][k])) for k in ("rgb", "depth", "pose")}  # (N, F, ...)


def rollout(
    model, seeds: list[int], scripts: np.ndarray, start: str, render_cache: bool, progress: bool, env: dict | None = None
) -> dict:
    """Predicted and true frames (N, L * F, ...) and the start frames (N, ...) of one batched open-loop rollout;
    ``env``: more keyword arguments of the learned env (``LearnedEnvConfig``)."""
    N = len(seeds)
    envs = DeepVerseVectorEnv(N, checkpoint=model, render_cache=render_cache, **(env or {}))
    sims = DeepVerseSimVectorEnv(N, height=envs.height, width=envs.width, frames_per_step=envs.frames_per_step)
    first, _ = sims.reset(seed=seeds)
    envs.reset(seed=seeds, options={"image": first["rgb"]} if start == "image" else None)
    pred, true = [], []
    for step in tqdm(scripts.T, desc=f"eval {start}{'' if render_cache else ' (paper path)'}", disable=not progress):
        *_, info = envs.step(step)
        *_, truth = sims.step(step)
        pred.append(_frames(info))
        true.append(_frames(truth))
    cat = lambda parts: {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}  # noqa: E731
    first_frames = {k: torch.from_numpy(v) for k, v in first.items()}
    return {"pred": cat(pred), "true": cat(true), "first": first_frames}


def horizon_metrics(run: dict, start: str) -> dict[str, dict[str, list[float]]]:
    """{model, copy_first, warp} -> metric -> per-frame means over worlds (frames 1..L*F)."""
    pred, true, first = run["pred"], run["true"], run["first"]
    T = true["rgb"].shape[1]
    copy = M.copy_last_frame({k: first[k] for k in ("rgb", "depth", "pose")}, T)
    rgb, depth, _ = M.warp_with_true_motion(first["rgb"], first["depth"], first["intrinsics"], first["pose"], true["pose"])
    rows = {"model": pred, "copy_first": copy, "warp": {"rgb": rgb, "depth": depth}}
    out = {}
    for name, frames in rows.items():
        if start == "image" and name == "model":  # depth and translation are in unknown units
            frames = {"rgb": frames["rgb"], "pose": frames["pose"]}
        scores = M.frame_metrics(frames, true)  # each (N, T)
        if start == "image" and name == "model":
            scores.pop("trans_err_m")
        out[name] = {k: [round(float(x), 4) for x in v.float().mean(0)] for k, v in scores.items()}
    return out


def revisit(model, seed: int, render_cache: bool, env: dict | None = None) -> dict[str, float]:
    """The out-and-back tour from the 4D start of world ``seed``: the returning view against the truth."""
    env = DeepVerseEnv(checkpoint=model, render_cache=render_cache, **(env or {}))
    sims = DeepVerseSimVectorEnv(1, height=env.height, width=env.width, frames_per_step=env.frames_per_step)
    first, _ = sims.reset(seed=[seed])
    env.reset(seed=seed)
    for name in TOUR:
        a = env.actions.index(name)
        obs, *_ = env.step(a)
        truth, *_ = sims.step(np.array([a]))
    pred = {"rgb": torch.from_numpy(obs["rgb"]), "pose": torch.from_numpy(obs["pose"])}
    true = {"rgb": torch.from_numpy(truth["rgb"][0]), "pose": torch.from_numpy(truth["pose"][0])}
    model_scores = {k: round(float(v), 4) for k, v in M.frame_metrics(pred, true).items()}
    held = {k: round(float(v), 4) for k, v in M.frame_metrics({"rgb": torch.from_numpy(first["rgb"][0])}, true).items()}
    return {"model": model_scores, "copy_first": held}


def _plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for metric in SHOWN:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for label, per_start in results.items():
            for start, rows in per_start.items():
                for name, scores in rows.items():
                    if metric in scores and (name == "model" or label == next(iter(results))):
                        style = "-" if name == "model" else ":"
                        tag = f"{label} {start}" if name == "model" else f"{name} {start}"
                        ax.plot(range(1, len(scores[metric]) + 1), scores[metric], style, label=tag)
        ax.set_xlabel("frame")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{metric}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path.name)
    return files


def _strip(run: dict, path: Path, every: int = 4) -> None:
    """Predicted (top) above true (bottom) frames of world 0, every ``every``-th frame."""
    from PIL import Image

    pred, true = run["pred"]["rgb"][0, every - 1 :: every], run["true"]["rgb"][0, every - 1 :: every]
    top, bottom = torch.cat(list(pred), dim=1), torch.cat(list(true), dim=1)
    Image.fromarray(torch.cat([top, bottom], dim=0).numpy()).resize((top.shape[1] * 2, top.shape[0] * 4)).save(path)


def _report(summary: dict) -> str:
    lines = [f"# deepverse eval: {summary['checkpoint']}, worlds {summary['seeds']}, {summary['frames']} frames", ""]
    marks = [h for h in (4, 16, 32, 60, 120) if h <= summary["frames"]]
    for label, per_start in summary["results"].items():
        for start, rows in per_start.items():
            lines += [f"## {label}, start from {start}", "", "| row | metric | " + " | ".join(f"frame {h}" for h in marks) + " |",
                      "|---|---|" + "---|" * len(marks)]
            for name, scores in rows.items():
                for metric in SHOWN:
                    if metric in scores:
                        lines.append(f"| {name} | {metric} | " + " | ".join(f"{scores[metric][h - 1]:.3f}" for h in marks) + " |")
            lines.append("")
    lines += ["## Revisit (out and back, the returning view against the truth)", "", "| path | row | PSNR | SSIM | sharpness |", "|---|---|---|---|---|"]
    for label, r in summary["revisit"].items():
        for name, s in r.items():
            lines.append(f"| {label} | {name} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['sharpness']:.3f} |")
    return "\n".join(lines) + "\n"


def run_eval(
    out: str | Path, checkpoint: str | Path | None = None, seeds: str = "2000000:2000008", frames: int = 60,
    starts: tuple[str, ...] = ("4d", "image"), compare_paper_path: bool = True, seed: int = 0, progress: bool = True,
    env: dict | None = None,
) -> dict:
    """Run the evaluation into directory ``out``; returns the summary ``deepverse eval`` prints. ``env``: more
    keyword arguments of the learned env (``LearnedEnvConfig`` fields, e.g. ``{"dtype": "bfloat16"}``)."""
    world_seeds = parse_seeds(seeds)  # the arguments are checked before the model loads
    env = check_env_options(env)
    bad = sorted(set(starts) - {"4d", "image"})
    if bad or not starts:
        raise ValueError(f"--starts must name 4d and/or image, got {list(starts)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}")
    model = load_model(checkpoint)
    tf = model.frames_per_chunk
    if isinstance(frames, bool) or int(frames) != frames or frames < tf or frames % tf:
        raise ValueError(f"--frames must be a positive multiple of the chunk ({tf} frames), got {frames!r}")
    rng = np.random.default_rng(seed)
    action_set = get_action_set("basic")
    scripts = rng.choice([action_set.index(m) for m in MOVES], size=(len(world_seeds), frames // tf))
    grounded = model.refiner is not None or model.dit.config.render_frame  # the model uses the 3D cache
    paths = {"grounded": True, "paper path": False} if grounded and compare_paper_path else {
        "grounded" if grounded else "paper path": grounded
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for label, cache in paths.items():
        results[label] = {}
        for start in starts:
            run = rollout(model, world_seeds, scripts, start, cache, progress, env)
            results[label][start] = horizon_metrics(run, start)
            _strip(run, out / f"frames-{start}-{label.replace(' ', '-')}.png")
    revisits = {label: revisit(model, world_seeds[0], cache, env) for label, cache in paths.items()}
    summary = {
        "checkpoint": "shipped" if checkpoint is None else str(checkpoint), "seeds": seeds, "frames": frames,
        "action_seed": seed, "env": env, "results": results, "revisit": revisits,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(_report(summary))
    plots = _plots(results, out)
    return {"out": str(out), "plots": plots, "report": str(out / "report.md"), "revisit": revisits}
