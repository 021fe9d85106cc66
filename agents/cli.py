"""``deepverse agents train`` and ``deepverse agents eval`` (registered by ``deepverse_env.cli``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _task(args: argparse.Namespace):
    """The task spec: its name, with ``--task-args`` JSON as arguments."""
    extra = json.loads(args.task_args) if args.task_args else {}
    if not isinstance(extra, dict):
        raise ValueError(f"--task-args must be a JSON object, got {args.task_args!r}")
    return {"name": args.task, **extra} if extra else args.task


def _model(args: argparse.Namespace) -> dict:
    """``DeepVerse-v0`` arguments of the learned world."""
    config = {"render_cache": not args.no_render_cache}
    if args.flow_steps is not None:
        config["sampler"] = {"steps": args.flow_steps}
    return config


def run_train(args: argparse.Namespace) -> dict:
    from agents.rl import train_ppo

    config = _model(args) if args.world == "learned" else {}
    path = train_ppo(
        _task(args), args.world, args.steps, args.out, num_envs=args.num_envs, seed=args.seed, keys=args.keys,
        save_every=args.save_every, progress_bar=not args.no_progress,
        checkpoint=args.checkpoint if args.world == "learned" else None, **config,
    )
    return json.loads((Path(args.out) / "train.json").read_text()) | {"policy": str(path)}


def run_eval(args: argparse.Namespace) -> dict:
    from agents.evaluate import evaluate_agents

    planner = {"horizon": args.horizon, "population": args.population, "iterations": args.iterations,
               "pixels": not args.pose_only}
    report = evaluate_agents(
        _task(args), args.agents, args.episodes, args.out, start=args.start, checkpoint=args.checkpoint,
        planner=planner, ppo_imagination=args.ppo_imagination, ppo_sim=args.ppo_sim, progress=not args.no_progress,
        **_model(args),
    )
    return {name: r["summary"] for name, r in report["agents"].items()}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="point_goal", help="point_goal or visual_goal (default point_goal)")
    p.add_argument("--task-args", help='task arguments as JSON, e.g. \'{"max_steps": 40}\'')
    p.add_argument("--checkpoint", type=Path, help="the learned world (default: the shipped model)")
    p.add_argument("--no-render-cache", action="store_true", help="learned world without 3D-cache refinement")
    p.add_argument("--flow-steps", type=int, help="sampler steps of the learned world (default: the model's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_agents(subparsers) -> None:
    from agents.evaluate import AGENTS

    agents = subparsers.add_parser("agents", help="train and evaluate agents (planners, PPO) on tasks")
    commands = agents.add_subparsers(dest="agents_command", metavar="COMMAND", required=True)
    train = commands.add_parser(
        "train",
        help="train SB3 PPO on a task in the learned world (imagination) or in the simulator; resumable",
        description="Train stable-baselines3 PPO on task episodes drawn from the training task seeds, in the learned "
        "world (--world learned: N batched DeepVerse-v0 worlds) or the simulator (--world sim). Checkpoints go to "
        "OUT/checkpoints every --save-every steps; running the same command again resumes from the latest.",
    )
    train.add_argument("--world", choices=("learned", "sim"), default="learned", help="where to train (default learned)")
    train.add_argument("--steps", type=int, required=True, help="env steps in all")
    train.add_argument("--out", type=Path, required=True, help="the run's folder (ppo.zip, checkpoints, train.json)")
    train.add_argument("--num-envs", type=int, default=16, help="worlds stepped together (default 16)")
    train.add_argument("--seed", type=int, default=0, help="task seeds, noise and PPO seed (default 0)")
    train.add_argument("--keys", nargs="*", default=[], help="frame keys the policy sees beside the goal (rgbd)")
    train.add_argument("--save-every", type=int, default=2048, help="env steps between checkpoints (default 2048)")
    _common(train)
    train.set_defaults(func=run_train, indent=1)
    ev = commands.add_parser(
        "eval",
        help="play agents on held-out task seeds in the simulator; JSON and a markdown table",
        description="Every agent plays the same held-out episodes in DeepVerseSim-v0 (success by the true camera). "
        f"Agents: {', '.join(AGENTS)}. Writes OUT/results.json and OUT/results.md (success with a 95%% Wilson "
        "interval, return, steps to goal, final distance, seconds per episode).",
    )
    ev.add_argument("--agents", nargs="+", default=["random", "cem", "oracle-cem"], help="agents to play")
    ev.add_argument("--episodes", type=int, default=10, help="held-out episodes (default 10)")
    ev.add_argument("--start", type=int, default=0, help="offset of the first evaluation seed (default 0)")
    ev.add_argument("--horizon", type=int, default=4, help="planner horizon in steps (default 4)")
    ev.add_argument("--population", type=int, default=32, help="planner sequences per round (default 32)")
    ev.add_argument("--iterations", type=int, default=2, help="planner rounds per step (default 2)")
    ev.add_argument("--pose-only", action="store_true",
                    help="planners imagine poses alone (imagine(..., pixels=False): the learned world's motion model, no "
                    "MM-DiT; the simulator oracle skips its ray-cast): for tasks scored by the camera (point_goal)")
    ev.add_argument("--ppo-imagination", type=Path, help="a train --world learned run folder")
    ev.add_argument("--ppo-sim", type=Path, help="a train --world sim run folder")
    ev.add_argument("--out", type=Path, default=Path("agents_eval"), help="output folder (default ./agents_eval)")
    _common(ev)
    ev.set_defaults(func=run_eval, indent=1)
