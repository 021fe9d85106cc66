"""Presets: the tiny model's size, the paper model's ~2B parameters counted on the meta device, bad names."""
import pytest
import torch

import world_model
from world_model.mmdit import Condition
from world_model.text_encoder import TextEmbedding
from world_model import PRESETS, build, config


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_preset_has_about_two_billion_parameters():
    with torch.device("meta"):
        model = build("paper")
    n = count(model)
    print(f"paper MM-DiT: {n / 1e9:.3f}B parameters")
    assert abs(n - 2e9) <= 0.1 * 2e9
    c = model.config
    assert (c.depth, c.width, c.heads, c.head_dim, c.patch_size, c.latent_channels) == (24, 1536, 24, 64, 2, 38)


def test_tiny_preset_builds_and_runs():
    model = build("tiny")
    print(f"tiny MM-DiT: {count(model) / 1e6:.2f}M parameters")
    c = model.config
    B = 1
    text = TextEmbedding(torch.randn(B, 4, c.text_dim), torch.ones(B, 4, dtype=torch.bool), torch.randn(B, c.text_dim))
    history = torch.randn(B, c.history_frames, c.latent_channels, *c.latent_size)
    v = model(torch.randn(B, 1, c.latent_channels, *c.latent_size), 0.5, Condition(text, text, history))
    assert v.shape == (B, 1, c.latent_channels, *c.latent_size)


def test_overrides_apply_and_presets_are_not_mutated():
    model = build("tiny", history_mode="channel", depth=2)
    assert model.config.history_mode == "channel" and model.config.depth == 2
    assert PRESETS["tiny"].history_mode == "token"
    assert world_model.build is build


def test_unknown_preset_or_override_raises_naming_it():
    with pytest.raises(ValueError, match="'huge'"):
        build("huge")
    with pytest.raises(ValueError, match="'widht'"):
        config("tiny", widht=64)
    with pytest.raises(ValueError, match="'sideways'"):
        config("tiny", history_mode="sideways")
