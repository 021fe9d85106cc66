"""Bad `deepverse` command lines: one clear line naming the bad value, exit status 2, nothing written
(tmp_path stays empty), and nothing run (no model loaded, no world simulated); ``--debug`` re-raises.
The demo's picture loader reads any common bit depth (seconds: no command here loads a model)."""
import struct
import zlib

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import deepverse_env.cli as cli
import deepverse_env.collect
import world_model.model
from deepverse_env.cli import expected, main
from deepverse_env.demo import load_image, read_image, run_demo, to_rgb8
from deepverse_env.evaluate import run_eval

# imageio tries its deprecated plugins (vendored tifffile, DICOM) on TIFFs and on files it cannot read
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:imageio.*", "ignore:.*(tifffile|DICOM).*")


@pytest.fixture(autouse=True)
def nothing_runs(monkeypatch, tmp_path):
    """Fail the test if a command gets as far as simulating or loading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the command ran although its input was bad")

    monkeypatch.setattr(deepverse_env.collect, "collect", refuse)
    monkeypatch.setattr(cli, "bench_sim", refuse)
    monkeypatch.setattr(world_model.model, "SHIPPED", tmp_path / "no-model-here")  # a load would fail loudly


def fails(capsys, argv) -> str:
    """``main(argv)``: exit status 2 and one error line (after argparse's usage, if any); that line."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2, err
    assert "error:" in err[-1] and not any("Traceback" in line for line in err)
    return err[-1]


# ---- argparse: counts and seeds ------------------------------------------------------------------


COLLECT = ["collect", "--episodes", 1, "--steps", 1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "sim", "--steps", 1], "argument --steps: must be an integer >= 2, got '1'"),
        (["bench", "sim", "--steps", "ten"], "argument --steps: must be an integer >= 2, got 'ten'"),
        (["bench", "sim", "--height", 0], "argument --height: must be a positive integer, got '0'"),
        (["bench", "sim", "--frames-per-step", -2], "argument --frames-per-step: must be a positive integer, got '-2'"),
        (["bench", "sim", "--render-batches", 1, 0], "argument --render-batches: must be a positive integer, got '0'"),
        (["bench", "sim", "--num-envs", -4], "argument --num-envs: must be a positive integer, got '-4'"),
        (["bench", "model", "--repeats", 0], "argument --repeats: must be a positive integer, got '0'"),
        (["bench", "model", "--chunks", 0], "argument --chunks: must be a positive integer, got '0'"),
        (["bench", "model", "--batch-sizes", 0], "argument --batch-sizes: must be a positive integer, got '0'"),
        (["bench", "env", "--num-envs", 0], "argument --num-envs: must be a positive integer, got '0'"),
        (["bench", "env", "--steps", 0], "argument --steps: must be a positive integer, got '0'"),
        (["bench", "env", "--imagine", 0, 8], "argument --imagine: must be a positive integer, got '0'"),
        (["bench", "env", "--dtypes", "float64"],
         "argument --dtypes: invalid choice: 'float64' (choose from 'float32', 'bfloat16', 'float16')"),
        ([*COLLECT, "--seed", -1], "argument --seed: must be a non-negative integer, got '-1'"),
        (["collect", "--episodes", 0, "--steps", 1], "argument --episodes: must be a positive integer, got '0'"),
        (["collect", "--episodes", 1, "--steps", 0], "argument --steps: must be a positive integer, got '0'"),
        ([*COLLECT, "--num-envs", 0], "argument --num-envs: must be a positive integer, got '0'"),
        ([*COLLECT, "--frames-per-step", 0], "argument --frames-per-step: must be a positive integer, got '0'"),
        ([*COLLECT, "--width", 1.5], "argument --width: must be a positive integer, got '1.5'"),
        ([*COLLECT, "--fov", 180], "argument --fov: must be degrees in (0, 180), got '180'"),
        ([*COLLECT, "--fov", "nan"], "argument --fov: must be degrees in (0, 180), got 'nan'"),
        (["demo", "--seed", -1], "argument --seed: must be a non-negative integer, got '-1'"),
        (["demo", "--steps", 0], "argument --steps: must be a positive integer, got '0'"),
        (["eval", "--frames", 0], "argument --frames: must be a positive integer, got '0'"),
        (["eval", "--seed", -3], "argument --seed: must be a non-negative integer, got '-3'"),
        (["drift", "--steps", 0], "argument --steps: must be a positive integer, got '0'"),
        (["drift", "--block", 0], "argument --block: must be a positive integer, got '0'"),
        (["drift", "--seed", -1], "argument --seed: must be a non-negative integer, got '-1'"),
    ],
)
def test_bad_counts_are_argparse_errors(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    argv = argv + ["--out", out / "result.json" if argv[0] == "bench" else out]
    assert fails(capsys, argv).endswith(message)
    assert not any(tmp_path.iterdir())


# ---- command-level errors: before any work, nothing written ----------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--actions", ""], "deepverse demo: error: --actions names no action; expected comma-separated names"),
        (["demo", "--actions", " , "], "--actions names no action"),
        (["demo", "--actions", "forward,fly"], "action set 'basic' has no action 'fly'"),
        (["demo", "--action-set", "dance"], "'dance'"),
        (["demo", "--image", "{tmp}/missing.png"], "image '{tmp}/missing.png' does not exist"),
        (["demo", "--image", "{tmp}"], "image '{tmp}' is not a file"),
        (["eval", "--seeds=-3:2"], "deepverse eval: error: --seeds must be non-negative world seeds, got '-3:2'"),
        (["eval", "--seeds", "5:5"], "--seeds '5:5' holds no seed"),
        (["eval", "--starts", "4d", "video"], "--starts must name 4d and/or image, got ['4d', 'video']"),
        (["drift", "--seeds", "5:5"], "deepverse drift: error: --seeds '5:5' holds no seed"),
        (["drift", "--checkpoint", "{tmp}/nowhere"], "{tmp}/nowhere"),
    ],
)
def test_bad_command_input_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    fill = lambda s: s.replace("{tmp}", str(tmp_path))  # noqa: E731
    assert fill(message) in fails(capsys, [fill(a) for a in argv] + ["--out", tmp_path / "out"])
    assert not any(tmp_path.iterdir())  # the --out folder made for the run is gone again


def test_unreadable_image_is_one_line(tmp_path, capsys):
    picture = tmp_path / "in" / "photo.png"
    picture.parent.mkdir()
    picture.write_bytes(b"not a picture at all")
    line = fails(capsys, ["demo", "--image", picture, "--out", tmp_path / "out"])
    assert f"image '{picture}' could not be read as a picture" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_collect_into_a_path_under_a_file_fails_before_simulating(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = fails(capsys, [*COLLECT, "--out", blocker / "data"])
    assert f"deepverse collect: error: --out '{blocker / 'data'}' is not a writable folder" in line
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_collect_into_a_read_only_folder_fails_before_simulating(tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):  # what a read-only folder does (root may write anywhere, so simulate it)
        raise PermissionError(13, "Permission denied", str(kwargs.get("dir")))

    monkeypatch.setattr(cli.tempfile, "NamedTemporaryFile", read_only)
    line = fails(capsys, [*COLLECT, "--out", tmp_path / "new" / "data"])
    assert f"--out '{tmp_path / 'new' / 'data'}' is not a writable folder (Permission denied)" in line
    assert not any(tmp_path.iterdir())  # the folders it made to try are removed


def test_collect_starts_with_a_writable_folder(tmp_path, capsys, monkeypatch):
    seen = {}
    monkeypatch.setattr(deepverse_env.collect, "collect", lambda out, **kw: seen.update(out=out, **kw) or {"ok": 1})
    assert main([*map(str, COLLECT), "--out", str(tmp_path / "a" / "b"), "--seed", "3"]) == 0
    assert seen["out"] == tmp_path / "a" / "b" and seen["seed"] == 3 and seen["out"].is_dir()
    assert list(seen["out"].iterdir()) == []  # the write test left nothing behind


def test_bench_out_folder_is_checked_before_measuring(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = fails(capsys, ["bench", "sim", "--out", blocker / "sim.json"])
    assert f"deepverse bench sim: error: the folder of --out '{blocker}' is not a writable folder" in line


def test_library_calls_check_before_loading(tmp_path):
    with pytest.raises(ValueError, match="--seed must be a non-negative integer, got -1"):
        run_demo(tmp_path / "out", seed=-1)
    with pytest.raises(ValueError, match="--steps must be a positive integer, got 2.5"):
        run_demo(tmp_path / "out", steps=2.5)
    with pytest.raises(ValueError, match="--actions names no action"):
        run_demo(tmp_path / "out", actions="")
    with pytest.raises(ValueError, match="--seed must be a non-negative integer, got -2"):
        run_eval(tmp_path / "out", seed=-2)
    assert not any(tmp_path.iterdir())


# ---- which failures are one line, and --debug ------------------------------------------------------


def torch_bug():
    return torch.zeros(2) @ torch.zeros(3)  # a RuntimeError raised inside torch: a bug


def project_runtime_error():
    from agents.tasks import make_task

    return make_task("point_goal").hooks()  # RuntimeError raised by the project: no goal drawn yet


def project_multiline_runtime_error():
    from agents.tasks import make_task
    from deepverse_env.sim.env import DeepVerseSimEnv

    task, sim = make_task({"name": "visual_goal", "distance": (40.0, 50.0)}), DeepVerseSimEnv(height=16, width=16)
    sim.reset(seed=0)
    task.origin = np.eye(4)
    task._draw(sim, np.random.default_rng(0))  # no object that far: a `raise RuntimeError(` over several lines


def torch_bug_in_project_code():
    from deepverse_env.rewards import GoalReward

    return GoalReward().distance(torch.zeros(3))  # a (4, 4) @ (3,) matmul fails inside rewards.py: still a bug


def raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("nothing raised")


def _raise(e):
    raise e


@pytest.mark.parametrize(
    "fn, is_expected",
    [
        (lambda: _raise(ValueError("bad")), True),
        (lambda: open("/no/such/file"), True),  # FileNotFoundError
        (lambda: _raise(PermissionError(13, "Permission denied")), True),
        (lambda: _raise(gym.error.DependencyNotInstalled("pip install pygame")), True),
        (lambda: _raise(ModuleNotFoundError("No module named 'pygame'")), True),
        (project_runtime_error, True),
        (project_multiline_runtime_error, True),
        (torch_bug, False),
        (torch_bug_in_project_code, False),
        (lambda: {}["key"], False),
        (lambda: _raise(TypeError("bug")), False),
    ],
)
def test_expected_failures(fn, is_expected):
    assert expected(raised(fn)) is is_expected


@pytest.mark.parametrize("error", [ValueError("first\nsecond"), gym.error.DependencyNotInstalled("get pygame")])
def test_expected_failure_is_one_line(error, capsys, monkeypatch):
    monkeypatch.setattr(cli, "bench_sim", lambda args: _raise(error))
    line = fails(capsys, ["bench", "sim"])
    assert line == f"deepverse bench sim: error: {' '.join(str(error).split())}"


def test_project_runtime_error_is_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    monkeypatch.setattr(cli, "bench_sim", lambda args: project_runtime_error())
    assert "PointGoal has no goal yet" in fails(capsys, ["bench", "sim"])
    monkeypatch.setattr(cli, "bench_sim", lambda args: torch_bug())
    with pytest.raises(RuntimeError):
        main(["bench", "sim"])


@pytest.mark.parametrize("argv", [["--debug", "demo", "--actions", ""], ["demo", "--actions", "", "--debug"]])
def test_debug_reraises(argv, tmp_path):
    with pytest.raises(ValueError, match="--actions names no action"):
        main(argv + ["--out", str(tmp_path / "out")])
    assert not any(tmp_path.iterdir())


def test_interrupt_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(cli, "bench_sim", lambda args: _raise(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as e:
        main(["bench", "sim"])
    assert e.value.code == 130 and capsys.readouterr().err.strip() == "deepverse bench sim: interrupted"
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", "bench", "sim"])


# ---- the demo's picture loader: any common bit depth, or a clear refusal ----------------------------


LEVELS16 = np.array([0, 1, 128, 129, 257, 1000, 32768, 65280, 65535], dtype=np.uint16)
AS8 = np.array([0, 0, 0, 1, 1, 4, 128, 254, 255], dtype=np.uint8)  # round(v / 257)


def png16(path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG written byte by byte (Pillow cannot write one)."""
    h, w, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_grey_png_is_scaled_not_wrapped(tmp_path):
    path = tmp_path / "grey16.png"
    iio.imwrite(path, LEVELS16[None].repeat(2, 0))  # (2, 9) uint16: Pillow's I;16
    assert iio.imread(path).dtype == np.uint16
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (2, 9, 3)
    assert np.array_equal(image[0, :, 0], AS8) and np.array_equal(image[..., 0], image[..., 2])
    assert np.all(load_image(path, 4, 4) >= 0) and load_image(tmp_path / "grey16.png", 4, 4).shape == (4, 4, 3)


def test_16_bit_mid_grey_stays_mid_grey_after_the_resize(tmp_path):
    path = tmp_path / "mid.png"
    iio.imwrite(path, np.full((30, 40), 32768, dtype=np.uint16))
    assert np.all(load_image(path, 16, 16) == 128)  # the old loader gave 0 (black)


def test_16_bit_rgb_tiff_and_png(tmp_path):
    pixels = np.stack([LEVELS16, LEVELS16[::-1], LEVELS16], -1)[None]  # (1, 9, 3)
    expected8 = np.stack([AS8, AS8[::-1], AS8], -1)[None]
    iio.imwrite(tmp_path / "rgb16.tiff", pixels)
    assert np.array_equal(read_image(tmp_path / "rgb16.tiff"), expected8)
    png16(tmp_path / "rgb16.png", pixels)
    got = read_image(tmp_path / "rgb16.png")  # Pillow decodes 16-bit RGB PNGs to 8 bits itself (high byte)
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - expected8).max() <= 1


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_tiff_in_0_1(tmp_path, dtype):
    values = np.array([0.0, 0.25, 0.5, 0.75, 1.0], dtype=dtype)
    iio.imwrite(tmp_path / "f.tiff", np.stack([values, values, values[::-1]], -1)[None])
    image = read_image(tmp_path / "f.tiff")
    expected8 = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    assert image.dtype == np.uint8 and np.array_equal(image[0, :, 0], expected8)
    assert np.array_equal(image[0, :, 2], expected8[::-1])
    iio.imwrite(tmp_path / "grey.tiff", values[None].repeat(3, 0))  # float grey: 3 channels
    assert np.array_equal(read_image(tmp_path / "grey.tiff")[1, :, 1], expected8)


def test_alpha_and_one_bit_pictures(tmp_path):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = [10, 20, 30], 7
    iio.imwrite(tmp_path / "rgba.png", rgba)
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])
    la = np.zeros((2, 3, 2), dtype=np.uint8)
    la[..., 0], la[..., 1] = 99, 0
    iio.imwrite(tmp_path / "la.png", la)
    assert np.array_equal(read_image(tmp_path / "la.png"), np.full((2, 3, 3), 99, np.uint8))
    iio.imwrite(tmp_path / "bits.png", np.array([[True, False]]))
    assert read_image(tmp_path / "bits.png")[0, :, 0].tolist() == [255, 0]


@pytest.mark.parametrize(
    "pixels, message",
    [
        (np.array([[0.0, 1.5]], np.float32), "floating-point pixels in [0, 1.5]; expected values in [0, 1]"),
        (np.array([[-0.5, 0.5]], np.float32), "floating-point pixels in [-0.5, 0.5]"),
        (np.array([[np.nan, 0.5]], np.float32), "floating-point pixels in [nan"),
        (np.array([[7, 8]], np.int32), "pixels of type int32; expected 8- or 16-bit unsigned integers"),
        (np.zeros((2, 2, 5), np.uint8), "its pixels have shape (2, 2, 5)"),
        (np.zeros((2, 2, 2, 3), np.uint8), "its pixels have shape (2, 2, 2, 3)"),
    ],
)
def test_pictures_that_cannot_be_shown_are_refused(pixels, message):
    with pytest.raises(ValueError, match=f"photo.tiff.*{__import__('re').escape(message)}"):
        to_rgb8(pixels, "image 'photo.tiff'")
