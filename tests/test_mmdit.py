"""MM-DiT: shape contract, gradients, the Fig. 9 mask and its K/V cache, memory-frame masking, bad inputs."""
import pytest
import torch
import torch.nn.functional as F

from world_model.mmdit import HISTORY, NOISY, SPATIAL, TEXT, Condition, MMDiT, MMDiTConfig, apply_rope, unpatchify
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


def condition(x: dict, spatial_mask=None) -> Condition:
    """The ``Condition`` of a dict of ``inputs``."""
    text = TextEmbedding(x["text_tokens"], x["text_mask"], x["text_pooled"])
    return Condition(text, text, x["history"], x["history_t"], x["spatial"], spatial_mask)


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
                  spatial_mask):
    """Reference without the split: every token in one sequence per block, masked as in paper Fig. 9.

    Returns the velocity, the per-block K/V of the context rows, and the final history-token states.
    """
    B, k = x_noisy.shape[:2]
    Th, S, P, L = history.shape[1], spatial.shape[1], m.patches, text_tokens.shape[1]
    y = m.pooled_embed(text_pooled)
    clean = m.t_embed(torch.zeros(B)) + y
    ones = lambda n: torch.ones(B, n, C, dtype=torch.bool)  # noqa: E731
    xt = m.text_embed(text_tokens) + m.type_embed[TEXT]
    xv = torch.cat([
        m._embed_frames(spatial, ones(S), SPATIAL),
        m._embed_frames(history, ones(Th), HISTORY),
        m._embed_frames(x_noisy, ~ones(k), NOISY),
    ], dim=1)
    cv = torch.stack([clean] * S + [m.t_embed(history_t) + y] * Th + [m.t_embed(t) + y] * k, dim=1)  # (B, G, D)
    rope = m._rope([-Th - 1] * S + list(range(-Th, 0)) + list(range(k)))
    N = L + xv.shape[1]
    Nc = N - k * P
    frames_ok = torch.ones(B, (Th + k) * P, dtype=torch.bool)
    key_ok = torch.cat([text_mask, spatial_mask[:, None].expand(B, S * P), frames_ok], 1)
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
    return velocity, kv, xv[:, S * P:(S + Th) * P]


def test_split_computation_equals_joint_masked_attention():
    """encode_context + denoise (with the K/V cache) is the Fig. 9 masked transformer, not an approximation."""
    model = MMDiT(tiny_config())
    perturb_zero_init(model)
    x = inputs(k=2)
    spatial_mask = torch.tensor([True, False])
    x["spatial"][~spatial_mask] = 0  # encode_context zeroes an absent memory frame (its K/V rows are unused)
    with torch.no_grad():
        ref, ref_kv, _ = joint_forward(model, **x, spatial_mask=spatial_mask)
        ctx = model.encode_context(condition(x, spatial_mask))
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
