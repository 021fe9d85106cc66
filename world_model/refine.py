"""Render-conditioned decoding (M18): a decoded frame plus the 3D cache rendered into its camera -> a sharp frame.

The codec decodes a generated latent into a frame that keeps only the coarse content (8x spatial
compression). The rollout also knows what the world has already shown: a point cloud of past frames in
the episode frame (``world_model.cache``), which it renders into each new frame's predicted camera
(``world_model.splat``). The refiner sees both and writes the frame: where the render holds a surface the
frame also shows, its detail comes from the render; elsewhere (holes, new content, disagreeing depth) the
decoded frame stays. Video codecs decode the same way against a motion-compensated reference (DCVC); here the
motion is the predicted depth and camera.

Per frame, inputs at full resolution, channels first (N, 9, H, W):

    decoded rgb (3, [-1, 1]) | decoded depth (1, sqrt-disparity of the window) |
    render rgb (3, [-1, 1], 0 in holes) | render depth (1, same encoding, -1 in holes) | render mask (1)

Output: rgb (N, 3, H, W) = (1 - g) * decoded + g * render + a correction, with a per-pixel gate g in [0, 1]
that is 0 in the render's holes: copying what the cache shows is one gate away, and the network only has
to learn where to trust it. The last layer starts at zero (g = 1/2 where the render covers, no
correction). A small U-Net (two 2x levels) over single frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from world_model import geometry as G
from world_model.splat import Render, splat
from world_model.state import to_rgb8

IN_CHANNELS = 9


@dataclass
class RefinerConfig:
    width: int = 32  # channels at full resolution; x2 per level
    levels: int = 2  # 2x downsamplings: the receptive field must span the render's misalignment

    def __post_init__(self):
        for name in ("width", "levels"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"RefinerConfig.{name} must be a positive integer, got {value!r}")


class ResBlock2d(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(8, c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(min(8, c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Refiner(nn.Module):
    """Decoded frames + cache renders -> refined RGB (see the module docstring)."""

    def __init__(self, config: RefinerConfig | None = None):
        super().__init__()
        self.config = c = config or RefinerConfig()
        widths = [c.width * 2**i for i in range(c.levels + 1)]  # per level, full resolution first
        self.stem = nn.Conv2d(IN_CHANNELS, widths[0], 3, padding=1)
        self.down = nn.ModuleList(ResBlock2d(widths[i], widths[i]) for i in range(c.levels))
        self.pool = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1) for i in range(c.levels))
        self.mid = ResBlock2d(widths[-1], widths[-1])
        self.lift = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 3, padding=1) for i in range(c.levels))
        self.up = nn.ModuleList(ResBlock2d(2 * widths[i], widths[i]) for i in range(c.levels))
        self.out = nn.Sequential(nn.GroupNorm(min(8, widths[0]), widths[0]), nn.SiLU(), nn.Conv2d(widths[0], 4, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, inputs: Tensor) -> Tensor:
        """(N, 9, H, W) (``refiner_inputs``) -> (N, 3, H, W) rgb in about [-1, 1]; H, W divisible by 2**levels."""
        if inputs.dim() != 4 or inputs.shape[1] != IN_CHANNELS or any(s % 2**self.config.levels for s in inputs.shape[2:]):
            raise ValueError(
                f"refiner inputs must be (N, {IN_CHANNELS}, H, W) with H, W divisible by {2**self.config.levels}, "
                f"got {tuple(inputs.shape)}"
            )
        x = self.stem(inputs.contiguous(memory_format=torch.channels_last))  # oneDNN's fast layout (1.5x at 64 frames here)
        skips = []
        for block, pool in zip(self.down, self.pool):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.mid(x)
        for i in reversed(range(self.config.levels)):
            x = self.lift[i](F.interpolate(x, scale_factor=2.0, mode="nearest"))
            x = self.up[i](torch.cat([x, skips[i]], dim=1))
        correction, gate = self.out(x).split([3, 1], dim=1)
        gate = torch.sigmoid(gate) * inputs[:, 8:9]  # (N, 1, H, W), 0 in holes
        return (1 - gate) * inputs[:, :3] + gate * inputs[:, 4:7] + correction


def refiner_inputs(
    rgb: Tensor, depth: Tensor, render_rgb: Tensor, render_depth: Tensor, render_mask: Tensor, scale: Tensor
) -> Tensor:
    """Stack the refiner's inputs from frames in the observation layout.

    Args:
        rgb: (N, H, W, 3) decoded colours, uint8 or in [-1, 1] float.  depth: (N, H, W) decoded metres.
        render_rgb: (N, H, W, 3) uint8 or float 0..255.  render_depth: (N, H, W) metres (0 in holes).
        render_mask: (N, H, W) bool.  scale: (N,) the window scale (metres per unit) both depths encode with.
    Returns:
        (N, 9, H, W).
    """
    base = rgb.float() / 127.5 - 1.0 if rgb.dtype == torch.uint8 else rgb.float()
    decoded = [base.movedim(-1, 1), G.encode_depth(depth, scale)[:, None]]  # (N, 3, H, W), (N, 1, H, W)
    rendered = render_state(render_rgb, render_depth, render_mask, scale)  # (N, 4, H, W)
    return torch.cat([*decoded, rendered, render_mask.float()[:, None]], dim=1)


def render_state(render_rgb: Tensor, render_depth: Tensor, render_mask: Tensor, scale: Tensor) -> Tensor:
    """A render in the model's state layout, channels first: what the refiner and the MM-DiT's render frame see.

    Args:
        render_rgb: (N, H, W, 3) uint8 or float 0..255.  render_depth: (N, H, W) metres (0 in holes).
        render_mask: (N, H, W) bool.  scale: (N,) the window scale (metres per unit) the depth encodes with.
    Returns:
        (N, 4, H, W): rgb in [-1, 1] (0 in holes) | depth (``geometry.encode_depth``, -1 in holes).
    """
    mask = render_mask.float()
    rendered = (render_rgb.float() / 127.5 - 1.0) * mask[..., None]
    rendered_depth = torch.where(render_mask, G.encode_depth(render_depth.clamp_min(1e-6), scale), -torch.ones_like(mask))
    return torch.cat([rendered.movedim(-1, 1), rendered_depth[:, None]], dim=1)


def perturb_poses(c2w: Tensor, rotation_deg: float, translation: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Camera-to-world poses (..., 4, 4) moved by a random rotation (axis uniform, angle ~ |N(0, rotation_deg)|)
    and translation ~ N(0, translation) (broadcast to (...,), metres) in the camera frame: the error of a
    predicted camera."""
    lead = c2w.shape[:-2]
    axis = F.normalize(torch.randn(*lead, 3, generator=generator, device=c2w.device), dim=-1)
    angle = torch.randn(*lead, 1, generator=generator, device=c2w.device) * torch.pi / 180 * rotation_deg
    x, y, z = (axis * angle).unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).view(*lead, 3, 3)
    delta = torch.eye(4, device=c2w.device).expand(*lead, 4, 4).clone()
    delta[..., :3, :3] = torch.linalg.matrix_exp(skew)
    delta[..., :3, 3] = torch.randn(*lead, 3, generator=generator, device=c2w.device) * translation[..., None]
    return c2w @ delta


@dataclass
class RenderNoise:
    """How far the cache a rollout renders is from the truth, to train the refiner on realistic renders."""

    rotation_deg: float = 1.5  # camera rotation error of a cached frame relative to the current one
    translation: float = 0.03  # camera translation error, in units of the window scale
    depth: float = 0.05  # depth error: a per-frame factor ~ 1 + N(0, depth), then per pixel ~ 1 + N(0, depth / 2)
    blur: float = 0.5  # probability that a cached frame other than the first is blurred (a generated frame)
    clean: float = 0.0  # probability that a clip's cache is exact (none of the above): the render is to be trusted

    def __post_init__(self):
        for name in ("rotation_deg", "translation", "depth"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"RenderNoise.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("blur", "clean"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"RenderNoise.{name} must be a probability in [0, 1], got {getattr(self, name)!r}")


EXACT = RenderNoise(rotation_deg=0.0, translation=0.0, depth=0.0, blur=0.0)  # a cache of true frames, no errors


def refine_frames(refiner: Refiner, frames, render: Render, scale: Tensor, max_batch: int | None = None) -> Tensor:
    """The refiner's colours (b, tf, H, W, 3) uint8 of decoded frames (b, tf) (rgb, depth (..., 1) metres) given
    the 3D cache rendered into their cameras (``Render`` with batch b * tf) and the window scale (b,);
    ``max_batch``: frames per refiner call (None: all in one)."""
    b, tf = frames["rgb"].shape[:2]
    inputs = refiner_inputs(
        frames["rgb"].flatten(0, 1), frames["depth"][..., 0].flatten(0, 1), render.values, render.depth, render.mask,
        scale.repeat_interleave(tf),
    )  # (b * tf, 9, H, W)
    out = torch.cat([refiner(part).float() for part in inputs.split(max_batch or len(inputs))])  # (b * tf, 3, H, W)
    return to_rgb8(out).unflatten(0, (b, tf))


def cache_renders(
    frames, targets: Tensor, keyframes: Tensor, scale: Tensor, noise: RenderNoise, generator: torch.Generator | None = None,
    cameras: tuple[Tensor, Tensor] | None = None,
) -> Render:
    """Renders of noisy cached keyframes into the true cameras of target frames (refiner training).

    Args:
        frames: frames (B, T) in one window (``state.to_frames``): rgb uint8, depth, pose, intrinsics.
        targets: (n,) frame indices to render into.  keyframes: (k,) frame indices the cache holds.
        scale: (B,) metres per window unit.
        cameras: (intrinsics (B, n, 3, 3), pose (B, n, 4, 4)) to render into instead of the targets' true ones
            (a forecast's predicted cameras); None = the true cameras.
    Returns:
        ``splat.Render`` with batch B * n (target-major within each clip).
    """
    B, n, k = frames.shape[0], len(targets), len(keyframes)
    key = frames[:, keyframes]  # (B, k)
    noisy = torch.ones(B, dtype=torch.bool, device=scale.device)  # (B,) False: an exact cache
    if noise.clean > 0:  # draws only when asked: the noise stream of clean = 0 is unchanged
        noisy = torch.rand(B, generator=generator, device=scale.device) >= noise.clean
    pose = perturb_poses(key["pose"], noise.rotation_deg, noise.translation * scale[:, None].expand(B, k), generator)
    pose = torch.where(noisy[:, None, None, None], pose, key["pose"])  # (B, k, 4, 4)
    depth = key["depth"][..., 0]  # (B, k, H, W)
    factor = 1 + noise.depth * torch.randn(B, k, 1, 1, generator=generator, device=depth.device)
    factor = factor * (1 + noise.depth / 2 * torch.randn(depth.shape, generator=generator, device=depth.device))
    depth = depth * torch.where(noisy[:, None, None, None], factor, torch.ones_like(factor))
    rgb = key["rgb"].float()  # (B, k, H, W, 3)
    blurred = F.avg_pool2d(rgb.flatten(0, 1).movedim(-1, 1), 3, 1, 1, count_include_pad=False).movedim(1, -1).view_as(rgb)
    blur = torch.rand(B, k, 1, 1, 1, generator=generator, device=rgb.device) < noise.blur
    blur[:, 0] = False  # the start frame is real
    rgb = torch.where(blur & noisy[:, None, None, None, None], blurred, rgb)
    points = G.unproject(depth.clamp_min(1e-3), key["intrinsics"], pose).flatten(1, 3)  # (B, k * H * W, 3)
    H, W = depth.shape[-2:]
    K, c2w = (frames["intrinsics"][:, targets], frames["pose"][:, targets]) if cameras is None else cameras  # (B, n)
    if K.shape[:2] != (B, n) or c2w.shape[:2] != (B, n):
        raise ValueError(f"cameras must be (B, n) = {(B, n)} intrinsics and poses, got {tuple(K.shape)}, {tuple(c2w.shape)}")
    return splat(
        points.repeat_interleave(n, 0), rgb.flatten(1, 3).repeat_interleave(n, 0), K.flatten(0, 1), c2w.flatten(0, 1), H, W,
    )
