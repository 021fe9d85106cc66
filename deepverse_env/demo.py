"""``deepverse demo``: the learned world beside the real one, as a video, a point cloud and numbers.

    deepverse demo --out demo                                  # shipped model, simulator world 0, the tour
    deepverse demo --checkpoint DIR --actions "forward,forward,turn_left" --steps 30 --seed 4
    deepverse demo --image photo.png                           # any picture: no ground truth then

The learned world (``DeepVerse-v0``) and the simulator (``DeepVerseSim-v0``) start from the same frame
(the simulator world of ``--seed``) and take the same actions. ``--out`` receives

- ``episode.mp4`` (``.gif`` without ffmpeg): per step, top row the learned world (predicted RGB |
  depth | top-down map of its predicted point cloud and path), bottom row the simulator's truth;
- ``world.ply``: the predicted point cloud of the episode (binary PLY with colours, metres, OpenCV axes);
- ``metrics.json``: per step (the mean over the chunk's frames) PSNR, SSIM, sharpness ratio, depth AbsRel and δ<1.25,
  camera rotation and translation error against the simulator, beside the copy-last-frame baseline
  (the start frame held still: all the model ever saw of the truth).

With ``--image`` the world starts from the picture (centre-cropped and resized to the model's size;
first-frame completion) and there is nothing to compare with: the video has one row and
``metrics.json`` only the per-step window scale. Pictures of any common bit depth load (8- and 16-bit
integers, floats in [0, 1], 1-bit; grey, grey + alpha, RGB, RGBA: alpha is dropped); others are refused.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from deepverse_env.actions import ActionSet, get_action_set
from deepverse_env.export import VideoWriter
from deepverse_env.learned.env import DeepVerseEnv
from deepverse_env.learned.world import load_model, require_depth
from deepverse_env.sim.env import DeepVerseSimEnv
from world_model.metrics import blocked_scores, copy_last_frame, frame_metrics

# Out and back: walk 1.9 m, turn 180 degrees (15 x 12), walk back, turn to face the start's view again.
TOUR = ("forward",) * 6 + ("turn_left",) * 15 + ("forward",) * 6 + ("turn_left",) * 15
COMPARED = ("rgb", "depth", "pose")


def parse_actions(text: str, actions: ActionSet) -> list[int]:
    """``"forward,forward,turn_left"`` -> action indices; ValueError listing the valid names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--actions names no action; expected comma-separated names of {actions.names}")
    return [actions.index(name) for name in names]


def to_rgb8(image: np.ndarray, name: str = "the image") -> np.ndarray:
    """Pixels of any common bit depth and layout as (H, W, 3) uint8; ValueError naming ``name`` otherwise.

    uint8 as is; uint16 scaled by 1/257 (rounded: 65535 -> 255); bool (1-bit) 0/255; floats must lie in
    [0, 1] and are scaled by 255 (rounded). Grey (H, W) or (H, W, 1) is repeated to 3 channels; grey + alpha
    (H, W, 2) and RGBA (H, W, 4) lose their alpha.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (1, 2):
        image = image[..., 0]  # grey (+ alpha)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4) or 0 in image.shape:
        raise ValueError(
            f"{name} is not a picture: its pixels have shape {image.shape}; expected (H, W) grey or (H, W, C) "
            "with C = 1, 2 (grey + alpha), 3 (RGB) or 4 (RGBA)"
        )
    image = image[..., :3]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v / 257): 32768 -> 128
    if image.dtype.kind == "f":
        lo, hi = float(np.min(image)), float(np.max(image))  # NaN propagates and fails the test below
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(
                f"{name} has floating-point pixels in [{lo:g}, {hi:g}]; expected values in [0, 1] "
                "(an HDR or unnormalised image: convert it to 8 or 16 bits first)"
            )
        return np.rint(image.astype(np.float64) * 255.0).astype(np.uint8)
    raise ValueError(
        f"{name} has pixels of type {image.dtype}; expected 8- or 16-bit unsigned integers, 1-bit, or floats in [0, 1]"
    )


def read_image(path: str | Path) -> np.ndarray:
    """A picture file (its first frame) as (H, W, 3) uint8 (``to_rgb8``); ValueError naming the file when it
    is missing, not a file, not a readable image, or of a pixel format ``to_rgb8`` refuses."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"image {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"image {str(path)!r} is not a file")
    try:
        image = iio.imread(path, index=0)
    except Exception as e:  # decoders raise many types (OSError, ValueError, SyntaxError, ...) for a bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"image {str(path)!r} could not be read as a picture ({reason})") from None
    return to_rgb8(image, f"image {str(path)!r}")


def fit_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 centre-cropped to the aspect ratio of height x width, then resized to it."""
    pil = Image.fromarray(image)
    w, h = pil.size
    crop_w, crop_h = min(w, round(h * width / height)), min(h, round(w * height / width))
    crop_w, crop_h = max(crop_w, 1), max(crop_h, 1)
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    pil = pil.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(pil, dtype=np.uint8)


def load_image(path: str | Path, height: int, width: int) -> np.ndarray:
    """A picture file as (height, width, 3) uint8: read (``read_image``), centre-cropped to the aspect
    ratio, then resized."""
    return fit_image(read_image(path), height, width)


def _rows(*rows: np.ndarray, gap: int = 2) -> np.ndarray:
    """(H_i, W, 3) uint8 pictures stacked top to bottom, ``gap`` black rows apart."""
    blank = np.zeros((gap, rows[0].shape[1], 3), dtype=np.uint8)
    return np.concatenate([part for row in rows for part in (row, blank)][:-1], axis=0)


def _mean(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: round(float(v.float().mean()), 4) for k, v in metrics.items()}


def run_demo(
    out: str | Path,
    checkpoint: str | Path | None = None,
    image: str | Path | None = None,
    actions: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    action_set: str = "basic",
    fps: float = 4.0,
    render_cache: bool = True,
    progress: bool = True,
) -> dict:
    """Run the demo into directory ``out``; returns the summary that ``deepverse demo`` prints.

    Args:
        checkpoint: a ``save_pretrained`` directory (None: the shipped model).
        image: start from this picture instead of a simulator frame (no ground truth then).
        actions: comma-separated action names of ``action_set`` (default: ``TOUR``), cycled to ``steps``.
        steps: env steps (default: the script's length).
        seed: the simulator world (and sampler noise) of the episode.
        render_cache: refine frames with the 3D cache when the model has a refiner (False: the paper's path).
    """
    # Everything the user gave is checked before the model loads and before anything is written.
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
        raise ValueError(f"--steps must be a positive integer, got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}")
    names = get_action_set(action_set)  # ValueError naming an unknown set
    script = parse_actions(actions, names) if actions is not None else [names.index(name) for name in TOUR]
    picture = None if image is None else read_image(image)
    t0 = time.perf_counter()
    model = load_model(checkpoint)
    require_depth(model, f"deepverse demo (its depth view and point cloud) of {checkpoint or 'the shipped model'}")
    env = DeepVerseEnv(checkpoint=model, render_mode="rgb_array", action_set=action_set, render_cache=render_cache)
    script = [script[i % len(script)] for i in range(steps or len(script))]
    start = None if picture is None else fit_image(picture, env.height, env.width)
    obs, _ = env.reset(seed=seed, options=None if start is None else {"image": start})
    sim = None
    if start is None:
        sim = DeepVerseSimEnv(
            action_set=action_set, frames_per_step=env.frames_per_step, height=env.height, width=env.width,
            fov_deg=env.config.fov_deg, render_mode="rgb_array",
        )
        sim.reset(seed=seed)
    held = copy_last_frame({k: torch.from_numpy(obs[k]) for k in COMPARED}, env.frames_per_step)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_step = []

    def picture() -> np.ndarray:
        return env.render() if sim is None else _rows(env.render(), sim.render())

    with VideoWriter(out / "episode.mp4", fps=fps) as video:
        video.append(picture())
        for t, a in enumerate(tqdm(script, desc="demo", unit="step", disable=not progress), start=1):
            obs, _, _, _, info = env.step(a)
            record = {"step": t, "action": env.actions[a].name, "scale": round(info["scale"], 6)}
            if sim is not None:
                _, _, _, _, truth = sim.step(a)
                pred = {k: torch.from_numpy(info["frames"][k]) for k in COMPARED}
                true = {k: torch.from_numpy(truth["frames"][k]) for k in COMPARED}
                record["blocked"] = bool(truth["blocked"])
                if "blocked" in info:  # the motion model's verdict (M19)
                    record["blocked_model"] = bool(info["blocked"])
                record["model"] = _mean(frame_metrics(pred, true))
                record["copy_last_frame"] = _mean(frame_metrics(held, true))
            per_step.append(record)
            video.append(picture())
    ply = env.export_point_cloud(out / "world.ply")

    metrics = {
        "checkpoint": "shipped" if checkpoint is None else str(checkpoint),
        "start": "simulator" if sim is not None else str(image),
        "seed": seed,
        "scene_seed": int(env.world.scene_seeds[0]),
        "action_set": action_set,
        "steps": len(script),
        "frames_per_step": env.frames_per_step,
        "per_step": per_step,
    }
    if sim is not None:
        metrics["mean"] = {
            name: {k: round(float(np.mean([r[name][k] for r in per_step])), 4) for k in per_step[0][name]}
            for name in ("model", "copy_last_frame")
        }
        if per_step and "blocked_model" in per_step[0]:  # the motion model's blocked steps against the simulator's
            metrics["blocked"] = blocked_scores(*([r[k] for r in per_step] for k in ("blocked_model", "blocked")))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    seconds = time.perf_counter() - t0
    env.close()
    return {
        "video": str(video.path),
        "point_cloud": str(ply),
        "metrics": str(out / "metrics.json"),
        "steps": len(script),
        "points": len(env.world.maps[0].cloud),
        "seconds": round(seconds, 2),
        "ground_truth": sim is not None,
        **({"mean": metrics["mean"]} if sim is not None else {}),
    }
