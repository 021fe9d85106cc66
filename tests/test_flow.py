"""Flow matching: loss masking and overfitting, sampler cache equivalence, guidance algebra, known channels."""
import pytest
import torch

from world_model.flow import FlowConfig, FlowMatching
from world_model.mmdit import MMDiT, MMDiTConfig
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
    torch.manual_seed(seed)
    model = MMDiT(tiny_config(**overrides))
    perturb_zero_init(model, seed)
    g = torch.Generator().manual_seed(seed)
    def text_of(batch, length):
        mask = torch.ones(batch, length, dtype=torch.bool)
        return TextEmbedding(torch.randn(batch, length, 12, generator=g), mask, torch.randn(batch, 12, generator=g))

    text, null = text_of(B, 3), text_of(1, 1)
    batch = dict(
        x0=torch.randn(B, 1, C, H, W, generator=g),
        history=torch.randn(B, Th, C, H, W, generator=g),
        spatial=torch.randn(B, 1, C, H, W, generator=g),
    )
    return model, text, null, batch


def test_schedule_runs_from_noise_to_data():
    ts = FlowMatching(FlowConfig(shift=3.0)).schedule(5)
    assert ts[0] == 1 and ts[-1] == 0 and torch.all(ts[1:] < ts[:-1])
    torch.testing.assert_close(FlowMatching().schedule(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_loss_is_per_sample_and_ignores_known_channels():
    model, text, null, b = model_and_batch()
    flow = FlowMatching()
    g = torch.Generator().manual_seed(1)
    out = flow.loss(model, b["x0"], b["history"], text, null, b["spatial"], generator=g)
    assert out.loss.shape == () and out.t.shape == (2,) and out.per_sample.shape == (2,)
    assert torch.all((out.t > 0) & (out.t < 1))
    torch.testing.assert_close(out.loss, out.per_sample.mean())
    # Every channel known: nothing left to learn, the loss is 0.
    known = torch.ones(2, 1, C, dtype=torch.bool)
    assert flow.loss(model, b["x0"], b["history"], text, null, known=known).loss == 0


def test_loss_goes_down_when_overfitting_a_tiny_batch():
    model, text, null, b = model_and_batch()
    flow = FlowMatching()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        # Same t, noise and dropout every step: a fixed regression problem.
        g = torch.Generator().manual_seed(0)
        out = flow.loss(model, b["x0"], b["history"], text, null, b["spatial"], generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def sample(flow, model, text, null, b, **kw):
    kw.setdefault("generator", torch.Generator().manual_seed(3))
    return flow.sample(model, b["history"], 0.05, text, null, b["spatial"], **kw)


@pytest.mark.parametrize("mode", ["token", "channel"])
def test_cached_sampler_equals_uncached(mode):
    model, text, null, b = model_and_batch(history_mode=mode)
    flow = FlowMatching(FlowConfig(steps=4))
    mask = torch.tensor([True, False])
    cached = sample(flow, model, text, null, b, spatial_mask=mask)
    uncached = sample(flow, model, text, null, b, spatial_mask=mask, use_cache=False)
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-6)


def test_unit_guidance_equals_the_conditional_model():
    """s_T = s_S = 1 collapses the three branches to e(T, S): a plain Euler loop on the conditional model."""
    model, text, null, b = model_and_batch()
    flow = FlowMatching(FlowConfig(steps=3))
    guided = flow.sample(model, b["history"], 0.0, text, null, b["spatial"], steps=3, s_text=1.0, s_spatial=1.0,
                         generator=torch.Generator().manual_seed(3))
    x = torch.randn(2, 1, C, H, W, generator=torch.Generator().manual_seed(3))
    ts = flow.schedule(3)
    with torch.no_grad():
        for i in range(3):
            x = x + (ts[i + 1] - ts[i]) * model(x, ts[i], b["history"], 0.0, *text, b["spatial"])
    torch.testing.assert_close(guided, x, rtol=1e-4, atol=1e-5)


def test_guidance_without_memory_frames_skips_the_third_branch():
    model, text, null, b = model_and_batch()
    flow = FlowMatching(FlowConfig(steps=2))
    calls = []
    denoise = model.denoise
    model.denoise = lambda x, *a, **k: calls.append(x.shape[0]) or denoise(x, *a, **k)
    none = flow.sample(model, b["history"], 0.05, text, null, None, generator=torch.Generator().manual_seed(3))
    masked = sample(flow, model, text, null, b, spatial_mask=torch.tensor([False, False]))
    assert calls == [4, 4, 4, 4]  # two sampler calls x two steps, each one batch of 2 branches x 2 samples
    torch.testing.assert_close(none, masked)
    sample(flow, model, text, null, b)
    assert calls[-1] == 6


def test_known_channels_are_kept():
    model, text, null, b = model_and_batch()
    known = torch.zeros(2, 1, C, dtype=torch.bool)
    known[:, :, :2] = True
    values = torch.randn(2, 1, C, H, W)
    x = sample(FlowMatching(FlowConfig(steps=2)), model, text, null, b, known=known, known_values=values)
    assert torch.equal(x[:, :, :2], values[:, :, :2])
    assert not torch.allclose(x[:, :, 2:], values[:, :, 2:])


def test_first_frame_completion_without_history():
    model, text, null, b = model_and_batch()
    known = torch.zeros(2, 1, C, dtype=torch.bool)
    known[:, :, :3] = True
    x = FlowMatching(FlowConfig(steps=2)).sample(model, None, 0.0, text, null, known=known, known_values=b["x0"])
    assert x.shape == (2, 1, C, H, W)
    loss = FlowMatching().loss(model, b["x0"], None, text, null, known=known)
    assert torch.isfinite(loss.loss)


def test_bad_flow_arguments_raise():
    with pytest.raises(ValueError, match="text_drop"):
        FlowConfig(text_drop=1.5)
    with pytest.raises(ValueError, match="steps"):
        FlowConfig(steps=0)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 2.5"):
        FlowConfig(steps=2.5)
    model, text, null, b = model_and_batch()
    flow = FlowMatching()
    with pytest.raises(ValueError, match="known_values"):
        sample(flow, model, text, null, b, known=torch.zeros(2, 1, C, dtype=torch.bool))
    with pytest.raises(ValueError, match="known"):
        flow.loss(model, b["x0"], b["history"], text, null, known=torch.zeros(2, 2, C, dtype=torch.bool))
