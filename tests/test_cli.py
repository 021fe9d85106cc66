"""The `deepverse` command line: its subcommands, and `bench sim|model|env` at tiny sizes (seconds)."""
import argparse
import json

import pytest
import torch
from conftest import tiny_config

from deepverse_env.cli import build_parser, main
from world_model.model import DeepVerse


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommand parsers by name, as argparse dispatches on them."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def run(capsys, *argv) -> dict:
    """``main`` on the arguments; the JSON it prints, checked against the ``--out`` file it wrote."""
    argv = list(map(str, argv))
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    with open(argv[argv.index("--out") + 1]) as f:
        assert json.load(f) == result
    return result


def test_help_lists_commands(capsys):
    commands = subcommands(build_parser())
    assert set(commands) == {"collect", "bench", "demo", "eval", "drift", "agents", "play"}
    assert set(subcommands(commands["bench"])) == {"sim", "model", "env", "train"}
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in commands)


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["teleport"])
    assert e.value.code == 2 and "teleport" in capsys.readouterr().err


# ---- bench ------------------------------------------------------------------------------------------


def test_bench_sim(tmp_path, capsys):
    result = run(
        capsys, "bench", "sim", "--height", 16, "--width", 16, "--steps", 3, "--render-batches", 1, 2,
        "--num-envs", 2, "--out", tmp_path / "sim.json",
    )
    assert (result["height"], result["width"], result["frames_per_step"]) == (16, 16, 4)
    for key in ("render_fps_batch1", "render_fps_batch2", "env_fps", "env_steps_per_s", "vector2_fps"):
        assert result[key] > 0, key
    assert "render_fps_batch64" not in result and "vector16_fps" not in result  # only the sizes asked for


def test_bench_model(tmp_path, capsys):
    result = run(
        capsys, "bench", "model", "--preset", "tiny", "--batch-sizes", 1, "--repeats", 1, "--chunks", 1,
        "--out", tmp_path / "model.json",
    )
    assert result["preset"] == "tiny" and result["parameters"] > 0 and set(result["batches"]) == {"1"}
    batch = result["batches"]["1"]
    for key in ("flops_per_flow_step", "flops_per_chunk", "ms_per_flow_step", "ms_per_chunk", "frames_per_s", "mfu_fp32"):
        assert batch[key] > 0, key
    assert batch["flops_per_chunk"] > batch["flops_per_flow_step"]


def test_bench_env(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = DeepVerse(tiny_config(sampler=dict(steps=1))).save_pretrained(tmp_path / "tiny")
    result = run(
        capsys, "bench", "env", "--checkpoint", checkpoint, "--num-envs", 2, "--steps", 2, "--out", tmp_path / "b.json"
    )
    assert result["checkpoint"] == str(checkpoint) and result["num_envs"] == 2 and result["flow_steps"] == 1
    for key in ("env_steps_per_s", "env_fps", "vector2_fps", "sim_env_fps", "sim_vector2_fps", "state_mib_per_world"):
        assert result[key] > 0, key
    assert result["vector_speedup"] == pytest.approx(result["vector2_fps"] / result["env_fps"], rel=0.02)
    assert result["ratio_to_sim"] == pytest.approx(result["env_fps"] / result["sim_env_fps"], rel=0.02)
    assert "profile" not in result
    assert set(result["dtypes"]) == {"float32", "bfloat16"}  # both measured in this run, float32 at the top level
    assert result["env_fps"] == result["dtypes"]["float32"]["env_fps"] and result["dtypes"]["bfloat16"]["env_fps"] > 0
    assert result["fastest_dtype"] == max(result["dtypes"], key=lambda d: result["dtypes"][d]["env_fps"])
    assert result["auto_dtype"]["dtype"] == "float32" and result["auto_dtype"]["override"] == "float32"  # tests pin it


def test_bench_env_times_pose_only_imagination_beside_the_simulators(tmp_path, capsys):
    torch.manual_seed(0)
    model = DeepVerse(tiny_config(motion=True, sampler=dict(steps=1), motion_overrides={"points": 128, "neighbours": 16}))
    checkpoint = model.save_pretrained(tmp_path / "motion")
    result = run(capsys, "bench", "env", "--checkpoint", checkpoint, "--num-envs", 2, "--steps", 2, "--dtypes", "float32",
                 "--pose-only", 8, 3, "--out", tmp_path / "b.json")
    pose = result["dtypes"]["float32"]["pose_only"]
    assert pose["candidates"] == 8 and pose["steps"] == 3 and pose["candidate_steps_per_s"] == pose["at_reset"]["candidate_steps_per_s"] > 0
    assert pose["after_12_steps"]["candidate_steps_per_s"] > 0
    assert result["pose_only"] == pose and result["sim_pose_only_candidate_steps_per_s"] > 0


def test_bench_env_profile_breaks_a_step_into_parts(tmp_path, capsys):
    """--profile times each part of a step; the parts and 'other' add up to the step, a slide is in it
    (encode, anchor), and the world's methods are its own again afterwards."""
    torch.manual_seed(0)
    checkpoint = DeepVerse(tiny_config(render_cache=True, sampler=dict(steps=1), refiner_overrides={"width": 8}))
    checkpoint = checkpoint.save_pretrained(tmp_path / "tiny")
    result = run(capsys, "bench", "env", "--checkpoint", checkpoint, "--num-envs", 2, "--steps", 7, "--profile",
                 "--dtypes", "float32", "--imagine", 3, 2, "--out", tmp_path / "b.json")
    assert set(result["dtypes"]) == {"float32"}
    assert result["imagine"]["candidates"] == 3 and result["imagine"]["steps"] == 2 and result["imagine"]["seconds"] > 0
    for label in ("env", "vector2"):
        p = result["profile"][label]
        assert p["steps"] == 8  # the warm-up step and 7 timed ones
        assert set(p["ms"]) == {"dit", "encode", "decode", "cameras", "render", "refine", "memory", "anchor", "hooks",
                                "maps", "other"}
        assert sum(p["ms"].values()) == pytest.approx(p["ms_per_step"], rel=0.01)
        assert sum(p["share"].values()) == pytest.approx(1.0, abs=0.01)
        assert min(p["ms"][k] for k in ("dit", "encode", "decode", "anchor", "refine")) > 0  # windows slid (cache_max 6)


def test_step_profile_restores_the_world(tmp_path):
    from deepverse_env.learned.env import DeepVerseEnv
    from deepverse_env.profiling import StepProfile

    env = DeepVerseEnv(checkpoint=DeepVerse(tiny_config(sampler=dict(steps=1))))
    env.reset(seed=0)
    with StepProfile(env.world) as profile:
        env.step(0)
    assert profile.report()["steps"] == 1 and "render" not in profile.report()["ms"]  # no 3D cache
    assert "step" not in vars(env.world) and "next_latent" not in vars(env.world.rollout.model)
    with pytest.raises(RuntimeError, match="no step was profiled"):
        StepProfile(env.world).report()
    with StepProfile(env.world) as profile:  # a reset encodes and decodes, but it is no step's time
        env.reset(seed=1)
    assert not any(profile.seconds.values())
