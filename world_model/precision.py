"""``dtype="auto"`` (issue 31): the compute dtype a workload runs fastest in on this machine, measured on first use
and cached. bfloat16 autocast was 3-8x faster than float32 on one CPU and slower on another: never assumed.

    dtype = auto_dtype("DeepVerse-v0 step ...", measure)   # measure(dtype) -> seconds of one run of the workload

The cache is ``$DEEPVERSE_CACHE/dtype.json`` (default ``~/.cache/deepverse``), one entry per machine (CPU model and
flags, torch version, threads) and workload, with the seconds measured; delete it to measure again.
``DEEPVERSE_DTYPE=float32`` (or ``bfloat16``, ``float16``) overrides every choice, e.g. for reproducible tests.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

CANDIDATES = ("float32", "bfloat16")  # what auto chooses between (float16 autocast is slow on CPUs)
OVERRIDES = ("float32", "bfloat16", "float16")
MARGIN = 1.1  # bfloat16 is chosen only if it is this much faster: float32 is exact, and noise should not flip it
ENV_DTYPE, ENV_CACHE = "DEEPVERSE_DTYPE", "DEEPVERSE_CACHE"


def machine() -> str:
    """What a measured choice holds for: the CPU (model name and a digest of its flags), torch, the threads."""
    info = {}  # the first processor's entries of /proc/cpuinfo
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = info.get("model name") or platform.processor() or platform.machine()
    flags = info.get("flags") or info.get("Features")
    digest = hashlib.sha1(flags.encode()).hexdigest()[:10] if flags else "?"
    return f"{cpu} | flags {digest} | torch {torch.__version__} | threads {torch.get_num_threads()}"


def cache_path() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "deepverse") / "dtype.json"


def _read() -> dict:
    try:
        cache = json.loads(cache_path().read_text())
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):  # none yet, or unreadable: measure again
        return {}


def choice(workload: str) -> dict | None:
    """The cached measurement of ``workload`` on this machine (``dtype``, ``seconds`` per candidate), or None."""
    entry = _read().get(f"{machine()} | {workload}")
    return entry if isinstance(entry, dict) and entry.get("dtype") in CANDIDATES else None


def auto_dtype(workload: str, measure: Callable[[str], float]) -> str:
    """The dtype of ``CANDIDATES`` that runs ``workload`` fastest here: ``DEEPVERSE_DTYPE`` if set, else the cached
    choice, else measured now (``measure(dtype)``: seconds; the slower by ``MARGIN`` loses, float32 on a tie) and
    cached. A cache that cannot be written is not an error: the next use measures again."""
    forced = os.environ.get(ENV_DTYPE)
    if forced:
        if forced not in OVERRIDES:
            raise ValueError(f"{ENV_DTYPE} must be one of {list(OVERRIDES)}, got {forced!r}")
        return forced
    cached = choice(workload)
    if cached is not None:
        return cached["dtype"]
    seconds = {d: float(measure(d)) for d in CANDIDATES}
    dtype = "bfloat16" if seconds["float32"] > MARGIN * seconds["bfloat16"] else "float32"
    cache = _read()
    cache[f"{machine()} | {workload}"] = {"dtype": dtype, "seconds": {d: round(s, 5) for d, s in seconds.items()}}
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass
    return dtype
