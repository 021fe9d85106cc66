"""Bad inputs to the data path and checkpoint loading: damaged episodes are refused without touching the disk,
collect refuses to mix recordings and records the same episodes however it is run, exports and pretrained
directories that do not fit are refused with the path and what was expected, before anything large is built."""
import hashlib
import json
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_config
from deepverse_env.cli import main as deepverse_main
from deepverse_env.collect import collect
from world_model.cli import cli_main
from world_model.datamodule import DeepVerseDataModule
from world_model.episodes import (
    DATASET_FILE,
    ClipConfig,
    EpisodeClips,
    EpisodeError,
    list_episodes,
    load_episode,
    write_episode,
)
from world_model.lit_module import export_pretrained
from world_model.model import DeepVerse

ARGS = dict(steps=3, seed=5, frames_per_step=2, height=16, width=16, fov_deg=75.0)  # tiny episodes: 7 frames
SHAPES = {"rgb": (7, 16, 16, 3), "depth": (7, 16, 16, 1), "pose": (7, 4, 4), "intrinsics": (7, 3, 3)}
DTYPES = {"rgb": np.uint8, "depth": np.float32, "pose": np.float32, "intrinsics": np.float32}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """Three tiny episodes recorded by collect, the reference the tests copy or compare with."""
    root = tmp_path_factory.mktemp("recorded") / "data"
    collect(root, episodes=3, num_envs=3, progress=False, **ARGS)
    return root


def snapshot(root: Path) -> dict:
    """Every file under ``root``: size, modification time and content hash."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def arrays(root: Path) -> list[tuple[dict, dict]]:
    out = []
    for path in list_episodes(root):
        frames, meta = load_episode(path)
        out.append(({k: frames[k].numpy().copy() for k in frames.keys()}, meta))
    return out


def same_episodes(a: Path, b: Path) -> bool:
    ea, eb = arrays(a), arrays(b)
    return len(ea) == len(eb) and all(
        ma == mb and fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)
        for (fa, ma), (fb, mb) in zip(ea, eb)
    )


def copy_episode(recorded: Path, tmp_path: Path, index: int = 0) -> Path:
    dst = tmp_path / "data" / f"episode_{index:06d}"
    shutil.copytree(recorded / f"episode_{index:06d}", dst)
    return dst


# --------------------------------------------------------------------------------------------------
# 1. Truncated or padded frame files: refused, never grown
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(SHAPES))
@pytest.mark.parametrize("change", [-1, -100, +4], ids=["one-byte-short", "truncated", "too-long"])
def test_wrong_size_frame_file_is_refused_and_left_as_it_is(recorded, tmp_path, key, change):
    ep = copy_episode(recorded, tmp_path)
    file = ep / f"{key}.memmap"
    expected = int(np.prod(SHAPES[key])) * np.dtype(DTYPES[key]).itemsize
    assert file.stat().st_size == expected
    size = max(expected + change, 0)
    if change < 0:
        os.truncate(file, size)
    else:
        with open(file, "ab") as f:
            f.write(b"\0" * change)
    before = snapshot(tmp_path / "data")
    with pytest.raises(EpisodeError, match=f"{key}.memmap has {size} bytes, expected {expected}") as err:
        load_episode(ep)
    assert "episode_000000" in str(err.value) and "episode.json" in str(err.value)
    with pytest.raises(EpisodeError, match=f"{key}.memmap"):
        EpisodeClips(tmp_path / "data", ClipConfig(chunks=2))
    assert snapshot(tmp_path / "data") == before  # nothing grown, nothing written
    assert file.stat().st_size == size


def test_loaded_frames_are_never_written_back(recorded, tmp_path):
    ep = copy_episode(recorded, tmp_path)
    before = snapshot(tmp_path / "data")
    frames, _ = load_episode(ep)
    frames["rgb"][:] = 0  # an in-place edit by a consumer stays in memory (copy-on-write)
    frames["depth"].mul_(2)
    assert int(frames["rgb"].sum()) == 0
    del frames
    assert snapshot(tmp_path / "data") == before
    again, _ = load_episode(ep)
    assert int(again["rgb"].sum()) > 0
    # DataLoader workers get the paths, not a pickled copy of the frames, and map the files themselves.
    clips = EpisodeClips(tmp_path / "data", ClipConfig(chunks=2))
    blob = pickle.dumps(clips)
    assert len(blob) < 10_000
    assert torch.equal(pickle.loads(blob)[0]["rgb"], clips[0]["rgb"])
    assert snapshot(tmp_path / "data") == before


# --------------------------------------------------------------------------------------------------
# 2. Bad contents: the episode and the first bad frame are named
# --------------------------------------------------------------------------------------------------


def _pose_scale(a):  # a rotation that is not orthonormal
    a[:3, :3] *= 1.5


def _pose_mirror(a):  # orthonormal but a reflection (det -1)
    a[:3, 0] *= -1


def _pose_last_row(a):
    a[3, :] = [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "key, damage, message",
    [
        ("pose", lambda a: a.__setitem__((0, 3), np.nan), "pose of frame 4 is not finite"),
        ("pose", lambda a: a.__setitem__((1, 1), np.inf), "pose of frame 4 is not finite"),
        ("pose", _pose_scale, "pose of frame 4 is not a rigid"),
        ("pose", _pose_mirror, "pose of frame 4 is not a rigid"),
        ("pose", _pose_last_row, "pose of frame 4 is not a rigid"),
        ("intrinsics", lambda a: a.__setitem__(slice(None), 0.0), "intrinsics of frame 4"),
        ("intrinsics", lambda a: a.__setitem__((1, 1), -3.0), "intrinsics of frame 4"),
        ("intrinsics", lambda a: a.__setitem__((0, 2), np.nan), "intrinsics of frame 4"),
        ("depth", lambda a: a.__setitem__((2, 3, 0), 0.0), "frame 4 has 0 non-finite and 1 non-positive"),
        ("depth", lambda a: a.__setitem__((2, 3, 0), np.nan), "frame 4 has 1 non-finite"),
        ("depth", lambda a: a.__setitem__(slice(None), -np.inf), "frame 4 has 256 non-finite"),
    ],
)
def test_bad_contents_name_the_episode_and_first_bad_frame(recorded, tmp_path, key, damage, message):
    ep = copy_episode(recorded, tmp_path)
    data = np.memmap(ep / f"{key}.memmap", dtype=DTYPES[key], mode="r+", shape=SHAPES[key])
    for t in (4, 6):  # the first bad frame is named
        damage(data[t])
    data.flush()
    del data
    before = snapshot(tmp_path / "data")
    with pytest.raises(EpisodeError, match=message) as err:
        load_episode(ep)
    assert "episode_000000" in str(err.value)
    with pytest.raises(EpisodeError, match=message):
        EpisodeClips(tmp_path / "data", ClipConfig(chunks=2))
    assert snapshot(tmp_path / "data") == before
    # The same frames are refused before they are written.
    frames, meta = load_episode(recorded / "episode_000000")
    frames = frames.clone()
    damage(frames[key][4].numpy())
    meta = {k: v for k, v in meta.items() if k != "format_version"}
    with pytest.raises(EpisodeError, match=message):
        write_episode(tmp_path / "new", 0, frames, meta)
    assert not (tmp_path / "new").exists() or list_episodes(tmp_path / "new") == []


def test_recorded_episodes_pass_the_checks(recorded):
    for path in list_episodes(recorded):
        frames, meta = load_episode(path)
        assert tuple(frames["rgb"].shape) == SHAPES["rgb"] and meta["height"] == 16


# --------------------------------------------------------------------------------------------------
# 3. A dataset directory records its arguments; others are refused
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [("height", 24), ("width", 8), ("frames_per_step", 3), ("fov_deg", 60.0), ("seed", 6), ("steps", 4)],
)
def test_collect_with_other_arguments_is_refused(recorded, key, value):
    before = snapshot(recorded)
    recorded_json = json.loads((recorded / DATASET_FILE).read_text())
    assert recorded_json["recording"] == {**ARGS, "fov_deg": 75.0}
    with pytest.raises(ValueError, match=f"{key}={ARGS[key]} .*asks for {key}={value}") as err:
        collect(recorded, episodes=4, num_envs=1, progress=False, **{**ARGS, key: value})
    assert str(recorded) in str(err.value) and DATASET_FILE in str(err.value)
    assert snapshot(recorded) == before


def test_collect_cli_lists_every_differing_argument(recorded, capsys):
    before = snapshot(recorded)
    argv = ["collect", "--out", str(recorded), "--episodes", "4", "--steps", "3", "--seed", "5", "--frames-per-step",
            "2", "--height", "32", "--width", "8", "--fov", "75", "--no-progress"]
    with pytest.raises(SystemExit) as e:
        deepverse_main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "height=16, width=16" in err and "asks for height=32, width=8" in err
    assert "seed" not in err.split("asks for")[1]  # only the differing arguments
    assert snapshot(recorded) == before


def test_directory_without_dataset_json_is_checked_by_its_episodes(recorded, tmp_path):
    """An older dataset (no dataset.json): the episodes' own metadata decide; same arguments resume."""
    old = tmp_path / "old"
    shutil.copytree(recorded, old)
    (old / DATASET_FILE).unlink()
    shutil.rmtree(old / "episode_000002")
    before = snapshot(old)
    with pytest.raises(ValueError, match="height=16 .*asks for height=24") as err:
        collect(old, episodes=3, num_envs=1, progress=False, **{**ARGS, "height": 24})
    assert "episode.json" in str(err.value)
    assert snapshot(old) == before
    summary = collect(old, episodes=3, num_envs=1, progress=False, **ARGS)
    assert summary["episodes_written"] == 1 and (old / DATASET_FILE).is_file()
    assert same_episodes(old, recorded)


def test_data_module_checks_the_recording_even_when_nothing_is_missing(recorded, tmp_path):
    root = tmp_path / "sim"
    shutil.copytree(recorded, root / "train")
    hp = dict(train_episodes=3, val_episodes=1, test_episodes=1, steps=3, seed=5, frames_per_step=2, width=16,
              chunks=2, collect_envs=1)
    before = snapshot(root)
    for recorder in (None, collect):
        module = DeepVerseDataModule(str(root), **hp, height=24, recorder=recorder)
        with pytest.raises(ValueError, match="height=16 .*asks for height=24"):
            module.prepare_data()
    assert snapshot(root) == before
    # The matching arguments pass the check (and record the other splits).
    DeepVerseDataModule(str(root), **hp, height=16, recorder=collect).prepare_data()
    assert json.loads((root / "val" / DATASET_FILE).read_text())["recording"]["seed"] == 5 + 1_000_000


# --------------------------------------------------------------------------------------------------
# 4. Episode i depends on (seed + i, recording arguments) only
# --------------------------------------------------------------------------------------------------


def test_episodes_do_not_depend_on_num_envs_or_interruptions(recorded, tmp_path):
    one = tmp_path / "one"
    collect(one, episodes=3, num_envs=1, progress=False, **ARGS)
    assert same_episodes(one, recorded)  # recorded with num_envs=3
    resumed = tmp_path / "resumed"
    collect(resumed, episodes=2, num_envs=2, progress=False, **ARGS)  # killed after two episodes...
    assert collect(resumed, episodes=3, num_envs=2, progress=False, **ARGS)["episodes_written"] == 1  # ...resumed
    assert same_episodes(resumed, recorded)
    # A kill in the middle of a group: episode 1 missing, 0 and 2 on disk.
    holes = tmp_path / "holes"
    shutil.copytree(recorded, holes)
    shutil.rmtree(holes / "episode_000001")
    assert collect(holes, episodes=3, num_envs=3, progress=False, **ARGS)["episodes_written"] == 1
    assert same_episodes(holes, recorded)
    # Episodes differ from one another (the per-episode seeding is not one shared stream).
    metas = [m for _, m in arrays(recorded)]
    assert len({json.dumps(m["actions"]) for m in metas}) == 3


# --------------------------------------------------------------------------------------------------
# 5. Files and directories are fsynced before the episode becomes visible
# --------------------------------------------------------------------------------------------------


def test_episode_files_are_fsynced_before_the_rename(recorded, tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def replace(src, dst, *a, **k):
        events.append(("replace", os.path.realpath(src)))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    frames, meta = load_episode(recorded / "episode_000000")
    meta = {k: v for k, v in meta.items() if k != "format_version"}
    root = tmp_path / "root"
    final = write_episode(root, 0, frames.clone(), meta)
    rename = next(i for i, (kind, path) in enumerate(events) if kind == "replace" and ".tmp-episode_000000" in path)
    tmp = events[rename][1]
    synced_before = {path for kind, path in events[:rename] if kind == "fsync"}
    names = {p.name for p in final.iterdir()}
    assert {"rgb.memmap", "depth.memmap", "pose.memmap", "intrinsics.memmap", "episode.json", "meta.json"} <= names
    assert {f"{tmp}/{name}" for name in names} | {tmp} <= synced_before
    assert ("fsync", os.path.realpath(root)) in events[rename + 1 :]  # the rename itself is made durable


# --------------------------------------------------------------------------------------------------
# 6. export --ckpt of a missing or foreign file
# --------------------------------------------------------------------------------------------------


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {_Boom.marker}",))


def _foreign(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "nowhere.ckpt"
    if kind == "directory":
        return tmp_path
    if kind == "text":
        path = tmp_path / "notes.ckpt"
        path.write_text("this is a text file\n")
        return path
    if kind == "empty":
        path = tmp_path / "empty.ckpt"
        path.write_bytes(b"")
        return path
    if kind == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file({"w": torch.zeros(2)}, str(path))
        return path
    if kind == "plain torch file":
        path = tmp_path / "other.ckpt"
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
        return path
    if kind == "malicious pickle":
        path = tmp_path / "evil.ckpt"
        _Boom.marker = tmp_path / "pwned"
        path.write_bytes(pickle.dumps({"hyper_parameters": _Boom()}))
        return path
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "does not exist"),
        ("directory", "is not a file"),
        ("text", "is not a PyTorch checkpoint"),
        ("empty", "is not a PyTorch checkpoint"),
        ("safetensors", "is a safetensors file"),
        ("plain torch file", "lacks hyper_parameters.model or state_dict"),
        ("malicious pickle", "is not a PyTorch checkpoint"),
    ],
)
def test_export_of_a_bad_checkpoint_is_one_clear_error(tmp_path, capsys, kind, message):
    ckpt = _foreign(tmp_path, kind)
    out = tmp_path / "export"
    with pytest.raises(SystemExit) as e:
        cli_main(["export", "--ckpt", str(ckpt), "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert message in err and str(ckpt) in err and "expected a Lightning checkpoint (.ckpt)" in err
    assert "Traceback" not in err and not out.exists()
    assert not (tmp_path / "pwned").exists()  # no pickled code ran


# --------------------------------------------------------------------------------------------------
# 7. A config naming the paper presets beside other weights: refused before anything is built
# --------------------------------------------------------------------------------------------------

PAPER = dict(codec="paper", dit="paper", height=384, width=512, dit_overrides={})


@pytest.fixture
def built_on(monkeypatch) -> list[str]:
    """The device of every DeepVerse constructed during the test."""
    devices: list[str] = []
    real = DeepVerse.__init__

    def init(self, *args, **kwargs):
        devices.append(torch.empty(0).device.type)
        real(self, *args, **kwargs)

    monkeypatch.setattr(DeepVerse, "__init__", init)
    return devices


def test_pretrained_directory_naming_the_paper_preset_fails_before_building(tmp_path, built_on):
    path = DeepVerse(tiny_config()).save_pretrained(tmp_path / "tiny")
    built_on.clear()
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **PAPER}))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="does not match") as err:
        DeepVerse.from_pretrained(path)
    assert time.perf_counter() - start < 10
    assert "'paper'" in str(err.value) and "2,7" in str(err.value)  # ~2.7 billion numbers vs the tiny weights
    assert str(path / "model.safetensors") in str(err.value) and str(path / "config.json") in str(err.value)
    assert built_on == ["meta"]


def test_export_of_a_checkpoint_naming_the_paper_preset_fails_before_building(tmp_path, built_on):
    model = DeepVerse(tiny_config())
    built_on.clear()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": {"model": {**tiny_config().to_dict(), **PAPER}}, "state_dict": state},
               tmp_path / "paper.ckpt")
    with pytest.raises(ValueError, match="paper.ckpt .*does not match its hyper_parameters.model"):
        export_pretrained(tmp_path / "paper.ckpt", tmp_path / "out", ema=False)
    assert built_on == ["meta"] and not (tmp_path / "out").exists()


def test_collect_into_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ValueError, match="is not a directory"):
        collect(tmp_path / "file", episodes=1, num_envs=1, progress=False, **ARGS)
    assert (tmp_path / "file").read_text() == "not a directory"
