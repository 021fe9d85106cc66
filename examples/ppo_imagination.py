"""Train a PPO agent entirely inside the learned world, then test it in the true world.

``agents.rl.train_ppo`` trains stable-baselines3 PPO on ``PointGoal`` episodes stepped in ``num_envs``
batched ``DeepVerse-v0`` worlds: each episode starts from a simulator frame, then the world rolls on from the
model's own predictions, and the policy (which sees the goal's distance and bearing from the *predicted*
camera) is rewarded on predicted frames. The saved policy is then played in ``DeepVerseSim-v0`` on
held-out worlds (``agents.rl.run_policy``, success judged by the simulator's true camera), beside a
uniformly random policy on the same episodes.

    python examples/ppo_imagination.py              # 20,480 steps in 16 worlds (hours on CPU), 20 test episodes
    python examples/ppo_imagination.py --smoke      # 32 steps in 2 worlds, 1 test episode of 2 steps

Training is resumable: the same command with the same ``--out`` goes on from the last checkpoint
(``OUT/checkpoints``). ``deepverse agents train`` / ``deepverse agents eval`` are the command-line versions.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
from stable_baselines3 import PPO

import deepverse_env  # noqa: F401  (registers DeepVerseSim-v0)
from agents.evaluate import RandomPolicy
from agents.rl import run_policy, train_ppo
from agents.tasks import make_task, task_seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/ppo_imagination"), help="the run's folder (ppo.zip, checkpoints)")
    parser.add_argument("--steps", type=int, default=20480, help="env steps of training, over all worlds")
    parser.add_argument("--num-envs", type=int, default=16, help="learned worlds stepped together")
    parser.add_argument("--episodes", type=int, default=20, help="held-out test episodes in the simulator")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 32 steps in 2 worlds, 1 test episode of 2 steps")
    args = parser.parse_args()
    ppo, save_every, test_task = None, 2048, make_task("point_goal")
    if args.smoke:
        args.steps, args.num_envs, args.episodes, save_every = 32, 2, 1, 16
        ppo = {"n_steps": 16, "batch_size": 32}  # one PPO update of 16 steps x 2 worlds
        test_task = make_task({"name": "point_goal", "max_steps": 2})

    path = train_ppo(
        "point_goal", "learned", args.steps, args.out, num_envs=args.num_envs, save_every=save_every,
        progress_bar=not args.smoke, ppo=ppo, render_cache=False,  # the learned world on the paper's (faster) path
    )
    print(f"policy: {path}")

    policy = PPO.load(path, device="cpu")
    sim = gym.make("DeepVerseSim-v0")
    n_actions = sim.action_space.n
    wins = {"ppo (imagination)": 0, "random": 0}
    for seed in task_seeds("eval", args.episodes):
        trained = run_policy(test_task, policy, sim, seed)
        baseline = run_policy(test_task, RandomPolicy(n_actions, seed), sim, seed)
        wins["ppo (imagination)"] += trained.success
        wins["random"] += baseline.success
        print(f"seed {seed}: ppo success {trained.success} in {trained.steps} steps, {trained.distance:.2f} m left | "
              f"random success {baseline.success}, {baseline.distance:.2f} m left")
    for name, k in wins.items():
        print(f"{name}: success rate {k / args.episodes:.0%} ({k}/{args.episodes})")


if __name__ == "__main__":
    main()
