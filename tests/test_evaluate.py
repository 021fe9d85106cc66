"""``deepverse eval``: per-horizon scores beside the baselines, self-consistency, both starts, both paths, the
revisit suite, clear errors."""
import json
import math
import re

import pytest
import torch

from conftest import perturb_zero_init, tiny_config
from deepverse_env.cli import main
from deepverse_env.evaluate import parse_seeds, revisit_trajectories
from world_model.model import DeepVerse


@pytest.fixture(scope="module")
def grounded_checkpoint(tmp_path_factory):
    model = DeepVerse(tiny_config(render_cache=True, sampler={"steps": 1}, refiner_overrides={"width": 8}))
    perturb_zero_init(model)
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "grounded")


def test_eval_writes_scores_plots_and_report(grounded_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(grounded_checkpoint), "--seeds", "2000000:2000002", "--frames", "8",
                 "--out", str(out), "--no-progress", "--env", "carry_decoder=false", "--revisit-steps", "1"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["env"] == {"carry_decoder": False}
    assert set(summary["results"]) == {"grounded", "paper path"}
    consistency = {"consistency_4d", "temporal_consistency", "consistency_coverage"}
    for start in ("4d", "image"):
        rows = summary["results"]["grounded"][start]
        assert set(rows) == {"model", "copy_first", "warp", "exact_cache", "truth"}
        assert consistency <= set(rows["model"]) and set(rows["truth"]) == consistency  # an image start keeps them
        assert not consistency & (set(rows["copy_first"]) | set(rows["warp"]) | set(rows["exact_cache"]))
        assert all(len(v) == 8 for row in ("model", "truth") for v in rows[row].values())
        assert ("trans_err_m" in rows["model"]) == (start == "4d")  # an image start has no metric scale
        assert all(0 < c <= 1 for c in rows["truth"]["consistency_coverage"])
        assert all(10 < c <= 100 for c in rows["truth"]["consistency_4d"])
    assert summary["blocked"] == {path: {"4d": None, "image": None} for path in ("grounded", "paper path")}  # no motion model
    for wall in summary["wall"].values():
        assert len(wall["pos_err_m"]) == 8 and wall["blocked"] is None and wall["walked_sim_m"] >= 0
    assert summary["revisit_worlds"] == [2000000, 2000001]
    for suite in summary["revisit"].values():
        assert set(suite) == {"out_and_back", "full_turn", "loop"}
        for r in suite.values():
            assert set(r) == {"steps", "memory on", "memory off", "truth"} and r["steps"] == 1  # capped
            for row in ("memory on", "memory off"):
                assert {"psnr", "ssim", "sharpness", "rot_err_deg", "psnr_first_view", "ssim_first_view"} <= set(r[row])
            assert set(r["truth"]) == {"psnr_first_view", "ssim_first_view"}
    for metric in ("sharpness", "consistency_4d", "temporal_consistency"):
        assert (out / f"{metric}.png").stat().st_size > 0
    assert (out / "frames-image-grounded.png").exists()
    report = (out / "report.md").read_text()
    assert "| copy_first | psnr |" in report and "| exact_cache | psnr |" in report and "## Wall" in report and "| truth | consistency_4d |" in report
    assert "| paper path | full_turn | 1 | memory off |" in report
    assert json.loads(capsys.readouterr().out)["report"] == str(out / "report.md")


def test_eval_of_a_motion_model_scores_its_blocked_steps_and_the_wall(tmp_path, capsys):
    model = DeepVerse(tiny_config(motion=True, render_cache=True, sampler={"steps": 1}, refiner_overrides={"width": 8},
                                  motion_overrides={"points": 128, "neighbours": 16}))
    checkpoint = model.save_pretrained(tmp_path / "motion")
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(checkpoint), "--seeds", "2000000:2000002", "--frames", "8", "--starts", "4d",
                 "--out", str(out), "--no-progress", "--revisit-steps", "1"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    b = summary["blocked"]["grounded"]["4d"]
    assert b["steps"] == 2 * 2 and 0 <= b["precision"] <= 1 and 0 <= b["recall"] <= 1
    assert summary["blocked"]["paper path"]["4d"] is None  # the paper path's cameras come from the raymap
    wall = summary["wall"]["grounded"]
    assert wall["blocked"]["steps"] == 2 * 8 and len(wall["pos_err_m"]) == 8 and summary["wall"]["paper path"]["blocked"] is None
    assert "Blocked steps of the random scripts, grounded, 4d start" in (out / "report.md").read_text()


def test_revisit_trajectories_from_the_step_length_and_turn_angle():
    """At 4 frames a step the basic set moves 0.32 m and turns 12 degrees: out 6 steps, a half turn 15, a quarter
    turn 7.5 (rounded to 7 or 8 at each corner so the loop turns 360 degrees in all); every trajectory fits the
    60-step cap."""
    paths = revisit_trajectories(4)
    forward, turn = ("forward",), ("turn_left",)
    assert paths["out_and_back"] == forward * 6 + turn * 15 + forward * 6 + turn * 15  # the demo's tour
    assert paths["full_turn"] == turn * 30
    sides = "".join("f" if a == "forward" else "t" for a in paths["loop"]).split("f" * 6)  # ['', turns, ...]
    assert sides[0] == "" and sorted(len(c) for c in sides[1:]) == [7, 7, 8, 8]
    for frames_per_step in (4, 8):
        for path in revisit_trajectories(frames_per_step).values():
            assert len(path) <= 60
            assert math.isclose(path.count("turn_left") * 3 * frames_per_step, 360)  # one full turn: back to the start heading


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "6"], "--frames must be a positive multiple of the chunk \\(4 frames\\), got 6"),
        (["--seeds", "5:5"], "--seeds '5:5' holds no seed"),
        (["--seeds", "a-b"], "--seeds must be A:B or a comma-separated list"),
        (["--starts", "video"], "--starts must name 4d and/or image"),
        (["--checkpoint", "nowhere"], "nowhere"),
        (["--env", "dtype"], "argument --env: must be KEY=VALUE, got 'dtype'"),
        (["--env", "colour=red"], "env options \\['colour'\\] are not settings of the learned env"),
        (["--env", "render_cache=false"], "env options \\['render_cache'\\] are not settings"),
        (["--env", "use_memory=maybe"], "use_memory must be True or False, got 'maybe'"),
        (["--revisit-steps", "0"], "argument --revisit-steps: must be a positive integer, got '0'"),
        (["--device", "tpu9"], "device must be a torch device such as 'cpu' or 'cuda', got 'tpu9'"),
        (["--env", "device=tpu9"], "device must be a torch device"),
        (["--device", "cpu", "--env", "device=cpu"], "give the device once: --device cpu or --env device=cpu"),
        pytest.param(["--device", "cuda"], "torch sees no CUDA device", marks=pytest.mark.skipif(
            torch.cuda.is_available(), reason="a CUDA device is present")),
    ],
)
def test_eval_bad_arguments(args, message, grounded_checkpoint, tmp_path, capsys):
    args = ["eval", "--out", str(tmp_path / "x"), *args]
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(grounded_checkpoint)]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "x" / "metrics.json").exists()


def test_parse_seeds():
    assert parse_seeds("3:6") == [3, 4, 5] and parse_seeds("1,4") == [1, 4]
