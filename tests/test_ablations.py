"""``deepverse eval --compare``: the ablation tables from several checkpoints (Table 1 at two horizons per start,
the revisit table, comparison.json, a plot per metric), a model without depth scored on RGB and cameras with its
depth and self-consistency scores not available, clear errors."""
import json
import re

import pytest

from conftest import TINY_DIT, perturb_zero_init
from deepverse_env.ablations import BASELINES, HEADERS, run_compare
from deepverse_env.cli import main
from deepverse_env.evaluate import NEEDS_DEPTH, SHOWN
from world_model.model import DeepVerse, DeepVerseConfig

HORIZONS = [4, 8]  # --frames 8: frame frames // 2 and frame frames


def _save(root, name, **changes):
    """A tiny untrained model over the pixel codec (no codec network: ~3x faster rollouts than the tiny VAE)."""
    model = DeepVerse(DeepVerseConfig(**{
        "codec": "pixel", "height": 16, "width": 16, "dit_overrides": TINY_DIT, "sampler": {"steps": 1}, **changes
    }))
    perturb_zero_init(model)
    return model.save_pretrained(root / name)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A grounded model (two rows: its grounded and paper paths), a plain one and one without depth."""
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "grounded": _save(root, "grounded", render_cache=True, refiner_overrides={"width": 8}),
        "plain": _save(root, "plain"),
        "no_depth": _save(root, "no_depth", codec_overrides={"use_depth": False}),
    }


@pytest.fixture(scope="module")
def comparison(checkpoints, tmp_path_factory):
    """One comparison run through the command line, shared by the assertions: its output folder."""
    out = tmp_path_factory.mktemp("compare") / "ablations"
    models = [f"{name}={path}" for name, path in checkpoints.items()]
    assert main(["eval", "--compare", *models, "--seeds", "2000000:2000002", "--frames", "8", "--revisit-steps", "1",
                 "--out", str(out), "--no-progress"]) == 0
    return out


def test_compare_writes_tables_with_models_baselines_and_both_horizons(comparison):
    out = comparison
    text = (out / "comparison.md").read_text()
    tables = re.split(r"^## ", text, flags=re.M)[1:]
    assert [t.splitlines()[0] for t in tables] == [
        "Table 1, start from 4d (frame 4, then frame 8)", "Table 1, start from image (frame 4, then frame 8)",
        "Revisit (worlds [2000000, 2000001]: the returning view against the truth and against the view first seen; "
        "truth: the true returning view against the true first view)",
    ]
    for section in tables[:2]:
        table, means = section.split("Means over frames 1-8")  # Table 1, then every row's means over the horizon
        mean_header, _, *mean_rows = [line for line in means.splitlines() if line.startswith("|")]
        assert mean_header == "| model | " + " | ".join(HEADERS[m] for m in SHOWN) + " |"
        assert [r.split("|")[1].strip() for r in mean_rows] == [
            "grounded", "grounded (paper path)", "plain", "no_depth", *BASELINES
        ]
        header, _, *rows = [line for line in table.splitlines() if line.startswith("|")]
        assert header.startswith("| model | PSNR @4 | SSIM @4 | sharpness @4 | depth AbsRel @4 |")
        assert "| PSNR @8 |" in header and header.endswith("| temporal consistency @8 |")
        assert all(len(r.split("|")) == len(header.split("|")) == 2 * len(SHOWN) + 3 for r in rows)
        assert [r.split("|")[1].strip() for r in rows] == [
            "grounded", "grounded (paper path)", "plain", "no_depth", *BASELINES
        ]
        no_depth = dict(zip(header.split("|")[2:-1], rows[3].split("|")[2:-1]))  # column -> cell
        for column, cell in no_depth.items():
            not_available = any(name in column for name in ("depth AbsRel", "consistency")) or (
                "image" in table.splitlines()[0] and "trans." in column  # no metric scale from an image
            )
            assert (cell.strip() == "—") == not_available, (column, cell)  # PSNR, SSIM, camera errors: scored
    image_plain = tables[1].split("| plain |")[1].split("\n")[0].split("|")
    assert image_plain[SHOWN.index("trans_err_m")].strip() == "—"  # an image start has no metric scale
    revisit = [r for r in tables[2].splitlines() if r.startswith("| ")][1:]
    assert "| model | trajectory | steps | memory | PSNR | SSIM | PSNR vs first view | rot. err (deg) |" in tables[2]
    assert "| grounded (paper path) | full_turn | 1 | off |" in tables[2]
    assert "| no_depth | loop |" in tables[2]
    assert len(revisit) == 4 * 3 * 2 + 3  # 4 rows x 3 trajectories x memory on/off, truth per trajectory
    assert all((out / f"{m}.png").stat().st_size > 0 for m in SHOWN)


def test_compare_json_holds_each_models_own_numbers(comparison):
    out = comparison
    c = json.loads((out / "comparison.json").read_text())
    assert c["horizons"] == HORIZONS and set(c["table"]) == {"4d", "image"}
    for name, rows in (("grounded", {"grounded": "grounded", "paper path": "grounded (paper path)"}),
                       ("plain", {"paper path": "plain"}), ("no_depth", {"paper path": "no_depth"})):
        own = json.loads((out / name / "metrics.json").read_text())
        assert set(own["results"]) == set(rows)
        for path, row in rows.items():
            for start in ("4d", "image"):
                model = own["results"][path][start]["model"]
                assert c["table"][start][row] == {
                    m: [None if v is None else v[h - 1] for h in HORIZONS] for m, v in model.items()
                }
                assert c["mean"][start][row] == {
                    m: None if v is None else pytest.approx(sum(v) / len(v), abs=1e-4) for m, v in model.items()
                }
            assert c["revisit"][row] == own["revisit"][path]
    first = json.loads((out / "grounded" / "metrics.json").read_text())["results"]["grounded"]["4d"]
    assert c["table"]["4d"]["warp"]["psnr"] == [first["warp"]["psnr"][h - 1] for h in HORIZONS]
    # The model without depth (one path: no 3D cache): its depth and self-consistency scores are null, the rest real.
    for start in ("4d", "image"):
        row = c["table"][start]["no_depth"]
        assert all(row[m] == [None, None] for m in NEEDS_DEPTH)
        assert all(isinstance(x, float) for m in ("psnr", "ssim", "sharpness", "rot_err_deg") for x in row[m])
    assert all(isinstance(x, float) for x in c["table"]["4d"]["no_depth"]["trans_err_m"])
    for scores in c["revisit"]["no_depth"].values():
        assert scores["memory on"]["depth_abs_rel"] is None and isinstance(scores["memory on"]["psnr"], float)
    assert c["models"]["no_depth"]["out"] == "no_depth" and c["models"]["plain"]["out"] == "plain"
    assert set(c["revisit"]["truth"]) == {"out_and_back", "full_turn", "loop"}


@pytest.mark.parametrize(
    "models, message",
    [
        (["grounded"], "--compare: each model must be NAME=DIR .*got 'grounded'"),
        (["a=GROUNDED", "a=PLAIN"], "--compare names 'a' twice"),
        (["a=nowhere"], "--compare a=nowhere: checkpoint nowhere is not a directory"),
        (["a=EMPTY"], "--compare a=.*empty: checkpoint .*empty lacks config.json"),
        (["warp=GROUNDED"], "--compare: NAME must be .* got 'warp'"),
        (["a/b=GROUNDED"], "--compare: NAME must be .* got 'a/b'"),
        (["a=GROUNDED", "b=LARGE"], "--compare: the models must share one frame size and chunk .*b 32x32"),
        ([], "argument --compare: expected at least one argument"),
        (["a=GROUNDED", "--checkpoint", "GROUNDED"], "argument --checkpoint: not allowed with argument --compare"),
        (["a=GROUNDED", "--frames", "6"], "--frames must be a positive multiple of the chunk \\(4 frames\\), got 6"),
        (["a=GROUNDED", "--seeds", "5:5"], "--seeds '5:5' holds no seed"),
    ],
)
def test_compare_bad_arguments(models, message, checkpoints, tmp_path, capsys):
    """One line naming the bad value, exit status 2, nothing written (not even the output folder)."""
    (tmp_path / "empty").mkdir()
    folders = {"GROUNDED": checkpoints["grounded"], "PLAIN": checkpoints["plain"], "EMPTY": tmp_path / "empty"}
    if any("LARGE" in a for a in models):
        folders["LARGE"] = _save(tmp_path, "large", height=32, width=32)
    args = [re.sub("|".join(folders), lambda m: str(folders[m.group()]), a) for a in models]
    with pytest.raises(SystemExit) as e:
        main(["eval", "--out", str(tmp_path / "x"), "--no-progress", "--compare", *args])
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err.strip().splitlines()[-1])
    assert not (tmp_path / "x").exists()


def test_compare_needs_a_model():
    with pytest.raises(ValueError, match="--compare needs at least one NAME=DIR"):
        run_compare("unused", [])
