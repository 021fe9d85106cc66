"""Episode storage (atomic, validated) and the normalised clip dataset, on synthetic episodes."""
import json
import math

import pytest
import torch
from tensordict import TensorDict

from world_model import geometry as G
from world_model.episodes import (
    ClipConfig,
    EpisodeClips,
    EpisodeError,
    list_episodes,
    load_episode,
    remove_partial,
    write_episode,
)
from world_model.text import SENTENCES

FPS, H, W = 2, 8, 10


def synthetic_episode(steps: int, seed: int, yaw_per_frame: float = 0.05) -> tuple[TensorDict, dict]:
    """A camera walking forward and turning, with a random depth field."""
    g = torch.Generator().manual_seed(seed)
    T = 1 + steps * FPS
    pose = torch.eye(4).repeat(T, 1, 1)
    for i in range(1, T):
        yaw = i * yaw_per_frame
        pose[i, :3, :3] = torch.tensor(
            [[math.cos(yaw), 0, -math.sin(yaw)], [0, 1, 0], [math.sin(yaw), 0, math.cos(yaw)]]
        )
        pose[i, :3, 3] = pose[i - 1, :3, 3] + pose[i, :3, 2] * 0.1
    frames = TensorDict(
        {
            "rgb": torch.randint(0, 256, (T, H, W, 3), dtype=torch.uint8, generator=g),
            "depth": 0.5 + 5 * torch.rand(T, H, W, 1, generator=g),
            "pose": pose,
            "intrinsics": G.default_intrinsics(H, W).expand(T, 3, 3).clone(),
        },
        batch_size=[T],
    )
    meta = {
        "seed": seed,
        "frames_per_step": FPS,
        "actions": ["forward+turn_left"] * steps,
        "blocked": [False] * steps,
        "captions": ["The camera moves forward, turning left."] * steps,
    }
    return frames, meta


def test_write_load_round_trip(tmp_path):
    frames, meta = synthetic_episode(5, 0)
    path = write_episode(tmp_path, 3, frames, meta)
    assert path.name == "episode_000003" and list_episodes(tmp_path) == [path]
    loaded, meta2 = load_episode(path)
    for k in frames.keys():
        assert torch.equal(torch.as_tensor(loaded[k]), frames[k])
    assert meta2["captions"] == meta["captions"]
    with pytest.raises(FileExistsError):
        write_episode(tmp_path, 3, frames, meta)


def test_killed_writer_leaves_nothing_readable(tmp_path):
    frames, meta = synthetic_episode(3, 1)
    write_episode(tmp_path, 0, frames, meta)
    # What a writer killed mid-way leaves behind: a hidden temporary directory.
    partial = tmp_path / ".tmp-episode_000001-999"
    frames.memmap(prefix=partial)
    assert [p.name for p in list_episodes(tmp_path)] == ["episode_000000"]
    assert len(EpisodeClips(tmp_path, ClipConfig(chunks=2))) > 0
    assert remove_partial(tmp_path) == 1 and not partial.exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "episode.json").unlink(), "episode.json is missing"),
        (lambda p: (p / "episode.json").write_text("{not json"), "not valid JSON"),
        (lambda p: (p / "depth.memmap").write_bytes(b"\0" * 7), "depth"),
        (lambda p: (p / "rgb.memmap").unlink(), "rgb"),
        (lambda p: _edit_meta(p, captions=["fly"] * 4), "caption 'fly'"),
        (lambda p: _edit_meta(p, captions=["The camera stays in place."] * 3), "expected 1 \\+ 3"),
        (lambda p: _edit_meta(p, format_version=99), "format_version 99"),
    ],
)
def test_corrupt_episode_is_named(tmp_path, damage, message):
    frames, meta = synthetic_episode(4, 2)
    path = write_episode(tmp_path, 0, frames, meta)
    damage(path)
    with pytest.raises(EpisodeError, match=message) as err:
        EpisodeClips(tmp_path, ClipConfig(chunks=2))
    assert "episode_000000" in str(err.value)


def _edit_meta(path, **changes):
    meta = json.loads((path / "episode.json").read_text())
    meta.update(changes)
    (path / "episode.json").write_text(json.dumps(meta))


def test_nonfinite_depth_refused_before_writing(tmp_path):
    frames, meta = synthetic_episode(2, 3)
    frames["depth"][1, 0, 0, 0] = float("nan")
    with pytest.raises(EpisodeError, match="finite"):
        write_episode(tmp_path, 0, frames, meta)
    assert list_episodes(tmp_path) == []


def test_clips_are_normalised_windows(tmp_path):
    for i in range(2):
        write_episode(tmp_path, i, *synthetic_episode(6, 10 + i))
    ds = EpisodeClips(tmp_path, ClipConfig(chunks=3))
    assert len(ds) == 2 * (6 - 3 + 1)
    batch = EpisodeClips.collate([ds[0], ds[5]])
    T = 1 + 3 * FPS
    assert batch["rgb"].shape == (2, T, 3, H, W) and batch["depth"].shape == (2, T, 1, H, W)
    assert batch["raymap"].shape == (2, T, 6, H, W) and batch["caption_ids"].shape == (2, 3)
    assert batch["scale"].shape == (2,)
    assert batch["caption_ids"][0, 0] == SENTENCES.index("The camera moves forward, turning left.")
    clip = ds[3]
    assert torch.allclose(clip["pose"][0], torch.eye(4), atol=1e-6)  # relative to the window start
    assert clip["depth"][0].max() <= 2 * math.sqrt(G.DISPARITY_LAMBDA) - 1 + 1e-5
    assert clip["rgb"].min() >= -1 and clip["rgb"].max() <= 1
    # Undoing the normalisation gives back metric depth and the metric relative motion.
    e, s = ds.index[3]
    raw = ds.episodes[e][s * FPS : s * FPS + T].to_tensordict()
    depth = G.decode_depth(clip["depth"][:, 0], clip["scale"])
    assert torch.allclose(depth, raw["depth"][..., 0], rtol=1e-4)
    rel = G.relative_pose(raw["pose"][0], raw["pose"])
    assert torch.allclose(G.unscale_poses(clip["pose"], clip["scale"]), rel, atol=1e-4)
    K, c2w = G.raymap_to_camera(clip["raymap"])
    assert torch.allclose(c2w, clip["pose"], atol=1e-3)


def test_filters_drop_fast_turns_and_static_clips(tmp_path):
    write_episode(tmp_path, 0, *synthetic_episode(4, 0, yaw_per_frame=0.4))  # 46 degrees per chunk
    with pytest.raises(EpisodeError, match="passes the filters"):
        EpisodeClips(tmp_path, ClipConfig(chunks=2, max_chunk_rotation_deg=30.0))
    assert len(EpisodeClips(tmp_path, ClipConfig(chunks=2, max_chunk_rotation_deg=60.0))) == 3
    frames, meta = synthetic_episode(4, 0)
    frames["pose"][:] = torch.eye(4)
    write_episode(tmp_path / "static", 0, frames, meta)
    with pytest.raises(EpisodeError, match="static"):
        EpisodeClips(tmp_path / "static", ClipConfig(chunks=2))


def test_bad_dataset_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        EpisodeClips(tmp_path / "nowhere")
    with pytest.raises(EpisodeError, match="no complete episodes"):
        EpisodeClips(tmp_path)
    with pytest.raises(ValueError, match="-1"):
        EpisodeClips(tmp_path, ClipConfig(chunks=-1))


def test_memory_frame_is_psi_of_earlier_keyframes(tmp_path):
    write_episode(tmp_path, 0, *synthetic_episode(10, 4))
    ds = EpisodeClips(tmp_path, ClipConfig(chunks=3, memory=True, future_chunks=1, memory_k=3))
    first = ds[0]
    assert not first["has_memory"] and torch.equal(first["memory", "rgb"], torch.zeros(1, 3, H, W))
    for i in range(1, len(ds)):
        clip = ds[i]
        e, s = ds.index[i]
        assert clip["has_memory"] and clip["memory", "rgb"].shape == (1, 3, H, W)
        poses = torch.as_tensor(ds.episodes[e]["pose"])
        query = poses[s * FPS + (3 - 1) * FPS]
        keys = poses[0 : s * FPS : FPS]
        # Brute force ψ: 3 nearest positions, then the smallest optical-axis angle.
        near = sorted(range(len(keys)), key=lambda j: float((keys[j, :3, 3] - query[:3, 3]).norm()))[:3]
        best = min(near, key=lambda j: float(G.optical_axis_angle(keys[j], query)))
        expect = G.scale_poses(G.relative_pose(poses[s * FPS], keys[best]), clip["scale"])
        assert torch.allclose(clip["memory", "pose"][0], expect, atol=1e-5)
        assert torch.equal(clip["memory", "rgb"][0], ds.episodes[e]["rgb"][best * FPS].movedim(-1, 0).float() / 127.5 - 1)
    batch = EpisodeClips.collate([ds[0], ds[1]])
    assert batch["memory", "raymap"].shape == (2, 1, 6, H, W) and batch["has_memory"].tolist() == [False, True]
    with pytest.raises(ValueError, match="future_chunks"):
        EpisodeClips(tmp_path, ClipConfig(chunks=3, future_chunks=4))
