"""``deepverse eval``: open-loop rollouts of the learned world against the simulator on held-out worlds (M15).

    deepverse eval --out eval/                          # shipped model, 8 test worlds, 60 frames, both starts
    deepverse eval --checkpoint DIR --seeds 2000000:2000016 --frames 120 --no-paper-path --device cuda
    deepverse eval --compare shipped=shipped no_memory=DIR --frames 120   # several models side by side (ablations.py)

For every world of ``--seeds`` (held out: training uses seeds 0.., validation 1,000,000.., test 2,000,000..)
the learned world (``DeepVerse-v0``) and the simulator take the same seeded random action script, from

- ``4d``: the simulator's first frame with its exact depth and intrinsics (what planners re-sync from);
- ``image``: its RGB alone (first-frame completion: depth and camera generated, in units of 1 m, so only
  the RGB, rotation and scale-free self-consistency metrics are scored).

Per frame of the horizon (1..frames) the mean over worlds of PSNR, SSIM, sharpness ratio (mean |Laplacian| of
predicted ÷ true luminance), depth AbsRel and δ<1.25, camera rotation and translation error, beside the
trivial baselines ``copy_first`` (the start frame held), ``warp`` (the start frame forward-splatted with its
true depth into the true cameras) and ``exact_cache`` (the same with every hole filled by the nearest rendered pixel:
the no-generation upper bound a grounded world must beat, ``metrics.exact_camera_cache``). A ``copy_last`` baseline (the last real frame held) is left out: an open-loop
rollout from one start frame has no later real frame, so it would equal ``copy_first``.

The model's rollout is also scored against itself (``metrics.self_consistency``; the start frame is frame 0, so
frame 1 is the pair 0 -> 1), with the true frames as the reference row ``truth``:

- ``consistency_4d``: frame t forward-splatted with the predicted depth, intrinsics and camera into the predicted
  camera of frame t+1, PSNR against the predicted frame t+1 on the covered (co-visible) pixels. Scale-free, so
  it is scored for the ``image`` start too. Averaged over worlds as the PSNR of the mean covered MSE: a move the
  simulator blocks gives two identical true frames (100 dB), which a mean of decibels would let one world swamp.
- ``temporal_consistency``: SSIM of the same warped pair on the covered pixels (a feature-free stand-in for
  VBench's subject / background consistency; why warped, see ``self_consistency``).
- ``consistency_coverage`` (metrics.json only): the covered fraction both were computed on.

A frozen world scores perfectly on both, so they are read beside the accuracy metrics. The baselines get none:
``copy_first`` is one frame held (trivially consistent), ``warp`` is the truth's cameras over one frame.

With a motion model (M19) the learned world says which steps it blocked: their precision and recall against the
simulator's are reported for the random scripts (``blocked``), and the **wall** suite presses forward ``WALL_STEPS``
times from every 4D start and scores the camera position after each step (``wall``). The ``paper path`` rows run
without the 3D cache and with the cameras the raymap generates (``camera: generated``), the paper's model; a
model with a motion model and no 3D cache is scored on one path, ``motion``, in its motion model's cameras.

The **revisit** suite starts from the 4D start of each of the first ``REVISIT_WORLDS`` worlds and walks three
scripted trajectories of the basic action set (counts from its step length and turn angle; each capped at
``revisit_steps`` env steps, 60 by default, which all three fit whole at 4 frames per step):

- ``out_and_back``: forward ``OUT_M``, turn 180°, forward back, turn 180° (the demo's tour at 4 frames a step);
- ``full_turn``: turn left on the spot through 360°;
- ``loop``: four times forward ``OUT_M`` and turn left 90° (corners rounded to whole steps, 360° in all).

Each runs with the spatial memory on and off (``use_memory``, overriding an ``env`` setting of it), and its
returning view (the last frame) is scored against the truth (``frame_metrics``) and against the view first seen
(the true start frame); the true returning view against the true start frame is the reference (``truth``; it is
also what holding the start frame would score). Means over the worlds.

A model whose codec has no depth (the no-depth ablation: RGB and camera raymap only) rolls out in the rollout's
depth-free mode (``world_model.rollout``: the start frame's true depth sets the scale of every window, no 3D cache, so
only the paper path). The scores of its predicted depth, ``depth_abs_rel`` and ``depth_delta1``, and the
self-consistency ones (``CONSISTENCY``, which warp with predicted depth) are not available: null in ``metrics.json``
(its ``model`` rows and revisit suite), "n/a" in ``report.md``, left out of the plots. PSNR, SSIM, sharpness, rotation
and translation error are scored as for any model, and the revisit suite runs too.

Writes ``metrics.json``, ``report.md``, one PNG plot per metric against the horizon (matplotlib) and
``frames-<start>-<path>.png`` (predicted above true frames of the first world), and returns the summary.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deepverse_env.actions import get_action_set
from deepverse_env.learned.vector_env import DeepVerseVectorEnv
from deepverse_env.learned.world import LearnedEnvConfig, load_model
from deepverse_env.sim.vector_env import DeepVerseSimVectorEnv
from world_model import metrics as M

MOVES = ("forward", "backward", "left", "right", "turn_left", "turn_right")  # the random scripts
SHOWN = (
    "psnr", "ssim", "sharpness", "depth_abs_rel", "rot_err_deg", "trans_err_m", "consistency_4d", "temporal_consistency"
)
CONSISTENCY = ("consistency_4d", "temporal_consistency", "consistency_coverage")  # metrics.self_consistency's keys
DEPTH = ("depth_abs_rel", "depth_delta1")  # metrics.frame_metrics' depth keys
NEEDS_DEPTH = (*DEPTH, *CONSISTENCY)  # scores of a model's predicted depth: None (not available) for a model without
REVISIT_WORLDS = 4  # the revisit suite runs on the first this many worlds of --seeds
OUT_M = 2.0  # metres walked out (and along each side of the loop) by the revisit trajectories
FRAME = ("rgb", "depth", "pose", "intrinsics")  # the observation keys scored (a model without depth gives no depth)


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


def _tensors(frames: dict) -> dict[str, torch.Tensor]:
    """The ``FRAME`` keys that ``frames`` holds (no depth for a model without it), as tensors."""
    return {k: torch.from_numpy(np.asarray(frames[k])) for k in FRAME if k in frames}


def rollout(
    model, seeds: list[int], scripts: np.ndarray, start: str, render_cache: bool, progress: bool, env: dict | None = None
) -> dict:
    """One batched open-loop rollout: predicted and true frames (N, L * F, ...), the true start frames ``first``
    and the learned world's own start frames ``start`` (N, ...; for an ``image`` start its completed depth and
    camera), each a dict of the observation keys (``pred`` and ``start`` without depth for a model without it);
    ``env``: more keyword arguments of the learned env (``LearnedEnvConfig``)."""
    N = len(seeds)
    if not render_cache and model.uses_cache:  # the paper path beside the grounded one: no 3D cache, and the
        env = {"camera": "generated", **(env or {})}  # cameras the raymap generates (not a motion model's)
    envs = DeepVerseVectorEnv(N, checkpoint=model, render_cache=render_cache, **(env or {}))
    sims = DeepVerseSimVectorEnv(N, height=envs.height, width=envs.width, frames_per_step=envs.frames_per_step)
    first, _ = sims.reset(seed=seeds)
    start_obs, _ = envs.reset(seed=seeds, options={"image": first["rgb"]} if start == "image" else None)
    pred, true, blocked = [], [], []
    for step in tqdm(scripts.T, desc=f"eval {start}{'' if render_cache else ' (paper path)'}", disable=not progress):
        *_, info = envs.step(step)
        *_, truth = sims.step(step)
        pred.append(_tensors(info["frames"]))  # (N, F, ...)
        true.append(_tensors(truth["frames"]))
        blocked.append((info.get("blocked"), truth["blocked"]))
    cat = lambda parts: {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}  # noqa: E731
    run = {"pred": cat(pred), "true": cat(true), "first": _tensors(first), "start": _tensors(start_obs)}
    if all(b is not None for b, _ in blocked):  # a motion model says which steps it blocked: (N, L) each
        run["blocked"] = tuple(torch.from_numpy(np.stack(x, axis=1).astype(bool)) for x in zip(*blocked))
    return run


def blocked_scores(run: dict) -> dict | None:
    """Precision and recall of the learned world's blocked steps against the simulator's (None without a motion
    model), and how many steps each blocked."""
    if "blocked" not in run:
        return None
    return M.blocked_scores(*run["blocked"])


WALL_STEPS = 8  # the wall suite presses forward this often from each 4D start


def wall_suite(model, seeds: list[int], render_cache: bool, env: dict) -> dict:
    """Forward ``WALL_STEPS`` times from the 4D starts of ``seeds``: the camera position error after each step
    (metres, mean over worlds), the model's and the simulator's distance walked, and the blocked scores."""
    script = np.full((len(seeds), WALL_STEPS), get_action_set("basic").index("forward"))
    run = rollout(model, seeds, script, "4d", render_cache, False, env)
    tf = model.frames_per_chunk
    pos = lambda frames: frames["pose"][:, tf - 1 :: tf, :3, 3]  # noqa: E731  (N, L, 3) after each step
    err = (pos(run["pred"]) - pos(run["true"])).norm(dim=-1).mean(0)  # (L,)
    return {
        "steps": WALL_STEPS, "pos_err_m": [round(float(x), 4) for x in err],
        "walked_model_m": round(float(pos(run["pred"])[:, -1].norm(dim=-1).mean()), 4),
        "walked_sim_m": round(float(pos(run["true"])[:, -1].norm(dim=-1).mean()), 4),
        "blocked": blocked_scores(run),
    }


def _world_mean(metric: str, scores: torch.Tensor) -> list[float]:
    """Per-frame mean over worlds of one metric's scores (N, T) -> T rounded floats. ``consistency_4d`` is
    averaged as the PSNR of the mean MSE (identical frames score 100 dB); the self-consistency scores skip a
    world whose pair covers no pixel (NaN), and stay NaN where no world covers one."""
    if metric == "consistency_4d":
        mean = -10.0 * torch.log10(torch.nanmean(10.0 ** (-scores / 10.0), dim=0))
    elif metric in CONSISTENCY:
        mean = torch.nanmean(scores.float(), dim=0)
    else:
        mean = scores.float().mean(0)
    return [round(float(x), 4) for x in mean]


def _consistency(start: dict, frames: dict) -> dict[str, list[float]]:
    """``metrics.self_consistency`` of start frames (N, ...) followed by frames (N, T, ...), per-frame world means."""
    seq = {k: torch.cat([start[k][:, None], frames[k]], dim=1) for k in FRAME}  # (N, T + 1, ...)
    return {k: _world_mean(k, v) for k, v in M.self_consistency(seq).items()}


def horizon_metrics(run: dict, start: str) -> dict[str, dict[str, list[float]]]:
    """{model, copy_first, warp, truth} -> metric -> per-frame means over worlds (frames 1..L*F), or None for the
    ``NEEDS_DEPTH`` scores of a model without depth; ``truth`` holds the self-consistency of the true frames only
    (the reference of the model's)."""
    pred, true, first = run["pred"], run["true"], run["first"]
    T = true["rgb"].shape[1]
    copy = M.copy_last_frame({k: first[k] for k in ("rgb", "depth", "pose")}, T)
    rgb, depth, _ = M.warp_with_true_motion(first["rgb"], first["depth"], first["intrinsics"], first["pose"], true["pose"])
    cached = M.exact_camera_cache(first["rgb"], first["depth"], first["intrinsics"], first["pose"], true["pose"])
    rows = {"model": pred, "copy_first": copy, "warp": {"rgb": rgb, "depth": depth},
            "exact_cache": {"rgb": cached[0], "depth": cached[1]}}
    out = {}
    for name, frames in rows.items():
        if start == "image" and name == "model":  # depth and translation are in unknown units
            frames = {"rgb": frames["rgb"], "pose": frames["pose"]}
        scores = M.frame_metrics(frames, true)  # each (N, T)
        if start == "image" and name == "model":
            scores.pop("trans_err_m")
        out[name] = {k: _world_mean(k, v) for k, v in scores.items()}
    if "depth" in pred:
        out["model"].update(_consistency(run["start"], pred))  # depth and cameras in the model's own units
    else:  # a model without depth: nothing to score its depth or warp its frames with
        out["model"].update(dict.fromkeys(NEEDS_DEPTH))
    out["truth"] = _consistency(first, true)
    return out


def revisit_trajectories(frames_per_step: int) -> dict[str, tuple[str, ...]]:
    """The revisit suite's scripts as action names of the basic set, from its step length and turn angle at
    ``frames_per_step`` frames per env step (at 4: 0.32 m and 12° a step, so 42, 30 and 54 steps)."""
    actions = get_action_set("basic")
    step = actions[actions.index("forward")].translation[2] * frames_per_step  # metres per env step
    turn = actions[actions.index("turn_left")].yaw * frames_per_step  # radians per env step
    turns = lambda angle: math.floor(angle / turn + 0.5)  # noqa: E731  steps turning through ``angle``, rounded
    out = ("forward",) * math.floor(OUT_M / step + 0.5)
    corners = [turns(k * math.pi / 2) - turns((k - 1) * math.pi / 2) for k in range(1, 5)]  # sum: one full turn
    return {
        "out_and_back": out + ("turn_left",) * turns(math.pi) + out
        + ("turn_left",) * (turns(2 * math.pi) - turns(math.pi)),
        "full_turn": ("turn_left",) * turns(2 * math.pi),
        "loop": sum((out + ("turn_left",) * n for n in corners), ()),
    }


def _vs_first_view(rgb: torch.Tensor, first: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views (N, H, W, 3) against the views first seen (N, H, W, 3): psnr_first_view, ssim_first_view, each (N,)."""
    return {"psnr_first_view": M.psnr(rgb, first), "ssim_first_view": M.ssim(rgb, first)}


def revisit_suite(
    model, seeds: list[int], render_cache: bool, env: dict, max_steps: int = 60, progress: bool = False
) -> dict[str, dict]:
    """The revisit suite (module docstring) from the 4D starts of ``seeds``, each trajectory capped at ``max_steps``
    env steps: trajectory -> {``steps``; ``memory on`` and ``memory off``: frame_metrics of the returning view
    against the truth (``DEPTH`` None for a model without depth), and ``psnr_first_view`` / ``ssim_first_view``
    against the true start frame; ``truth``: the true returning view against the true start frame}, each score the
    mean over the worlds."""
    actions = get_action_set("basic")
    trajectories = {name: path[:max_steps] for name, path in revisit_trajectories(model.frames_per_chunk).items()}
    bar = tqdm(total=2 * len(trajectories), desc=f"revisit{'' if render_cache else ' (paper path)'}",
               disable=not progress)
    means = lambda scores: {k: round(float(v.float().mean()), 4) for k, v in scores.items()}  # noqa: E731  (N,) -> mean
    out = {}
    for name, path in trajectories.items():
        script = np.array([[actions.index(a) for a in path]] * len(seeds))  # (N, L)
        out[name] = {"steps": len(path)}
        for memory in (True, False):
            run = rollout(model, seeds, script, "4d", render_cache, False, {**env, "use_memory": memory})
            pred, true = ({k: v[:, -1] for k, v in run[s].items()} for s in ("pred", "true"))  # (N, ...) last views
            scores = means({**M.frame_metrics(pred, true), **_vs_first_view(pred["rgb"], run["first"]["rgb"])})
            out[name][f"memory {'on' if memory else 'off'}"] = scores if "depth" in pred else {
                **scores, **dict.fromkeys(DEPTH)
            }
            bar.update()
        out[name]["truth"] = means(_vs_first_view(true["rgb"], run["first"]["rgb"]))  # the same with memory on or off
    bar.close()
    return out


def _plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for metric in SHOWN:
        lines = [  # (label, style, scores): the models' rows, and the first label's baselines dotted
            (f"{label} {start}" if name == "model" else f"{name} {start}", "-" if name == "model" else ":", scores[metric])
            for label, per_start in results.items() for start, rows in per_start.items() for name, scores in rows.items()
            if scores.get(metric) is not None and (name == "model" or label == next(iter(results)))
        ]
        many = len(lines) > 10  # past matplotlib's 10 default colours: 20 distinct ones, the legend beside the axes
        colours = plt.get_cmap("tab20").colors if many else plt.rcParams["axes.prop_cycle"].by_key()["color"]
        fig, ax = plt.subplots(figsize=(9, 4) if many else (6, 3.5))
        for i, (tag, style, scores) in enumerate(lines):
            ax.plot(range(1, len(scores) + 1), scores, style, label=tag, color=colours[i % len(colours)])
        ax.set_xlabel("frame")
        ax.set_ylabel(metric)
        if many:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
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
                        per_frame = scores[metric]  # None: not available (a model without depth)
                        cells = [f"{per_frame[h - 1]:.3f}" if per_frame else "n/a" for h in marks]
                        lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += [f"## Wall: {WALL_STEPS} x forward from the 4D starts (position error after each step, metres)", "",
              "| path | " + " | ".join(f"step {k + 1}" for k in range(WALL_STEPS)) + " | walked (model / sim) | blocked P / R |",
              "|---|" + "---|" * (WALL_STEPS + 2)]
    for label, w in summary["wall"].items():
        b = w["blocked"]
        pr = f"{b['precision']:.3f} / {b['recall']:.3f}" if b else "n/a (no motion model)"
        lines.append(f"| {label} | " + " | ".join(f"{x:.3f}" for x in w["pos_err_m"])
                     + f" | {w['walked_model_m']:.2f} / {w['walked_sim_m']:.2f} | {pr} |")
    lines.append("")
    for label, per_start in summary["blocked"].items():
        for start, b in per_start.items():
            if b:
                lines.append(f"Blocked steps of the random scripts, {label}, {start} start: precision {b['precision']:.3f}, "
                             f"recall {b['recall']:.3f} ({b['blocked_model']} model, {b['blocked_sim']} simulator, of {b['steps']})")
    lines += [
        "",
        f"## Revisit (worlds {summary['revisit_worlds']}: the returning view against the truth and against the view "
        "first seen; truth: the true returning view against the true start)", "",
        "| path | trajectory | steps | row | PSNR | SSIM | sharpness | PSNR vs first view |", "|---|---|---|---|---|---|---|---|",
    ]
    for label, suite in summary["revisit"].items():
        for name, r in suite.items():
            for row in ("memory on", "memory off"):
                s = r[row]
                lines.append(f"| {label} | {name} | {r['steps']} | {row} | {s['psnr']:.2f} | {s['ssim']:.3f} | "
                             f"{s['sharpness']:.3f} | {s['psnr_first_view']:.2f} |")
            lines.append(f"| {label} | {name} | {r['steps']} | truth | | | | {r['truth']['psnr_first_view']:.2f} |")
    return "\n".join(lines) + "\n"


def check_arguments(
    seeds: str, starts: tuple[str, ...], seed: int, revisit_steps: int, env: dict | None
) -> tuple[list[int], dict]:
    """The evaluation's arguments but ``frames``, checked before any model loads: (world seeds, env options);
    ValueError naming a bad one."""
    world_seeds = parse_seeds(seeds)
    env = check_env_options(env)
    bad = sorted(set(starts) - {"4d", "image"})
    if bad or not starts:
        raise ValueError(f"--starts must name 4d and/or image, got {list(starts)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}")
    if isinstance(revisit_steps, bool) or not isinstance(revisit_steps, (int, np.integer)) or revisit_steps < 1:
        raise ValueError(f"--revisit-steps must be a positive integer, got {revisit_steps!r}")
    return world_seeds, env


def check_frames(frames: int, chunk: int) -> None:
    """ValueError unless ``frames`` is a positive multiple of the model's ``chunk`` (frames per env step)."""
    if isinstance(frames, bool) or int(frames) != frames or frames < chunk or frames % chunk:
        raise ValueError(f"--frames must be a positive multiple of the chunk ({chunk} frames), got {frames!r}")


def run_eval(
    out: str | Path, checkpoint: str | Path | None = None, seeds: str = "2000000:2000008", frames: int = 60,
    starts: tuple[str, ...] = ("4d", "image"), compare_paper_path: bool = True, seed: int = 0, progress: bool = True,
    env: dict | None = None, revisit_steps: int = 60,
) -> dict:
    """Run the evaluation into directory ``out``; returns the summary ``deepverse eval`` prints. ``env``: more
    keyword arguments of the learned env (``LearnedEnvConfig`` fields, e.g. ``{"dtype": "bfloat16"}``);
    ``revisit_steps``: the cap on each revisit trajectory in env steps (a smaller one cuts them short)."""
    world_seeds, env = check_arguments(seeds, starts, seed, revisit_steps, env)  # before the model loads
    model = load_model(checkpoint)
    tf = model.frames_per_chunk
    check_frames(frames, tf)
    rng = np.random.default_rng(seed)
    action_set = get_action_set("basic")
    scripts = rng.choice([action_set.index(m) for m in MOVES], size=(len(world_seeds), frames // tf))
    grounded = model.uses_cache  # else one path without the cache (e.g. a model without depth)
    alone = "grounded" if grounded else "paper path" if model.motion is None else "motion"  # in its motion model's cameras
    paths = {"grounded": True, "paper path": False} if grounded and compare_paper_path else {alone: grounded}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, blocked = {}, {}
    for label, cache in paths.items():
        results[label], blocked[label] = {}, {}
        for start in starts:
            run = rollout(model, world_seeds, scripts, start, cache, progress, env)
            results[label][start] = horizon_metrics(run, start)
            blocked[label][start] = blocked_scores(run)
            _strip(run, out / f"frames-{start}-{label.replace(' ', '-')}.png")
    walls = {label: wall_suite(model, world_seeds, cache, env) for label, cache in paths.items()}
    revisit_seeds = world_seeds[:REVISIT_WORLDS]
    revisits = {
        label: revisit_suite(model, revisit_seeds, cache, env, revisit_steps, progress) for label, cache in paths.items()
    }
    summary = {
        "checkpoint": "shipped" if checkpoint is None else str(checkpoint), "seeds": seeds, "frames": frames,
        "action_seed": seed, "env": env, "results": results, "blocked": blocked, "wall": walls,
        "revisit_worlds": revisit_seeds, "revisit": revisits,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(_report(summary))
    plots = _plots(results, out)
    return {"out": str(out), "plots": plots, "report": str(out / "report.md"), "revisit": revisits, "wall": walls}
