"""``deepverse eval --compare NAME=DIR ...``: the ablation tables of issue 14 from several checkpoints in one command.

    deepverse eval --compare shipped=shipped base=ablations/base channel_history=ablations/channel_history \\
        no_depth=ablations/no_depth --frames 120 --out eval_ablations/

``ablations/`` holds the committed ablation exports (``scripts/train_ablations.sh``: every model trained with the same
data, steps, batch and seed; MODEL_CARD.md has their tables).

``DIR`` is a ``save_pretrained`` directory (e.g. ``deepverse-train export --out DIR`` of a ``configs/ablation_*.yaml``
run) or the word ``shipped`` (the shipped model; the word wins over a folder of that name). Each model gets the whole
``deepverse eval`` (``evaluate.run_eval``) into ``OUT/NAME/`` with the same arguments, hence the same worlds, action
scripts and frames, and the same sampler seeds per world: its numbers are those of ``deepverse eval --checkpoint DIR``
with those arguments. Then:

- ``comparison.md``: Table 1 in the paper's layout, one per start that was run (``4d``, ``image``): a row per model
  (a model that uses the 3D cache gives two, ``NAME`` for its grounded path and ``NAME (paper path)``, unless
  ``--no-paper-path``), the baselines ``copy_first``, ``warp`` and ``truth`` (the true frames' self-consistency) under
  them; columns PSNR, SSIM, sharpness, depth AbsRel, rotation error, translation error, 4D consistency and temporal
  consistency at frame ``frames // 2``, then the same at frame ``frames`` (60 and 120 with ``--frames 120``: the
  paper's two horizon groups); "—" where a row has no such score (an ``image`` start has no metric depth or
  translation, a baseline no self-consistency, a model without depth no depth or self-consistency score). Then the
  revisit table: a row per model x trajectory x memory on/off
  (the returning view: PSNR and SSIM against the truth, PSNR against the view first seen, and the returning camera's
  rotation error: whether the camera came back), and a ``truth`` row per trajectory (the true returning view against
  the true first view).
  Under each Table 1, every row's means over frames 1..``frames`` (a difference between two models at one frame can
  be one world's accident; the mean weighs every horizon alike).
- ``comparison.json``: the same numbers, as each model's ``metrics.json`` holds them: ``table`` start -> row ->
  metric -> [score at each of ``horizons``]; ``mean`` start -> row -> metric -> mean over frames 1..``frames``;
  ``revisit`` row -> that model's revisit suite (``truth``: trajectory -> the true returning view's scores).
- one PNG per metric against the horizon, a line per model row and start, the baselines dotted (``evaluate._plots``).

The baselines and the ``truth`` rows depend on the simulator alone (the same worlds, frame size and scripts for every
model), so they are taken from the first model.

A model whose codec has no depth (the no-depth ablation, ``configs/ablation_no_depth.yaml``: Table 1's baseline, RGB
and camera raymap only) is evaluated like the others, in the rollout's depth-free mode (``world_model.rollout``: every
window keeps the scale the start frame's true depth gives it, no 3D cache, so one row, its paper path): its PSNR,
SSIM, sharpness, camera errors and revisit scores are real, its depth and self-consistency scores, which need
predicted depth, are null in ``comparison.json`` (as in its ``metrics.json``, ``evaluate.NEEDS_DEPTH``), "—" in
``comparison.md`` and absent from the plots.

Why an option of ``deepverse eval`` rather than a sub-command: a comparison *is* the evaluation run once per model
with one set of arguments (``--seeds``, ``--frames``, ``--starts``, ``--seed``, ``--env``, ``--revisit-steps``,
``--no-paper-path``), so those are declared, documented and checked once, and no second command can drift from it.

Every argument is checked before any rollout and before anything is written (ValueError naming the bad value):
NAME=DIR syntax, NAMEs (folder names, unique, not a baseline row), every DIR loaded once as a checkpoint, one frame
size and chunk for all models (else the worlds and scripts would differ), and ``--frames`` a multiple of that chunk.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from deepverse_env.evaluate import SHOWN, _plots, check_arguments, check_frames, run_eval
from deepverse_env.learned.world import load_model

SHIPPED = "shipped"  # the DIR word for the shipped model
BASELINES = ("copy_first", "warp", "truth")  # the rows of metrics.json besides "model"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a folder name under OUT, no clash with the files written there
HEADERS = {
    "psnr": "PSNR", "ssim": "SSIM", "sharpness": "sharpness", "depth_abs_rel": "depth AbsRel",
    "rot_err_deg": "rot. err (deg)", "trans_err_m": "trans. err (m)", "consistency_4d": "4D consistency",
    "temporal_consistency": "temporal consistency",
}  # Table 1's columns, in SHOWN's order
DECIBELS = ("psnr", "consistency_4d", "psnr_first_view")  # shown with 2 decimals, the rest with 3


def parse_models(models: Sequence[str]) -> dict[str, str]:
    """``["NAME=DIR", ...]`` -> {NAME: DIR} in order; ValueError naming the first bad entry."""
    if not models:
        raise ValueError("--compare needs at least one NAME=DIR")
    out = {}
    for text in models:
        name, sep, folder = text.partition("=")
        if not sep or not folder:
            raise ValueError(f"--compare: each model must be NAME=DIR (DIR a save_pretrained directory or the word "
                             f"{SHIPPED}), got {text!r}")
        if not NAME.fullmatch(name) or name in BASELINES:
            raise ValueError(f"--compare: NAME must be letters, digits, _ and - (a folder name), not one of the "
                             f"baseline rows {', '.join(BASELINES)}, got {name!r} in {text!r}")
        if name in out:
            raise ValueError(f"--compare names {name!r} twice ({name}={out[name]} and {text})")
        out[name] = folder
    return out


def _checkpoint(folder: str) -> str | None:
    """A DIR of --compare as ``run_eval``'s checkpoint (None: the shipped model)."""
    return None if folder == SHIPPED else folder


def check_models(models: dict[str, str], frames: int) -> None:
    """Load each model once (then drop it) before any rollout. ValueError naming a DIR that is not a checkpoint,
    models of different frame sizes or chunks, or ``frames`` not a multiple of the chunk."""
    shapes = {}
    for name, folder in models.items():
        try:
            model = load_model(_checkpoint(folder))
        except (OSError, ValueError) as e:
            raise ValueError(f"--compare {name}={folder}: {e}") from None
        shapes[name] = (model.config.height, model.config.width, model.frames_per_chunk)
    if len(set(shapes.values())) > 1:
        raise ValueError("--compare: the models must share one frame size and chunk (the same worlds, scripts and "
                         "frames for each), got " + ", ".join(f"{n} {h}x{w} with {f} frames a chunk"
                                                               for n, (h, w, f) in shapes.items()))
    check_frames(frames, next(iter(shapes.values()))[2])


def _row_names(name: str, paths: Sequence[str]) -> dict[str, str]:
    """metrics.json path label ("grounded", "paper path") -> table row: NAME, or ``NAME (paper path)`` beside a
    grounded path."""
    return {p: name if len(paths) == 1 or p == "grounded" else f"{name} (paper path)" for p in paths}


def _cell(metric: str, value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}" if metric in DECIBELS else f"{value:.3f}"


def _markdown(comparison: dict) -> str:
    """comparison.json's content as comparison.md: Table 1 per start, then the revisit table."""
    c, horizons = comparison, comparison["horizons"]
    lines = [f"# deepverse eval --compare: worlds {c['seeds']}, {c['frames']} frames, action seed {c['action_seed']}",
             "", *(f"- {n}: {m['checkpoint']} ({m['out']}/)" for n, m in c["models"].items()), ""]
    columns = [(metric, h) for h in horizons for metric in SHOWN]  # frame frames // 2 first, then frame frames
    for start, rows in c["table"].items():
        lines += [f"## Table 1, start from {start} (frame {horizons[0]}, then frame {horizons[-1]})", "",
                  "| model | " + " | ".join(f"{HEADERS[m]} @{h}" for m, h in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for row, scores in rows.items():
            cells = [_cell(m, scores[m][horizons.index(h)] if m in scores else None) for m, h in columns]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines += ["", f"Means over frames 1-{c['frames']} (every horizon weighted alike: steadier than one frame):", "",
                  "| model | " + " | ".join(HEADERS[m] for m in SHOWN) + " |", "|---|" + "---|" * len(SHOWN)]
        for row, scores in c["mean"][start].items():
            lines.append(f"| {row} | " + " | ".join(_cell(m, scores.get(m)) for m in SHOWN) + " |")
        lines.append("")
    lines += [f"## Revisit (worlds {c['revisit_worlds']}: the returning view against the truth and against the view "
              "first seen; truth: the true returning view against the true first view)", "",
              "| model | trajectory | steps | memory | PSNR | SSIM | PSNR vs first view | rot. err (deg) |", "|---" * 8 + "|"]
    for row, suite in c["revisit"].items():
        for trajectory, r in suite.items():
            if row == "truth":
                lines.append(f"| truth | {trajectory} | {r['steps']} | | | | {_cell('psnr', r['psnr_first_view'])} | |")
                continue
            for memory in ("on", "off"):
                s = r[f"memory {memory}"]
                lines.append(f"| {row} | {trajectory} | {r['steps']} | {memory} | {_cell('psnr', s['psnr'])} | "
                             f"{_cell('ssim', s['ssim'])} | {_cell('psnr', s['psnr_first_view'])} | "
                             f"{_cell('rot_err_deg', s['rot_err_deg'])} |")
    return "\n".join(lines) + "\n"


def run_compare(
    out: str | Path, models: Sequence[str], seeds: str = "2000000:2000008", frames: int = 60,
    starts: tuple[str, ...] = ("4d", "image"), compare_paper_path: bool = True, seed: int = 0, progress: bool = True,
    env: dict | None = None, revisit_steps: int = 60,
) -> dict:
    """Evaluate every ``NAME=DIR`` of ``models`` into ``out/NAME/`` (``run_eval`` with these arguments) and write the
    comparison into ``out`` (module docstring); returns the summary ``deepverse eval --compare`` prints."""
    named = parse_models(models)
    _, env = check_arguments(seeds, starts, seed, revisit_steps, env)
    check_models(named, frames)
    out = Path(out)
    horizons = sorted({max(frames // 2, 1), frames})
    at_horizons = lambda rows, row: {  # noqa: E731  metric -> score per horizon (None: not available, as no depth)
        m: [None if v is None else v[h - 1] for h in horizons] for m, v in rows[row].items()
    }
    mean = lambda rows, row: {  # noqa: E731  metric -> mean over frames 1..frames (None: not available)
        m: None if v is None else round(sum(v) / len(v), 4) for m, v in rows[row].items()
    }
    comparison = {"seeds": seeds, "frames": frames, "horizons": horizons, "action_seed": seed, "env": env,
                  "models": {}, "table": {s: {} for s in starts}, "mean": {s: {} for s in starts}, "revisit": {}}
    first = None  # the first model's metrics.json
    curves = {}  # table row -> start -> metrics.json's rows ("model" and the baselines): what _plots draws
    for name, folder in tqdm(named.items(), desc="models", disable=not progress):
        run_eval(out / name, _checkpoint(folder), seeds, frames, starts, compare_paper_path, seed, progress, env,
                 revisit_steps)
        summary = json.loads((out / name / "metrics.json").read_text())
        comparison["models"][name] = {"checkpoint": folder, "out": name}
        for path, row in _row_names(name, list(summary["results"])).items():
            curves[row] = summary["results"][path]
            for start, rows in curves[row].items():
                comparison["table"][start][row] = at_horizons(rows, "model")
                comparison["mean"][start][row] = mean(rows, "model")
            comparison["revisit"][row] = summary["revisit"][path]
        first = first or summary
    # the baseline and truth rows depend on the simulator alone: the first model's stand for all
    results, suite = (next(iter(first[k].values())) for k in ("results", "revisit"))  # its first path's
    for start, rows in results.items():
        comparison["table"][start].update({b: at_horizons(rows, b) for b in BASELINES})
        comparison["mean"][start].update({b: mean(rows, b) for b in BASELINES})
    comparison["revisit"]["truth"] = {t: {"steps": r["steps"], **r["truth"]} for t, r in suite.items()}
    comparison["revisit_worlds"] = first["revisit_worlds"]
    (out / "comparison.json").write_text(json.dumps(comparison, indent=1))
    (out / "comparison.md").write_text(_markdown(comparison))
    plots = _plots(curves, out)
    return {"out": str(out), "comparison": str(out / "comparison.md"), "json": str(out / "comparison.json"),
            "plots": plots, "models": {n: m["out"] for n, m in comparison["models"].items()}}
