"""MM-DiT: shape contract, gradients, the Fig. 9 mask and its K/V cache, memory-frame and render masking, bad
inputs."""
import pytest
import torch
import torch.nn.functional as F

from world_model.mmdit import (
    HISTORY, NOISY, SPATIAL, TEXT, Condition, MMDiT, MMDiTConfig, apply_rope, patchify, unpatchify,
)
from world_model.text_encoder import TextEmbedding

from conftest import perturb_zero_init

C, H, W = 5, 4, 6  # odd sizes so no shape coincides by accident


def tiny_config(**overrides) -> MMDiTConfig:
    base = dict(
        latent_channels=C, latent_size=(H, W), patch_size=2, depth=3, width=32, heads=2, head_dim=16,
        text_dim=12, max_frames=6, history_frames=2,
    )
    return MMDiTConfig(**{**base, **overrides})


def inputs(B=2, Th=2, k=1, L=3, S=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(B, L, dtype=torch.bool)
    text_mask[0, -1] = False  # one padded text token
    return dict(
        x_noisy=torch.randn(B, k, C, H, W, generator=g),
        t=torch.rand(B, generator=g),
        history=torch.randn(B, Th, C, H, W, generator=g) if Th else None,
        history_t=torch.rand(B, generator=g) * 0.1,
        text_tokens=torch.randn(B, L, 12, generator=g),
        text_mask=text_mask,
        text_pooled=torch.randn(B, 12, generator=g),
        spatial=torch.randn(B, S, C, H, W, generator=g) if S else None,
    )


def condition(x: dict, spatial_mask=None, render_mask=None) -> Condition:
    """The ``Condition`` of a dict of ``inputs`` (with a render where it holds one)."""
    text = TextEmbedding(x["text_tokens"], x["text_mask"], x["text_pooled"])
    return Condition(
        text, text, x["history"], x["history_t"], x["spatial"], spatial_mask, x.get("render"), x.get("render_cover"),
        render_mask,
    )


def with_render(x: dict, seed=1) -> dict:
    """``inputs`` plus a render frame (B, 1, C, H, W) and its coverage (B, 1, H, W)."""
    g = torch.Generator().manual_seed(seed)
    B = x["x_noisy"].shape[0]
    return {**x, "render": torch.randn(B, 1, C, H, W, generator=g), "render_cover": torch.rand(B, 1, H, W, generator=g)}


def call(model: MMDiT, x: dict, known=None, spatial_mask=None):
    return model(x["x_noisy"], x["t"], condition(x, spatial_mask), known)


@pytest.mark.parametrize("mode", ["token", "channel"])
@pytest.mark.parametrize("k", [1, 2])
def test_output_shape(mode, k):
    model = MMDiT(tiny_config(history_mode=mode))
    x = inputs(k=k)
    v = call(model, x)
    assert v.shape == (2, k, C, H, W)
    assert torch.all(v == 0)  # zero-initialised final layer


def test_token_mode_accepts_any_history_length_and_none():
    model = MMDiT(tiny_config())
    perturb_zero_init(model)
    for Th in (0, 1, 3):
        assert call(model, inputs(Th=Th, S=0)).shape == (2, 1, C, H, W)


@pytest.mark.parametrize("mode", ["token", "channel"])
def test_gradients_reach_every_parameter(mode):
    model = MMDiT(tiny_config(history_mode=mode))
    perturb_zero_init(model)
    x = inputs(k=2)
    known = torch.zeros(2, 2, C, dtype=torch.bool)
    known[:, :, :2] = True
    v = call(model, x, known=known)
    ((v - torch.randn_like(v)) ** 2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def joint_forward(m: MMDiT, x_noisy, t, history, history_t, text_tokens, text_mask, text_pooled, spatial,
                  spatial_mask, render=None, render_cover=None, render_mask=None):
    """Reference without the split: every token in one sequence per block, masked as in paper Fig. 9.

    Returns the velocity, the per-block K/V of the context rows, and the final history-token states.
    """
    B, k = x_noisy.shape[:2]
    Th, S, P, L = history.shape[1], spatial.shape[1], m.patches, text_tokens.shape[1]
    R = 0 if render is None else 1
    y = m.pooled_embed(text_pooled)
    clean = m.t_embed(torch.zeros(B)) + y
    ones = lambda n: torch.ones(B, n, C, dtype=torch.bool)  # noqa: E731
    xt = m.text_embed(text_tokens) + m.type_embed[TEXT]
    renders = []
    if render is not None:  # x_embed of [latent, coverage over every channel], 2D positions, render_type
        known = render_cover[:, :, None].expand_as(render)
        tokens = m.x_embed(patchify(torch.cat([render, known], 2), m.config.patch_size))
        renders.append(tokens + m.pos_embed + m.render_type)
    xv = torch.cat([
        m._embed_frames(spatial, ones(S), SPATIAL),
        *renders,
        m._embed_frames(history, ones(Th), HISTORY),
        m._embed_frames(x_noisy, ~ones(k), NOISY),
    ], dim=1)
    cv = torch.stack([clean] * (S + R) + [m.t_embed(history_t) + y] * Th + [m.t_embed(t) + y] * k, dim=1)  # (B, G, D)
    rope = m._rope([-Th - 1] * S + [0] * R + list(range(-Th, 0)) + list(range(k)))
    N = L + xv.shape[1]
    Nc = N - k * P
    frames_ok = torch.ones(B, (Th + k) * P, dtype=torch.bool)
    rendered = [] if render is None else [render_mask[:, None].expand(B, P)]
    key_ok = torch.cat([text_mask, spatial_mask[:, None].expand(B, S * P), *rendered, frames_ok], 1)
    is_ctx = torch.arange(N) < Nc
    allowed = key_ok[:, None, :] & (~is_ctx[:, None] | is_ctx[None, :])  # context queries see context keys only
    allowed = (allowed | torch.eye(N, dtype=torch.bool))[:, None]  # (B, 1, N, N)
    kv = []
    for block in m.blocks:
        mt, mv = block.text.modulation(clean[:, None]), block.video.modulation(cv)
        q, kk, v = block.text.qkv_heads(xt, mt)
        qv, kv_, vv = block.video.qkv_heads(xv, mv)
        q = torch.cat([q, apply_rope(qv, *rope)], 2)
        kk = torch.cat([kk, apply_rope(kv_, *rope)], 2)
        v = torch.cat([v, vv], 2)
        kv.append((kk[:, :, :Nc], v[:, :, :Nc]))
        o = F.scaled_dot_product_attention(q, kk, v, attn_mask=allowed)
        if not block.last:
            xt = block.text.post(xt, o[:, :, :L], mt)
        xv = block.video.post(xv, o[:, :, L:], mv)
    out = m.final(xv[:, -k * P:], (m.t_embed(t) + y)[:, None])
    velocity = unpatchify(out, k, C, H, W, m.config.patch_size)
    return velocity, kv, xv[:, (S + R) * P:(S + R + Th) * P]


@pytest.mark.parametrize("render", [False, True])
def test_split_computation_equals_joint_masked_attention(render):
    """encode_context + denoise (with the K/V cache) is the Fig. 9 masked transformer, not an approximation;
    with a render frame too (a clean context frame at the noisy frame's time index)."""
    model = MMDiT(tiny_config(render_frame=render))
    perturb_zero_init(model)
    x = inputs(k=2)
    spatial_mask = torch.tensor([True, False])
    x["spatial"][~spatial_mask] = 0  # encode_context zeroes an absent memory frame (its K/V rows are unused)
    render_mask = None
    if render:
        x, render_mask = with_render(x), torch.tensor([False, True])
        x["render"][~render_mask], x["render_cover"][~render_mask] = 0, 0  # absent renders are zeroed alike
    with torch.no_grad():
        ref, ref_kv, _ = joint_forward(model, **x, spatial_mask=spatial_mask, render_mask=render_mask)
        ctx = model.encode_context(condition(x, spatial_mask, render_mask))
        v = model.denoise(x["x_noisy"], x["t"], ctx)
    torch.testing.assert_close(v, ref, rtol=1e-4, atol=1e-5)
    for (k_ref, v_ref), k, vv in zip(ref_kv, ctx.k, ctx.v):
        torch.testing.assert_close(k[:, :, : ctx.tokens], k_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(vv[:, :, : ctx.tokens], v_ref, rtol=1e-4, atol=1e-5)


def test_context_does_not_see_noisy_tokens():
    """Perturbing the noisy frames changes the prediction but no context K/V and no history output."""
    model = MMDiT(tiny_config())
    perturb_zero_init(model)
    x = inputs(k=1)
    mask = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        v1, kv1, h1 = joint_forward(model, **x, spatial_mask=mask)
        x["x_noisy"] = x["x_noisy"] + torch.randn_like(x["x_noisy"])
        v2, kv2, h2 = joint_forward(model, **x, spatial_mask=mask)
    assert not torch.allclose(v1, v2)
    assert torch.equal(h1, h2)
    for (ka, va), (kb, vb) in zip(kv1, kv2):
        assert torch.equal(ka, kb) and torch.equal(va, vb)


def test_cached_context_reused_across_steps_is_unchanged():
    model = MMDiT(tiny_config())
    perturb_zero_init(model)
    x = inputs()
    with torch.no_grad():
        ctx = model.encode_context(condition(x))
        first = model.denoise(x["x_noisy"], 0.7, ctx)
        model.denoise(torch.randn_like(x["x_noisy"]), 0.3, ctx)
        again = model.denoise(x["x_noisy"], 0.7, ctx)
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_absent_memory_frame_holding_nan_changes_nothing():
    """A world whose memory is empty (just restarted) sits in a batch with others: whatever its masked memory
    frame holds, NaN included, its prediction and the others' stay finite and unchanged."""
    model = MMDiT(tiny_config())
    perturb_zero_init(model)
    x = inputs(k=2)
    mask = torch.tensor([True, False])
    with torch.no_grad():
        clean = model(x["x_noisy"], x["t"], condition(x, mask))
        x["spatial"][1] = float("nan")
        poisoned = model(x["x_noisy"], x["t"], condition(x, mask))
    assert torch.isfinite(poisoned).all()
    torch.testing.assert_close(poisoned, clean, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["token", "channel"])
def test_masked_memory_frame_equals_no_memory_frame(mode):
    model = MMDiT(tiny_config(history_mode=mode))
    perturb_zero_init(model)
    x = inputs()
    with torch.no_grad():
        without = call(model, {**x, "spatial": None})
        masked = call(model, x, spatial_mask=torch.tensor([False, True]))
        present = call(model, x)
    torch.testing.assert_close(masked[0], without[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked[1], present[1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(present[0], without[0])


def test_known_mask_changes_the_prediction():
    model = MMDiT(tiny_config())
    perturb_zero_init(model)
    x = inputs()
    known = torch.zeros(2, 1, C, dtype=torch.bool)
    known[:, :, :3] = True
    with torch.no_grad():
        assert not torch.allclose(call(model, x), call(model, x, known=known))


@pytest.mark.parametrize(
    "overrides, word",
    [
        (dict(history_mode="frames"), "frames"),
        (dict(latent_size=(5, 6)), "latent_size"),
        (dict(head_dim=15), "head_dim"),
        (dict(depth=0), "depth"),
        (dict(history_frames=6), "history_frames"),
        (dict(history_mode="channel", render_frame=True), "render_frame needs history_mode 'token'"),
    ],
)
def test_bad_config_raises(overrides, word):
    with pytest.raises(ValueError, match=word):
        tiny_config(**overrides)


def test_bad_inputs_raise():
    model = MMDiT(tiny_config())
    x = inputs()
    with pytest.raises(ValueError, match="history"):
        call(model, {**x, "history": torch.randn(2, 2, C + 1, H, W)})
    with pytest.raises(ValueError, match="x_noisy"):
        call(model, {**x, "x_noisy": torch.randn(2, 1, C, H, W + 2)})
    with pytest.raises(ValueError, match="known"):
        call(model, x, known=torch.zeros(2, 1, C + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_frames"):
        call(model, {**x, "x_noisy": torch.randn(2, 5, C, H, W)})
    with pytest.raises(ValueError, match="text"):
        call(model, {**x, "text_pooled": torch.randn(2, 11)})
    with pytest.raises(ValueError, match="spatial_mask"):
        call(model, x, spatial_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="exactly 2 history frames"):
        call(MMDiT(tiny_config(history_mode="channel")), inputs(Th=1))
    with pytest.raises(ValueError, match="holds a render but this MMDiT has render_frame=False"):
        call(model, with_render(x))
    rendering = MMDiT(tiny_config(render_frame=True))
    with pytest.raises(ValueError, match=r"render_cover \(2, 1, 4, 6\); got \(2, 1, 5, 4, 6\) and None"):
        call(rendering, {**with_render(x), "render_cover": None})
    with pytest.raises(ValueError, match="render has shape"):
        call(rendering, {**with_render(x), "render": torch.randn(2, 1, C + 1, H, W)})
    with pytest.raises(ValueError, match="render_mask has shape"):
        rendering(x["x_noisy"], x["t"], condition(with_render(x), render_mask=torch.ones(3, dtype=torch.bool)))


# --------------------------------------------------------------------------------------------------
# The render frame (M18)
# --------------------------------------------------------------------------------------------------


def test_render_frame_is_a_switch_with_its_own_type_embedding():
    """Off (the default, and every checkpoint before it): no render_type, the same parameters as ever."""
    plain, rendering = MMDiT(tiny_config()), MMDiT(tiny_config(render_frame=True))
    assert not hasattr(plain, "render_type") and "render_type" not in plain.state_dict()
    assert rendering.render_type.shape == (32,) and rendering.type_embed.shape == plain.type_embed.shape
    assert set(rendering.state_dict()) - set(plain.state_dict()) == {"render_type"}
    rendering.load_state_dict(plain.state_dict(), strict=False)  # an old checkpoint loads; only render_type is new


def test_render_changes_the_prediction_only_where_present():
    model = MMDiT(tiny_config(render_frame=True))
    perturb_zero_init(model)
    x = inputs(k=2)
    rendered = with_render(x)
    mask = torch.tensor([True, False])
    with torch.no_grad():
        without = call(model, x)  # a render-frame model takes conditions without a render
        present = model(x["x_noisy"], x["t"], condition(rendered))
        masked = model(x["x_noisy"], x["t"], condition(rendered, render_mask=mask))
        rendered["render"][1], rendered["render_cover"][1] = float("nan"), float("nan")  # an absent render's rows
        poisoned = model(x["x_noisy"], x["t"], condition(rendered, render_mask=mask))
        uncovered = model(x["x_noisy"], x["t"], condition({**rendered, "render_cover": torch.zeros(2, 1, H, W)}))
    assert not torch.allclose(present[0], without[0]) and not torch.allclose(present[1], without[1])
    torch.testing.assert_close(masked[0], present[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked[1], without[1], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(poisoned).all()
    torch.testing.assert_close(poisoned, masked, rtol=0, atol=0)
    assert not torch.allclose(uncovered[0], present[0])  # the coverage is an input


def test_drop_takes_the_render_with_the_memory_frame_and_cat_joins_it():
    x = with_render(inputs())
    cond = condition(x)
    yes, no = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    one = torch.tensor([True, False])
    assert cond.has_spatial and cond.holds_spatial
    kept = cond.drop(yes, one)
    assert kept.spatial_mask.tolist() == kept.render_mask.tolist() == [True, False]
    alone = cond.drop(yes, yes, keep_render=one)  # the render alone: the rollout's first pass, memory kept
    assert alone.spatial_mask.tolist() == [True, True] and alone.render_mask.tolist() == [True, False]
    gone = cond.drop(yes, None)
    assert gone.spatial is gone.render is gone.render_cover is gone.render_mask is None and not gone.has_spatial
    only_render = condition({**x, "spatial": None})
    assert only_render.has_spatial and only_render.drop(yes, no).render_mask.tolist() == [False, False]
    assert not condition({**x, "spatial": None}, render_mask=no).has_spatial
    both = Condition.cat([cond.drop(no, no), cond.drop(yes, one)])
    assert both.render.shape == (4, 1, C, H, W) and both.render_cover.shape == (4, 1, H, W)
    assert both.render_mask.tolist() == [False, False, True, False]


def test_cached_context_with_a_render_serves_every_step_and_branch():
    """The flow sampler's K/V cache (encode_context once, denoise per step) equals re-encoding at every step,
    with the render in the spatial guidance branch."""
    from world_model.flow import FlowMatching, SamplerConfig

    model = MMDiT(tiny_config(render_frame=True))
    perturb_zero_init(model)
    x = with_render(inputs(S=0))
    cond = condition(x, render_mask=torch.tensor([True, False]))
    flow, sampler = FlowMatching(), SamplerConfig(steps=3)
    z = torch.randn(2, 1, C, H, W, generator=torch.Generator().manual_seed(5))
    cached = flow.sample(model, z, cond, sampler, generator=torch.Generator().manual_seed(0))
    fresh = flow.sample(model, z, cond, sampler, generator=torch.Generator().manual_seed(0), use_cache=False)
    torch.testing.assert_close(cached, fresh, rtol=1e-5, atol=1e-6)
    without = flow.sample(model, z, condition({**x, "render": None, "render_cover": None}), sampler,
                          generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cached[1], without[1], rtol=1e-5, atol=1e-5)  # absent render: two branches' result
    assert not torch.allclose(cached[0], without[0])
