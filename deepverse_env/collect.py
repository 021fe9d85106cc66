"""Record training episodes from the ground-truth world (DESIGN M10, M14; ``deepverse collect``).

An exploration policy with persistence drives ``num_envs`` simulator worlds at once (one batched
ray-cast per frame); every chunk is captioned from the camera motion *measured* on the recorded poses
(``geometry.caption_from_motion``), not from the key pressed, so blocked moves and clamped pitch get
truthful captions. Each episode is written atomically (``world_model.episodes.write_episode``);
re-running with the same arguments skips episodes already on disk and resumes.

Episode i's content depends only on its world seed ``seed + i`` and the recording arguments: the
exploration policy draws from a generator seeded per episode (``policy_rng``), so neither ``num_envs``
nor where an interrupted run was killed changes what a resumed run records. The dataset directory's
``dataset.json`` (``world_model.episodes.write_recording``, written before the first episode) records the
arguments, and a later collect into it with other ones is refused.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from tqdm.auto import tqdm

from deepverse_env.actions import caption_thresholds, get_action_set
from world_model import geometry as G
from world_model.episodes import (
    ClipConfig,
    EpisodeClips,
    check_recording,
    episode_dir,
    remove_partial,
    write_episode,
    write_recording,
)
from world_model.text import PITCHES, SENTENCES, TRANSLATIONS, YAWS


@dataclass
class ExplorationConfig:
    """Motion statistics of the data: runs of one motion, mostly forward, turning often, some pitch."""

    # Probability of each translation class when a new run starts (order of world_model.text.TRANSLATIONS).
    translation_p: tuple[float, ...] = (0.08, 0.36, 0.06, 0.07, 0.07, 0.12, 0.12, 0.06, 0.06)
    yaw_p: tuple[float, float, float] = (0.5, 0.25, 0.25)  # none, left, right
    pitch_p: tuple[float, float, float] = (0.7, 0.15, 0.15)  # none, up, down (biased back to level)
    mean_run: float = 3.0  # mean number of steps a motion persists (geometric)


def policy_rng(world_seed: int) -> np.random.Generator:
    """The exploration policy's generator for the episode of world ``world_seed`` (a stream apart from the
    world's own seeding; negative seeds allowed)."""
    return np.random.default_rng([0xE5910E, int(world_seed) % 2**64])


class ExplorationPolicy:
    """Persistent random motion over the ``full`` action set, for ``n`` worlds at once.

    ``rng`` is one generator per world (each world's motion then depends on its generator alone) or one
    shared by all."""

    def __init__(
        self,
        n: int,
        rng: np.random.Generator | Sequence[np.random.Generator],
        config: ExplorationConfig = ExplorationConfig(),
    ):
        rngs = [rng] * n if isinstance(rng, np.random.Generator) else list(rng)
        if len(rngs) != n:
            raise ValueError(f"got {len(rngs)} generators for {n} worlds")
        self.n, self.rngs, self.config = n, rngs, config
        self.actions = get_action_set("full")
        self.current = np.zeros(n, dtype=np.int64)
        self.left = np.zeros(n, dtype=np.int64)  # steps left in the current run

    def _new_run(self, i: int, pitch: float, blocked: bool) -> None:
        c, rng = self.config, self.rngs[i]
        if blocked:  # walked into something: turn away, maybe backing off
            t = rng.choice(["stay", "backward"], p=[0.7, 0.3])
            y = rng.choice(["turn_left", "turn_right"])
        else:
            t = rng.choice(list(TRANSLATIONS), p=np.asarray(c.translation_p) / sum(c.translation_p))
            y = rng.choice(list(YAWS), p=c.yaw_p)
        p_none, p_up, p_down = c.pitch_p
        tilt = pitch / math.radians(30.0)  # -1..1: the further from level, the likelier the way back
        p = np.array([p_none, p_up * (1 - tilt), p_down * (1 + tilt)]).clip(min=0.0)
        pi = rng.choice(list(PITCHES), p=p / p.sum())
        self.current[i] = self.actions.index(
            "+".join(x for x in (t, y, pi) if x not in ("stay", "none")) or "stay"
        )
        self.left[i] = rng.geometric(1.0 / c.mean_run)

    def __call__(self, pose: np.ndarray, blocked: np.ndarray) -> np.ndarray:
        """Actions (n,) given current poses (n, 4, 4) relative to a level first camera, and blocked flags."""
        z = pose[:, :3, 2]
        pitch = np.arctan2(-z[:, 1], np.hypot(z[:, 0], z[:, 2]))
        for i in range(self.n):
            if self.left[i] <= 0 or blocked[i]:
                self._new_run(i, float(pitch[i]), bool(blocked[i]))
            self.left[i] -= 1
        return self.current.copy()


def collect(
    out: str | Path,
    episodes: int,
    steps: int,
    seed: int = 0,
    frames_per_step: int = 4,
    height: int = 64,
    width: int = 64,
    fov_deg: float = 75.0,
    num_envs: int = 8,
    progress: bool = True,
) -> dict:
    """Record ``episodes`` episodes of ``steps`` env steps into ``out``; returns a summary dict.

    Episode ``i`` is world seed ``seed + i``, its content a function of that seed and the recording
    arguments alone; episodes already in ``out`` are kept and skipped. ``out`` must have been recorded
    with the same ``steps``, ``seed``, ``frames_per_step``, ``height``, ``width`` and ``fov_deg`` (its
    ``dataset.json``): ValueError listing the differing arguments, before anything on disk changes.
    """
    for name, value, lo in (("episodes", episodes, 1), ("steps", steps, 1), ("num_envs", num_envs, 1)):
        if int(value) != value or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    out = Path(out)
    recording = dict(
        steps=steps, seed=seed, frames_per_step=frames_per_step, height=height, width=width, fov_deg=fov_deg
    )
    recorded = check_recording(out, recording)  # reads only
    todo = [i for i in range(episodes) if not episode_dir(out, i).exists()]
    n = min(num_envs, max(len(todo), 1))
    env = gym.make_vec(
        "DeepVerseSim-v0",
        num_envs=n,
        vectorization_mode="vector_entry_point",
        action_set="full",
        frames_per_step=frames_per_step,
        height=height,
        width=width,
        fov_deg=fov_deg,
        max_episode_steps=steps + 1,
    )  # checks frames_per_step, height, width, fov_deg: a bad value leaves the disk untouched
    out.mkdir(parents=True, exist_ok=True)
    if not recorded:
        write_recording(out, recording)  # before the first episode
    stale = remove_partial(out)
    actions = get_action_set("full")
    thresholds = caption_thresholds(frames_per_step)
    caption_counts = np.zeros(len(SENTENCES), dtype=np.int64)
    blocked_total, t0 = 0, time.perf_counter()
    bar = tqdm(total=len(todo) * steps, unit="step", desc="collect", disable=not progress)
    for g in range(0, len(todo), n):
        group = todo[g : g + n]
        seeds = [seed + i for i in group] + [seed + episodes + k for k in range(n - len(group))]
        obs, _ = env.reset(seed=seeds)
        policy = ExplorationPolicy(n, [policy_rng(s) for s in seeds])  # per episode: num_envs changes nothing
        frames = [{k: np.asarray(obs[k])[:, None] for k in ("rgb", "depth", "pose", "intrinsics")}]
        taken, blocked = [], np.zeros(n, dtype=bool)
        blocked_log = []
        for _ in range(steps):
            a = policy(np.asarray(obs["pose"]), blocked)
            obs, _, terminated, truncated, info = env.step(a)
            if np.any(terminated) or np.any(truncated):
                raise RuntimeError("the simulator ended an episode early; collection expects fixed lengths")
            blocked = np.asarray(info["blocked"], dtype=bool)
            frames.append({k: np.asarray(info["frames"][k]) for k in ("rgb", "depth", "pose", "intrinsics")})
            taken.append(a)
            blocked_log.append(blocked)
            bar.update(len(group))
        stacked = {k: torch.from_numpy(np.concatenate([f[k] for f in frames], axis=1)) for k in frames[0]}
        for j, index in enumerate(group):
            ep = TensorDict({k: v[j] for k, v in stacked.items()}, batch_size=[stacked["rgb"].shape[1]])
            pose = ep["pose"]
            starts, ends = pose[:-1:frames_per_step], pose[frames_per_step::frames_per_step]
            ids = G.motion_classes(starts, ends, **thresholds)  # (steps,)
            np.add.at(caption_counts, ids.numpy(), 1)
            blocked_total += int(sum(b[j] for b in blocked_log))
            meta = {
                "seed": seed + index,
                "frames_per_step": frames_per_step,
                "height": height,
                "width": width,
                "fov_deg": fov_deg,
                "actions": [actions[int(a[j])].name for a in taken],
                "commands": [list(actions[int(a[j])].command) for a in taken],
                "blocked": [bool(b[j]) for b in blocked_log],
                "captions": [SENTENCES[i] for i in ids.tolist()],
            }
            write_episode(out, index, ep, meta)
    bar.close()
    env.close()
    elapsed = time.perf_counter() - t0
    written = len(todo)
    frames_written = written * (1 + steps * frames_per_step)
    top = np.argsort(caption_counts)[::-1][:5]
    summary = {
        "out": str(out),
        "episodes_written": written,
        "episodes_skipped": episodes - written,
        "partial_removed": stale,
        "frames_written": frames_written,
        "seconds": round(elapsed, 2),
        "frames_per_second": round(frames_written / elapsed, 1) if written else None,
        "blocked_fraction": round(blocked_total / max(written * steps, 1), 3),
        "distinct_captions": int((caption_counts > 0).sum()),
        "top_captions": {SENTENCES[i]: int(caption_counts[i]) for i in top if caption_counts[i]},
        "bytes_on_disk": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
    }
    try:
        summary["clips_passing_filters"] = len(EpisodeClips(out, ClipConfig(chunks=min(4, steps))))
    except ValueError as e:
        summary["clips_passing_filters"] = f"none: {e}"
    return summary
