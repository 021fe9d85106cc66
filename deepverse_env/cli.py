"""The ``deepverse`` command line.

    deepverse collect --out DIR --episodes N --steps T --seed S   record episodes from the simulator
    deepverse bench sim [--out FILE]     simulator throughput at 64x64, as JSON on the last line
    deepverse bench model [--out FILE]   world-model FLOPs, ms per flow step, frames/s, cache speed-up, MFU
    deepverse bench env [--checkpoint DIR] [--dtypes ...] [--out FILE]   DeepVerse-v0 frames/s, single and batched, per dtype
    deepverse bench train [--stages ...] [--out FILE]                   training steps/s per stage, fp32 and bf16-mixed
    deepverse demo [--checkpoint DIR] [--image PATH] [--actions A,B,..] [--steps N] [--out DIR] [--seed S]
    deepverse eval [--checkpoint DIR] [--seeds A:B] [--frames N] [--out DIR]   rollouts vs the simulator, per horizon
    deepverse eval --compare NAME=DIR ... [--frames N] [--out DIR]   the ablation tables: several checkpoints, one run
    deepverse drift [--checkpoint DIR] [--seeds A:B] [--steps N] [--out DIR]   long-rollout height, depth, fx vs the simulator
    deepverse agents train --world learned|sim --steps N --out DIR   SB3 PPO on a task, in imagination or the simulator
    deepverse agents eval --agents random cem ... --episodes N       agents on held-out task seeds, judged in the simulator
    deepverse play [--sim] [--checkpoint DIR] [--seed S] [--scale N] [--max-steps N]   keyboard play in a pygame window

Each subcommand is an ``add_<name>(subparsers)`` function that declares its arguments and sets
``func`` to the function that runs it; ``build_parser`` lists them.

Errors: a bad argument is argparse's one-line error (counts are checked by the ``positive_int``-style
types); an expected failure of a command (``EXPECTED``: a bad value, a missing or unwritable file, a
missing optional package, a task that cannot be drawn, ...) is one line ``deepverse <command>: error:
...`` and exit status 2 (130 when interrupted). ``deepverse --debug ...`` (or ``--debug`` after the
command) re-raises instead, with the full traceback.
"""
from __future__ import annotations

import argparse
import json
import linecache
import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

PROJECT = ("deepverse_env", "agents", "world_model")  # packages whose RuntimeErrors are expected failures


# ---- argument types: argparse turns their ArgumentTypeError into its one-line usage error ------------


def at_least(lo: int, what: str | None = None):
    """An argparse type: an integer >= ``lo`` (``what`` says so in its error)."""
    what = what or f"an integer >= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


positive_int = at_least(1, "a positive integer")
non_negative_int = at_least(0, "a non-negative integer")


def key_value(text: str) -> tuple[str, object]:
    """An argparse type: ``KEY=VALUE`` with the value read as YAML (``false`` -> False, ``2`` -> 2, ``bfloat16`` a string)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"the value of {text!r} is not valid YAML") from None


def field_of_view(text: str) -> float:
    """An argparse type: degrees in (0, 180)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 180.0:
        raise argparse.ArgumentTypeError(f"must be degrees in (0, 180), got {text!r}")
    return value


@contextmanager
def output_dir(path: Path, what: str = "--out"):
    """Create the output folder ``path`` and check that a file can be written in it, before any work; on a
    failure (here or in the body) the folders this created are removed again while still empty.
    ValueError naming the folder when it cannot be created or written to."""
    path = Path(path)
    created = []  # the folders this made, deepest last
    for folder in reversed([path, *path.parents]):
        if not folder.exists():
            created.append(folder)
    try:
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".deepverse-write-test-"):
                pass
        except OSError as e:
            raise ValueError(f"{what} {str(path)!r} is not a writable folder ({e.strerror or e})") from None
        yield path
    except BaseException:
        for folder in reversed(created):
            try:
                folder.rmdir()  # only when empty: nothing the body wrote is lost
            except OSError:
                break
        raise


def bench_sim(args: argparse.Namespace) -> dict:
    """Frames per second of the ray caster alone, of one env stepping, and of the native vector env."""
    import gymnasium as gym
    import numpy as np
    import torch

    import deepverse_env  # noqa: F401  (registers the envs)
    from deepverse_env.sim import agent
    from deepverse_env.sim.raycast import SceneBatch, render
    from deepverse_env.sim.world import SceneConfig
    from world_model.geometry import default_intrinsics

    H, W, F = args.height, args.width, args.frames_per_step  # argparse checked them (>= 1; --steps >= 2)
    rng = np.random.default_rng(0)

    def timed(fn, repeats: int) -> float:
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats

    result = {"height": H, "width": W, "frames_per_step": F, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}

    # Raw renders: B cameras in B different worlds, one call.
    config = SceneConfig()
    for B in args.render_batches:
        starts = [agent.start_episode(rng, config) for _ in range(B)]
        scenes = SceneBatch.stack([scene for scene, _ in starts])
        c2w = torch.from_numpy(agent.camera_pose(np.stack([s for _, s in starts]), config.eye_height)).float()
        K = default_intrinsics(H, W).expand(B, 3, 3)
        seconds = timed(lambda: render(scenes, c2w, K, H, W), max(3, 256 // B))
        result[f"render_fps_batch{B}"] = round(B / seconds, 1)

    env = gym.make("DeepVerseSim-v0", height=H, width=W, frames_per_step=F)
    env.reset(seed=int(rng.integers(2**31)))
    actions = rng.integers(env.action_space.n, size=args.steps)
    it = iter(actions)
    seconds = timed(lambda: env.step(next(it)), args.steps - 1)
    result["env_fps"] = round(F / seconds, 1)
    result["env_steps_per_s"] = round(1 / seconds, 1)

    for N in args.num_envs:
        envs = gym.make_vec(
            "DeepVerseSim-v0", num_envs=N, vectorization_mode="vector_entry_point", height=H, width=W, frames_per_step=F
        )
        envs.reset(seed=int(rng.integers(2**31)))
        seconds = timed(lambda: envs.step(envs.action_space.sample()), max(2, args.steps // 8))
        result[f"vector{N}_fps"] = round(N * F / seconds, 1)
        envs.close()
    return result


def bench_train(args: argparse.Namespace) -> dict:
    """Training steps/s per stage in fp32 and bf16-mixed (``deepverse_env.bench_train``)."""
    from deepverse_env.bench_train import bench_train as run

    return run(args.stages, args.steps, args.warmup)


def bench_model(args: argparse.Namespace) -> dict:
    """The MM-DiT sampler's speed (``world_model.bench.bench_model``) for a preset."""
    from world_model.bench import bench_model as run

    return run(preset=args.preset, batch_sizes=tuple(args.batch_sizes), chunks=args.chunks, repeats=args.repeats)


POSE_ONLY_STEPS = 12  # steps into an episode of the second pose-only timing (a full window, a grown cache)


def bench_env(args: argparse.Namespace) -> dict:
    """Steps and frames per second of DeepVerse-v0, one env and N batched, in each compute dtype, beside the
    simulator's, all measured in this run; the top-level figures are those of the first dtype."""
    import numpy as np
    import torch

    from deepverse_env.learned.env import DeepVerseEnv
    from deepverse_env.learned.vector_env import DeepVerseVectorEnv
    from deepverse_env.learned.world import load_model
    from deepverse_env.sim.env import DeepVerseSimEnv
    from deepverse_env.sim.vector_env import DeepVerseSimVectorEnv
    from world_model.precision import ENV_DTYPE, choice

    model = load_model(args.checkpoint)
    H, W, F, N = model.config.height, model.config.width, model.frames_per_chunk, args.num_envs
    size = dict(height=H, width=W, frames_per_step=F)
    result = {
        "checkpoint": "shipped" if args.checkpoint is None else str(args.checkpoint),
        "height": H, "width": W, "frames_per_step": F, "flow_steps": model.sampler.steps, "num_envs": N,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
    }
    rng = np.random.default_rng(0)

    def seconds_per_step(env, n_actions: int, steps: int, batch: int | None) -> float:
        env.reset(seed=0)
        shape = None if batch is None else (batch,)
        env.step(rng.integers(n_actions, size=shape))  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            env.step(rng.integers(n_actions, size=shape))
        return (time.perf_counter() - t0) / steps

    def throughput(name: str, single, vector) -> dict:
        out = {}
        env = single()
        s = seconds_per_step(env, env.action_space.n, args.steps, None)
        out[f"{name}env_steps_per_s"], out[f"{name}env_fps"] = round(1 / s, 2), round(F / s, 1)
        envs = vector()
        s = seconds_per_step(envs, envs.single_action_space.n, max(4, args.steps // 2), N)
        out[f"{name}vector{N}_steps_per_s"], out[f"{name}vector{N}_fps"] = round(N / s, 2), round(N * F / s, 1)
        if name == "":
            out["state_mib_per_world"] = round(envs.world.nbytes() / N / 2**20, 2)
            out["vector_speedup"] = round(out[f"vector{N}_fps"] / out["env_fps"], 2)
        return out

    dtypes = {}
    for dtype in args.dtypes:
        dtypes[dtype] = figures = throughput(
            "", lambda: DeepVerseEnv(checkpoint=model, dtype=dtype), lambda: DeepVerseVectorEnv(N, checkpoint=model, dtype=dtype)
        )
        if args.imagine:  # a planner's call: M candidate sequences of L steps from one state, one timed call
            M, L = args.imagine
            env = DeepVerseEnv(checkpoint=model, dtype=dtype)
            env.reset(seed=0)
            ids = rng.integers(env.action_space.n, size=(M, L))
            t0 = time.perf_counter()
            env.imagine(ids, seed=0)
            figures["imagine"] = {"candidates": M, "steps": L, "seconds": round(time.perf_counter() - t0, 2),
                                  "imagine_chunk": env.world.config.imagine_chunk}
        if args.pose_only:  # a point-goal planner's call: the motion model alone (pixels=False), one timed call
            M, L = args.pose_only
            env = DeepVerseEnv(checkpoint=model, dtype=dtype)
            env.reset(seed=0)
            ids = rng.integers(env.action_space.n, size=(M, L))
            env.imagine(ids[:2], pixels=False)  # warm-up
            figures["pose_only"] = {"candidates": M, "steps": L}
            for label in ("at_reset", f"after_{POSE_ONLY_STEPS}_steps"):  # the window and cache fill as an episode goes
                t0 = time.perf_counter()
                env.imagine(ids, pixels=False)
                seconds = time.perf_counter() - t0
                figures["pose_only"][label] = {"seconds": round(seconds, 3), "candidate_steps_per_s": round(M * L / seconds, 1)}
                for _ in range(POSE_ONLY_STEPS):
                    if any(env.step(int(rng.integers(env.action_space.n)))[2:4]):
                        env.reset()
            figures["pose_only"]["candidate_steps_per_s"] = figures["pose_only"]["at_reset"]["candidate_steps_per_s"]
        if args.profile:  # separate runs, so the wrappers' own cost never enters the throughput figures
            from deepverse_env.profiling import StepProfile

            figures["profile"] = {}
            for label, env, batch in (("env", DeepVerseEnv(checkpoint=model, dtype=dtype), None),
                                      (f"vector{N}", DeepVerseVectorEnv(N, checkpoint=model, dtype=dtype), N)):
                world = env.world
                with StepProfile(world) as profile:
                    seconds_per_step(env, len(world.actions), args.steps, batch)
                figures["profile"][label] = profile.report()
    result.update(dtypes[args.dtypes[0]])
    result["dtypes"] = dtypes
    result["fastest_dtype"] = max(dtypes, key=lambda d: dtypes[d]["env_fps"])
    auto = DeepVerseEnv(checkpoint=model)  # dtype="auto": measured once per machine and model, then cached
    result["auto_dtype"] = {"dtype": auto.world.dtype, "override": os.environ.get(ENV_DTYPE),
                            "measured": choice(auto.world.workload(model, auto.world.config))}
    result.update(throughput("sim_", lambda: DeepVerseSimEnv(**size), lambda: DeepVerseSimVectorEnv(N, **size)))
    if args.pose_only:  # the simulator's exact pose-only imagine (no ray-cast), beside the learned one
        M, L = args.pose_only
        sim = DeepVerseSimEnv(**size)
        sim.reset(seed=0)
        ids = rng.integers(sim.action_space.n, size=(M, L))
        t0 = time.perf_counter()
        sim.imagine(ids, pixels=False)
        result["sim_pose_only_candidate_steps_per_s"] = round(M * L / (time.perf_counter() - t0), 1)
    result["ratio_to_sim"] = round(result["env_fps"] / result["sim_env_fps"], 4)
    result[f"vector{N}_ratio_to_sim"] = round(result[f"vector{N}_fps"] / result[f"sim_vector{N}_fps"], 4)
    return result


def add_bench(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="measure throughput")
    targets = bench.add_subparsers(dest="target", metavar="TARGET", required=True)
    sim = targets.add_parser("sim", help="simulator frames per second (render, single env, vector env)")
    sim.add_argument("--out", dest="json_out", type=Path, help="also write the JSON result to this file")
    sim.add_argument("--height", type=positive_int, default=64)
    sim.add_argument("--width", type=positive_int, default=64)
    sim.add_argument("--frames-per-step", type=positive_int, default=4)
    sim.add_argument(
        "--steps", type=at_least(2), default=100, help="env steps for the single env (>= 2: a warm-up, then timed)"
    )
    sim.add_argument("--render-batches", type=positive_int, nargs="+", default=[1, 64], help="cameras per raw render call")
    sim.add_argument("--num-envs", type=positive_int, nargs="+", default=[16, 64], help="worlds of the vector envs timed")
    sim.set_defaults(func=bench_sim)
    model = targets.add_parser(
        "model",
        help="world-model FLOPs per flow step, ms per step, generated frames/s (B=1 and batched), K/V-cache "
        "speed-up and MFU against fp32/bf16 matmul peaks measured in the same run",
    )
    model.add_argument("--out", dest="json_out", type=Path, help="also write the JSON result to this file")
    model.add_argument("--preset", default="tiny", help="MM-DiT preset (default tiny)")
    model.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 16], help="rollouts side by side")
    model.add_argument("--chunks", type=positive_int, default=2, help="chunks rolled out per timed run (default 2)")
    model.add_argument("--repeats", type=positive_int, default=3, help="timed runs per figure (best and median)")
    model.set_defaults(func=bench_model)
    env = targets.add_parser(
        "env",
        help="DeepVerse-v0 steps/s and frames/s for one env and N batched (one model call), their ratio, and "
        "the ratios to the simulator measured in the same run",
    )
    env.add_argument("--out", dest="json_out", type=Path, help="also write the JSON result to this file")
    env.add_argument("--checkpoint", type=Path, help="a save_pretrained directory (default: the shipped model)")
    env.add_argument("--num-envs", type=positive_int, default=16, help="worlds in the batched env (default 16)")
    env.add_argument("--profile", action="store_true", help="also time each part of a step (DiT, encode, decode, "
                     "render, refine, memory, hooks, maps, other) for one env and the batch, in separate runs")
    env.add_argument("--steps", type=positive_int, default=20, help="env steps timed for the single env (default 20)")
    env.add_argument("--imagine", nargs=2, type=positive_int, metavar=("M", "L"),
                     help="also time one imagine() call of M random candidate sequences of L steps per dtype "
                     "(e.g. 256 8: minutes on two cores)")
    env.add_argument("--pose-only", nargs=2, type=positive_int, metavar=("M", "L"),
                     help="also time one pose-only imagine(pixels=False) call of M random candidate sequences of L "
                     "steps per dtype (the motion model alone; needs a model with one), beside the simulator's: "
                     "candidate_steps_per_s at reset and after 12 steps (e.g. 1024 8)")
    env.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"],
                     help="compute dtypes measured, each in its own run (default float32 bfloat16; the CPU decides which "
                     "is faster: see fastest_dtype); the top-level figures are the first's")
    env.set_defaults(func=bench_env)
    train = targets.add_parser(
        "train",
        help="training steps/s of each stage's config (configs/tiny_codec.yaml, configs/tiny.yaml) in float32 and in "
        "bf16 mixed precision, measured in one run, and which is faster on this CPU",
    )
    train.add_argument("--out", dest="json_out", type=Path, help="also write the JSON result to this file")
    train.add_argument("--stages", nargs="+", default=["codec", "world_model"], choices=["codec", "world_model"],
                       help="stages timed (default both)")
    train.add_argument("--steps", type=positive_int, default=6, help="timed steps per stage and precision (default 6)")
    train.add_argument("--warmup", type=positive_int, default=2, help="untimed steps before them (default 2)")
    train.set_defaults(func=bench_train)


def run_collect(args: argparse.Namespace) -> dict:
    """Record episodes with the exploration policy; the summary is what ``main`` prints."""
    import deepverse_env  # noqa: F401  (registers the envs)
    from deepverse_env.collect import collect

    with output_dir(args.out) as out:  # an unwritable --out fails now, not after simulating a group
        return collect(
            out,
            episodes=args.episodes,
            steps=args.steps,
            seed=args.seed,
            frames_per_step=args.frames_per_step,
            height=args.height,
            width=args.width,
            fov_deg=args.fov,
            num_envs=args.num_envs,
            progress=not args.no_progress,
        )


def add_collect(subparsers) -> None:
    p = subparsers.add_parser(
        "collect",
        help="record training episodes from the ground-truth simulator",
        description="Record episodes (RGB, depth, pose, intrinsics, captions from measured motion) as "
        "TensorDict memmaps, one directory per episode, written atomically. Episode i uses world seed "
        "SEED + i; episodes already in DIR are kept, so an interrupted run resumes.",
    )
    p.add_argument("--out", type=Path, required=True, help="dataset directory")
    p.add_argument("--episodes", type=positive_int, required=True, help="number of episodes")
    p.add_argument("--steps", type=positive_int, required=True, help="env steps (chunks) per episode")
    p.add_argument("--seed", type=non_negative_int, default=0, help="world seed of episode 0 (default 0)")
    p.add_argument("--frames-per-step", type=positive_int, default=4, help="frames per chunk (default 4)")
    p.add_argument("--height", type=positive_int, default=64)
    p.add_argument("--width", type=positive_int, default=64)
    p.add_argument("--fov", type=field_of_view, default=75.0, help="horizontal field of view, degrees in (0, 180)")
    p.add_argument("--num-envs", type=positive_int, default=16, help="worlds simulated at once (default 16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_collect, indent=1)


def run_demo(args: argparse.Namespace) -> dict:
    """The learned world beside the simulator; the summary is what ``main`` prints."""
    from deepverse_env.demo import run_demo as demo

    with output_dir(args.out) as out:
        return demo(
            out, checkpoint=args.checkpoint, image=args.image, actions=args.actions, steps=args.steps,
            seed=args.seed, action_set=args.action_set, render_cache=not args.no_render_cache,
            progress=not args.no_progress,
        )


def add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="drive the learned world and the simulator with one action script; write video, point cloud, metrics",
        description="Load the world model, start it from a simulator frame (or --image), drive it with an action "
        "script (default: a tour out and back) and the simulator with the same actions, and write into --out a video "
        "of predicted RGB | depth | map above the ground truth (episode.mp4, or .gif without ffmpeg), the predicted "
        "point cloud (world.ply) and per-step PSNR, sharpness, depth AbsRel and pose error beside copy-last-frame (metrics.json).",
    )
    p.add_argument("--checkpoint", type=Path, help="a save_pretrained directory (default: the shipped model)")
    p.add_argument("--image", type=Path, help="start from this picture (first-frame completion; no ground truth)")
    p.add_argument("--actions", help='comma-separated action names, e.g. "forward,forward,turn_left" (default: the tour)')
    p.add_argument("--steps", type=positive_int, help="env steps; the script repeats to fill them (default: its length)")
    p.add_argument("--out", type=Path, default=Path("demo"), help="output directory (default ./demo)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="simulator world and sampler seed (default 0)")
    p.add_argument("--action-set", default="basic", help="action set the names come from (default basic)")
    p.add_argument("--no-render-cache", action="store_true", help="the paper's path: no 3D-cache refinement")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_demo, indent=1)


def run_eval(args: argparse.Namespace) -> dict:
    """Open-loop rollouts against the simulator, of one model or (``--compare``) of several side by side; the
    summary is what ``main`` prints."""
    from deepverse_env.ablations import run_compare
    from deepverse_env.evaluate import run_eval as evaluate

    env = dict(args.env)
    if args.device is not None:
        if "device" in env:
            raise ValueError(f"give the device once: --device {args.device} or --env device={env['device']}, not both")
        env["device"] = args.device
    common = dict(
        seeds=args.seeds, frames=args.frames, starts=tuple(args.starts), compare_paper_path=not args.no_paper_path,
        seed=args.seed, progress=not args.no_progress, env=env, revisit_steps=args.revisit_steps,
    )
    with output_dir(args.out) as out:
        if args.compare is not None:
            return run_compare(out, args.compare, **common)
        return evaluate(out, checkpoint=args.checkpoint, **common)


def add_eval(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score open-loop rollouts against the simulator on held-out worlds, beside copy-first and warp",
        description="Roll the learned world and the simulator with the same seeded random actions from each world's "
        "4D first frame and from its RGB alone; write per-frame PSNR, SSIM, sharpness, depth and camera errors beside "
        "copy-first and warp-with-true-motion, and the rollout's self-consistency (each frame warped with the predicted "
        "depth and cameras into the next: consistency_4d PSNR, temporal_consistency SSIM, beside the true frames') "
        "(metrics.json, report.md, one PNG plot per metric, frame strips), with the grounded path (3D cache) beside the "
        "paper path when the model uses it (a refiner or a render frame), and a revisit suite (out and back, a full "
        "turn, a loop; memory on and off) scoring the returning view against the truth and the view first seen.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=Path, help="a save_pretrained directory (default: the shipped model)")
    which.add_argument(
        "--compare", nargs="+", metavar="NAME=DIR",
        help="evaluate each model (DIR a save_pretrained directory or the word shipped) into OUT/NAME/ with the same "
        "worlds and actions, then write the ablation tables (Table 1 at frames/2 and frames, revisit) into "
        "OUT/comparison.md and comparison.json and a plot per metric, a line per model; a model without depth is "
        "rolled out without it: its depth and 4D consistency scores are n/a, the rest scored as for any model",
    )
    p.add_argument("--seeds", default="2000000:2000008", help="world seeds, A:B or A,B,C (default: 8 test worlds)")
    p.add_argument(
        "--frames", type=positive_int, default=60, help="horizon in frames, a multiple of the chunk (default 60)"
    )
    p.add_argument("--starts", nargs="+", default=["4d", "image"], help="4d and/or image (default both)")
    p.add_argument("--no-paper-path", action="store_true", help="skip the paper path (no 3D cache) comparison")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the action scripts (default 0)")
    p.add_argument(
        "--env", type=key_value, action="append", default=[], metavar="KEY=VALUE",
        help="a setting of the learned env (DeepVerse-v0 keyword, value in YAML), repeatable: e.g. --env dtype=bfloat16 "
        "--env carry_decoder=false --env use_memory=false",
    )
    p.add_argument("--device", help="where the models run, e.g. cuda (default cpu; the same as --env device=...)")
    p.add_argument(
        "--revisit-steps", type=positive_int, default=60,
        help="cap on each revisit trajectory in env steps (default 60: all three fit whole at 4 frames a step)",
    )
    p.add_argument("--out", type=Path, default=Path("eval"), help="output directory (default ./eval)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval, indent=1)


def run_drift(args: argparse.Namespace) -> dict:
    """A long random rollout of the learned world against the simulator; the summary is what ``main`` prints."""
    from deepverse_env.drift import run_drift as drift

    with output_dir(args.out) as out:
        return drift(
            out, checkpoint=args.checkpoint, seeds=args.seeds, steps=args.steps, seed=args.seed,
            render_cache=not args.no_render_cache, embodied=not args.raw, block=args.block,
            progress=not args.no_progress,
        )


def add_drift(subparsers) -> None:
    p = subparsers.add_parser(
        "drift",
        help="does a long rollout stay metric? camera height, median depth and fx against the simulator",
        description="Roll the learned world (no re-sync) and the simulator with the same uniformly random actions "
        "from the same 4D start frames for --steps steps; record the camera height above the start (the truth stays "
        "at 0: every action moves in the horizontal plane), the median depth, fx and the window scale per step; write "
        "drift.json, drift.md (figures per block of steps), drift.png (series against the step) and frames.png.",
    )
    p.add_argument("--checkpoint", type=Path, help="a save_pretrained directory (default: the shipped model)")
    p.add_argument("--seeds", default="2000000:2000004", help="world seeds, A:B or A,B,C (default: 4 test worlds)")
    p.add_argument("--steps", type=positive_int, default=1000, help="env steps of the rollout (default 1000)")
    p.add_argument("--block", type=positive_int, default=100, help="steps per row of the report (default 100)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random actions (default 0)")
    p.add_argument("--no-render-cache", action="store_true", help="the paper's path: no 3D-cache refinement")
    p.add_argument("--raw", action="store_true", help="the cameras as predicted (embodied=False): no level body, "
                   "no fixed intrinsics, no metric anchor")
    p.add_argument("--out", type=Path, default=Path("drift"), help="output directory (default ./drift)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_drift, indent=1)


def run_play(args: argparse.Namespace) -> dict:
    """Keyboard play in a pygame window; the summary is what ``main`` prints. No pygame is a clean error
    (``DependencyNotInstalled`` is an expected failure of ``main``)."""
    from deepverse_env.play import play

    return play(
        sim=args.sim, checkpoint=args.checkpoint, seed=args.seed, action_set=args.action_set,
        render_cache=not args.no_render_cache, scale=args.scale, max_steps=args.max_steps,
    )


def add_play(subparsers) -> None:
    p = subparsers.add_parser(
        "play",
        help="walk through the learned world (or the simulator) with the keyboard in a pygame window",
        description="Open DeepVerse-v0 (or with --sim DeepVerseSim-v0) and show its panel (RGB | depth | top-down map) "
        "in a pygame window, with the last action's sentence, the step count and the measured steps/s and frames/s "
        "under it. Each key press is one env step. Keys: arrows or W/A/S/D forward, backward, turn left, turn right; "
        "Q/E strafe left/right; R/F look up/down (when the action set has them); space stay; Backspace reset (a new "
        "world); Escape or closing the window quit. Needs pygame (pip install pygame, or the \"human\" extra). "
        "Prints a JSON summary (steps, resets, mean steps/s) at the end.",
    )
    p.add_argument("--sim", action="store_true", help="play the exact simulator instead of the learned world")
    p.add_argument("--checkpoint", type=Path, help="a save_pretrained directory (default: the shipped model)")
    p.add_argument("--seed", type=int, default=0, help="world seed of the first reset (default 0)")
    p.add_argument("--action-set", default="basic", help="basic, deepverse or full (default basic)")
    p.add_argument("--no-render-cache", action="store_true", help="learned world: no 3D-cache refinement")
    p.add_argument("--scale", type=int, default=4, help="screen pixels per frame pixel (default 4)")
    p.add_argument("--max-steps", type=int, help="quit after this many steps (default: no limit)")
    p.set_defaults(func=run_play, indent=1)


def add_agents(subparsers) -> None:
    from agents.cli import add_agents as add

    add(subparsers)


DEBUG_HELP = "on a failure, raise it with the full traceback instead of the one-line error"


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on every command's parser too (``deepverse collect ... --debug``), leaving the top-level
    value alone unless given (argparse copies a subparser's defaults over the parent's)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _add_debug(sub)
            return
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepverse", description="DeepVerse world model and simulator tools.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_collect(subparsers)
    add_bench(subparsers)
    add_demo(subparsers)
    add_eval(subparsers)
    add_drift(subparsers)
    add_agents(subparsers)
    add_play(subparsers)
    for sub in set(subparsers.choices.values()):
        _add_debug(sub)
    return parser


def expected(e: BaseException) -> bool:
    """Whether ``e`` is a failure a user can cause and fix (one line, exit 2) rather than a bug (traceback):
    ValueError (bad values, malformed files: ``EpisodeError``, ``JSONDecodeError``), OSError (missing,
    unreadable or unwritable files, a full disk), a missing optional package (``DependencyNotInstalled``,
    ImportError), out of GPU memory, and RuntimeErrors the project raises itself (e.g. a task that finds no
    goal in any world). A RuntimeError from inside torch or another library is a bug: traceback."""
    import gymnasium as gym

    if isinstance(e, (ValueError, OSError, ImportError, gym.error.DependencyNotInstalled)):
        return True
    if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
        return True
    if isinstance(e, RuntimeError) and not isinstance(e, NotImplementedError):
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is None:
            return False
        module = tb.tb_frame.f_globals.get("__name__", "")
        line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).strip()
        return module.split(".")[0] in PROJECT and line.startswith("raise ")  # not torch failing inside our code
    return False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    words = [args.command, getattr(args, "agents_command", None), getattr(args, "target", None)]
    command = " ".join(filter(None, words))
    json_out = getattr(args, "json_out", None)
    try:
        # a bench's --out FILE: its folder must be writable before the measurement, not after
        with output_dir(json_out.parent, "the folder of --out") if json_out else nullcontext():
            result = args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        parser.exit(130, f"deepverse {command}: interrupted\n")
    except Exception as e:
        if args.debug or not expected(e):
            raise
        message = " ".join(str(e).split()) or type(e).__name__  # one line
        parser.exit(2, f"deepverse {command}: error: {message}\n")
    text = json.dumps(result, indent=getattr(args, "indent", None))
    if json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + os.linesep)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
