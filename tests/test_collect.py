"""`deepverse collect`: episodes with measured captions, resumable, atomic, with checked arguments."""
import json

import pytest

from deepverse_env.actions import get_action_set
from deepverse_env.cli import main
from world_model.episodes import ClipConfig, EpisodeClips, list_episodes, load_episode


def run(capsys, *argv) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_collect_writes_resumes_and_cleans_up(tmp_path, capsys):
    out = tmp_path / "data"
    args = ["collect", "--out", str(out), "--steps", "6", "--seed", "3", "--height", "16", "--width", "16",
            "--num-envs", "2", "--no-progress"]
    first = run(capsys, *args, "--episodes", "2")
    assert first["episodes_written"] == 2 and first["frames_written"] == 2 * (1 + 6 * 4)
    (out / ".tmp-episode_000002-123").mkdir()  # what a killed writer leaves behind
    second = run(capsys, *args, "--episodes", "3")
    assert second["episodes_written"] == 1 and second["episodes_skipped"] == 2
    assert second["partial_removed"] == 1
    paths = list_episodes(out)
    assert [p.name for p in paths] == ["episode_000000", "episode_000001", "episode_000002"]
    frames, meta = load_episode(paths[2])
    assert meta["seed"] == 5 and frames["rgb"].shape == (25, 16, 16, 3)
    names = get_action_set("full").names
    assert all(a in names for a in meta["actions"])
    # Captions come from measured motion: an unblocked step without pitch agrees with its command.
    full = get_action_set("full")
    for a, blocked, caption in zip(meta["actions"], meta["blocked"], meta["captions"]):
        act = full[full.index(a)]
        if not blocked and act.pitch == 0:
            assert caption == act.sentence
    assert len(EpisodeClips(out, ClipConfig(chunks=2))) > 0


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--episodes", "0"], "argument --episodes: must be a positive integer, got '0'"),
        (["--episodes", "1", "--height", "-4"], "argument --height: must be a positive integer, got '-4'"),
        (["--episodes", "1", "--frames-per-step", "0"], "argument --frames-per-step: must be a positive integer, got '0'"),
    ],
)
def test_collect_rejects_bad_arguments(tmp_path, capsys, bad, message):
    with pytest.raises(SystemExit) as e:
        main(["collect", "--out", str(tmp_path / "d"), "--steps", "2", "--no-progress", *bad])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists() or list_episodes(tmp_path / "d") == []
