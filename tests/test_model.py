"""The composite world model: training losses, generation entry points and safe checkpoints."""
import json

import pytest
import torch

from world_model.episodes import ClipConfig, EpisodeClips
from world_model.flow import SamplerConfig
from world_model.model import DeepVerse, DeepVerseConfig, load_pretrained
from world_model.refine import RenderNoise, cache_renders
from world_model.state import true_frames
from world_model.text import SENTENCES

from conftest import perturb_zero_init, tiny_config


def batch_of(model, root, n=4):
    ds = EpisodeClips(root, ClipConfig(chunks=model.history_frames, memory=True))
    return EpisodeClips.collate([ds[i] for i in range(n)])


def test_world_model_loss_trains_dit_and_text_not_codec(tiny_model, tiny_episodes):
    batch = batch_of(tiny_model, tiny_episodes)
    tiny_model.config.completion_prob = 0.0
    perturb_zero_init(tiny_model.dit)  # zero gates would block every gradient to the text encoder
    loss, logs = tiny_model.loss(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and 1 <= logs["history"] <= tiny_model.history_frames
    assert all(p.grad is None for p in tiny_model.codec.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.text_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.dit.parameters())


def test_completion_batches_and_codec_loss(tiny_model, tiny_episodes):
    batch = batch_of(tiny_model, tiny_episodes)
    tiny_model.config.completion_prob = 1.0
    loss, logs = tiny_model.loss(batch)
    assert logs["completion"] == 1 and torch.isfinite(loss)
    closs, clogs = tiny_model.codec_loss(batch)
    closs.backward()
    assert all(p.grad is not None for p in tiny_model.codec.parameters())


def test_generation_shapes_and_completion_keeps_rgb(tiny_model, tiny_episodes):
    tiny_model.eval()
    batch = batch_of(tiny_model, tiny_episodes, n=2)
    lat = tiny_model.encode(batch)
    nxt = tiny_model.next_latent(lat[:, :2], [SENTENCES[3]] * 2, tiny_model.encode(batch["memory"]), batch["has_memory"])
    assert nxt.shape == (2, 1, *lat.shape[2:]) and torch.isfinite(nxt).all()
    done = tiny_model.complete_first_frame(batch["rgb"][:, 0])
    rgb = tiny_model.codec.rgb_slice
    assert torch.allclose(done[:, 0, rgb], lat[:, 0, rgb], atol=1e-5)  # the given image is kept
    with pytest.raises(ValueError, match="3 sentences for a batch of 2"):
        tiny_model.next_latent(lat[:, :2], [SENTENCES[0]] * 3)


def test_latent_statistics_standardize_what_the_dit_sees(tiny_episodes):
    """The MM-DiT works on per-channel standardised latents; callers keep codec latents in and out."""
    model = DeepVerse(tiny_config()).eval()
    perturb_zero_init(model.dit)  # a zero-initialised DiT would answer the same for any input
    batch = batch_of(model, tiny_episodes)
    lat = model.encode(batch)  # (4, T', C, h, w)
    assert not model.latent_statistics_fitted
    model.fit_latent_statistics(lat)
    assert model.latent_statistics_fitted
    unit = model.standardize(lat).transpose(0, 2).flatten(1)  # (C, ...)
    wide = lat.transpose(0, 2).flatten(1).std(1) >= 0.05  # channels above the scale floor
    assert torch.allclose(unit.mean(1), torch.zeros(len(unit)), atol=1e-4)
    assert torch.allclose(unit.std(1)[wide], torch.ones(int(wide.sum())), atol=1e-4)
    assert torch.allclose(model.unstandardize(model.standardize(lat)), lat, atol=1e-5)

    # next_latent == the flow on standardised inputs, mapped back (same noise)
    plain = DeepVerse(tiny_config()).eval()
    plain.load_state_dict({**model.state_dict(), "latent_shift": plain.latent_shift, "latent_scale": plain.latent_scale})
    memory, found = model.encode(batch["memory"]), batch["has_memory"]
    sentences = [SENTENCES[5]] * 4
    ours = model.next_latent(lat[:, :2], sentences, memory, found, generator=torch.Generator().manual_seed(1))
    theirs = plain.next_latent(
        model.standardize(lat[:, :2]), sentences, model.standardize(memory), found,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.allclose(ours, model.unstandardize(theirs), atol=1e-5)
    assert not torch.allclose(ours, theirs, atol=1e-3)

    with pytest.raises(ValueError, match=r"latents must be \(N, T, 18, h, w\)"):
        model.fit_latent_statistics(lat[:, :, :4])
    with pytest.raises(ValueError, match="NaN"):
        model.fit_latent_statistics(torch.full_like(lat, float("nan")))

def test_checkpoint_round_trip_and_errors(tiny_model, tmp_path):
    path = tiny_model.save_pretrained(tmp_path / "ckpt")
    again = DeepVerse.from_pretrained(path)
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert load_pretrained(path).config == tiny_model.config
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DeepVerse.from_pretrained(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    (bad / "model.safetensors").write_bytes(b"\x80\x04 this is a pickle, not weights")
    with pytest.raises(ValueError, match="not a safetensors file"):
        DeepVerse.from_pretrained(bad)
    other = tmp_path / "other"
    DeepVerse(tiny_config(dit_overrides={"depth": 2})).save_pretrained(other)
    (other / "config.json").write_text((path / "config.json").read_text())  # weights of another size
    with pytest.raises(ValueError, match="does not match"):
        DeepVerse.from_pretrained(other)
    (other / "config.json").write_text(json.dumps({"codec": "tiny", "colour": "blue"}))
    with pytest.raises(ValueError, match="colour"):
        DeepVerse.from_pretrained(other)


def test_checkpoint_in_half_precision(tiny_model, tmp_path):
    """``save_pretrained(dtype=torch.float16)`` stores half the bytes and loads back as float32, equal to the weights
    rounded to float16; a non-floating dtype is refused before anything is written."""
    full = tiny_model.save_pretrained(tmp_path / "full")
    half = tiny_model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    size = lambda p: (p / "model.safetensors").stat().st_size  # noqa: E731
    assert size(half) < 0.55 * size(full)
    again = DeepVerse.from_pretrained(half)
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), again.state_dict().items()):
        assert b.dtype == a.dtype, k
        assert torch.equal(b, a.half().to(a.dtype) if a.is_floating_point() else a), k
    with pytest.raises(ValueError, match="floating-point torch.dtype"):
        tiny_model.save_pretrained(tmp_path / "int", dtype=torch.int8)
    assert not (tmp_path / "int").exists()


def test_sampler_settings_live_in_one_config(tiny_model, tiny_episodes, tmp_path):
    """``config.sampler`` holds the model's changes to ``SamplerConfig``; calls change it per call; exports from
    before ``sampler`` existed (settings in ``flow_overrides``) load with their settings."""
    assert tiny_model.sampler == SamplerConfig()
    tiny_model.set_sampler(steps=2, s_text=1.5)
    assert tiny_model.config.sampler == {"steps": 2, "s_text": 1.5}
    assert tiny_model.sampler == SamplerConfig(steps=2, s_text=1.5)
    again = DeepVerse.from_pretrained(tiny_model.save_pretrained(tmp_path / "m"))
    assert again.sampler == tiny_model.sampler and again.config.weights_dict() == tiny_model.config.weights_dict()
    legacy = tiny_config(flow_overrides={"text_drop": 0.2}).to_dict()
    del legacy["sampler"]
    legacy["flow_overrides"] = {"text_drop": 0.2, "steps": 4, "s_text": 1.25}
    old = DeepVerseConfig.from_dict(legacy)
    assert old.sampler == {"steps": 4, "s_text": 1.25} and old.flow_overrides == {"text_drop": 0.2}

    perturb_zero_init(tiny_model.dit)
    lat = tiny_model.eval().encode(batch_of(tiny_model, tiny_episodes, n=2))
    def run(**kw):
        return tiny_model.next_latent(lat[:, :2], [SENTENCES[3]] * 2, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(run(), run(sampler={"steps": 2}))  # the model's own settings
    assert not torch.allclose(run(), run(sampler={"steps": 1}))
    with pytest.raises(ValueError, match=r"\['flavour'\] are not sampler settings"):
        run(sampler={"flavour": 1})
    with pytest.raises(ValueError, match=r"\['steps'\] in flow_overrides are sampler settings"):
        DeepVerseConfig(flow_overrides={"steps": 3})
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        tiny_model.set_sampler(steps=0)
    assert tiny_model.sampler.steps == 2  # a rejected change changes nothing


def test_bad_config_values():
    with pytest.raises(ValueError, match="unknown codec preset 'huge'"):
        DeepVerseConfig(codec="huge")
    with pytest.raises(ValueError, match="height must be a positive integer, got 0"):
        DeepVerseConfig(height=0)
    with pytest.raises(ValueError, match="'warp'"):
        DeepVerseConfig(flow_overrides={"warp": 2})
    with pytest.raises(ValueError, match="height 20 is not a positive multiple"):
        DeepVerse(DeepVerseConfig(height=20, width=16))


def test_channel_history_mode_trains_and_generates(tiny_episodes):
    """Model 1 takes exactly m history frames: short windows are padded, completion gets zeros."""
    model = DeepVerse(tiny_config(dit_overrides={"history_mode": "channel"}))
    batch = batch_of(model, tiny_episodes, n=2)
    for completion in (0.0, 1.0):
        model.config.completion_prob = completion
        for seed in range(3):  # several history lengths
            loss, _ = model.loss(batch, generator=torch.Generator().manual_seed(seed))
            assert torch.isfinite(loss)
    model.eval()
    lat = model.encode(batch)
    assert model.next_latent(lat[:, :1], [SENTENCES[3]] * 2).shape == (2, 1, *lat.shape[2:])
    assert model.complete_first_frame(batch["rgb"][:, 0]).shape == (2, 1, *lat.shape[2:])


# --------------------------------------------------------------------------------------------------
# The render frame (M18)
# --------------------------------------------------------------------------------------------------


def render_model(**changes) -> DeepVerse:
    """A tiny model whose MM-DiT takes a render frame; no dropout, so every sample sees its render."""
    flow = {"spatial_drop": 0.0, "render_drop": 0.0, **changes.pop("flow_overrides", {})}
    model = DeepVerse(tiny_config(dit_overrides={"render_frame": True}, flow_overrides=flow, **changes))
    perturb_zero_init(model.dit)
    return model


def test_render_frame_loss_renders_the_clip_and_trains_render_type(tiny_episodes):
    model = render_model(completion_prob=0.0)
    batch = batch_of(model, tiny_episodes)
    loss, logs = model.loss(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and 0 < logs["render_cover"] <= 1
    assert model.dit.render_type.grad is not None and model.dit.render_type.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.codec.parameters())
    again, _ = model.loss(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loss, again)  # the render's errors come from the generator too
    model.config.completion_prob = 1.0  # first-frame completion: nothing to render
    loss, logs = model.loss(batch)
    assert torch.isfinite(loss) and logs["render_cover"] == 0
    plain = DeepVerse(tiny_config(completion_prob=0.0))
    _, logs = plain.loss(batch_of(plain, tiny_episodes), generator=torch.Generator().manual_seed(0))
    assert "render_cover" not in logs


def test_a_render_is_normalised_into_the_window_as_the_clip_is(tiny_episodes):
    """A frame's own points rendered into its own camera without errors encode as the clip's frame does: the
    render frame lives in the same window units (colours, encoded depth, raymap) as the batch."""
    model = render_model()
    batch = batch_of(model, tiny_episodes, n=2)
    exact = RenderNoise(rotation_deg=0.0, translation=0.0, depth=0.0, blur=0.0)
    frame = torch.tensor([4])
    render = cache_renders(true_frames(batch), frame, frame, batch["scale"], exact)
    assert render.mask.all()
    latent, cover = model.encode_render(render, batch["raymap"][:, 4], batch["scale"])
    truth = model.codec.encode(batch["rgb"][:, 4:5], batch["depth"][:, 4:5], batch["raymap"][:, 4:5])
    torch.testing.assert_close(latent, truth, rtol=1e-3, atol=1e-3)
    assert cover.shape == (2, 1, *model.dit.config.latent_size) and torch.equal(cover, torch.ones_like(cover))
    # The keyframes before a chunk rendered into its keyframe camera: part covered, holes neutral.
    latent, cover = model.clip_render(batch, 2, exact)
    assert latent.shape == (2, 1, *truth.shape[2:]) and torch.isfinite(latent).all() and 0 < cover.mean() < 1


def test_render_arguments_thread_into_the_condition(tiny_episodes, tiny_model):
    model = render_model().eval()
    batch = batch_of(model, tiny_episodes, n=2)
    lat = model.encode(batch)
    render, cover = model.clip_render(batch, 1, RenderNoise())
    sentences = [SENTENCES[3]] * 2
    cond = model.condition(lat[:, :1], sentences, render=render, render_cover=cover)
    torch.testing.assert_close(cond.render, model.standardize(render))
    assert cond.render_mask.all() and torch.equal(cond.render_cover, cover)
    nearly_empty = torch.zeros_like(cover)
    nearly_empty[0, 0, 0, 0] = 0.03  # of the 2 x 2 latent pixels: 0.75% of the frame
    nearly_empty[1, 0, 0, 0] = 0.05  # 1.25%
    cond = model.condition(lat[:, :1], sentences, render=render, render_cover=nearly_empty)
    assert cond.render_mask.tolist() == [False, True]  # under 1% of the frame covered: no render

    def run(*args):
        return model.next_latent(lat[:, :1], sentences, None, None, *args, generator=torch.Generator().manual_seed(0))

    assert torch.equal(run(), run(render, torch.zeros_like(cover)))  # an uncovered render: as none
    assert not torch.allclose(run(), run(render, cover))
    with pytest.raises(ValueError, match="pass render and render_cover together"):
        model.next_latent(lat[:, :1], sentences, render=render)
    with pytest.raises(ValueError, match="render_frame=False"):
        tiny_model.next_latent(lat[:, :1], sentences, render=render, render_cover=cover)


def test_the_shipped_model_has_no_render_frame():
    """render_frame is off by default: the shipped checkpoint (saved before it existed) loads unchanged."""
    model = load_pretrained()
    assert not model.dit.config.render_frame and not hasattr(model.dit, "render_type")
    assert not any("render" in k for k in model.state_dict())
