"""Same seed, same frames: a short episode of the shipped model on the paper's path (``render_cache=False``:
the weights before the 3D-cache refiner was added), pinned in ``tests/data/pinned_rollout.npz``.

The pin was written before the structure change of issue 11 (sampler config, condition object, state
module, learned-env split) and reproduced bit for bit after it, on the machine that wrote it. It was
rewritten when the embodied camera became the default (issue 16: start intrinsics, a level camera, the
metric anchor); with ``embodied=False`` the old pin was reproduced within float noise. It was rewritten again
when the decoder state began to be carried across a window slide (issue 15, ``carry_decoder``); with
``carry_decoder=False`` the old pin was reproduced within float noise (RGB within 1 level). It was rewritten
when the shipped model gained its motion model (issue 30, M19: cameras from the motion model, the raymap given);
with ``camera="generated"`` the old pin was reproduced bit for bit. Another CPU
may round a few operations differently, so the test allows float noise (and says when it is not exact).
Rewrite the pin only for a change that is meant to change the frames:

    python tests/test_pinned_rollout.py --write
"""
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

import deepverse_env  # noqa: F401  (registers the envs)

PIN = Path(__file__).parent / "data" / "pinned_rollout.npz"
ACTIONS = [1, 5, 1, 6, 2]  # forward, turn left, forward, turn right, backward: windows slide from step 3


def episode(**env_options) -> dict[str, np.ndarray]:
    """A simulator start (seed 3) for 5 steps, then an image start (its last frame) for 2, cache_max 3."""
    env = gym.make("DeepVerse-v0", cache_max=3, render_cache=False, **env_options)
    obs, _ = env.reset(seed=3)
    frames = []
    for a in ACTIONS:
        obs, *_, info = env.step(a)
        frames.append(info["frames"])
    env.reset(seed=11, options={"image": obs["rgb"]})
    for a in ACTIONS[:2]:
        frames.append(env.step(a)[-1]["frames"])
    return {k: np.stack([f[k] for f in frames]) for k in ("rgb", "depth", "pose")}  # (7, 4, ...)


def test_same_seed_gives_the_pinned_frames():
    pinned, now = np.load(PIN), episode()
    if all(np.array_equal(pinned[k], now[k]) for k in now):
        return  # bit-identical
    rgb_off = np.abs(pinned["rgb"].astype(int) - now["rgb"].astype(int)) > 2
    depth_rel = np.abs(now["depth"] / pinned["depth"] - 1)
    assert rgb_off.mean() < 0.01, f"{rgb_off.mean():.2%} of RGB values moved by more than 2 levels"
    assert np.median(depth_rel) < 1e-3, f"median depth change {np.median(depth_rel):.2e}"
    np.testing.assert_allclose(now["pose"], pinned["pose"], rtol=1e-3, atol=1e-3)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit(__doc__)
    PIN.parent.mkdir(exist_ok=True)
    np.savez_compressed(PIN, **episode())
    print(f"wrote {PIN} ({PIN.stat().st_size / 1e3:.0f} kB)")
