"""Action sentences: the caption grammar shared by action sets, captions from motion and the text encoder.

A chunk's camera motion is described by three classes (DESIGN M10):

- translation, in the camera's horizontal plane: one of 9 (stay, forward, backward, left, right and the
  four diagonals);
- yaw: none, turn left (counter-clockwise seen from above), turn right;
- pitch: none, look up, look down.

Each of the 9 x 3 x 3 = 81 combinations has exactly one sentence, e.g. "The camera moves forward,
turning left." The release's grammar is the 27 combinations without pitch; pitch extends it for the
"look up / look down" controls. ``SENTENCES`` is the closed caption vocabulary, ordered by
``(translation, yaw, pitch)`` index, and ``sentence_index`` maps a sentence back to its position.
"""
from __future__ import annotations

import math

# Unit direction of each translation class in the camera's horizontal plane, as (x right, z forward).
_D = 1.0 / math.sqrt(2.0)
TRANSLATIONS: dict[str, tuple[float, float]] = {
    "stay": (0.0, 0.0),
    "forward": (0.0, 1.0),
    "backward": (0.0, -1.0),
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "forward_left": (-_D, _D),
    "forward_right": (_D, _D),
    "backward_left": (-_D, -_D),
    "backward_right": (_D, -_D),
}
# Sign of each yaw class: +1 = turn left (counter-clockwise seen from above).
YAWS: dict[str, int] = {"none": 0, "turn_left": 1, "turn_right": -1}
# Sign of each pitch class: +1 = look up.
PITCHES: dict[str, int] = {"none": 0, "look_up": 1, "look_down": -1}

_TRANSLATION_PHRASE = {
    "stay": "stays in place",
    "forward": "moves forward",
    "backward": "moves backward",
    "left": "moves left",
    "right": "moves right",
    "forward_left": "moves forward and left",
    "forward_right": "moves forward and right",
    "backward_left": "moves backward and left",
    "backward_right": "moves backward and right",
}
_YAW_PHRASE = {"none": "", "turn_left": ", turning left", "turn_right": ", turning right"}
_PITCH_PHRASE = {"none": "", "look_up": ", looking up", "look_down": ", looking down"}


def motion_sentence(translation: str, yaw: str = "none", pitch: str = "none") -> str:
    """The one sentence for a motion class, e.g. ``motion_sentence("forward", "turn_left")``.

    Raises:
        ValueError: if a class name is unknown (the message lists the valid names).
    """
    for value, table, what in (
        (translation, TRANSLATIONS, "translation"),
        (yaw, YAWS, "yaw"),
        (pitch, PITCHES, "pitch"),
    ):
        if value not in table:
            raise ValueError(f"unknown {what} class {value!r}; expected one of {sorted(table)}")
    return f"The camera {_TRANSLATION_PHRASE[translation]}{_YAW_PHRASE[yaw]}{_PITCH_PHRASE[pitch]}."


# The closed caption vocabulary, index = (translation * 3 + yaw) * 3 + pitch.
MOTION_CLASSES: tuple[tuple[str, str, str], ...] = tuple(
    (t, y, p) for t in TRANSLATIONS for y in YAWS for p in PITCHES
)
SENTENCES: tuple[str, ...] = tuple(motion_sentence(*c) for c in MOTION_CLASSES)
_INDEX = {s: i for i, s in enumerate(SENTENCES)}


def sentence_index(sentence: str) -> int:
    """Position of ``sentence`` in ``SENTENCES``.

    Raises:
        KeyError: if the sentence is not in the caption vocabulary.
    """
    try:
        return _INDEX[sentence]
    except KeyError:
        raise KeyError(
            f"sentence {sentence!r} is not in the caption vocabulary "
            f"(e.g. {SENTENCES[3]!r}); see world_model.text.SENTENCES"
        ) from None
