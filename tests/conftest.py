"""Shared fixtures: a tiny recorded dataset and a tiny world model (seconds on CPU)."""
import os

import pytest
import torch

from world_model.model import DeepVerse, DeepVerseConfig

# dtype="auto" (DeepVerse-v0's default) would measure each tiny model once per machine and could pick bfloat16:
# tests run float32, the same on every machine; tests of auto itself clear this.
os.environ.setdefault("DEEPVERSE_DTYPE", "float32")

TINY_DIT = dict(depth=1, width=32, heads=1, head_dim=16, text_dim=16)


def tiny_config(**changes) -> DeepVerseConfig:
    """16x16 frames -> 2x2 latents with the tiny VAE; a one-block DiT (``dit_overrides`` merge in)."""
    dit = {**TINY_DIT, **changes.pop("dit_overrides", {})}
    return DeepVerseConfig(height=16, width=16, dit_overrides=dit, **changes)


@pytest.fixture(scope="session")
def tiny_episodes(tmp_path_factory):
    """Six 12-step episodes of 16x16 frames from the simulator."""
    from deepverse_env.collect import collect

    root = tmp_path_factory.mktemp("episodes")
    collect(root, episodes=6, steps=12, seed=123, height=16, width=16, num_envs=6, progress=False)
    return root


@pytest.fixture
def tiny_model() -> DeepVerse:
    return DeepVerse(tiny_config())


def perturb_zero_init(model: torch.nn.Module, seed: int = 0) -> None:
    """adaLN-Zero starts every gate at 0, which leaves some gradients exactly zero and the untrained
    model constant; give every all-zero weight a small random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 0 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
