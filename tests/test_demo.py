"""`deepverse demo` end to end on a tiny model, and the files it writes re-open."""
import json

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from conftest import tiny_config

import world_model.model
from deepverse_env import export
from deepverse_env.cli import main
from deepverse_env.export import PointCloud, VideoWriter, read_ply, write_ply
from world_model.model import DeepVerse


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained model (16x16, the tiny VAE codec, one flow step) saved as users get it."""
    torch.manual_seed(0)
    return DeepVerse(tiny_config(sampler=dict(steps=1))).save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


def run(capsys, *argv) -> dict:
    assert main(list(map(str, argv))) == 0
    return json.loads(capsys.readouterr().out)


def ply_header(path) -> tuple[str, int]:
    """Format and vertex count, parsed the way a point-cloud viewer does."""
    with open(path, "rb") as f:
        lines = [f.readline().decode("ascii").strip() for _ in range(11)]
    assert lines[0] == "ply" and lines[-1] == "end_header"
    fmt = lines[1].split()[1]
    count = next(int(line.split()[2]) for line in lines if line.startswith("element vertex"))
    return fmt, count


def test_demo_end_to_end(checkpoint, tmp_path, capsys):
    out = tmp_path / "demo"
    summary = run(capsys, "demo", "--checkpoint", checkpoint, "--out", out, "--steps", 6, "--seed", 3, "--no-progress")
    assert summary["steps"] == 6 and summary["ground_truth"]
    for name in ("model", "copy_last_frame"):
        assert set(summary["mean"][name]) >= {"psnr", "depth_abs_rel", "rot_err_deg", "trans_err_m"}

    video = imageio.get_reader(summary["video"])
    frames = [f for f in video]
    assert len(frames) == 7  # the start and one per step
    assert frames[0].shape[0] > 2 * 256 and frames[0].shape[1] > 3 * 256  # prediction above truth, 3 panels each

    fmt, count = ply_header(summary["point_cloud"])
    points, colours = read_ply(summary["point_cloud"])
    assert fmt == "binary_little_endian" and count == len(points) == summary["points"] > 0
    assert np.isfinite(points).all() and colours.dtype == np.uint8

    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["step"] for r in metrics["per_step"]] == list(range(1, 7))
    assert [r["action"] for r in metrics["per_step"]] == ["forward"] * 6  # the tour starts walking out
    first = metrics["per_step"][0]
    assert first["copy_last_frame"]["rot_err_deg"] == 0.0 and isinstance(first["blocked"], bool)
    assert metrics["mean"] == summary["mean"]


def test_demo_of_a_motion_model_scores_its_blocked_steps(tmp_path, capsys):
    torch.manual_seed(0)
    model = DeepVerse(tiny_config(motion=True, sampler=dict(steps=1), motion_overrides={"points": 128, "neighbours": 16}))
    checkpoint = model.save_pretrained(tmp_path / "motion")
    run(capsys, "demo", "--checkpoint", checkpoint, "--out", tmp_path / "demo", "--steps", 3, "--no-progress")
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert all(isinstance(r["blocked_model"], bool) for r in metrics["per_step"])
    b = metrics["blocked"]
    assert b["steps"] == 3 and b["blocked_model"] == sum(r["blocked_model"] for r in metrics["per_step"])
    assert b["blocked_sim"] == sum(r["blocked"] for r in metrics["per_step"]) and 0 <= b["recall"] <= 1


def test_demo_from_an_image_with_an_action_script(checkpoint, tmp_path, capsys):
    picture = tmp_path / "photo.png"
    imageio.imwrite(picture, np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    summary = run(
        capsys, "demo", "--checkpoint", checkpoint, "--out", tmp_path / "out", "--image", picture,
        "--actions", "forward, turn_left", "--steps", 3, "--no-progress",
    )
    assert not summary["ground_truth"] and "mean" not in summary
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [r["action"] for r in metrics["per_step"]] == ["forward", "turn_left", "forward"]
    assert metrics["start"] == str(picture) and metrics["scene_seed"] == -1
    frame = imageio.get_reader(summary["video"]).get_data(0)
    assert frame.shape[0] < 2 * 256  # one row: nothing to compare with


def test_demo_errors_are_clear(checkpoint, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--actions", "forward,fly"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "'fly'" in err and "turn_left" in err  # names the valid actions
    monkeypatch.setattr(world_model.model, "SHIPPED", tmp_path / "pretrained" / "tiny")
    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(tmp_path)])
    assert e.value.code == 2 and "shipped model is missing" in capsys.readouterr().err


# ---- export ------------------------------------------------------------------------------------------


def test_ply_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 3)).astype(np.float32)
    colours = rng.integers(0, 256, (50, 3), dtype=np.uint8)
    for binary in (True, False):
        path = write_ply(tmp_path / f"{binary}.ply", points, colours, binary=binary)
        assert ply_header(path) == ("binary_little_endian" if binary else "ascii", 50)
        back, back_colours = read_ply(path)
        assert np.allclose(back, points, rtol=1e-5) and np.array_equal(back_colours, colours)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        write_ply(tmp_path / "bad.ply", points[:, :2], colours)


def test_point_cloud_is_a_bounded_uniform_sample():
    cloud = PointCloud(capacity=1000)
    for step in range(20):  # 20 steps of 500 points; the colour says which step
        cloud.add(np.full((500, 3), float(step), dtype=np.float32), np.full((500, 3), step, dtype=np.uint8))
    assert len(cloud) == 1000 and cloud.seen == 10_000 and cloud.nbytes() == 15_000
    per_step = np.bincount(cloud.colours[:, 0], minlength=20)
    assert per_step.min() > 20 and per_step.max() < 90  # ~50 each: early steps stay on the map
    cloud.add(np.full((3, 3), np.nan, dtype=np.float32), np.zeros((3, 3), dtype=np.uint8))
    assert cloud.seen == 10_000 and np.isfinite(cloud.points).all()


def test_video_mp4_and_gif_fallback(tmp_path, monkeypatch):
    frames = [np.full((30, 50, 3), 40 * i, dtype=np.uint8) for i in range(4)]
    for ffmpeg in (True, False):
        monkeypatch.setattr(export, "ffmpeg_available", lambda: ffmpeg)
        with VideoWriter(tmp_path / "clip.mp4", fps=4) as video:
            for f in frames:
                video.append(f)
        assert video.path.suffix == (".mp4" if ffmpeg else ".gif")
        back = [f for f in imageio.get_reader(video.path)]
        assert len(back) == 4 and back[0].shape[:2] == ((32, 64) if ffmpeg else (30, 50))  # padded to 16s for H.264
        assert abs(int(back[2][5, 5, 0]) - 80) <= 3


def test_demo_refuses_a_model_without_depth(tmp_path, capsys):
    """The demo shows predicted depth and a point cloud: a no-depth model is a one-line error, nothing written."""
    path = DeepVerse(tiny_config(codec_overrides={"use_depth": False})).save_pretrained(tmp_path / "no_depth")
    with pytest.raises(SystemExit) as e:
        main(["demo", "--checkpoint", str(path), "--out", str(tmp_path / "demo")])
    assert e.value.code == 2
    assert "deepverse demo (its depth view and point cloud) of" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()  # the folder made for it is removed again
