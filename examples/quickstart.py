"""Quickstart: the true world and the learned world behind the same Gymnasium API.

Makes ``DeepVerseSim-v0`` (the procedural simulator: exact RGB, depth and camera) and ``DeepVerse-v0``
(the shipped world model, which predicts them), resets both with the same seed, so that they start from
the same frame, steps both with the same actions by name, prints what comes back and saves one rendered
panel of each (RGB | depth | top-down map) as a PNG.

    python examples/quickstart.py                  # 8 steps, panels in out/quickstart/
    python examples/quickstart.py --smoke          # 2 steps (seconds)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import imageio.v3 as iio
import numpy as np

import deepverse_env  # noqa: F401  (registers DeepVerseSim-v0 and DeepVerse-v0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/quickstart"), help="folder for the PNG panels")
    parser.add_argument("--seed", type=int, default=0, help="simulator world (and sampler noise) of the episode")
    parser.add_argument("--steps", type=int, default=8, help="env steps to take")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 2 steps")
    args = parser.parse_args()
    steps = 2 if args.smoke else args.steps
    args.out.mkdir(parents=True, exist_ok=True)

    for env_id in ("DeepVerseSim-v0", "DeepVerse-v0"):
        env = gym.make(env_id, render_mode="rgb_array")
        obs, info = env.reset(seed=args.seed)
        print(f"{env_id}: {env.action_space}, actions {env.unwrapped.actions.names}")
        print(f"  reset: rgb {obs['rgb'].shape} {obs['rgb'].dtype}, depth {obs['depth'].shape}, "
              f"pose {obs['pose'].shape}, intrinsics {obs['intrinsics'].shape}, scene {info['scene_seed']}")
        script = ["forward", "turn_left"]
        for t in range(steps):
            name = script[t % len(script)]
            obs, reward, terminated, truncated, info = env.step(env.unwrapped.actions.index(name))
            x, y, z = obs["pose"][:3, 3]
            print(f"  step {t + 1} {name:<9} position ({x:+.2f}, {y:+.2f}, {z:+.2f}) m, "
                  f"chunk {info['frames']['rgb'].shape}, depth {obs['depth'].min():.2f}..{obs['depth'].max():.2f} m")
        print("  final pose (camera-to-world, OpenCV axes):\n" + np.array2string(obs["pose"], precision=3))
        panel = env.render()  # (H', W', 3) uint8: RGB | depth | map
        path = args.out / f"{env_id}.png"
        iio.imwrite(path, panel)
        print(f"  wrote {path} {panel.shape}")
        env.close()


if __name__ == "__main__":
    main()
