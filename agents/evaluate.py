"""``deepverse agents eval``: agents judged in the true world on held-out task seeds.

Every agent plays the same episodes: the first ``episodes`` evaluation seeds (``TASK_SEEDS["eval"]`` from
``start``) on which the task can draw a goal, in ``DeepVerseSim-v0``, success judged by the simulator's
true camera. Agents:

| name              | what it is                                                                 |
|-------------------|----------------------------------------------------------------------------|
| `random`          | uniform random actions                                                      |
| `cem`, `mppi`     | MPC with the planner imagining in the learned world, re-synced every step   |
| `cem-open-loop`   | CEM imagining open loop from the true first frame (the model's own dream)   |
| `oracle-cem`      | CEM with the simulator as its model: the planner's ceiling                  |
| `ppo-imagination` | SB3 PPO trained only in the learned world (``--ppo-imagination DIR``)       |
| `ppo-sim`         | the same PPO trained in the simulator (``--ppo-sim DIR``)                   |

Output: ``results.json`` (per agent: each episode and the summary) and ``results.md``: success rate with
a 95% Wilson interval, mean return, mean steps to the goal (successes), final true distance, seconds per
episode.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from agents.planners import EpisodeResult, make_planner, run_mpc
from agents.rl import run_policy
from agents.tasks import TASK_SEEDS, Task, check_positive_int, make_task
from deepverse_env.sim.env import DeepVerseSimEnv

AGENTS = ("random", "cem", "mppi", "cem-open-loop", "oracle-cem", "ppo-imagination", "ppo-sim")
PLANNED = {"cem": ("cem", True), "mppi": ("mppi", True), "cem-open-loop": ("cem", False)}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a success rate.

    >>> [round(x, 3) for x in wilson(7, 10)]
    [0.397, 0.892]
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def eval_seeds(task: Task, sim: DeepVerseSimEnv, episodes: int, start: int = 0) -> tuple[list[int], list[int]]:
    """The first ``episodes`` evaluation seeds from ``start`` on which ``task`` draws a goal, and the seeds
    skipped on the way (no goal could be drawn in that world)."""
    seeds, skipped = [], []
    for seed in TASK_SEEDS["eval"][start:]:
        if len(seeds) == episodes:
            break
        try:
            task.reset(sim, seed)
        except RuntimeError:
            skipped.append(int(seed))
            continue
        seeds.append(int(seed))
    return seeds, skipped


class RandomPolicy:
    """Uniform random actions, seeded per episode (``predict`` as an SB3 policy)."""

    def __init__(self, n: int, seed: int):
        self.n, self.rng = n, np.random.default_rng(seed)

    def predict(self, observation, deterministic: bool = True):
        return int(self.rng.integers(self.n)), None


def summarize(results: list[EpisodeResult], seconds: list[float]) -> dict:
    n, k = len(results), sum(r.success for r in results)
    lo, hi = wilson(k, n)
    steps = [r.steps for r in results if r.success]
    return {
        "episodes": n, "successes": k, "success_rate": k / n if n else 0.0, "ci95": [lo, hi],
        "return": float(np.mean([r.episode_return for r in results])) if n else 0.0,
        "steps_to_goal": float(np.mean(steps)) if steps else None,
        "final_distance_m": float(np.mean([r.distance for r in results])) if n else 0.0,
        "seconds_per_episode": float(np.mean(seconds)) if n else 0.0,
    }


def markdown(report: dict) -> str:
    lines = [
        f"Task `{report['task']}`, {report['episodes']} held-out episodes (seeds {report['seeds'][0]}..{report['seeds'][-1]}), "
        f"success judged by the simulator.",
        "",
        "| agent | success | 95% CI | return | steps to goal | final distance (m) | s / episode |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["agents"].items():
        s = r["summary"]
        steps = "-" if s["steps_to_goal"] is None else f"{s['steps_to_goal']:.1f}"
        lines.append(
            f"| {name}{' (partial)' if r.get('partial') else ''} | {s['successes']}/{s['episodes']} ({s['success_rate']:.0%}) | {s['ci95'][0]:.2f}-{s['ci95'][1]:.2f} "
            f"| {s['return']:.2f} | {steps} | {s['final_distance_m']:.2f} | {s['seconds_per_episode']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def evaluate_agents(
    task, agents, episodes: int, out: str | Path, start: int = 0, checkpoint=None, planner: dict | None = None,
    ppo_imagination: str | Path | None = None, ppo_sim: str | Path | None = None, keys=(), progress: bool = True,
    **config,
) -> dict:
    """Play every agent on the same held-out episodes and write ``results.json`` and ``results.md``.

    Args:
        task: a task spec.  agents: names of ``AGENTS``.  episodes: how many.  out: the output folder.
        start: the first evaluation seed's offset in ``TASK_SEEDS["eval"]``.
        checkpoint, **config: the learned world the planners imagine in (``DeepVerse-v0`` arguments).
        planner: planner arguments (horizon, population, iterations, ...), the same for every planner.
        ppo_imagination, ppo_sim: folders of ``train_ppo`` runs (their ``ppo.zip`` and observation keys).
    """
    episodes = check_positive_int(episodes, "episodes")
    agents = list(agents)
    unknown = [a for a in agents if a not in AGENTS]
    if not agents or unknown:
        raise ValueError(f"unknown agents {unknown or agents}; expected some of {list(AGENTS)}")
    policies = {}
    for name, folder in (("ppo-imagination", ppo_imagination), ("ppo-sim", ppo_sim)):
        if name in agents:
            if folder is None or not (Path(folder) / "ppo.zip").is_file():
                raise ValueError(f"agent {name} needs a trained run: --{name} DIR holding ppo.zip, got {folder!r}")
            policies[name] = Path(folder)
    task = make_task(task)
    sim = gym.make("DeepVerseSim-v0").unwrapped
    seeds, skipped = eval_seeds(task, sim, episodes, check_non_negative(start))
    model = None
    if any(a in PLANNED for a in agents):
        model = gym.make("DeepVerse-v0", checkpoint=checkpoint, **config).unwrapped
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"task": task.name, "episodes": len(seeds), "seeds": seeds, "skipped_seeds": skipped,
              "planner": planner or {}, "model": {"checkpoint": None if checkpoint is None else str(checkpoint), **config},
              "agents": {}}
    for name in agents:
        run, seconds = _agent(name, task, sim, model, planner or {}, policies, keys), []
        results = []
        for seed in tqdm(seeds, desc=name, disable=not progress):
            t0 = time.perf_counter()
            results.append(run(seed))
            seconds.append(time.perf_counter() - t0)
            # After every episode: an interrupted run keeps what it played (an agent still playing is "partial").
            report["agents"][name] = {"summary": summarize(results, seconds), "episodes": [vars(r) for r in results],
                                      "partial": len(results) < len(seeds)}
            (out / "results.json").write_text(json.dumps(report, indent=2))
            (out / "results.md").write_text(markdown(report))
    return report


def check_non_negative(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"start must be a non-negative integer, got {value!r}")
    return int(value)


def _agent(name, task, sim, model, planner, policies, keys):
    """A function seed -> EpisodeResult playing agent ``name``."""
    if name == "random":
        return lambda seed: run_policy(task, RandomPolicy(len(sim.actions), seed), sim, seed)
    if name == "oracle-cem":
        cem = make_planner("cem", **planner)
        return lambda seed: run_mpc(task, cem, sim, sim, seed)
    if name in PLANNED:
        kind, resync = PLANNED[name]
        p = make_planner(kind, **planner)
        return lambda seed: run_mpc(task, p, model, sim, seed, resync=resync)
    from stable_baselines3 import PPO

    folder = policies[name]
    settings = json.loads((folder / "train.json").read_text())["settings"]
    if settings["task"] != task.name and (not isinstance(settings["task"], dict) or settings["task"].get("name") != task.name):
        raise ValueError(f"{folder} was trained on task {settings['task']!r}, not {task.name!r}")
    policy = PPO.load(folder / "ppo.zip", device="cpu")
    return lambda seed: run_policy(task, policy, sim, seed, settings["keys"])
