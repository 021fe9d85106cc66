"""``deepverse eval``: per-horizon scores beside the baselines, both starts, both paths, clear errors."""
import json
import re

import pytest

from conftest import perturb_zero_init, tiny_config
from deepverse_env.cli import main
from deepverse_env.evaluate import parse_seeds
from world_model.model import DeepVerse


@pytest.fixture(scope="module")
def grounded_checkpoint(tmp_path_factory):
    model = DeepVerse(tiny_config(render_cache=True, sampler={"steps": 1}, refiner_overrides={"width": 8}))
    perturb_zero_init(model)
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "grounded")


def test_eval_writes_scores_plots_and_report(grounded_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(grounded_checkpoint), "--seeds", "2000000:2000002", "--frames", "8",
                 "--out", str(out), "--no-progress", "--env", "carry_decoder=false"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["env"] == {"carry_decoder": False}
    assert set(summary["results"]) == {"grounded", "paper path"}
    for start in ("4d", "image"):
        rows = summary["results"]["grounded"][start]
        assert set(rows) == {"model", "copy_first", "warp"}
        assert all(len(v) == 8 for v in rows["model"].values())
        assert ("trans_err_m" in rows["model"]) == (start == "4d")  # an image start has no metric scale
    assert {"psnr", "sharpness"} <= set(summary["revisit"]["grounded"]["model"])
    assert (out / "sharpness.png").stat().st_size > 0 and (out / "frames-image-grounded.png").exists()
    assert "| copy_first | psnr |" in (out / "report.md").read_text()
    assert json.loads(capsys.readouterr().out)["report"] == str(out / "report.md")


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
