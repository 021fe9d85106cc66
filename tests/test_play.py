"""``deepverse play`` headless: scripted keys drive the simulator and the shipped learned world."""
import os
import re
import sys

os.environ["SDL_VIDEODRIVER"] = "dummy"  # no display needed; set before pygame is imported
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import gymnasium as gym
import numpy as np
import pygame  # noqa: F401  (the dev extra installs it)
import pytest

from deepverse_env.cli import main
from deepverse_env.play import play


def recorder():
    """An ``on_frame`` callback and the (what, pose (4, 4), info) list it fills."""
    frames = []
    return frames, lambda what, obs, info: frames.append((what, obs["pose"].copy(), info))


def test_sim_scripted_keys_step_turn_reset_and_quit():
    frames, on_frame = recorder()
    summary = play(
        sim=True, seed=0, events=["up", "w", "left", "backspace", "space", "escape", "up"], on_frame=on_frame
    )
    assert summary["world"] == "sim" and summary["action_set"] == "basic"
    assert summary["steps"] == 4 and summary["resets"] == 1  # escape quits before the last "up"
    assert summary["steps_per_s"] > 0 and summary["frames_per_s"] == pytest.approx(4 * summary["steps_per_s"], rel=0.01)
    assert [what for what, _, _ in frames] == ["reset", "forward", "forward", "turn_left", "reset", "stay"]

    start, fwd1, fwd2, turn, again, stay = (pose for _, pose, _ in frames)
    np.testing.assert_allclose(start, np.eye(4), atol=1e-6)  # poses are relative to the first camera
    assert not frames[1][2]["blocked"] and not frames[2][2]["blocked"]
    step = fwd2[:3, 3] - fwd1[:3, 3]
    assert np.dot(step, fwd1[:3, 2]) == pytest.approx(0.32, abs=1e-3)  # 4 frames x 0.08 m along the view axis
    np.testing.assert_allclose(turn[:3, 3], fwd2[:3, 3], atol=1e-5)  # turning stays in place...
    assert np.cross(fwd2[:3, 2], turn[:3, 2])[1] < 0  # ...and yaws left (y down: left is -y about the axis)
    np.testing.assert_allclose(again, np.eye(4), atol=1e-6)
    np.testing.assert_allclose(stay, again, atol=1e-6)
    assert frames[3][2]["sentence"] == "The camera stays in place, turning left."


def test_sim_max_steps_and_window_close():
    assert play(sim=True, events=["up"] * 3, max_steps=1)["steps"] == 1
    assert play(sim=True, events=["quit", "up"])["steps"] == 0  # closing the window quits


def test_learned_world_one_step():
    frames, on_frame = recorder()
    summary = play(sim=False, render_cache=False, events=["up", "escape"], on_frame=on_frame)
    assert summary["world"] == "learned" and summary["steps"] == 1 and summary["resets"] == 0
    assert [what for what, _, _ in frames] == ["reset", "forward"]
    assert frames[1][1][2, 3] > 0.1  # the predicted camera moved forward (+z)
    assert frames[1][2]["sentence"] == "The camera moves forward."


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(events=["upp"]), "'upp'"),  # not a key
        (dict(events=["x"]), "'x'"),  # a key, but not bound
        (dict(events=["r"], action_set="deepverse"), "'r'"),  # look_up is not in the deepverse set
        (dict(scale=0), "0"),
        (dict(scale=2.5), "2.5"),
        (dict(scale=True), "True"),
        (dict(max_steps=0), "max_steps"),
        (dict(keymap={"w": "fly"}), "'fly'"),
        (dict(keymap={"nokey": "forward"}), "'nokey'"),
        (dict(checkpoint="some/dir"), "--checkpoint some/dir"),
    ],
)
def test_bad_input_is_a_value_error_naming_it(kwargs, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        play(sim=True, **kwargs)


def test_cli_errors_are_clean(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["play", "--sim", "--scale", "0"])
    assert exit_.value.code == 2 and "deepverse play: error: scale must be an integer >= 1" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "pygame", None)  # as if pygame were not installed
    with pytest.raises(gym.error.DependencyNotInstalled, match="pip install pygame"):
        play(sim=True, events=[])
    with pytest.raises(SystemExit) as exit_:
        main(["play", "--sim"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "pip install pygame" in err and '"human" extra' in err
