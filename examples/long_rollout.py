"""A long walk through the learned world alone: a video of what it predicts and its 3D point cloud.

``DeepVerse-v0`` rolls its world forward from its own predictions for ``--steps`` steps (4 frames each),
sliding its window and recalling keyframes from its geometric memory, with no simulator behind it after the
first frame. Actions are scripted (the demo's out-and-back tour, cycled) or random. Writes to ``--out``:

- ``rollout.mp4`` (``rollout.gif`` where ffmpeg is missing): per step, predicted RGB | depth | top-down
  map of the predicted point cloud and camera path (``env.render()``);
- ``world.ply``: the predicted world as a coloured point cloud (metres, OpenCV axes: y down), for
  MeshLab, CloudCompare, Blender or Open3D (``env.unwrapped.export_point_cloud``).

    python examples/long_rollout.py                 # 200 steps of the tour (minutes on CPU)
    python examples/long_rollout.py --actions random --steps 500 --seed 3
    python examples/long_rollout.py --smoke         # 3 steps
"""
from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np

import deepverse_env  # noqa: F401  (registers DeepVerse-v0)
from deepverse_env.demo import TOUR
from deepverse_env.export import VideoWriter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/long_rollout"), help="folder for rollout.mp4 and world.ply")
    parser.add_argument("--steps", type=int, default=200, help="env steps (4 frames each)")
    parser.add_argument("--actions", choices=("tour", "random"), default="tour", help="scripted tour or uniform random")
    parser.add_argument("--seed", type=int, default=0, help="start frame (simulator world), sampler noise, random actions")
    parser.add_argument("--checkpoint", type=Path, help="a save_pretrained directory (default: the shipped model)")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 3 steps")
    args = parser.parse_args()
    steps = 3 if args.smoke else args.steps

    env = gym.make("DeepVerse-v0", checkpoint=args.checkpoint, render_mode="rgb_array", max_episode_steps=steps)
    actions = env.unwrapped.actions
    rng = np.random.default_rng(args.seed)
    obs, info = env.reset(seed=args.seed)
    with VideoWriter(args.out / "rollout.mp4", fps=env.metadata["render_fps"]) as video:
        video.append(env.render())
        for t in range(1, steps + 1):
            a = int(rng.integers(len(actions))) if args.actions == "random" else actions.index(TOUR[(t - 1) % len(TOUR)])
            obs, reward, terminated, truncated, info = env.step(a)
            video.append(env.render())
            if t % 20 == 0 or t == steps:
                x, y, z = obs["pose"][:3, 3]
                print(f"step {t:4d} {actions[a].name:<10} camera at ({x:+.2f}, {y:+.2f}, {z:+.2f}) m, "
                      f"window scale {info['scale']:.2f} m", flush=True)
    ply = env.unwrapped.export_point_cloud(args.out / "world.ply")
    print(f"wrote {video.path} ({video.frames} frames) and {ply}")
    env.close()


if __name__ == "__main__":
    main()
