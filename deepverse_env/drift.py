"""``deepverse drift``: does a long rollout of the learned world stay metric? (issue 16, item 5)

    deepverse drift --out drift/                              # shipped model, 4 test worlds, 1,000 steps
    deepverse drift --seeds 2000000:2000002 --steps 300 --no-render-cache --raw

The learned world (``DeepVerse-v0``, batched) and the simulator take the same uniformly random actions of the
``basic`` set from the same 4D start frames for ``--steps`` steps, with no re-sync: the learned world runs on
its own predictions, sliding its window and re-anchoring its scale on its own depth. Per step and world it
records what makes a world metric, beside the simulator's exact value:

- ``height``: the camera's height above the start camera (metres, ``-pose[1, 3]``: OpenCV y is down). Every
  action of the sets moves in the horizontal plane, so the truth stays at 0 whatever the path;
- ``median_depth``: the median depth of the step's last frame (metres). The two cameras part ways, so the
  per-step ratio predicted ÷ true is summarised over blocks of steps (its median and 5-95% range);
- ``fx``: the focal length in pixels (the simulator's is fixed);
- ``scale``: the learned window's metres per normalised unit (the rollout's scale anchor).

Beside the depth ratio, a trivial baseline: *hold the start*, the start frame's true median depth ÷ the true median
depth at each step (what a world that never changed its depth would score against this walk).

``--raw`` measures the cameras as the model predicts them (``DeepVerse-v0(embodied=False)``), without the
body that holds them by default (start intrinsics, a level camera at the start height, the metric anchor).

Writes ``drift.json`` (per-step series and the summary), ``drift.md``, ``drift.png`` (the four series against
the step) and ``frames.png`` (predicted above true frames of the first world at evenly spaced steps).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from deepverse_env.evaluate import parse_seeds
from deepverse_env.learned.vector_env import DeepVerseVectorEnv
from deepverse_env.learned.world import load_model, require_depth
from deepverse_env.sim.vector_env import DeepVerseSimVectorEnv

SERIES = ("height", "median_depth", "fx")


def _measure(obs: dict) -> dict[str, np.ndarray]:
    """Per world (N,): camera height above the start camera, median depth and fx of observations (N, ...)."""
    return {
        "height": -np.asarray(obs["pose"])[:, 1, 3].astype(np.float64),
        "median_depth": np.median(np.asarray(obs["depth"]).reshape(len(obs["depth"]), -1), axis=1).astype(np.float64),
        "fx": np.asarray(obs["intrinsics"])[:, 0, 0].astype(np.float64),
    }


def _summary(pred: dict, true: dict, steps: int, block: int) -> dict:
    """Drift figures from series (N, steps + 1) of both worlds."""
    height_err = np.abs(pred["height"] - true["height"])  # (N, S + 1)
    ratio = pred["median_depth"] / true["median_depth"]
    fx_err = np.abs(pred["fx"] / true["fx"] - 1.0)
    blocks = []
    for a in range(1, steps + 1, block):
        r = ratio[:, a : a + block].ravel()
        blocks.append({
            "steps": [a, min(a + block - 1, steps)],
            "height_err_max_m": round(float(height_err[:, a : a + block].max()), 3),
            "depth_ratio_median": round(float(np.median(r)), 3),
            "depth_ratio_p5": round(float(np.percentile(r, 5)), 3),
            "depth_ratio_p95": round(float(np.percentile(r, 95)), 3),
            "fx_err_max": round(float(fx_err[:, a : a + block].max()), 4),
            "scale_median": round(float(np.median(pred["scale"][:, a : a + block])), 4),
        })
    hold = true["median_depth"][:, :1] / true["median_depth"][:, 1:]  # (N, S): the hold-the-start baseline
    return {
        "height_err_max_m": round(float(height_err.max()), 3),
        "height_err_final_m": [round(float(x), 3) for x in height_err[:, -1]],
        "true_height_range_m": [round(float(true["height"].min()), 3), round(float(true["height"].max()), 3)],
        "depth_ratio_median": round(float(np.median(ratio[:, 1:])), 3),
        "depth_ratio_p5": round(float(np.percentile(ratio[:, 1:], 5)), 3),
        "depth_ratio_p95": round(float(np.percentile(ratio[:, 1:], 95)), 3),
        "depth_ratio_per_world": [round(float(x), 3) for x in np.median(ratio[:, 1:], axis=1)],
        "hold_start_ratio_median": round(float(np.median(hold)), 3),
        "hold_start_ratio_p5": round(float(np.percentile(hold, 5)), 3),
        "hold_start_ratio_p95": round(float(np.percentile(hold, 95)), 3),
        "true_median_depth_range_m": [round(float(true["median_depth"].min()), 3), round(float(true["median_depth"].max()), 3)],
        "fx_err_max": round(float(fx_err.max()), 4),
        "true_fx": round(float(true["fx"][0, 0]), 3),
        "scale_range": [round(float(pred["scale"].min()), 4), round(float(pred["scale"].max()), 4)],
        "blocks": blocks,
    }


def _plot(pred: dict, true: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    labels = {"height": "camera height (m)", "median_depth": "median depth (m)", "fx": "fx (px)", "scale": "window scale (m/unit)"}
    for ax, key in zip(axes, labels):
        steps = np.arange(pred[key].shape[1])
        for i in range(pred[key].shape[0]):
            line, = ax.plot(steps, pred[key][i], lw=0.8, label=f"learned {i}" if key == "height" else None)
            if key in true:
                ax.plot(steps, true[key][i], ":", lw=0.8, color=line.get_color(), label=f"true {i}" if key == "height" else None)
        if key == "scale":
            ax.set_yscale("log")
        ax.set_title(labels[key], fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _strip(pred_frames: list, true_frames: list, path: Path) -> None:
    from PIL import Image

    top, bottom = np.concatenate(pred_frames, axis=1), np.concatenate(true_frames, axis=1)
    image = Image.fromarray(np.concatenate([top, bottom], axis=0))
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(path)


def _report(summary: dict) -> str:
    s = summary["summary"]
    lines = [
        f"# deepverse drift: {summary['checkpoint']}, worlds {summary['seeds']}, {summary['steps']} random steps"
        f"{'' if summary['render_cache'] else ' (no render cache)'}{'' if summary['embodied'] else ' (raw cameras)'}",
        "",
        f"- camera height vs the truth: max error {s['height_err_max_m']} m (truth stays in {s['true_height_range_m']} m)",
        f"- median depth, predicted / true per step: median {s['depth_ratio_median']}, 5-95% {s['depth_ratio_p5']}-"
        f"{s['depth_ratio_p95']} (true median depth {s['true_median_depth_range_m']} m); per world "
        f"{' / '.join(str(x) for x in s['depth_ratio_per_world'])}",
        f"- baseline, hold the start's depth: median {s['hold_start_ratio_median']}, 5-95% {s['hold_start_ratio_p5']}-"
        f"{s['hold_start_ratio_p95']}",
        f"- fx: max relative error {s['fx_err_max']} (true {s['true_fx']} px)",
        f"- window scale: {s['scale_range']} m per unit",
        "",
        "| steps | height err max (m) | depth ratio median | depth ratio 5-95% | fx err max | scale median |",
        "|---|---|---|---|---|---|",
    ]
    for b in s["blocks"]:
        lines.append(f"| {b['steps'][0]}-{b['steps'][1]} | {b['height_err_max_m']} | {b['depth_ratio_median']} | "
                     f"{b['depth_ratio_p5']}-{b['depth_ratio_p95']} | {b['fx_err_max']} | {b['scale_median']} |")
    return "\n".join(lines) + "\n"


def run_drift(
    out: str | Path, checkpoint: str | Path | None = None, seeds: str = "2000000:2000004", steps: int = 1000,
    seed: int = 0, render_cache: bool = True, embodied: bool = True, block: int = 100, progress: bool = True,
) -> dict:
    """Run the drift measurement into folder ``out``; returns the summary ``deepverse drift`` prints."""
    world_seeds = parse_seeds(seeds)  # arguments are checked before the model loads
    for name, value, lo in (("--steps", steps, 1), ("--block", block, 1), ("--seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    model = load_model(checkpoint)
    require_depth(model, f"deepverse drift (it measures depth) of {checkpoint or 'the shipped model'}")
    N = len(world_seeds)
    envs = DeepVerseVectorEnv(N, checkpoint=model, render_cache=render_cache, embodied=embodied)
    sims = DeepVerseSimVectorEnv(N, height=envs.height, width=envs.width, frames_per_step=envs.frames_per_step)
    actions = np.random.default_rng(seed).integers(len(envs.actions), size=(steps, N))  # (S, N)
    first, _ = sims.reset(seed=world_seeds)
    obs, info = envs.reset(seed=world_seeds)
    pred = {k: [v] for k, v in _measure(obs).items()}
    true = {k: [v] for k, v in _measure(first).items()}
    pred["scale"] = [np.asarray(info["scale"], dtype=np.float64)]
    shown = set(np.linspace(0, steps, 6).round().astype(int).tolist())
    pred_frames, true_frames = [obs["rgb"][0]], [first["rgb"][0]]
    for t, a in enumerate(tqdm(actions, desc="drift", disable=not progress), start=1):
        obs, _, terminated, truncated, info = envs.step(a)
        truth, *_ = sims.step(a)
        if np.any(terminated | truncated):
            raise RuntimeError(f"a learned world ended its episode at step {t}: drift needs one unbroken rollout")
        for k, v in _measure(obs).items():
            pred[k].append(v)
        for k, v in _measure(truth).items():
            true[k].append(v)
        pred["scale"].append(np.asarray(info["scale"], dtype=np.float64))
        if t in shown:
            pred_frames.append(obs["rgb"][0])
            true_frames.append(truth["rgb"][0])
    pred = {k: np.stack(v, axis=1) for k, v in pred.items()}  # each (N, S + 1)
    true = {k: np.stack(v, axis=1) for k, v in true.items()}
    envs.close()
    sims.close()
    if not all(np.isfinite(v).all() for v in pred.values()):
        raise RuntimeError("the learned world produced non-finite cameras or depth during the rollout")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "checkpoint": str(checkpoint or "shipped"), "seeds": world_seeds, "steps": int(steps), "seed": int(seed),
        "render_cache": bool(render_cache), "embodied": bool(embodied), "summary": _summary(pred, true, steps, block),
        "series": {"learned": {k: v.round(5).tolist() for k, v in pred.items()},
                   "true": {k: v.round(5).tolist() for k, v in true.items()}},
    }
    (out / "drift.json").write_text(json.dumps(result))
    (out / "drift.md").write_text(_report(result))
    _plot(pred, true, out / "drift.png")
    _strip(pred_frames, true_frames, out / "frames.png")
    summary = {k: v for k, v in result["summary"].items() if k != "blocks"}
    return {"out": str(out), **summary}
