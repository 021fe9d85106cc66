"""The latent codecs of world_model.codec: shape contract, exact inverse, camera decode, causality, training."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation, Slerp

from world_model import geometry as G
from world_model.codec import (
    CODEC_PRESETS,
    CausalVAE,
    CausalVAEConfig,
    PixelCodec,
    PixelCodecConfig,
    build_codec,
)

# A VAE small enough for seconds on one core: 4x spatial, 2x temporal, 4 + 2 latent channels.
SMALL = CausalVAEConfig(
    spatial_factor=4, temporal_factor=2, rgb_latent_channels=4, depth_latent_channels=2,
    width=8, channel_mult=(1, 2, 2),
)


def small_vae(**overrides) -> CausalVAE:
    torch.manual_seed(0)
    return CausalVAE(CausalVAEConfig(**{**SMALL.__dict__, **overrides}))


def smooth_video(B: int, T: int, H: int, W: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-frequency rgb (B, T, 3, H, W) and depth (B, T, 1, H, W) in [-1, 1]: learnable by a tiny VAE."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(B * T, 4, 4, 4, generator=g) * 2 - 1
    x = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)  # (B * T, 4, H, W)
    x = x.reshape(B, T, 4, H, W)
    return x[:, :, :3], x[:, :, 3:]


def random_cameras(rng, T: int) -> torch.Tensor:
    """(T, 4, 4) random poses."""
    c2w = torch.eye(4).repeat(T, 1, 1)
    c2w[:, :3, :3] = torch.tensor(Rotation.random(T, random_state=rng).as_matrix(), dtype=torch.float32)
    c2w[:, :3, 3] = torch.tensor(rng.uniform(-3, 3, (T, 3)), dtype=torch.float32)
    return c2w


def inputs(codec, B: int, T: int, H: int, W: int, seed: int = 0):
    rgb, depth = smooth_video(B, T, H, W, seed)
    rng = np.random.default_rng(seed)
    K = G.default_intrinsics(H, W).expand(B, T, 3, 3)
    c2w = torch.stack([random_cameras(rng, T) for _ in range(B)])  # (B, T, 4, 4)
    return rgb, depth, G.camera_to_raymap(K, c2w, H, W)


CODECS = {
    "vae": lambda: small_vae(),
    "pixel": lambda: PixelCodec(PixelCodecConfig(spatial_factor=4, temporal_factor=2)),
}


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize("T", [1, 3, 7])
def test_shapes(kind, T):
    codec = CODECS[kind]()
    B, H, W = 2, 16, 24
    with torch.no_grad():
        latent = codec.encode(*inputs(codec, B, T, H, W))
        assert latent.shape == (B, 1 + (T - 1) // 2, codec.latent_channels, H // 4, W // 4)
        assert codec.latent_frames(T) == latent.shape[1] and codec.video_frames(latent.shape[1]) == T
        out = codec.decode(latent)
    assert out["rgb"].shape == (B, T, 3, H, W) and out["depth"].shape == (B, T, 1, H, W)
    assert out["c2w"].shape == (B, T, 4, 4) and out["K"].shape == (B, T, 3, 3)
    channels = list(range(codec.latent_channels))
    assert channels[codec.rgb_slice] + channels[codec.depth_slice] + channels[codec.raymap_slice] == channels
    assert len(channels[codec.raymap_slice]) == 6


def test_presets_channels_and_sizes_on_meta():
    counts = {}
    for name in CODEC_PRESETS:
        with torch.device("meta"):  # the paper VAE is counted, never allocated
            codec = build_codec(name)
        counts[name] = (codec.latent_channels, sum(p.numel() for p in codec.parameters()))
    assert counts["tiny"][0] == 8 + 4 + 6 and counts["paper"][0] == 16 + 16 + 6
    assert counts["pixel"] == ((3 + 1) * 8 * 8 * 4 + 6, 0)
    assert 1e6 < counts["tiny"][1] < 5e6 and 1e8 < counts["paper"][1] < 5e8
    with torch.device("meta"):
        paper, tiny4x = build_codec("paper"), build_codec("tiny4x")
    assert (paper.spatial_factor, paper.temporal_factor) == (8, 8)
    assert tiny4x.latent_size(64, 64) == (16, 16) and counts["tiny4x"][0] == 8 + 4 + 6


@pytest.mark.parametrize("sf,tf,T", [(2, 1, 3), (4, 2, 5), (8, 4, 9), (4, 3, 7)])
def test_pixel_codec_is_an_exact_inverse(sf, tf, T):
    codec = PixelCodec(PixelCodecConfig(spatial_factor=sf, temporal_factor=tf))
    rgb, depth, raymap = inputs(codec, 2, T, 2 * sf, 3 * sf, seed=T)
    out = codec.decode(codec.encode(rgb, depth, raymap))
    assert torch.equal(out["rgb"], rgb) and torch.equal(out["depth"], depth)


def test_decoded_cameras_recover_keyframes_and_interpolate_between_them():
    """Keyframes come back from the pooled raymap; the frames between them are the slerp/lerp."""
    codec = PixelCodec(PixelCodecConfig(spatial_factor=8, temporal_factor=4))
    H, W, T, tf = 64, 48, 13, 4
    keys = list(range(0, T, tf))
    for seed in range(5):
        rng = np.random.default_rng(seed)
        K = G.default_intrinsics(H, W, float(rng.uniform(50.0, 100.0)))
        key_poses = random_cameras(rng, len(keys))
        # The true motion: slerp rotation and lerp translation between consecutive keyframes.
        slerp = Slerp(keys, Rotation.from_matrix(key_poses[:, :3, :3].double().numpy()))
        c2w = torch.eye(4).repeat(1, T, 1, 1)
        c2w[0, :, :3, :3] = torch.tensor(slerp(np.arange(T)).as_matrix(), dtype=torch.float32)
        for d in range(3):
            c2w[0, :, d, 3] = torch.tensor(np.interp(np.arange(T), keys, key_poses[:, d, 3].numpy()))
        raymap = G.camera_to_raymap(K.expand(1, T, 3, 3), c2w, H, W)
        rgb, depth = smooth_video(1, T, H, W)
        out = codec.decode(codec.encode(rgb, depth, raymap))
        assert G.rotation_angle(out["c2w"][0, :, :3, :3], c2w[0, :, :3, :3]).max() < 1e-3
        assert torch.allclose(out["c2w"][0, :, :3, 3], c2w[0, :, :3, 3], atol=1e-3)
        # Focal lengths come from mean ray directions over 8x8 blocks: biased by ~ (8 / f)^2 (geometry tests).
        block = (8 / float(K[0, 0])) ** 2
        assert torch.allclose(out["K"][0], K.expand(T, 3, 3), rtol=0.1 * block + 1e-4, atol=1e-3)


def test_unscale_intrinsics_inverts_scale():
    K = G.default_intrinsics(48, 64, 70.0)
    assert torch.allclose(G.unscale_intrinsics(G.scale_intrinsics(K, 8), 8), K, atol=1e-5)


@pytest.mark.parametrize("norm, linear_path", [("group", False), ("channel", False), ("group", True)])
def test_vae_is_causal_in_time(norm, linear_path):
    vae = small_vae(norm=norm, linear_path=linear_path).eval()
    rgb, depth, raymap = inputs(vae, 1, 7, 16, 16)
    changed = rgb.clone()
    changed[:, 3] = -changed[:, 3]  # frame 3 belongs to latent frame 2 (frames 3, 4)
    with torch.no_grad():
        z0, z1 = vae.encode(rgb, depth, raymap), vae.encode(changed, depth, raymap)
        assert torch.allclose(z0[:, :2], z1[:, :2], atol=1e-6)
        assert (z0[:, 2:] - z1[:, 2:]).abs().amax() > 1e-3
        z2 = z0.clone()
        z2[:, 2, vae.rgb_slice] += 1.0  # decoding: latent frame 2 drives frames 3 and later only
        x0, x2 = vae.decode(z0)["rgb"], vae.decode(z2)["rgb"]
    assert torch.allclose(x0[:, :3], x2[:, :3], atol=1e-6)
    assert (x0[:, 3:] - x2[:, 3:]).abs().amax() > 1e-3


def test_vae_overfits_one_tiny_batch():
    vae = small_vae()
    batch = inputs(vae, 2, 3, 16, 16, seed=1)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, logs = vae.loss(*batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(logs["loss"]))
    assert set(logs) == {"rgb_l1", "depth_l1", "kl", "loss"}
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_edge_loss_adds_the_l1_of_finite_differences():
    batch = inputs(small_vae(), 2, 3, 16, 16, seed=1)
    torch.manual_seed(0)
    plain_loss, plain = small_vae().loss(*batch)
    torch.manual_seed(0)  # the same posterior sample
    loss, logs = small_vae(grad_weight=0.5).loss(*batch)
    assert set(logs) == {"rgb_l1", "rgb_grad_l1", "depth_l1", "kl", "loss"} and "rgb_grad_l1" not in plain
    assert float(logs["rgb_grad_l1"]) > 0
    torch.testing.assert_close(loss, plain_loss + 0.5 * logs["rgb_grad_l1"])


def test_chroma_loss_adds_the_l1_of_the_colour_without_its_gray():
    batch = inputs(small_vae(), 2, 3, 16, 16, seed=1)
    torch.manual_seed(0)
    plain_loss, plain = small_vae().loss(*batch)
    torch.manual_seed(0)  # the same posterior sample
    vae = small_vae(chroma_weight=2.0)
    loss, logs = vae.loss(*batch)
    assert set(logs) == {"rgb_l1", "rgb_chroma_l1", "depth_l1", "kl", "loss"} and "rgb_chroma_l1" not in plain
    torch.testing.assert_close(loss, plain_loss + 2.0 * logs["rgb_chroma_l1"])
    rgb = batch[0]
    gray = rgb.mean(dim=2, keepdim=True).expand_as(rgb)  # a gray reconstruction misses exactly the chroma
    recon = {"rgb": gray, "depth": batch[1]}
    vae._decode_pixels = lambda *a: recon
    torch.manual_seed(0)
    _, logs = vae.loss(*batch)
    torch.testing.assert_close(logs["rgb_chroma_l1"], (rgb - gray).abs().mean())


def test_channel_norm_keeps_a_frames_colour_where_group_norm_removes_it():
    """The shipped codec's per-frame GroupNorm (one channel a group at the tiny widths) normalises each channel's
    mean over the frame away, so two frames that differ only by a colour cast look the same to the layer after it;
    ChannelNorm normalises each pixel over its channels and keeps the difference."""
    from world_model.codec import ChannelNorm, FrameGroupNorm

    torch.manual_seed(0)
    x = torch.randn(1, 8, 2, 6, 6)  # (B, C, T, H, W)
    cast = x + torch.linspace(-1, 1, 8)[None, :, None, None, None]  # a per-channel offset over the whole clip
    group, channel = FrameGroupNorm(8), ChannelNorm(8)
    torch.testing.assert_close(group(cast), group(x), atol=1e-5, rtol=0)
    assert (channel(cast) - channel(x)).abs().amax() > 0.1
    y = channel(x)  # each pixel of each frame: zero mean, unit variance over its channels
    torch.testing.assert_close(y.mean(1), torch.zeros(1, 2, 6, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(1, 2, 6, 6), atol=1e-3, rtol=0)


def test_block_mean_path_is_a_causal_block_mean_codec():
    """With identity weights the linear path's decode(encode(video)) is each frame's block means, upsampled
    bilinearly: frame 0 from latent frame 0 alone, every later frame from its own chunk's latent frame."""
    from world_model.codec import BlockMeanDecoder, BlockMeanEncoder

    config = CausalVAEConfig(**{**SMALL.__dict__, "linear_path": True})  # 4x spatial, 2 frames a chunk
    encoder, decoder = BlockMeanEncoder(config, 3, 2 * 3), BlockMeanDecoder(config, 3, 2 * 3)
    with torch.no_grad():
        for conv in (encoder.conv, decoder.conv):
            conv.weight.copy_(torch.eye(6)[:, :, None, None])
            conv.bias.zero_()
        video = torch.randn(2, 5, 3, 8, 12)  # (B, T, C, H, W)
        z = encoder(video)
        out = decoder(z, first=True)
        later = decoder(z[:, 1:], first=False)
    assert z.shape == (2, 3, 6, 2, 3) and out.shape == video.shape
    expected = F.interpolate(F.avg_pool2d(video.flatten(0, 1), 4), scale_factor=4, mode="bilinear")
    torch.testing.assert_close(out, expected.unflatten(0, (2, 5)))
    torch.testing.assert_close(later, out[:, 1:])


def test_linear_path_is_added_to_the_networks_in_encoder_and_decoder():
    """With the networks' last convolutions zeroed, the VAE is exactly its linear paths (posterior mean and decode)."""
    vae = small_vae(linear_path=True).eval()
    for part in [*vae.encoders.values(), *vae.decoders.values()]:
        torch.nn.init.zeros_(part.layers[-1].conv.weight), torch.nn.init.zeros_(part.layers[-1].conv.bias)
    rgb, depth, raymap = inputs(vae, 2, 5, 16, 16, seed=2)
    with torch.no_grad():
        latent = vae.encode(rgb, depth, raymap)
        out = vae.decode(latent)
        torch.testing.assert_close(latent[:, :, vae.rgb_slice], vae.encoders["rgb"].linear(rgb))
        torch.testing.assert_close(latent[:, :, vae.depth_slice], vae.encoders["depth"].linear(depth))
        torch.testing.assert_close(out["rgb"], vae.decoders["rgb"].linear(latent[:, :, vae.rgb_slice], True))
        torch.testing.assert_close(out["depth"], vae.decoders["depth"].linear(latent[:, :, vae.depth_slice], True))


@pytest.mark.parametrize("linear_path", [False, True])
def test_gradients_reach_every_vae_parameter(linear_path):
    vae = small_vae(linear_path=linear_path)
    loss, _ = vae.loss(*inputs(vae, 1, 3, 16, 16))
    loss.backward()
    missing = [n for n, p in vae.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_posterior_and_sampling():
    vae = small_vae()
    batch = inputs(vae, 1, 3, 16, 16)
    with torch.no_grad():
        mean, logvar = vae.encode_posterior(*batch)
        assert torch.equal(vae.encode(*batch), mean)
        sample = vae.encode(*batch, sample=True)
    learned = vae.raymap_slice.start
    assert logvar.shape == (*mean.shape[:2], learned, *mean.shape[3:])
    assert not torch.allclose(sample[:, :, :learned], mean[:, :, :learned])
    assert torch.equal(sample[:, :, vae.raymap_slice], mean[:, :, vae.raymap_slice])  # raymap is not sampled


@pytest.mark.parametrize("kind", ["vae", "pixel"])
def test_no_depth_ablation(kind):
    codec = small_vae(use_depth=False) if kind == "vae" else PixelCodec(PixelCodecConfig(4, 2, use_depth=False))
    assert codec.depth_channels == 0 and codec.latent_channels == codec.rgb_channels + 6
    rgb, _, raymap = inputs(codec, 1, 3, 16, 16)
    latent = codec.encode(rgb, None, raymap)
    assert latent.shape[2] == codec.latent_channels
    assert set(codec.decode(latent)) == {"rgb", "c2w", "K"}
    if kind == "vae":
        assert "depth_l1" not in codec.loss(rgb, None, raymap)[1]
        assert not any(n.startswith(("encoders.depth", "decoders.depth")) for n, _ in codec.named_parameters())


def test_bad_inputs_are_named():
    vae = small_vae()
    rgb, depth, raymap = inputs(vae, 1, 5, 16, 16)
    with pytest.raises(ValueError, match="T=4"):
        vae.encode(rgb[:, :4], depth[:, :4], raymap[:, :4])
    with pytest.raises(ValueError, match="height 14"):
        vae.encode(rgb[..., :14, :], depth[..., :14, :], raymap[..., :14, :])
    with pytest.raises(ValueError, match="width 10"):
        vae.encode(rgb[..., :10], depth[..., :10], raymap[..., :10])
    with pytest.raises(ValueError, match="depth"):
        vae.encode(rgb, None, raymap)
    with pytest.raises(ValueError, match="raymap"):
        vae.encode(rgb, depth, raymap[:, :, :3])
    with pytest.raises(ValueError, match=str(vae.latent_channels)):
        vae.decode(torch.zeros(1, 2, 5, 4, 4))
    with pytest.raises(ValueError, match="spatial_factor 16"):
        CausalVAE(CausalVAEConfig(spatial_factor=16))
    with pytest.raises(ValueError, match="temporal_factor 3"):
        CausalVAE(CausalVAEConfig(temporal_factor=3))
    with pytest.raises(ValueError, match="'huge'"):
        build_codec("huge")
    with pytest.raises(ValueError, match="norm 'batch'"):
        CausalVAEConfig(norm="batch")
    with pytest.raises(ValueError, match="linear_path must be true or false, got 'yes'"):
        CausalVAEConfig(linear_path="yes")


def test_build_codec_dispatches_on_config():
    assert isinstance(build_codec(PixelCodecConfig(2, 1)), PixelCodec)
    vae = build_codec(SMALL)
    assert isinstance(vae, CausalVAE) and vae.latent_channels == 4 + 2 + 6
    assert math.isclose(vae.config.kl_weight, SMALL.kl_weight)


@pytest.mark.parametrize("name", ["vae", "vae_channel_norm", "vae_linear_path", "pixel"])
def test_streamed_decode_equals_whole_decode(name):
    """Decoding latent frames one call at a time (DecoderStream) gives the frames of one whole decode."""
    from world_model.codec import DecoderStream

    torch.manual_seed(0)
    codec = build_codec(
        CausalVAEConfig(spatial_factor=4, temporal_factor=2, width=8, channel_mult=(1, 2, 2),
                        norm="channel" if name == "vae_channel_norm" else "group",
                        linear_path=name == "vae_linear_path")
        if name.startswith("vae") else PixelCodecConfig(spatial_factor=4, temporal_factor=2)
    ).eval()
    latent = torch.randn(2, 4, codec.latent_channels, 3, 2)  # (B, T', C, h, w)
    with torch.no_grad():
        whole = codec.decode(latent)
        stream = DecoderStream()
        parts = [codec.decode_stream(latent[:, :2], stream)]  # frame 0 + one chunk
        rows = torch.tensor([1, 0])
        swapped = stream.select(rows)  # worlds can be picked and written back
        stream.update(rows, swapped)
        for t in range(2, 4):
            parts.append(codec.decode_stream(latent[:, t : t + 1], stream))
    for key in ("rgb", "depth"):
        streamed = torch.cat([p[key] for p in parts], dim=1)
        assert streamed.shape == whole[key].shape == (2, 1 + 3 * 2, 3 if key == "rgb" else 1, 12, 8)
        assert torch.allclose(streamed, whole[key], atol=1e-5), key


@pytest.mark.parametrize("kernel,stride,padding", [
    (3, (1, 1, 1), (0, 1, 1)),  # CausalConv3d
    (3, (1, 2, 2), (0, 1, 1)),  # Downsample's strided conv
    ((2, 1, 1), (2, 1, 1), 0),  # Downsample's time merge
    (1, 1, 0),                  # skip and time split
])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch", [1, 2])
def test_conv3d_equals_torchs_conv3d(kernel, stride, padding, channels_last, batch):
    """The codec's Conv3d (one clip: a 2D convolution over time-unfolded frames; a batch: oneDNN's 3D convolution
    on a channels-last input) gives nn.Conv3d's output and gradients, from its parameters, whatever the layout."""
    from world_model.codec import Conv3d

    torch.manual_seed(0)
    ours = Conv3d(5, 7, kernel, stride=stride, padding=padding)
    ref = torch.nn.Conv3d(5, 7, kernel, stride=stride, padding=padding)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(batch, 5, 6, 9, 8)  # (B, C, T, H, W)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = ours(x1), ref(x2)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)


def test_conv3d_refuses_time_padding():
    from world_model.codec import Conv3d

    with pytest.raises(ValueError, match="time padding"):
        Conv3d(2, 2, 3, padding=1)
