"""Named action sets: each action is a per-frame camera motion plus its sentence (DESIGN §3, M10).

Motion is given in the agent's *body* frame, OpenCV axes without pitch: x right, z forward (in the
horizontal plane), y down. Yaw turns about the world vertical (+ = left, counter-clockwise seen from
above); pitch tilts the camera (+ = up). One env step applies the same per-frame motion to each of the
``frames_per_step`` frames of a chunk.

Sets:
    ``basic``      9 actions: stay, forward, backward, strafe left/right, turn left/right, look up/down.
    ``deepverse``  27 actions: the release's 9 translations x 3 rotations (none, turn left, turn right).
    ``full``       81 actions: 9 translations x 3 yaws x 3 pitches (the whole caption vocabulary);
                   the data collector explores with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from world_model.text import MOTION_CLASSES, PITCHES, TRANSLATIONS, YAWS, motion_sentence

# Per-frame magnitudes shared by every set. At 4 frames per step a forward step moves 0.32 m and a
# turn 12 degrees: small enough that consecutive chunks overlap a lot, large enough to caption.
MOVE_PER_FRAME = 0.08  # metres
YAW_PER_FRAME = math.radians(3.0)  # radians
PITCH_PER_FRAME = math.radians(2.5)  # radians
PITCH_LIMIT = math.radians(30.0)  # the camera never tilts further than this


@dataclass(frozen=True)
class Action:
    """One control: motion per frame in the body frame, and the sentence that describes it."""

    name: str
    translation: tuple[float, float, float]  # (x right, y down, z forward), metres per frame
    yaw: float  # radians per frame, + = turn left
    pitch: float  # radians per frame, + = look up
    sentence: str

    @property
    def command(self) -> tuple[float, float, float, float, float]:
        """The per-frame command the motion model reads (``world_model.motion``): (x, y, z, yaw, pitch)."""
        return (*self.translation, self.yaw, self.pitch)


def make_action(translation: str, yaw: str = "none", pitch: str = "none") -> Action:
    """The action of one motion class, named e.g. ``forward``, ``turn_left``, ``forward+turn_left``."""
    sentence = motion_sentence(translation, yaw, pitch)  # validates the three names
    dx, dz = TRANSLATIONS[translation]
    parts = [p for p in (translation, yaw, pitch) if p not in ("stay", "none")]
    name = "+".join(parts) if parts else "stay"
    return Action(
        name=name,
        translation=(dx * MOVE_PER_FRAME, 0.0, dz * MOVE_PER_FRAME),
        yaw=YAWS[yaw] * YAW_PER_FRAME,
        pitch=PITCHES[pitch] * PITCH_PER_FRAME,
        sentence=sentence,
    )


@dataclass(frozen=True)
class ActionSet:
    """An ordered set of actions; ``Discrete(len(action_set))`` indexes it."""

    name: str
    actions: tuple[Action, ...]

    def __len__(self) -> int:
        return len(self.actions)

    def __iter__(self):
        return iter(self.actions)

    def __getitem__(self, index: int) -> Action:
        if not hasattr(index, "__index__"):
            raise TypeError(f"action index must be an integer, got {index!r}")
        i = index.__index__()
        if not 0 <= i < len(self.actions):
            raise ValueError(
                f"action {i} is out of range for action set {self.name!r}; expected 0..{len(self.actions) - 1}"
            )
        return self.actions[i]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.actions]

    def index(self, name: str) -> int:
        """Index of the action called ``name``."""
        for i, a in enumerate(self.actions):
            if a.name == name:
                return i
        raise ValueError(f"action set {self.name!r} has no action {name!r}; expected one of {self.names}")


_BASIC = (
    ("stay", "none", "none"),
    ("forward", "none", "none"),
    ("backward", "none", "none"),
    ("left", "none", "none"),
    ("right", "none", "none"),
    ("stay", "turn_left", "none"),
    ("stay", "turn_right", "none"),
    ("stay", "none", "look_up"),
    ("stay", "none", "look_down"),
)

ACTION_SETS: dict[str, ActionSet] = {
    "basic": ActionSet("basic", tuple(make_action(*c) for c in _BASIC)),
    "deepverse": ActionSet("deepverse", tuple(make_action(t, y) for t in TRANSLATIONS for y in YAWS)),
    "full": ActionSet("full", tuple(make_action(*c) for c in MOTION_CLASSES)),
}


def caption_thresholds(frames_per_step: int) -> dict[str, float]:
    """Thresholds for ``world_model.geometry.caption_from_motion`` over a chunk of ``frames_per_step``
    frames: half of one action's nominal motion, so an unobstructed action is captioned with its own
    sentence and a move blocked for most of the chunk reads as "stays in place"."""
    if int(frames_per_step) != frames_per_step or frames_per_step < 1:
        raise ValueError(f"frames_per_step must be a positive integer, got {frames_per_step!r}")
    return {
        "move_threshold": 0.5 * MOVE_PER_FRAME * frames_per_step,
        "yaw_threshold": 0.5 * YAW_PER_FRAME * frames_per_step,
        "pitch_threshold": 0.5 * PITCH_PER_FRAME * frames_per_step,
    }


def get_action_set(name: str | ActionSet) -> ActionSet:
    """Look up a named action set (or pass an ``ActionSet`` through).

    Raises:
        ValueError: if the name is unknown.
    """
    if isinstance(name, ActionSet):
        return name
    if name not in ACTION_SETS:
        raise ValueError(f"unknown action set {name!r}; expected one of {sorted(ACTION_SETS)}")
    return ACTION_SETS[name]
