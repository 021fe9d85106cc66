"""Plan in the learned world, act in the true one: CEM model-predictive control on point goals.

Each episode is a ``PointGoal`` task (reach a point 1-3 m away within ``max_steps`` steps) on a held-out
world (``task_seeds("eval", n)``: worlds neither the world model nor any agent trained on). Before every
action, ``run_mpc`` re-syncs the learned world (``DeepVerse-v0``) on the simulator's true frame, CEM imagines
``population`` action sequences of ``horizon`` steps in it in one batched call, and the first action of the
best plan is executed in the simulator, which judges success. The oracle runs the same planner with the
simulator itself as its model: the gap between the two columns is what the world model costs.

    python examples/plan_cem.py                     # 5 episodes, horizon 4, population 32, 2 rounds (minutes on CPU)
    python examples/plan_cem.py --smoke             # 1 episode of 2 steps, horizon 2, population 4, 1 round

``deepverse agents eval --agents cem oracle-cem random --no-render-cache`` runs the same comparison, with
confidence intervals.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym

import deepverse_env  # noqa: F401  (registers DeepVerseSim-v0 and DeepVerse-v0)
from agents.planners import CEM, run_mpc
from agents.tasks import PointGoal, task_seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/plan_cem"), help="folder for results.json")
    parser.add_argument("--episodes", type=int, default=5, help="held-out episodes")
    parser.add_argument("--max-steps", type=int, default=30, help="the task's step budget")
    parser.add_argument("--horizon", type=int, default=4, help="actions per imagined sequence")
    parser.add_argument("--population", type=int, default=32, help="sequences imagined per round")
    parser.add_argument("--iterations", type=int, default=2, help="CEM rounds per action")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 1 episode, 2 steps, horizon 2, population 4, 1 round")
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.max_steps, args.horizon, args.population, args.iterations = 1, 2, 2, 4, 1

    sim = gym.make("DeepVerseSim-v0")  # the true world: episodes are played and judged here
    model = gym.make("DeepVerse-v0", render_cache=False)  # the shipped world model, on the paper's (faster) path
    task = PointGoal(max_steps=args.max_steps)
    planner = CEM(args.horizon, args.population, args.iterations)  # elites: a quarter of the population

    results = []
    print(f"{'seed':>8} | {'learned world: success steps distance':^38} | {'oracle: success steps distance':^32}")
    for seed in task_seeds("eval", args.episodes):
        learned = run_mpc(task, planner, model, sim, seed)  # imagine in DeepVerse-v0, re-synced every step
        oracle = run_mpc(task, planner, sim, sim, seed)  # imagine in the simulator itself
        results.append({"seed": seed, "learned": vars(learned), "oracle": vars(oracle)})
        print(f"{seed:>8} | {str(learned.success):>14} {learned.steps:>8} {learned.distance:>12.2f} m | "
              f"{str(oracle.success):>10} {oracle.steps:>8} {oracle.distance:>10.2f} m")
    for name in ("learned", "oracle"):
        wins = sum(r[name]["success"] for r in results)
        print(f"{name}: {wins}/{len(results)} episodes reached the goal")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
