"""Named MM-DiT sizes (DESIGN M6, §5): ``build("tiny")`` trains on two CPU cores, ``build("paper")`` is Table 2.

    model = build("tiny")                          # 64x64 frames -> 8x8 latents
    model = build("tiny", history_mode="channel")  # any MMDiTConfig field can be overridden
    with torch.device("meta"):
        paper = build("paper")                     # ~2B parameters, nothing allocated

A preset overrides only what differs from the ``MMDiTConfig`` defaults.
"""
from __future__ import annotations

import dataclasses

from world_model.mmdit import MMDiT, MMDiTConfig

PRESETS: dict[str, MMDiTConfig] = {
    # 64x64 frames, 8x spatial compression -> 8x8 latents, patch 2 -> 16 tokens a frame; C = 8 rgb + 4 depth
    # + 6 raymap latent channels; 4 history frames. Depth 6 x width 128 (2 heads x 64, 3.5M parameters in
    # two streams) is sized by the batched target: the default sampler (10 steps x 3 guidance branches)
    # costs ~32 GFLOP per chunk of 16 rollouts, ~0.3 s on 2 cores = 200+ frames/s. Width 256 (13.8M)
    # runs ~90 frames/s batched, width 192 (7.8M) ~130.
    "tiny": MMDiTConfig(),
    # Table 2: 24 blocks, width 1536, 24 heads x 64 (SD3-medium's shape, ~2B parameters). 384x512 frames
    # -> 48x64 latents, C = 16 rgb + 16 depth + 6 raymap. text_dim 4096 = T5-XXL's token width, the
    # precomputed text features the paper's MM-DiT is built for. A 57-frame clip at 8x temporal
    # compression is 8 latent frames: 7 history + 1 noisy (the Model 1 split, also the token window).
    "paper": MMDiTConfig(
        latent_channels=38,
        latent_size=(48, 64),
        depth=24,
        width=1536,
        heads=24,
        head_dim=64,
        text_dim=4096,
        max_frames=8,
        history_frames=7,
    ),
}


def config(preset: str, **overrides) -> MMDiTConfig:
    """The named config with ``overrides`` applied.

    Raises:
        ValueError: naming an unknown preset or override field (or an invalid value).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(MMDiTConfig)}
    for name in overrides:
        if name not in fields:
            raise ValueError(f"unknown MMDiTConfig field {name!r}; expected one of {sorted(fields)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def build(preset: str = "tiny", **overrides) -> MMDiT:
    """An ``MMDiT`` of the named size (on the current default device; use ``torch.device("meta")`` to count)."""
    return MMDiT(config(preset, **overrides))
