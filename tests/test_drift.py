"""``deepverse drift``: a long unsynced rollout's height, depth and fx against the simulator (its bad arguments are
in tests/test_bad_inputs_cli.py)."""
import json

import numpy as np
import pytest

from conftest import perturb_zero_init, tiny_config
from deepverse_env.cli import main
from world_model.model import DeepVerse


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = DeepVerse(tiny_config(render_cache=True, sampler={"steps": 1}, refiner_overrides={"width": 8}))
    perturb_zero_init(model)
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "drift")


def test_drift_writes_series_summary_and_plots(checkpoint, tmp_path, capsys):
    out = tmp_path / "drift"
    assert main(["drift", "--checkpoint", str(checkpoint), "--seeds", "2000000:2000002", "--steps", "7",
                 "--block", "3", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "drift.json").read_text())
    learned, true = result["series"]["learned"], result["series"]["true"]
    assert set(learned) == {"height", "median_depth", "fx", "scale"} and set(true) == {"height", "median_depth", "fx"}
    assert all(np.shape(v) == (2, 8) for v in [*learned.values(), *true.values()])  # start + 7 steps per world
    # The premise of the height figure: every action moves in the horizontal plane, so the truth stays at 0.
    assert np.abs(true["height"]).max() < 1e-4
    assert np.allclose(true["fx"], true["fx"][0][0])
    s = result["summary"]
    assert [b["steps"] for b in s["blocks"]] == [[1, 3], [4, 6], [7, 7]]
    assert s["height_err_max_m"] == pytest.approx(np.abs(np.array(learned["height"])).max(), abs=1e-3)
    assert (out / "drift.png").stat().st_size > 0 and (out / "frames.png").stat().st_size > 0
    assert "| 1-3 |" in (out / "drift.md").read_text()
    assert json.loads(capsys.readouterr().out)["out"] == str(out)

