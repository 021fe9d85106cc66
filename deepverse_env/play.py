"""``deepverse play``: walk through the learned world (or the simulator) with the keyboard.

The env's ``rgb_array`` panel (RGB | depth colour map | top-down map) is shown in a pygame window with
a status line under it: the last action's sentence, the step count and the measured step rate. Each
key press steps the env once (no key repeat):

    arrows / W A S D   forward, backward, turn left, turn right
    Q / E              strafe left / right      (if the action set has them)
    R / F              look up / down           (if the action set has them)
    space              stay
    Backspace          reset (a new world)
    Escape, closing    quit

For tests and scripts, ``events`` replaces the keyboard with a list of key names (``"up"``, ``"w"``,
``"space"``, ``"backspace"``, ``"escape"``, ... as ``pygame.key.name`` spells them, or ``"quit"`` for
closing the window); each is posted to pygame's event queue and handled like a real key press, and
play ends after the last one. With ``SDL_VIDEODRIVER=dummy`` this runs without a display.
"""
from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np

from deepverse_env.actions import ActionSet, get_action_set

RESET, QUIT = "reset", "quit"  # the two keymap values that are not action names
QUIT_EVENT = "quit"  # script entry that closes the window

# Key name (pygame.key.name spelling) -> action name, or RESET / QUIT. Actions the action set lacks
# (look_up / look_down in "deepverse") leave their keys unbound.
DEFAULT_KEYMAP: dict[str, str] = {
    "up": "forward", "w": "forward",
    "down": "backward", "s": "backward",
    "left": "turn_left", "a": "turn_left",
    "right": "turn_right", "d": "turn_right",
    "q": "left", "e": "right",
    "r": "look_up", "f": "look_down",
    "space": "stay",
    "backspace": RESET,
    "escape": QUIT,
}

TEXT_HEIGHT = 24  # pixels of the status line under the panel
RATE_WINDOW = 10  # steps the displayed step rate averages over

FrameCallback = Callable[[str, dict[str, np.ndarray], dict[str, Any]], None]


def require_pygame() -> ModuleType:
    """Import pygame (without its banner on stdout) or raise ``DependencyNotInstalled`` saying how to get it."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError:
        raise gym.error.DependencyNotInstalled(
            'deepverse play needs pygame: pip install pygame (or the "human" extra: pip install "deepverse-env[human]")'
        ) from None
    return pygame


def check_scale(scale: int) -> int:
    """``scale`` as an int >= 1 (screen pixels per frame pixel), or a ValueError naming it."""
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1 (screen pixels per frame pixel), got {scale!r}")
    return int(scale)


def check_max_steps(max_steps: int | None) -> int | None:
    """``max_steps`` as None (no limit) or an int >= 1, or a ValueError naming it."""
    if max_steps is None:
        return None
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be None or an integer >= 1, got {max_steps!r}")
    return int(max_steps)


def resolve_keymap(
    pygame: ModuleType, actions: ActionSet, keymap: Mapping[str, str] | None = None
) -> dict[int, int | str]:
    """Key codes -> action index in ``actions``, or RESET / QUIT.

    Args:
        keymap: key name -> action name / "reset" / "quit". None: ``DEFAULT_KEYMAP``, where keys of
            actions missing from the set stay unbound; a given keymap must name only known keys and
            actions (ValueError naming the bad one).
    """
    strict = keymap is not None
    bindings: dict[int, int | str] = {}
    for name, target in (DEFAULT_KEYMAP if keymap is None else keymap).items():
        code = key_code(pygame, name)
        if target in (RESET, QUIT):
            bindings[code] = target
        elif target in actions.names:
            bindings[code] = actions.index(target)
        elif strict:
            raise ValueError(
                f"keymap binds key {name!r} to {target!r}, which is neither {RESET!r}, {QUIT!r} nor an action of "
                f"action set {actions.name!r}: {actions.names}"
            )
    return bindings


def key_code(pygame: ModuleType, name: str) -> int:
    """pygame's key code of a key name (``pygame.key.name`` spelling), or a ValueError naming it."""
    try:
        return pygame.key.key_code(name)
    except (ValueError, TypeError):
        raise ValueError(f"unknown key name {name!r}; expected a pygame key name such as 'up', 'w', 'space'") from None


def script_events(pygame: ModuleType, names: Iterable[str], bindings: Mapping[int, int | str]) -> list:
    """pygame events for a script of key names (each a bound key) or ``"quit"`` (closing the window)."""
    events = []
    for name in names:
        if name == QUIT_EVENT:
            events.append(pygame.event.Event(pygame.QUIT))
            continue
        code = key_code(pygame, name)
        if code not in bindings:
            bound = sorted(pygame.key.name(c) for c in bindings)
            raise ValueError(f"scripted key {name!r} is not bound to anything; bound keys: {bound} (or {QUIT_EVENT!r})")
        events.append(pygame.event.Event(pygame.KEYDOWN, key=code))
    return events


def make_env(sim: bool, checkpoint: str | Path | None, action_set: str, render_cache: bool) -> gym.Env:
    """``DeepVerseSim-v0`` or ``DeepVerse-v0`` rendering ``rgb_array`` panels."""
    import deepverse_env  # noqa: F401  (registers the envs)

    if sim:
        return gym.make("DeepVerseSim-v0", action_set=action_set, render_mode="rgb_array")
    return gym.make(
        "DeepVerse-v0", checkpoint=checkpoint, action_set=action_set, render_cache=render_cache, render_mode="rgb_array"
    )


class PlayWindow:
    """The pygame window: a panel scaled to ``scale`` screen pixels per frame pixel, a status line below."""

    def __init__(self, pygame: ModuleType, scale: int, title: str):
        self.pygame, self.scale, self.title = pygame, scale, title
        self.surface = None
        self.font = pygame.font.Font(None, 20)

    def show(self, panel: np.ndarray, frame_height: int, text: str) -> None:
        """Show a (P, Q, 3) uint8 panel whose frames are ``frame_height`` pixels high, with ``text`` under it."""
        pygame = self.pygame
        # The panel already enlarges its frames k times; size it to `scale` screen pixels per frame pixel.
        k = max(1, panel.shape[0] // frame_height)
        size = (max(1, panel.shape[1] * self.scale // k), max(1, panel.shape[0] * self.scale // k))
        window_size = (size[0], size[1] + TEXT_HEIGHT)
        if self.surface is None or self.surface.get_size() != window_size:
            self.surface = pygame.display.set_mode(window_size)
            pygame.display.set_caption(self.title)
        image = pygame.surfarray.make_surface(np.ascontiguousarray(panel.swapaxes(0, 1)))
        self.surface.fill((0, 0, 0))
        self.surface.blit(pygame.transform.scale(image, size), (0, 0))
        self.surface.blit(self.font.render(text, True, (230, 230, 230)), (6, size[1] + 4))
        pygame.display.flip()


def status_line(sentence: str, steps: int, seconds: Iterable[float], frames_per_step: int) -> str:
    """The line under the panel: last sentence, step count, recent steps/s and frames/s."""
    seconds = list(seconds)
    if not seconds:
        return f"{sentence}  |  step {steps}"
    rate = len(seconds) / max(sum(seconds), 1e-9)
    return f"{sentence}  |  step {steps}  |  {rate:.2f} steps/s, {rate * frames_per_step:.1f} frames/s"


def play(
    sim: bool = False,
    checkpoint: str | Path | None = None,
    seed: int | None = 0,
    action_set: str = "basic",
    render_cache: bool = True,
    scale: int = 4,
    max_steps: int | None = None,
    keymap: Mapping[str, str] | None = None,
    events: Iterable[str] | None = None,
    on_frame: FrameCallback | None = None,
) -> dict[str, Any]:
    """Play the learned world (or with ``sim`` the simulator) from the keyboard in a pygame window.

    Args:
        sim: the simulator ``DeepVerseSim-v0`` instead of the learned ``DeepVerse-v0``.
        checkpoint: the learned world's model (None: the shipped one); not with ``sim``.
        seed: seed of the first reset (the world and view); later resets continue its stream.
        action_set: "basic", "deepverse" or "full"; keys of actions it lacks stay unbound.
        render_cache: the learned world refines frames with its 3D cache (ignored with ``sim``).
        scale: screen pixels per frame pixel (4: a 64 x 64 frame is 256 pixels high on screen).
        max_steps: stop after this many env steps (None: no limit).
        keymap: key name -> action name / "reset" / "quit", replacing ``DEFAULT_KEYMAP``.
        events: key names to press instead of reading the keyboard (``"quit"`` closes the window);
            play ends after the last one. All are checked before the env is made.
        on_frame: called as ``on_frame(what, obs, info)`` after every reset (``what="reset"``) and
            step (the action name), e.g. to record poses.
    Returns:
        {"world": "sim" | "learned", "action_set", "seed", "steps", "resets" (all resets after the first,
        by key or because an episode ended), "frames_per_step", "steps_per_s" and "frames_per_s" (the
        mean over all steps of env.step plus rendering, not counting time waiting for keys)}.
    Raises:
        ValueError: a bad scale, max_steps, action set, keymap entry or scripted key, or --checkpoint
            with --sim. DependencyNotInstalled: no pygame.
    """
    scale, max_steps = check_scale(scale), check_max_steps(max_steps)
    actions = get_action_set(action_set)
    if sim and checkpoint is not None:
        raise ValueError(f"--checkpoint {checkpoint} is for the learned world; leave it out with --sim")
    pygame = require_pygame()
    pygame.display.init()
    pygame.font.init()
    env = None
    try:
        bindings = resolve_keymap(pygame, actions, keymap)
        script = None if events is None else script_events(pygame, events, bindings)
        env = make_env(sim, checkpoint, actions.name, render_cache)
        window = PlayWindow(pygame, scale, f"DeepVerse play ({'simulator' if sim else 'learned world'})")
        stats = _loop(pygame, env, window, bindings, _event_source(pygame, script), seed, max_steps, on_frame)
    finally:
        if env is not None:
            env.close()
        pygame.display.quit()
        pygame.quit()
    F = env.unwrapped.frames_per_step
    rate = stats["steps"] / stats["seconds"] if stats["seconds"] > 0 else 0.0
    return {
        "world": "sim" if sim else "learned",
        "action_set": actions.name,
        "seed": seed,
        "steps": stats["steps"],
        "resets": stats["resets"],
        "frames_per_step": F,
        "steps_per_s": round(rate, 3),
        "frames_per_s": round(rate * F, 2),
    }


def _event_source(pygame: ModuleType, script: list | None) -> Iterable:
    """The keyboard (blocking waits), or a script posted one event at a time to pygame's queue."""
    if script is None:
        while True:
            yield pygame.event.wait()
    for event in script:
        pygame.event.post(event)
        yield from pygame.event.get()


def _loop(
    pygame: ModuleType,
    env: gym.Env,
    window: PlayWindow,
    bindings: Mapping[int, int | str],
    events: Iterable,
    seed: int | None,
    max_steps: int | None,
    on_frame: FrameCallback | None,
) -> dict[str, float]:
    """Step ``env`` on each bound key until quit, the end of ``events`` or ``max_steps``; counts and time."""
    actions: ActionSet = env.unwrapped.actions
    F = env.unwrapped.frames_per_step
    steps, resets, seconds = 0, 0, 0.0
    recent: deque[float] = deque(maxlen=RATE_WINDOW)

    def reset(reset_seed: int | None, why: str) -> None:
        obs, info = env.reset(seed=reset_seed)
        window.show(env.render(), obs["rgb"].shape[0], status_line(why, steps, recent, F))
        if on_frame is not None:
            on_frame(RESET, obs, info)

    reset(seed, "start: arrows/WASD move, Q/E strafe, R/F look, space stay, Backspace reset, Esc quit")
    for event in events:
        if event.type == pygame.QUIT:
            break
        if event.type != pygame.KEYDOWN or event.key not in bindings:
            continue
        target = bindings[event.key]
        if target == QUIT:
            break
        if target == RESET:
            resets += 1
            reset(None, "reset")
            continue
        t0 = time.perf_counter()
        obs, _, terminated, truncated, info = env.step(target)
        frame = env.render()
        dt = time.perf_counter() - t0
        steps, seconds = steps + 1, seconds + dt
        recent.append(dt)
        sentence = info.get("sentence", actions[target].sentence)
        window.show(frame, obs["rgb"].shape[0], status_line(sentence, steps, recent, F))
        if on_frame is not None:
            on_frame(actions[target].name, obs, info)
        if max_steps is not None and steps >= max_steps:
            break
        if terminated or truncated:
            resets += 1
            reset(None, "episode ended: reset")
    return {"steps": steps, "resets": resets, "seconds": seconds}
