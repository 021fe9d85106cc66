"""Where a learned world's step spends its time (issue 15): ``deepverse bench env --profile``.

``StepProfile(world)`` wraps, for as long as it is entered, the callables of a ``LearnedWorld`` that do the
work of a step and adds up their wall time by part:

- ``dit``: the MM-DiT's flow sampling of the next latent (``DeepVerse.next_latent``);
- ``encode``: the codec's encoder (the ψ keyframe each step, the kept frames at a slide);
- ``decode``: the codec's streaming decoder (each new chunk; the decoder state rebuilt at a slide);
- ``cameras``: poses and intrinsics from the predicted raymaps;
- ``render``: the 3D cache splatted into the new cameras; ``refine``: the refiner network;
- ``memory``: keyframe retrieval and storage (ψ); ``anchor``: the metric anchor at a slide;
- ``hooks``: reward and termination; ``maps``: the per-world point maps of ``render()``;
- ``other``: the rest of the step (Python, tensor bookkeeping, normalisation), the step's total minus the parts.

The parts do not nest (none of them calls another) and count only inside ``world.step`` (not in ``reset``),
so they add up to at most the step. Only the world's
own rollout is wrapped: ``imagine`` branches rollouts of its own and is not profiled here.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import AbstractContextManager

PARTS = ("dit", "encode", "decode", "cameras", "render", "refine", "memory", "anchor", "hooks", "maps")


class StepProfile(AbstractContextManager):
    """Accumulated seconds per part of ``world.step`` calls made inside the ``with`` block.

    Args:
        world: a ``deepverse_env.learned.world.LearnedWorld``.
    """

    def __init__(self, world):
        rollout, model = world.rollout, world.rollout.model
        targets = [
            ("dit", model, "next_latent"), ("encode", model, "encode"), ("decode", model.codec, "decode_stream"),
            ("cameras", model.codec, "decode_cameras"), ("memory", rollout.memory, "retrieve"),
            ("memory", rollout.memory, "add"), ("anchor", rollout, "_anchor_to_start"), ("hooks", world.hooks, "step"),
            ("maps", world, "_record"), ("step", world, "step"),
        ]
        if rollout.cache is not None:
            targets.append(("render", rollout.cache, "render"))
        if rollout.cache is not None and model.refiner is not None:
            targets.append(("refine", model.refiner, "forward"))
        self.world, self.targets = world, targets
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps = 0
        self._stepping = False  # inside world.step: only then do the parts count

    def _wrap(self, part: str, fn):
        def timed(*args, **kwargs):
            if part != "step" and not self._stepping:  # a reset's encode / decode / hooks are not a step's
                return fn(*args, **kwargs)
            self._stepping = True
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - t0
                if part == "step":
                    self.steps += 1
                    self._stepping = False

        return timed

    def __enter__(self):
        for part, obj, name in self.targets:
            # An instance attribute shadows the class's method; deleting it on exit restores the method.
            setattr(obj, name, self._wrap(part, getattr(obj, name)))
        return self

    def __exit__(self, *exc):
        for _, obj, name in self.targets:
            if name in vars(obj):
                delattr(obj, name)
        return False

    def report(self) -> dict:
        """{"steps", "ms_per_step", "ms": {part: ms per step}, "share": {part: share of the step}}; parts the
        world does not have (no 3D cache: render, refine) are absent."""
        if self.steps == 0:
            raise RuntimeError("no step was profiled: call world.step inside the profile's with block")
        total = self.seconds["step"]
        wrapped = {part for part, _, _ in self.targets}
        parts = {p: self.seconds[p] for p in PARTS if p in wrapped}
        parts["other"] = max(0.0, total - sum(parts.values()))
        return {
            "steps": self.steps,
            "ms_per_step": round(1e3 * total / self.steps, 2),
            "ms": {p: round(1e3 * s / self.steps, 2) for p, s in parts.items()},
            "share": {p: round(s / total, 4) for p, s in parts.items()},
        }
