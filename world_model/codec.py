"""Latent codec: 4D state videos (RGB, depth, raymap) <-> latent videos (DESIGN M1, M2, M4).

Inputs are per-window normalised states (``world_model.geometry``):

- ``rgb``    (B, T, 3, H, W) in [-1, 1];
- ``depth``  (B, T, 1, H, W) = ``encode_depth`` output, square-root disparity in about [-1, 1];
- ``raymap`` (B, T, 6, H, W) = ``camera_to_raymap`` of the window's normalised cameras.

Time layout (causal): the first frame alone, then chunks of ``temporal_factor`` frames, so a video of
T = 1 + n * temporal_factor frames has T' = 1 + n latent frames. Latent frame i only sees frames up to
its *keyframe* i * temporal_factor (the last frame of its chunk; frame 0 for the first latent frame).

Latent channels, in this order: ``[rgb | depth | raymap (6)]``. RGB and depth are encoded separately
(the paper: the same VAE for both, 16 + 16 channels); the raymap is not learned: it is average-pooled to
the latent size and kept for the keyframe only (the paper's 16 + 16 + 6 = 38 channels). ``decode``
recovers the keyframe cameras from those channels in closed form and interpolates the cameras of the
frames in between (slerp rotation, linear translation).

Two codecs share the ``Codec`` interface:

- ``CausalVAE``: a causal 3D-convolutional VAE, trained with ``CausalVAE.loss``;
- ``PixelCodec``: no weights; space-to-depth and chunk frames stacked in channels, an exact inverse.

``build_codec("tiny" | "paper" | "pixel" | config)`` builds either from ``CODEC_PRESETS`` or a config.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from world_model import geometry

RAYMAP_CHANNELS = 6  # unit ray direction (xyz) + ray origin (xyz), world frame

# --------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------


class Codec(nn.Module, ABC):
    """Encode 4D state videos to latent videos and back; the raymap part is shared by every codec.

    Attributes:
        spatial_factor: H and W of the latent are H / spatial_factor, W / spatial_factor.
        temporal_factor: video frames per latent frame after the first.
        rgb_channels, depth_channels: latent channels of each modality (depth 0 without depth).
        latent_channels: rgb_channels + depth_channels + 6.
    Subclasses implement ``_encode_pixels`` and ``_decode_pixels`` (rgb and depth only).
    """

    def __init__(self, spatial_factor: int, temporal_factor: int, rgb_channels: int, depth_channels: int):
        super().__init__()
        for name, value in (("spatial_factor", spatial_factor), ("temporal_factor", temporal_factor)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.spatial_factor = int(spatial_factor)
        self.temporal_factor = int(temporal_factor)
        self.rgb_channels = rgb_channels
        self.depth_channels = depth_channels
        self.latent_channels = rgb_channels + depth_channels + RAYMAP_CHANNELS

    # ---- channel and frame bookkeeping ----

    @property
    def use_depth(self) -> bool:
        return self.depth_channels > 0

    @property
    def rgb_slice(self) -> slice:
        """Latent channels of the RGB latents."""
        return slice(0, self.rgb_channels)

    @property
    def depth_slice(self) -> slice:
        """Latent channels of the depth latents (empty without depth)."""
        return slice(self.rgb_channels, self.rgb_channels + self.depth_channels)

    @property
    def raymap_slice(self) -> slice:
        """Latent channels of the pooled keyframe raymap (the last 6)."""
        return slice(self.rgb_channels + self.depth_channels, self.latent_channels)

    def latent_frames(self, frames: int) -> int:
        """T' for a video of T = ``frames`` = 1 + n * temporal_factor frames; ValueError otherwise."""
        if int(frames) != frames or frames < 1 or (frames - 1) % self.temporal_factor:
            raise ValueError(
                f"T={frames!r} frames does not fit the causal layout 1 + n * {self.temporal_factor}"
            )
        return 1 + (frames - 1) // self.temporal_factor

    def video_frames(self, latent_frames: int) -> int:
        """T = 1 + (T' - 1) * temporal_factor video frames for T' latent frames."""
        return 1 + (latent_frames - 1) * self.temporal_factor

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the latent of an H x W video; ValueError unless both divide by spatial_factor."""
        for name, value in (("height", height), ("width", width)):
            if value < 1 or value % self.spatial_factor:
                raise ValueError(
                    f"{name} {value} is not a positive multiple of spatial_factor {self.spatial_factor}"
                )
        return height // self.spatial_factor, width // self.spatial_factor

    # ---- encode / decode ----

    def encode(self, rgb: Tensor, depth: Tensor | None, raymap: Tensor, sample: bool = False) -> Tensor:
        """Latent of a 4D state video.

        Args:
            rgb: (B, T, 3, H, W).  depth: (B, T, 1, H, W), or None without depth.  raymap: (B, T, 6, H, W).
            sample: draw from the posterior instead of taking its mean (VAE only).
        Returns:
            latent: (B, T', C, h, w) with C = latent_channels, laid out [rgb | depth | raymap].
        """
        self._check_inputs(rgb, depth, raymap)
        pixels = self._encode_pixels(rgb, depth, sample)  # (B, T', rgb + depth channels, h, w)
        return torch.cat([pixels, self.encode_raymap(raymap)], dim=2)  # (B, T', C, h, w)

    def decode(self, latent: Tensor) -> dict[str, Tensor]:
        """4D state video of a latent.

        Args:
            latent: (B, T', C, h, w).
        Returns:
            dict with ``rgb`` (B, T, 3, H, W), ``depth`` (B, T, 1, H, W) (absent without depth),
            ``c2w`` (B, T, 4, 4) and ``K`` (B, T, 3, 3) at full resolution H = h * spatial_factor.
        """
        if latent.dim() != 5 or latent.shape[2] != self.latent_channels:
            raise ValueError(
                f"latent must have shape (B, T', {self.latent_channels}, h, w), got {tuple(latent.shape)}"
            )
        out = self.decode_stream(latent, DecoderStream())
        out["K"], out["c2w"] = self.decode_cameras(latent)
        return out

    def decode_stream(self, latent: Tensor, stream: DecoderStream) -> dict[str, Tensor]:
        """RGB and depth of latent frames that continue ``stream`` (cameras: ``decode_cameras``).

        Args:
            latent: (B, t, C, h, w), the latent frames after those already decoded into ``stream``.
            stream: updated in place; a new ``DecoderStream`` starts at frame 0.
        Returns:
            dict with ``rgb`` (B, F, 3, H, W) and ``depth`` (B, F, 1, H, W) (absent without depth), where
            F = 1 + (t - 1) * tf for a new stream and t * tf after that.
        """
        out = self._decode_pixels(latent[:, :, : self.raymap_slice.start], stream)
        stream.started = True
        return out

    def encode_raymap(self, raymap: Tensor) -> Tensor:
        """Raymap channels of the latent: each latent frame's keyframe raymap, average-pooled.

        Args:
            raymap: (B, T, 6, H, W).
        Returns:
            (B, T', 6, h, w), the keyframes being video frames 0, tf, 2 tf, ... (tf = temporal_factor).
        """
        key = raymap[:, :: self.temporal_factor]  # (B, T', 6, H, W)
        pooled = F.avg_pool2d(key.flatten(0, 1), self.spatial_factor)  # (B * T', 6, h, w)
        return pooled.unflatten(0, key.shape[:2])  # (B, T', 6, h, w)

    def decode_cameras(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """Cameras of every video frame from the latent's raymap channels (float32).

        Keyframes come from ``geometry.raymap_to_camera`` (intrinsics scaled back to full resolution);
        the frames inside chunk i interpolate between keyframes i - 1 and i (slerp rotation, linear
        translation) and take the intrinsics of keyframe i.

        Args:
            latent: (B, T', C, h, w).
        Returns:
            K: (B, T, 3, 3);  c2w: (B, T, 4, 4).
        """
        K_key, c2w_key = geometry.raymap_to_camera(latent[:, :, self.raymap_slice].float())  # (B, T', ...)
        K_key = geometry.unscale_intrinsics(K_key, self.spatial_factor)
        tf = self.temporal_factor
        alpha = torch.arange(1, tf + 1, dtype=c2w_key.dtype, device=c2w_key.device) / tf  # (tf,)
        previous, current = c2w_key[:, :-1, None], c2w_key[:, 1:, None]  # (B, n, 1, 4, 4) each
        c2w_mid = geometry.interpolate_cameras(previous, current, alpha)  # (B, n, tf, 4, 4)
        c2w = torch.cat([c2w_key[:, :1], c2w_mid.flatten(1, 2)], dim=1)  # (B, T, 4, 4)
        K = torch.cat([K_key[:, :1], K_key[:, 1:].repeat_interleave(tf, dim=1)], dim=1)  # (B, T, 3, 3)
        return K, c2w

    @abstractmethod
    def _encode_pixels(self, rgb: Tensor, depth: Tensor | None, sample: bool) -> Tensor:
        """(B, T, 3, H, W), (B, T, 1, H, W) | None -> (B, T', rgb_channels + depth_channels, h, w)."""

    @abstractmethod
    def _decode_pixels(self, pixels: Tensor, stream: DecoderStream) -> dict[str, Tensor]:
        """(B, t, rgb_channels + depth_channels, h, w) continuing ``stream`` -> dict(rgb (B, F, 3, H, W)
        [, depth (B, F, 1, H, W)]), F frames as in ``decode_stream``."""

    def _check_inputs(self, rgb: Tensor, depth: Tensor | None, raymap: Tensor) -> None:
        if rgb.dim() != 5 or rgb.shape[2] != 3:
            raise ValueError(f"rgb must have shape (B, T, 3, H, W), got {tuple(rgb.shape)}")
        B, T, _, H, W = rgb.shape
        expected = {"raymap": (raymap, RAYMAP_CHANNELS)}
        if self.use_depth:
            if depth is None:
                raise ValueError("this codec encodes depth: pass depth (B, T, 1, H, W)")
            expected["depth"] = (depth, 1)
        for name, (x, channels) in expected.items():
            if tuple(x.shape) != (B, T, channels, H, W):
                raise ValueError(f"{name} must have shape {(B, T, channels, H, W)}, got {tuple(x.shape)}")
        self.latent_frames(T)
        self.latent_size(H, W)


# --------------------------------------------------------------------------------------------------
# Causal 3D building blocks. Inside the VAE, tensors are (B, C, T, H, W), as Conv3d wants, stored channels-last
# (memory order B, T, H, W, C), the layout in which ``Conv3d`` runs fastest on the CPU.
# --------------------------------------------------------------------------------------------------

CHANNELS_LAST = torch.channels_last_3d


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, same result) that avoids PyTorch's reference CPU kernel.

    For a batch of one PyTorch runs a 3D convolution on the CPU through its reference kernel (``slow_conv3d_forward``),
    8x slower than the 2D convolution that does the same work, so a single clip is computed as one 2D convolution over
    time-unfolded frames: each output frame's ``kt`` input frames stacked in channels, convolved with the kernel's taps
    stacked the same way. A batch goes to oneDNN's 3D convolution on a channels-last input, which PyTorch picks from
    a batch of two on and which runs 2x the 2D form there (16 clips of 19 frames at 64x64: 100 vs 216 ms a layer).
    Time padding must be 0 (the causal blocks pad themselves); space is padded and strided as in ``nn.Conv3d``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding[0] != 0 or self.dilation != (1, 1, 1) or self.groups != 1 or self.padding_mode != "zeros":
            raise ValueError("Conv3d here takes no time padding, dilation, groups or padding mode")

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > 1:  # a batch: PyTorch runs a channels-last 3D convolution through oneDNN, 2x the 2D form here
            return F.conv3d(x.contiguous(memory_format=CHANNELS_LAST), self.weight, self.bias, self.stride, self.padding)
        kt, st = self.kernel_size[0], self.stride[0]
        B, C, T, H, W = x.shape
        x = x.permute(0, 2, 3, 4, 1)  # (B, T, H, W, C): a view of a channels-last input (the codec's layout)
        if kt == st == 1:
            T_out, taps = T, x.reshape(B * T, H, W, C)
        else:
            taps = x.unfold(1, kt, st)  # (B, T_out, H, W, C, kt)
            T_out = taps.shape[1]
            taps = taps.transpose(-1, -2).reshape(B * T_out, H, W, kt * C)  # each frame's taps, tap-major
        weight = self.weight.transpose(1, 2).reshape(self.out_channels, kt * C, *self.kernel_size[1:])
        weight = weight.contiguous(memory_format=torch.channels_last)
        # channels-last in and out: oneDNN's fast layout for a 2D convolution
        y = F.conv2d(taps.permute(0, 3, 1, 2), weight, self.bias, self.stride[1:], self.padding[1:])  # (B T_out, C_out, H', W')
        return y.unflatten(0, (B, T_out)).transpose(1, 2)  # (B, C_out, T_out, H', W')


class DecoderStream:
    """State of a decode that continues latent frame by latent frame (``Codec.decode_stream``).

    Every causal convolution keeps the last ``kernel - 1`` frames of its input, so decoding latents
    0..n-1 and then n gives the frames ``decode`` gives for 0..n, at the cost of the new frames only.
    Tensors are batch-first: ``select`` picks worlds, ``update`` writes them back.
    """

    def __init__(self):
        self.cache: dict[nn.Module, Tensor] = {}  # causal conv -> (B, C, kernel - 1, H, W) of its input
        self.started = False  # frame 0 decoded (the first latent frame decodes to one frame, later ones to tf)

    def select(self, index: Tensor) -> DecoderStream:
        out = DecoderStream()
        out.cache = {k: v[index] for k, v in self.cache.items()}
        out.started = self.started
        return out

    def update(self, index: Tensor, other: DecoderStream) -> None:
        """Write ``other``'s worlds into rows ``index`` (allocating rows on first use)."""
        for k, v in other.cache.items():
            if k not in self.cache:
                self.cache[k] = v.new_zeros(int(index.max()) + 1 if len(index) else 0, *v.shape[1:])
            if self.cache[k].shape[0] <= int(index.max()):
                grow = v.new_zeros(int(index.max()) + 1 - self.cache[k].shape[0], *v.shape[1:])
                self.cache[k] = torch.cat([self.cache[k], grow])
            self.cache[k][index] = v
        self.started = self.started or other.started


class CausalConv3d(nn.Module):
    """3D convolution padded in time only from the past, by repeating the first frame: output frame t
    sees input frames <= t, and a still image encodes like a static video. Space is zero-padded "same";
    ``stride`` is spatial. With a started ``DecoderStream`` the past frames come from its cache."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.time_pad = kernel - 1
        pad = kernel // 2
        self.conv = Conv3d(c_in, c_out, kernel, stride=(1, stride, stride), padding=(0, pad, pad))

    def forward(self, x: Tensor, stream: DecoderStream | None = None) -> Tensor:
        if stream is not None and self in stream.cache:
            past = stream.cache[self]
        else:
            past = torch.cat([x[:, :, :1]] * self.time_pad, dim=2)  # (B, C, time_pad, H, W), channels-last as x
        x = torch.cat([past, x], dim=2)  # (B, C, time_pad + T, H, W)
        if stream is not None:
            stream.cache[self] = x[:, :, -self.time_pad :]
        return self.conv(x)  # (B, C_out, T, H / stride, W / stride)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame: statistics over the clip would leak the future into the past.

    At the tiny widths ``gcd(32, channels)`` groups hold one or two channels, so each channel's mean and spread
    over the frame are normalised away: a frame's colour and contrast (style, in the sense of instance norm)."""

    def __init__(self, channels: int):
        super().__init__(math.gcd(32, channels), channels)

    def forward(self, x: Tensor) -> Tensor:
        B, C, T, H, W = x.shape
        y = super().forward(x.transpose(1, 2).reshape(B * T, C, H, W))  # (B * T, C, H, W)
        return y.reshape(B, T, C, H, W).transpose(1, 2)  # (B, C, T, H, W)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of each frame (ConvNeXt's): no statistics over space or time, so
    nothing leaks from the future and a frame's colour and contrast pass through (``FrameGroupNorm`` removes them)."""

    def __init__(self, channels: int):
        super().__init__(channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)  # (B, C, T, H, W)


NORMS = {"group": FrameGroupNorm, "channel": ChannelNorm}


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, norm: type[nn.Module] = FrameGroupNorm):
        super().__init__()
        self.norm1 = norm(c_in)
        self.conv1 = CausalConv3d(c_in, c_out)
        self.norm2 = norm(c_out)
        self.conv2 = CausalConv3d(c_out, c_out)
        self.skip = Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, stream: DecoderStream | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)), stream)
        h = self.conv2(F.silu(self.norm2(h)), stream)
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W; with ``time``, also merge frame pairs 1 + 2n -> 1 + n, frame 0 paired with itself."""

    def __init__(self, channels: int, time: bool):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, stride=2)
        self.time_merge = Conv3d(channels, channels, (2, 1, 1), stride=(2, 1, 1)) if time else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)  # (B, C, T, H / 2, W / 2)
        if self.time_merge is not None:
            x = torch.cat([x[:, :, :1], x], dim=2)  # (B, C, 2 + 2n, H / 2, W / 2)
            x = self.time_merge(x)  # (B, C, 1 + n, H / 2, W / 2)
        return x


class Upsample(nn.Module):
    """Double H and W; with ``time``, split each frame in two, 1 + n -> 1 + 2n (inverse of ``Downsample``)."""

    def __init__(self, channels: int, time: bool):
        super().__init__()
        self.time_split = Conv3d(channels, 2 * channels, 1) if time else None
        self.conv = CausalConv3d(channels, channels)

    def forward(self, x: Tensor, stream: DecoderStream | None = None) -> Tensor:
        if self.time_split is not None:
            B, C, T, H, W = x.shape
            x = self.time_split(x).reshape(B, 2, C, T, H, W)  # (B, 2, C, T, H, W)
            x = x.permute(0, 2, 3, 1, 4, 5).reshape(B, C, 2 * T, H, W)  # (B, C, 2T, H, W) pairs in order
            if stream is None or not stream.started:
                x = x[:, :, 1:]  # (B, C, 2T - 1, H, W): frame 0 was encoded paired with itself
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")  # (B, C, T, 2H, 2W)
        return self.conv(x, stream)


# --------------------------------------------------------------------------------------------------
# The causal VAE
# --------------------------------------------------------------------------------------------------


@dataclass
class CausalVAEConfig:
    spatial_factor: int = 8  # H, W shrink by this; must equal 2 ** (len(channel_mult) - 1)
    temporal_factor: int = 4  # frames per latent frame after the first; a power of two <= spatial_factor
    rgb_latent_channels: int = 8
    depth_latent_channels: int = 4  # depth is smoother than RGB and needs fewer channels at small sizes
    use_depth: bool = True  # False: the no-depth ablation (RGB + raymap latents only)
    width: int = 16  # channels at full resolution
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)  # width multiplier per resolution level, full to latent
    blocks: int = 1  # residual blocks per resolution level, in the encoder and in the decoder
    depth_weight: float = 1.0  # weight of the depth L1 against the RGB L1
    kl_weight: float = 1e-3  # on the mean KL per latent value: small, the latent must stay informative
    grad_weight: float = 0.0  # L1 of the RGB's finite differences (x and y): keeps edges and texture, which
                              # plain L1 trades for blur
    chroma_weight: float = 0.0  # L1 of the chroma (each channel minus the pixel's RGB mean): the colour, which plain
                                # L1 lets the tiny codec drop first (scripts/codec_probe.py)
    norm: str = "group"  # "group": FrameGroupNorm (the shipped codec); "channel": ChannelNorm, which keeps each frame's
                         # colour and contrast (MODEL_CARD.md, "Where the colour went")
    linear_path: bool = False  # add a linear codec of each frame's block means beside the networks (``BlockMeanEncoder``):
                               # the colour and coarse layout a block-mean codec keeps, which the networks alone fail to
                               # learn (MODEL_CARD.md, "Why the codec is gray")

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"unknown codec norm {self.norm!r}; expected one of {sorted(NORMS)}")
        if not isinstance(self.linear_path, bool):
            raise ValueError(f"CausalVAEConfig.linear_path must be true or false, got {self.linear_path!r}")


def stack_chunks(x: Tensor, temporal_factor: int) -> Tensor:
    """The causal time layout in channels: (B, T, C, h, w) -> (B, T', tf * C, h, w), latent frame 0 holding frame 0
    repeated tf times and latent frame i its chunk's tf frames in order (T = 1 + (T' - 1) * tf)."""
    B, T, C, h, w = x.shape
    x = torch.cat([x[:, :1].expand(B, temporal_factor - 1, C, h, w), x], dim=1)  # (B, tf * T', C, h, w)
    return x.reshape(B, -1, temporal_factor * C, h, w)


def unstack_chunks(z: Tensor, temporal_factor: int, first: bool) -> Tensor:
    """Inverse of ``stack_chunks``: (B, t, tf * C, h, w) -> (B, F, C, h, w); ``first``: z starts at latent frame 0,
    whose tf copies of frame 0 give one frame (F = 1 + (t - 1) * tf, else t * tf)."""
    B, t, C, h, w = z.shape
    x = z.reshape(B, t * temporal_factor, C // temporal_factor, h, w)
    return x[:, temporal_factor - 1 :] if first else x


class BlockMeanEncoder(nn.Module):
    """The encoder half of a linear codec of each frame's ``spatial_factor``-pixel block means, in the causal layout.

    The block means of a latent frame's frames (frame 0 alone, repeated to fill a chunk, as in ``PixelCodec``),
    stacked in channels, through a 1x1 convolution to the latent channels; ``BlockMeanDecoder`` maps each latent
    frame back to its chunk's block means, upsampled bilinearly. Each latent frame holds its own chunk only, so the
    pair is causal and streams frame by frame. With ``CausalVAEConfig.linear_path`` the encoder adds this code to
    its posterior mean and the decoder adds its decode to the output: the trivial solution a block-mean codec
    finds is there from step 0, and the networks learn the residual.
    """

    def __init__(self, config: CausalVAEConfig, channels: int, latent_channels: int):
        super().__init__()
        self.spatial_factor, self.temporal_factor = config.spatial_factor, config.temporal_factor
        self.conv = nn.Conv2d(self.temporal_factor * channels, latent_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B, T', C_latent, h, w)."""
        means = F.avg_pool2d(x.flatten(0, 1), self.spatial_factor).unflatten(0, x.shape[:2])  # (B, T, C, h, w)
        stacked = stack_chunks(means, self.temporal_factor)  # (B, T', tf * C, h, w)
        return self.conv(stacked.flatten(0, 1)).unflatten(0, stacked.shape[:2])  # (B, T', C_latent, h, w)


class BlockMeanDecoder(nn.Module):
    """The decoder half of ``BlockMeanEncoder``'s linear codec."""

    def __init__(self, config: CausalVAEConfig, channels: int, latent_channels: int):
        super().__init__()
        self.spatial_factor, self.temporal_factor = config.spatial_factor, config.temporal_factor
        self.conv = nn.Conv2d(latent_channels, self.temporal_factor * channels, 1)

    def forward(self, z: Tensor, first: bool) -> Tensor:
        """(B, t, C_latent, h, w) -> (B, F, C, H, W); ``first``: z starts at latent frame 0, which makes one frame."""
        stacked = self.conv(z.flatten(0, 1)).unflatten(0, z.shape[:2])  # (B, t, tf * C, h, w)
        means = unstack_chunks(stacked, self.temporal_factor, first)  # (B, F, C, h, w)
        up = F.interpolate(means.flatten(0, 1), scale_factor=self.spatial_factor, mode="bilinear", align_corners=False)
        return up.unflatten(0, means.shape[:2])  # (B, F, C, H, W)


class _Encoder(nn.Module):
    """(B, T, C_in, H, W) -> posterior mean and log-variance, each (B, T', C_latent, h, w).

    Temporal halvings happen in the first (highest-resolution) levels, where they save the most compute.
    With ``linear_path`` a ``BlockMeanEncoder``'s code is added to the mean.
    """

    def __init__(self, config: CausalVAEConfig, in_channels: int, latent_channels: int):
        super().__init__()
        widths = [config.width * m for m in config.channel_mult]
        time_levels = int(math.log2(config.temporal_factor))
        norm = NORMS[config.norm]
        layers: list[nn.Module] = [CausalConv3d(in_channels, widths[0])]
        c = widths[0]
        for level, w in enumerate(widths):
            for _ in range(config.blocks):
                layers.append(ResBlock(c, w, norm))
                c = w
            if level < len(widths) - 1:
                layers.append(Downsample(c, time=level < time_levels))
        layers += [norm(c), nn.SiLU(), CausalConv3d(c, 2 * latent_channels)]
        self.layers = nn.Sequential(*layers)
        self.linear = BlockMeanEncoder(config, in_channels, latent_channels) if config.linear_path else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.layers(x.transpose(1, 2).contiguous(memory_format=CHANNELS_LAST))  # (B, 2 C_latent, T', h, w)
        mean, logvar = h.transpose(1, 2).contiguous().chunk(2, dim=2)  # (B, T', C_latent, h, w) each
        if self.linear is not None:
            mean = mean + self.linear(x)
        return mean, logvar.clamp(-30.0, 20.0)


class _Decoder(nn.Module):
    """(B, T', C_latent, h, w) -> (B, T, C_out, H, W), mirroring ``_Encoder`` (with ``linear_path``, plus a ``BlockMeanDecoder``)."""

    def __init__(self, config: CausalVAEConfig, latent_channels: int, out_channels: int):
        super().__init__()
        widths = [config.width * m for m in config.channel_mult]
        time_levels = int(math.log2(config.temporal_factor))
        norm = NORMS[config.norm]
        c = widths[-1]
        layers: list[nn.Module] = [CausalConv3d(latent_channels, c)]
        for level in reversed(range(len(widths))):
            for _ in range(config.blocks):
                layers.append(ResBlock(c, widths[level], norm))
                c = widths[level]
            if level > 0:
                layers.append(Upsample(c, time=level - 1 < time_levels))
        layers += [norm(c), nn.SiLU(), CausalConv3d(c, out_channels)]
        self.layers = nn.Sequential(*layers)
        self.linear = BlockMeanDecoder(config, out_channels, latent_channels) if config.linear_path else None

    def forward(self, z: Tensor, stream: DecoderStream | None = None) -> Tensor:
        first = stream is None or not stream.started
        x = z.transpose(1, 2).contiguous(memory_format=CHANNELS_LAST)  # (B, C_latent, T', h, w)
        for layer in self.layers:
            x = layer(x, stream) if isinstance(layer, (CausalConv3d, ResBlock, Upsample)) else layer(x)
        x = x.transpose(1, 2).contiguous()  # (B, T, C_out, H, W)
        return x if self.linear is None else x + self.linear(z, first)


class CausalVAE(Codec):
    """Causal 3D-convolutional VAE, one encoder/decoder pair per modality (rgb, depth); see the module
    docstring for the latent layout. ``encode`` returns the posterior mean unless ``sample=True``."""

    def __init__(self, config: CausalVAEConfig):
        levels = len(config.channel_mult)
        if config.spatial_factor != 2 ** (levels - 1):
            raise ValueError(
                f"spatial_factor {config.spatial_factor} must be 2 ** (len(channel_mult) - 1) "
                f"= {2 ** (levels - 1)}"
            )
        tf = config.temporal_factor
        if tf < 1 or tf & (tf - 1) or tf > config.spatial_factor:
            raise ValueError(
                f"temporal_factor {tf} must be a power of two <= spatial_factor {config.spatial_factor}"
            )
        depth_channels = config.depth_latent_channels if config.use_depth else 0
        super().__init__(config.spatial_factor, tf, config.rgb_latent_channels, depth_channels)
        self.config = config
        modalities = {"rgb": (3, config.rgb_latent_channels)}
        if config.use_depth:
            modalities["depth"] = (1, config.depth_latent_channels)
        self.encoders = nn.ModuleDict({m: _Encoder(config, c, z) for m, (c, z) in modalities.items()})
        self.decoders = nn.ModuleDict({m: _Decoder(config, z, c) for m, (c, z) in modalities.items()})

    def encode_posterior(self, rgb: Tensor, depth: Tensor | None, raymap: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior of the learned channels, with the raymap channels appended to the mean.

        Returns:
            mean: (B, T', C, h, w), the full latent ([rgb | depth | raymap]).
            logvar: (B, T', rgb_channels + depth_channels, h, w), for the learned channels only.
        """
        self._check_inputs(rgb, depth, raymap)
        mean, logvar = self._posterior(rgb, depth)
        return torch.cat([mean, self.encode_raymap(raymap)], dim=2), logvar

    def loss(self, rgb: Tensor, depth: Tensor | None, raymap: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss: L1 reconstruction of rgb (+ grad_weight * L1 of its finite differences, + chroma_weight * L1
        of its chroma, + depth_weight * depth) of a posterior sample, + kl_weight * mean KL to N(0, 1) per latent value.

        Returns:
            loss: scalar;  logs: detached scalars ``rgb_l1``, ``rgb_grad_l1`` (with grad_weight), ``rgb_chroma_l1``
            (with chroma_weight),
            ``depth_l1`` (with depth), ``kl``, ``loss``.
        """
        self._check_inputs(rgb, depth, raymap)
        mean, logvar = self._posterior(rgb, depth)  # (B, T', C_learned, h, w)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = self._decode_pixels(z, DecoderStream())
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
        logs = {"rgb_l1": (recon["rgb"] - rgb).abs().mean(), "kl": kl}
        loss = logs["rgb_l1"] + self.config.kl_weight * kl
        if self.config.grad_weight:
            logs["rgb_grad_l1"] = sum((recon["rgb"].diff(dim=d) - rgb.diff(dim=d)).abs().mean() for d in (-1, -2))
            loss = loss + self.config.grad_weight * logs["rgb_grad_l1"]
        if self.config.chroma_weight:
            chroma = lambda x: x - x.mean(dim=2, keepdim=True)  # noqa: E731  (B, T, 3, H, W)
            logs["rgb_chroma_l1"] = (chroma(recon["rgb"]) - chroma(rgb)).abs().mean()
            loss = loss + self.config.chroma_weight * logs["rgb_chroma_l1"]
        if self.use_depth:
            logs["depth_l1"] = (recon["depth"] - depth).abs().mean()
            loss = loss + self.config.depth_weight * logs["depth_l1"]
        logs["loss"] = loss
        return loss, {name: value.detach() for name, value in logs.items()}

    def _posterior(self, rgb: Tensor, depth: Tensor | None) -> tuple[Tensor, Tensor]:
        inputs = {"rgb": rgb, "depth": depth}
        stats = [self.encoders[m](inputs[m]) for m in self.encoders]  # [(mean, logvar)] per modality
        mean = torch.cat([s[0] for s in stats], dim=2)  # (B, T', C_learned, h, w)
        logvar = torch.cat([s[1] for s in stats], dim=2)
        return mean, logvar

    def _encode_pixels(self, rgb: Tensor, depth: Tensor | None, sample: bool) -> Tensor:
        mean, logvar = self._posterior(rgb, depth)
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample else mean

    def _decode_pixels(self, pixels: Tensor, stream: DecoderStream) -> dict[str, Tensor]:
        latents = {"rgb": pixels[:, :, self.rgb_slice], "depth": pixels[:, :, self.depth_slice]}
        return {m: decoder(latents[m], stream) for m, decoder in self.decoders.items()}  # (B, T, C_m, H, W)


# --------------------------------------------------------------------------------------------------
# The pixel codec
# --------------------------------------------------------------------------------------------------


@dataclass
class PixelCodecConfig:
    spatial_factor: int = 8  # H, W shrink by this (space-to-depth)
    temporal_factor: int = 4  # frames stacked in the channels of one latent frame
    use_depth: bool = True  # False: RGB + raymap channels only


class PixelCodec(Codec):
    """Weight-free codec for the smallest runs and tests: each latent frame stacks its chunk's frames
    (the first latent frame repeats frame 0) after space-to-depth by ``spatial_factor``. Exact inverse
    for rgb and depth; (3 + 1) * spatial_factor ** 2 * temporal_factor + 6 channels."""

    def __init__(self, config: PixelCodecConfig):
        per_channel = config.spatial_factor**2 * config.temporal_factor
        depth_channels = per_channel if config.use_depth else 0
        super().__init__(config.spatial_factor, config.temporal_factor, 3 * per_channel, depth_channels)
        self.config = config

    def _encode_pixels(self, rgb: Tensor, depth: Tensor | None, sample: bool) -> Tensor:
        parts = [self._pack(rgb)] + ([self._pack(depth)] if self.use_depth else [])
        return torch.cat(parts, dim=2)  # (B, T', C_learned, h, w)

    def _decode_pixels(self, pixels: Tensor, stream: DecoderStream) -> dict[str, Tensor]:
        first = not stream.started  # frame 0 was stored tf times
        out = {"rgb": self._unpack(pixels[:, :, self.rgb_slice], first)}
        if self.use_depth:
            out["depth"] = self._unpack(pixels[:, :, self.depth_slice], first)
        return out

    def _pack(self, x: Tensor) -> Tensor:
        x = F.pixel_unshuffle(x.flatten(0, 1), self.spatial_factor).unflatten(0, x.shape[:2])  # (B, T, C * s * s, h, w)
        return stack_chunks(x, self.temporal_factor)  # (B, T', tf * C * s * s, h, w)

    def _unpack(self, z: Tensor, first: bool) -> Tensor:
        x = unstack_chunks(z, self.temporal_factor, first)  # (B, F, C * s * s, h, w)
        return F.pixel_shuffle(x.flatten(0, 1), self.spatial_factor).unflatten(0, x.shape[:2])  # (B, F, C, H, W)


# --------------------------------------------------------------------------------------------------
# Presets and factory
# --------------------------------------------------------------------------------------------------

CODEC_PRESETS: dict[str, CausalVAEConfig | PixelCodecConfig] = {
    # 64x64 video -> 8x8 latents with 8 + 4 + 6 = 18 channels; trains on two CPU cores.
    "tiny": CausalVAEConfig(),
    # 64x64 video -> 16x16 latents (4x spatial: a latent frame holds 6x fewer values than one RGB frame, 24x
    # for "tiny", and stands for 4 frames), trained to keep edges (finite-difference L1) under a lighter KL
    # (configs/codec_4x.yaml; measured against "tiny" in MODEL_CARD.md).
    "tiny4x": CausalVAEConfig(spatial_factor=4, channel_mult=(1, 2, 4), kl_weight=1e-4, grad_weight=1.0),
    # The release: 8x spatial, 8x temporal, 16 + 16 + 6 = 38 channels.
    "paper": CausalVAEConfig(
        temporal_factor=8, rgb_latent_channels=16, depth_latent_channels=16, width=128, blocks=2
    ),
    # Same token grid and chunk length as "tiny", no training: 4 * 64 * 4 + 6 = 1030 channels.
    "pixel": PixelCodecConfig(),
}


def build_codec(name_or_config: str | CausalVAEConfig | PixelCodecConfig) -> Codec:
    """A codec from a preset name (``CODEC_PRESETS``) or a config."""
    config = name_or_config
    if isinstance(config, str):
        if config not in CODEC_PRESETS:
            raise ValueError(f"unknown codec preset {config!r}; choose from {sorted(CODEC_PRESETS)}")
        config = CODEC_PRESETS[config]
    if isinstance(config, CausalVAEConfig):
        return CausalVAE(config)
    if isinstance(config, PixelCodecConfig):
        return PixelCodec(config)
    raise TypeError(f"expected a preset name, CausalVAEConfig or PixelCodecConfig, got {type(config).__name__}")
