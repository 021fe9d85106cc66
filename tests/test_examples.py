"""The runnable examples in ``examples/``: each one in its ``--smoke`` mode, as a user would run it.

Every script runs as a subprocess from a foreign working directory (``tmp_path``), so it relies on nothing
but the installed packages and its own ``--out``; the test checks the exit status and the files written.
"""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest

from deepverse_env.export import read_ply

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = ("quickstart", "train_tiny", "plan_cem", "ppo_imagination", "long_rollout")


def run_smoke(name: str, tmp_path: Path) -> Path:
    """``python examples/NAME.py --smoke --out tmp_path/NAME`` from ``tmp_path``; returns the out folder."""
    out = tmp_path / name
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread each, no oversubscribed shared CPU
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--smoke", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out


def test_every_example_is_tested():
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == sorted(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name, capsys, monkeypatch):
    """``--help`` works and documents ``--out`` and ``--smoke`` (in this process: no second torch import)."""
    module = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="example")
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as stop:
        module["main"]()
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "--out" in text and "--smoke" in text


def test_quickstart(tmp_path):
    out = run_smoke("quickstart", tmp_path)
    for env_id in ("DeepVerseSim-v0", "DeepVerse-v0"):
        panel = iio.imread(out / f"{env_id}.png")
        assert panel.ndim == 3 and panel.shape[2] == 3 and panel.shape[0] >= 64


def test_train_tiny(tmp_path):
    out = run_smoke("train_tiny", tmp_path)
    for split in ("train", "val", "test"):
        assert (out / "data" / split / "episode_000000" / "episode.json").is_file()
    for stage in ("codec", "world", "refiner"):
        assert (out / "runs" / stage / "checkpoints" / "last.ckpt").is_file()
    for model in (out / "exports" / "codec", out / "exports" / "world", out / "model"):
        assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["render_cache"] and (config["height"], config["width"]) == (16, 16)


def test_plan_cem(tmp_path):
    out = run_smoke("plan_cem", tmp_path)
    (episode,) = json.loads((out / "results.json").read_text())
    for agent in ("learned", "oracle"):
        assert 1 <= episode[agent]["steps"] <= 2 and episode[agent]["distance"] >= 0


def test_ppo_imagination(tmp_path):
    out = run_smoke("ppo_imagination", tmp_path)
    assert (out / "ppo.zip").is_file() and (out / "checkpoints" / "ppo_32_steps.zip").is_file()
    assert json.loads((out / "train.json").read_text())["steps_done"] == 32


def test_long_rollout(tmp_path):
    out = run_smoke("long_rollout", tmp_path)
    videos = [p for p in (out / "rollout.mp4", out / "rollout.gif") if p.is_file()]
    assert len(videos) == 1 and videos[0].stat().st_size > 0
    points, colours = read_ply(out / "world.ply")
    assert len(points) > 0 and colours.shape == points.shape
