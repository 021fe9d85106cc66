"""Train a tiny DeepVerse world model from scratch, then drive it as a Gymnasium env.

The project's three training stages, run with its Lightning CLI (``deepverse-train``, i.e.
``world_model.cli.cli_main``; every command is printed as you would type it) on a dataset recorded here:

1. record episodes from the simulator (``deepverse_env.collect.collect``) into ``OUT/data/{train,val,test}``,
   with the world seeds the data module expects for each split (``SPLIT_SEED_OFFSET``);
2. stage 1, the causal VAE codec: ``configs/tiny_codec.yaml``, then ``deepverse-train export``;
3. stage 2, the MM-DiT + text encoder on the frozen codec: ``configs/tiny.yaml`` with ``codec_weights`` = 2's export;
4. stage 1b, the 3D-cache refiner on the frozen world model: ``configs/tiny_refiner.yaml`` with
   ``init_weights`` = 3's export; its export is the finished model (``OUT/model``);
5. ``gym.make("DeepVerse-v0", checkpoint=OUT/model)``: reset and step it.

The configs are used as shipped; the command line overrides only the data (folder, episodes, frame size), the
run folders, the step counts and the batch size (``--trainer.max_steps``, ``--data.batch_size``, ...). Running
the script again with the same ``--out`` resumes each stage (``--ckpt_path last``). The default run is short
(about half an hour on two CPU cores) and gives a blurry model; the shipped one trained the configs' own
lengths (hours, see the comments in ``configs/``).

    python examples/train_tiny.py                   # 64 episodes, 300 + 300 + 100 steps, in out/train_tiny/
    python examples/train_tiny.py --smoke           # 2 short 16x16 episodes, 2 steps a stage, batch 1 (seconds)
"""
from __future__ import annotations

import argparse
import shlex
import warnings
from pathlib import Path

import gymnasium as gym

import deepverse_env  # noqa: F401  (registers DeepVerse-v0)
from deepverse_env.collect import collect
from world_model.cli import cli_main
from world_model.datamodule import SPLIT_SEED_OFFSET

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the repository's configs/ (not installed with the package)


def deepverse_train(*args) -> None:
    """``deepverse-train ARGS``, in this process."""
    args = [str(a) for a in args]
    print("\n$ deepverse-train " + shlex.join(args), flush=True)
    warnings.filterwarnings("ignore", "LightningCLI's args parameter")  # it sees this script's own sys.argv
    cli_main(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/train_tiny"), help="data, runs and exports go here")
    parser.add_argument("--episodes", type=int, default=64, help="training episodes to record (val and test: 4 each)")
    parser.add_argument("--episode-steps", type=int, default=64, help="env steps per recorded episode")
    parser.add_argument("--codec-steps", type=int, default=300, help="optimizer steps of stage 1")
    parser.add_argument("--world-steps", type=int, default=300, help="optimizer steps of stage 2")
    parser.add_argument("--refiner-steps", type=int, default=100, help="optimizer steps of stage 1b")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per batch (default: each config's)")
    parser.add_argument("--size", type=int, default=64, help="frame height and width, a multiple of 16 (the configs': 64)")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 2 episodes of 6 steps, 16x16, 2 steps a stage, batch 1")
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.episode_steps, args.batch_size, args.size = 2, 6, 1, 16
        args.codec_steps = args.world_steps = args.refiner_steps = 2
    out = args.out.resolve()
    data, runs, exports = out / "data", out / "runs", out / "exports"

    # 1. The dataset: train / val / test from disjoint world seeds, as DeepVerseDataModule would record them.
    episodes = {"train": args.episodes, "val": 1 if args.smoke else 4, "test": 1 if args.smoke else 4}
    for split, n in episodes.items():
        summary = collect(data / split, episodes=n, steps=args.episode_steps, seed=SPLIT_SEED_OFFSET[split],
                          height=args.size, width=args.size, progress=False)
        print(f"{split}: {summary['episodes_written']} episodes written, {summary['episodes_skipped']} already there, "
              f"{summary['clips_passing_filters']} clips")

    def fit(config: str, run: str, steps: int, overrides: dict | None = None) -> Path:
        """``deepverse-train fit`` of one stage on our data; returns its last checkpoint."""
        settings = {
            "data.data_dir": data, "data.steps": args.episode_steps, "data.height": args.size, "data.width": args.size,
            **{f"data.{split}_episodes": n for split, n in episodes.items()},
            "model.init_args.model.height": args.size, "model.init_args.model.width": args.size,
            "trainer.default_root_dir": runs / run, "trainer.max_steps": steps,
            "trainer.val_check_interval": steps,  # validate once, at the end
            **(overrides or {}),
        }
        if args.batch_size:
            settings["data.batch_size"] = args.batch_size
        if args.smoke:  # no validation, quiet
            settings |= {"trainer.limit_val_batches": 0, "trainer.enable_progress_bar": "false",
                         "trainer.enable_model_summary": "false"}
        last = runs / run / "checkpoints" / "last.ckpt"
        if last.exists():  # running this script again resumes each stage (up to its max_steps)
            settings["ckpt_path"] = "last"
        deepverse_train("fit", "--config", CONFIGS / config, *(a for k, v in settings.items() for a in (f"--{k}", v)))
        return last

    # 2. Stage 1: the codec.
    ckpt = fit("tiny_codec.yaml", "codec", args.codec_steps)
    deepverse_train("export", "--ckpt", ckpt, "--out", exports / "codec")
    # 3. Stage 2: the world model over the frozen codec.
    ckpt = fit("tiny.yaml", "world", args.world_steps, {"model.init_args.codec_weights": exports / "codec"})
    deepverse_train("export", "--ckpt", ckpt, "--out", exports / "world")
    # 4. Stage 1b: the cache refiner over the frozen world model; its export is the whole model.
    ckpt = fit("tiny_refiner.yaml", "refiner", args.refiner_steps, {"model.init_args.init_weights": exports / "world"})
    model_dir = out / "model"
    deepverse_train("export", "--ckpt", ckpt, "--out", model_dir)

    # 5. The trained model as a Gymnasium env.
    env = gym.make("DeepVerse-v0", checkpoint=model_dir)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.unwrapped.actions.index("forward"))
    x, y, z = obs["pose"][:3, 3]
    print(f"\n{model_dir}: one step forward -> rgb {obs['rgb'].shape}, depth {obs['depth'].shape}, "
          f"position ({x:+.2f}, {y:+.2f}, {z:+.2f}) m; a forward step is 0.32 m in the simulator")
    env.close()


if __name__ == "__main__":
    main()
