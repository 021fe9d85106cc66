"""Flow matching: loss masking and overfitting, sampler cache equivalence, guidance algebra, known channels,
and the one sampler config."""
import dataclasses

import pytest
import torch

from world_model.flow import FlowConfig, FlowMatching, SamplerConfig
from world_model.mmdit import Condition, MMDiT, MMDiTConfig
from world_model.text_encoder import TextEmbedding

from conftest import perturb_zero_init

C, H, W = 5, 4, 6


def tiny_config(**overrides) -> MMDiTConfig:
    base = dict(
        latent_channels=C, latent_size=(H, W), patch_size=2, depth=2, width=32, heads=2, head_dim=16,
        text_dim=12, max_frames=6, history_frames=2,
    )
    return MMDiTConfig(**{**base, **overrides})


def model_and_batch(B=2, Th=2, seed=0, **overrides):
    """A small MMDiT, clean targets ``x0`` and a condition with history, text and a memory frame."""
    torch.manual_seed(seed)
    model = MMDiT(tiny_config(**overrides))
    perturb_zero_init(model, seed)
    g = torch.Generator().manual_seed(seed)

    def text_of(batch, length):
        mask = torch.ones(batch, length, dtype=torch.bool)
        return TextEmbedding(torch.randn(batch, length, 12, generator=g), mask, torch.randn(batch, 12, generator=g))

    text, null = text_of(B, 3), text_of(1, 1)
    x0 = torch.randn(B, 1, C, H, W, generator=g)
    history = torch.randn(B, Th, C, H, W, generator=g)
    spatial = torch.randn(B, 1, C, H, W, generator=g)
    return model, x0, Condition(text, null, history, 0.0, spatial)


def noise(B=2, seed=3):
    return torch.randn(B, 1, C, H, W, generator=torch.Generator().manual_seed(seed))


def sample(flow, model, cond, sampler=SamplerConfig(steps=4), **kw):
    kw.setdefault("generator", torch.Generator().manual_seed(3))
    return flow.sample(model, noise(cond.batch_size), dataclasses.replace(cond, history_t=0.05), sampler, **kw)


def test_schedule_runs_from_noise_to_data():
    ts = FlowMatching.schedule(SamplerConfig(steps=5, shift=3.0))
    assert ts[0] == 1 and ts[-1] == 0 and torch.all(ts[1:] < ts[:-1])
    torch.testing.assert_close(FlowMatching.schedule(SamplerConfig(steps=4)), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_loss_is_per_sample_and_ignores_known_channels():
    model, x0, cond = model_and_batch()
    flow = FlowMatching()
    out = flow.loss(model, x0, cond, generator=torch.Generator().manual_seed(1))
    assert out.loss.shape == () and out.t.shape == (2,) and out.per_sample.shape == (2,)
    assert torch.all((out.t > 0) & (out.t < 1))
    torch.testing.assert_close(out.loss, out.per_sample.mean())
    # Every channel known: nothing left to learn, the loss is 0.
    known = torch.ones(2, 1, C, dtype=torch.bool)
    assert flow.loss(model, x0, cond, known=known).loss == 0


def test_loss_goes_down_when_overfitting_a_tiny_batch():
    model, x0, cond = model_and_batch()
    flow = FlowMatching()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        # Same t, noise and dropout every step: a fixed regression problem.
        out = flow.loss(model, x0, cond, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_loss_dropout_replaces_text_and_masks_memory():
    model, x0, cond = model_and_batch()
    seen = []
    model.forward = lambda x, t, c, known=None: seen.append(c) or torch.zeros_like(x)
    FlowMatching(FlowConfig(text_drop=1.0, spatial_drop=1.0)).loss(model, x0, cond)
    FlowMatching(FlowConfig(text_drop=0.0, spatial_drop=0.0, history_noise=0.0)).loss(model, x0, cond)
    dropped, kept = seen
    assert torch.equal(dropped.text.pooled, cond.null_text.pooled.expand(2, -1)) and not dropped.spatial_mask.any()
    assert torch.equal(kept.text.pooled, cond.text.pooled) and kept.spatial_mask.all()
    assert torch.equal(kept.history, cond.history) and not torch.equal(dropped.history, cond.history)


def test_loss_dropout_takes_a_render_with_the_memory_frame_and_alone():
    """A render (M18) is dropped with the memory frame (spatial_drop) and on its own (render_drop), also where
    the condition holds no memory frame."""
    model, x0, cond = model_and_batch()
    g = torch.Generator().manual_seed(1)
    cond = dataclasses.replace(cond, render=torch.randn(2, 1, C, H, W, generator=g), render_cover=torch.rand(2, 1, H, W))
    seen = []
    model.forward = lambda x, t, c, known=None: seen.append(c) or torch.zeros_like(x)
    for spatial_drop, render_drop in ((1.0, 0.0), (0.0, 1.0), (0.0, 0.0)):
        FlowMatching(FlowConfig(spatial_drop=spatial_drop, render_drop=render_drop)).loss(model, x0, cond)
    FlowMatching(FlowConfig(spatial_drop=1.0, render_drop=0.0)).loss(model, x0, dataclasses.replace(cond, spatial=None))
    masks = [(c.spatial_mask, c.render_mask.tolist()) for c in seen]
    assert masks[0][0].tolist() == masks[0][1] == [False, False]  # with the memory frame
    assert masks[1][0].tolist() == [True, True] and masks[1][1] == [False, False]  # alone
    assert masks[2][0].tolist() == masks[2][1] == [True, True]
    assert masks[3][0] is None and masks[3][1] == [False, False]  # a render without a memory frame is dropped too
    with pytest.raises(ValueError, match="render_drop must be in"):
        FlowConfig(render_drop=-0.1)


@pytest.mark.parametrize("mode", ["token", "channel"])
def test_cached_sampler_equals_uncached(mode):
    model, _, cond = model_and_batch(history_mode=mode)
    cond = dataclasses.replace(cond, spatial_mask=torch.tensor([True, False]))
    cached = sample(FlowMatching(), model, cond)
    uncached = sample(FlowMatching(), model, cond, use_cache=False)
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-6)


def test_unit_guidance_equals_the_conditional_model():
    """s_T = s_S = 1 collapses the three branches to e(T, S): a plain Euler loop on the conditional model, which
    is all the sampler computes (one branch: a third of the guided work)."""
    model, _, cond = model_and_batch()
    sampler = SamplerConfig(steps=3, s_text=1.0, s_spatial=1.0)
    calls = []
    denoise = model.denoise
    model.denoise = lambda x, *a, **k: calls.append(x.shape[0]) or denoise(x, *a, **k)
    guided = FlowMatching().sample(model, noise(), cond, sampler)
    assert calls == [2, 2, 2]  # 2 samples, one branch, three steps
    model.denoise = denoise
    x = noise()
    ts = FlowMatching.schedule(sampler)
    with torch.no_grad():
        for i in range(3):
            x = x + (ts[i + 1] - ts[i]) * model(x, ts[i], cond)
    torch.testing.assert_close(guided, x, rtol=1e-4, atol=1e-5)


def test_guidance_without_memory_frames_skips_the_third_branch():
    model, _, cond = model_and_batch()
    flow, sampler = FlowMatching(), SamplerConfig(steps=2)
    calls = []
    denoise = model.denoise
    model.denoise = lambda x, *a, **k: calls.append(x.shape[0]) or denoise(x, *a, **k)
    none = sample(flow, model, dataclasses.replace(cond, spatial=None), sampler)
    masked = sample(flow, model, dataclasses.replace(cond, spatial_mask=torch.tensor([False, False])), sampler)
    assert calls == [4, 4, 4, 4]  # two sampler calls x two steps, each one batch of 2 branches x 2 samples
    torch.testing.assert_close(none, masked)
    sample(flow, model, cond, sampler)
    assert calls[-1] == 6


def test_known_channels_are_kept():
    model, _, cond = model_and_batch()
    known = torch.zeros(2, 1, C, dtype=torch.bool)
    known[:, :, :2] = True
    values = torch.randn(2, 1, C, H, W)
    x = sample(FlowMatching(), model, cond, SamplerConfig(steps=2), known=known, known_values=values)
    assert torch.equal(x[:, :, :2], values[:, :, :2])
    assert not torch.allclose(x[:, :, 2:], values[:, :, 2:])


def test_first_frame_completion_without_history():
    model, x0, cond = model_and_batch()
    cond = Condition(cond.null_text.expand(2), cond.null_text)
    known = torch.zeros(2, 1, C, dtype=torch.bool)
    known[:, :, :3] = True
    x = FlowMatching().sample(model, noise(), cond, SamplerConfig(steps=2), known=known, known_values=x0)
    assert x.shape == (2, 1, C, H, W)
    assert torch.isfinite(FlowMatching().loss(model, x0, cond, known=known).loss)


def test_sampler_config_merges_and_validates():
    base = SamplerConfig(steps=4, s_text=1.25)
    assert base.merged(None) is base and base.merged(SamplerConfig()) == SamplerConfig()
    assert base.merged({"s_spatial": 2.0, "steps": None}) == SamplerConfig(steps=4, s_text=1.25, s_spatial=2.0)
    with pytest.raises(ValueError, match=r"\['warp'\] are not sampler settings"):
        base.merged({"warp": 2})
    with pytest.raises(ValueError, match="steps must be a positive integer, got 2.5"):
        base.merged({"steps": 2.5})
    with pytest.raises(ValueError, match="steps"):
        SamplerConfig(steps=0)
    with pytest.raises(ValueError, match="s_text must be a finite"):
        SamplerConfig(s_text=float("nan"))
    with pytest.raises(ValueError, match="shift"):
        SamplerConfig(shift=0.0)
    with pytest.raises(ValueError, match="SamplerConfig or a dict"):
        base.merged([("steps", 2)])


def test_bad_flow_arguments_raise():
    with pytest.raises(ValueError, match="text_drop"):
        FlowConfig(text_drop=1.5)
    model, x0, cond = model_and_batch()
    flow = FlowMatching()
    with pytest.raises(ValueError, match="known_values"):
        sample(flow, model, cond, known=torch.zeros(2, 1, C, dtype=torch.bool))
    with pytest.raises(ValueError, match="known"):
        flow.loss(model, x0, cond, known=torch.zeros(2, 2, C, dtype=torch.bool))
    with pytest.raises(ValueError, match="the condition holds 2 samples; z holds 3"):
        flow.sample(model, noise(3), cond, SamplerConfig())
