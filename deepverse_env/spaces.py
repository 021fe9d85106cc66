"""Spaces and action checks shared by ``DeepVerseSim-v0`` and ``DeepVerse-v0``: one observation dict, one
way to read an action, so an agent moves between the two envs without change."""
from __future__ import annotations

import operator
from typing import Any

import numpy as np
from gymnasium import spaces

from deepverse_env.actions import ActionSet
from world_model.text import SENTENCES, sentence_index


def observation_space(height: int, width: int, depth: bool = True) -> spaces.Dict:
    """The observation dict of both envs: rgb (H, W, 3), depth (H, W, 1), pose (4, 4), intrinsics (3, 3);
    ``depth`` False (a learned world whose model has no depth): no ``depth`` key."""
    return spaces.Dict(
        {
            "rgb": spaces.Box(0, 255, (height, width, 3), np.uint8),
            **({"depth": spaces.Box(0.0, np.inf, (height, width, 1), np.float32)} if depth else {}),
            "pose": spaces.Box(-np.inf, np.inf, (4, 4), np.float32),
            "intrinsics": spaces.Box(0.0, np.inf, (3, 3), np.float32),
        }
    )


def action_space(actions: ActionSet, text: bool = False) -> spaces.Space:
    """The action space of both envs: ``Discrete`` over the action set, or in text mode ``Sentences``."""
    return Sentences() if text else spaces.Discrete(len(actions))


def check_action(action, n: int) -> int:
    """The index of a valid action, else a ValueError naming the value and the valid range."""
    try:
        i = operator.index(action)
    except TypeError:
        raise ValueError(f"action {action!r} is not an integer; expected an integer in [0, {n - 1}]") from None
    if not 0 <= i < n:
        raise ValueError(f"action {action!r} is out of range; expected an integer in [0, {n - 1}]")
    return i


class Sentences(spaces.Text):
    """The caption vocabulary as a ``Text`` space: it contains exactly the sentences of
    ``world_model.text.SENTENCES``, and ``sample`` draws one of them."""

    def __init__(self, seed: int | None = None):
        super().__init__(
            max_length=max(map(len, SENTENCES)), min_length=min(map(len, SENTENCES)),
            charset=frozenset("".join(SENTENCES)), seed=seed,
        )

    def sample(self, mask=None, probability=None) -> str:
        if mask is not None or probability is not None:
            raise ValueError("Sentences.sample draws uniformly from the vocabulary; it takes no mask or probability")
        return SENTENCES[int(self.np_random.integers(len(SENTENCES)))]

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and x in SENTENCES


def action_id(action, actions: ActionSet, text: bool) -> int:
    """The id of an action as the hooks see it: its index in the action set, or in text mode the
    sentence's index in the vocabulary. ValueError for anything else."""
    if not text:
        return check_action(action, len(actions))
    if not isinstance(action, str) or action not in SENTENCES:
        raise ValueError(
            f"action {action!r} is not a sentence of world_model.text.SENTENCES ({len(SENTENCES)} sentences, "
            f"e.g. {SENTENCES[3]!r})"
        )
    return sentence_index(action)


def check_action_sequences(action_sequences, n: int) -> np.ndarray:
    """The (N, L) integer action ids of a planner's ``imagine`` call, each in [0, n); ValueError naming
    what is wrong otherwise (ragged sequences, a non-integer array, an id out of range)."""
    try:
        a = np.asarray(action_sequences)
    except ValueError:  # numpy refuses ragged nested lists with its own message
        lengths = [len(s) if hasattr(s, "__len__") else None for s in action_sequences]
        raise ValueError(
            f"action_sequences must be an (N, L) array of action ids, every sequence of the same length L; "
            f"got sequences of lengths {lengths}"
        ) from None
    if a.dtype == object:  # e.g. sequences of unequal length inside an object array
        raise ValueError(f"action_sequences must be an (N, L) integer array of action ids, got {action_sequences!r:.200}")
    if a.ndim != 2 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"action_sequences must be a non-empty (N, L) integer array, got {a.dtype} {a.shape}")
    bad = a[(a < 0) | (a >= n)]
    if bad.size:
        raise ValueError(f"action_sequences hold ids outside [0, {n - 1}]: {sorted(set(bad.tolist()))[:8]}")
    return a


def check_seed(seed, what: str = "seed", bound: int | None = None) -> int | None:
    """``seed`` as a Python int (numpy integers too), None passed through; ValueError naming the value
    unless it is a non-negative integer (below ``bound`` when given). A bool is no seed."""
    if seed is None:
        return None
    try:
        if isinstance(seed, (bool, np.bool_)):
            raise TypeError
        s = operator.index(seed)
    except TypeError:
        s = None
    if s is None or s < 0 or (bound is not None and s >= bound):
        limit = f"an integer in [0, 2**{bound.bit_length() - 1})" if bound is not None else "a non-negative integer"
        raise ValueError(f"{what} must be None or {limit}, got {seed!r}")
    return s


def check_images(options: dict[str, Any] | None, height: int, width: int, n: int = 1) -> np.ndarray | None:
    """The start images of a learned env's ``reset(options=...)``: ``options["image"]`` as (n, H, W, 3) uint8
    (one RGB image (H, W, 3) for every world, or (n, H, W, 3)), None without one. ValueError naming a bad
    image or any other option."""
    options = dict(options or {})
    image = options.pop("image", None)
    if options:
        raise ValueError(f"unknown reset options {sorted(options)}; the only option is 'image'")
    if image is None:
        return None
    a = np.asarray(image)
    if a.shape == (height, width, 3):
        a = np.broadcast_to(a, (n, height, width, 3))
    if a.shape != (n, height, width, 3):
        want = f"({height}, {width}, 3)" + (f" or ({n}, {height}, {width}, 3)" if n > 1 else "")
        raise ValueError(f"options['image'] must be an RGB image of shape {want} (the model's size), got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError("options['image'] has NaN or infinite values")
    if a.dtype != np.uint8:
        raise ValueError(f"options['image'] must have dtype uint8 (0..255), got {a.dtype}")
    return np.array(a)  # a copy: the caller may reuse its array
