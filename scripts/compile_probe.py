"""Does ``torch.compile`` speed up a ``DeepVerse-v0`` step on this machine? (issue 15)

    python scripts/compile_probe.py                 # eager, then the MM-DiT's flow step compiled, one env, float32
    python scripts/compile_probe.py --steps 48

Each mode opens the shipped model in a fresh env (seed 2,000,000), warms it up for 8 steps (compilation happens
there) and then times ``--steps`` random steps. It prints one JSON line per mode: warm-up seconds, timed seconds and
generated frames/s. ``compiled`` wraps ``MMDiT.denoise``, the per-flow-step work, in ``torch.compile`` (inductor).
The codec and refiner run their convolutions through oneDNN and are left eager. Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import torch

import deepverse_env  # noqa: F401  registers DeepVerse-v0


def run(mode: str, steps: int) -> dict:
    env = gym.make("DeepVerse-v0")
    env.action_space.seed(0)
    if mode == "compiled":
        dit = env.unwrapped.world.rollout.model.dit
        dit.denoise = torch.compile(dit.denoise, dynamic=False)
    env.reset(seed=2_000_000)
    t0 = time.perf_counter()
    for _ in range(8):
        env.step(env.action_space.sample())
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(env.action_space.sample())
    timed = time.perf_counter() - t0
    frames = steps * env.unwrapped.frames_per_step
    env.close()
    return {"mode": mode, "warm_up_s": round(warm, 1), "timed_s": round(timed, 2), "frames_per_s": round(frames / timed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="timed env steps per mode (default 24)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    for mode in ("eager", "compiled"):
        print(json.dumps(run(mode, args.steps)))


if __name__ == "__main__":
    main()
