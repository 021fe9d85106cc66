"""MM-DiT: the world model's backbone, a double-stream diffusion transformer over text and video tokens.

DESIGN M5-M7. Two token streams with their own weights (SD3's MM-DiT): text tokens, and video tokens
from patchified latent frames of four groups,

    spatial  the retrieved memory frame(s) (optional, clean)
    render   the 3D cache rendered into the new chunk's keyframe camera (optional, clean; M18,
             ``render_frame``): the latent of the render and, per latent pixel, the share of the
             render's pixels that a cached point covers
    history  the m most recent latent frames (clean up to a small noise augmentation)
    noisy    the k frames being denoised (flow time t)

joined in one attention per block. Positions: a frozen 2D sincos table per patch (as in DiT) plus RoPE
on Q/K over the *time index* of a frame, counted from the first noisy frame: noisy frames 0..k-1,
history frames -m..-1, the memory frame the reserved slot -m-1 just before the window (it is an
older state from an unknown time; the learned ``spatial`` type embedding tells it apart as well), and
the render the noisy frame's own slot 0 (it shows the target view). RoPE sees only differences of
indices, so counting from the noisy frame changes nothing but this: a chunk's single noisy frame sits
at 0, its rotation is the identity, and ``denoise`` skips it. Text tokens carry no RoPE. Each group adds
a learned type embedding (the render its own ``render_type``, created only with ``render_frame`` so that
older checkpoints load unchanged).
Q and K are RMS-normalised per head. Every token is modulated (adaLN-Zero) by its own timestep
embedding plus the pooled text: text, spatial and render tokens at level 0, history tokens at their
noise augmentation level, noisy tokens at the flow time t.

Attention mask (paper Fig. 9): the clean context (text, spatial, render, history) attends only to
itself; noisy tokens attend to everything. So the context's per-layer K/V never depend on the noisy tokens, and the
model splits in two: ``encode_context`` runs the context through all layers once per chunk and keeps
each layer's K/V (a ``Context``); ``denoise`` runs only the noisy tokens, attending to the cached K/V,
at every flow step and guidance branch. ``forward`` = both, for training. The last block's context
outputs are never read, so its text stream stops after Q/K/V (SD3's "context pre-only" block).

``history_mode="channel"`` is the paper's Model 1 (M7): the m history frames are concatenated
channel-wise to every noisy frame (one token set, fewer tokens) and their noise level joins the noisy
tokens' modulation; same public API, but exactly ``history_frames`` history frames are required, and
no render frame.

``known`` (B, k, C) bool marks channels of the noisy frames that are given clean (first-frame
completion, M9: RGB known, depth and raymap predicted). The mask is concatenated to the input channels
of every frame (context frames: all known; the render: its coverage, over every channel).

Legend: B batch, T frames, C latent channels, (h, w) latent size, N tokens, D width, H heads, L text
tokens, P patches per frame, G modulation groups.
"""
from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from world_model.text_encoder import TextEmbedding

HISTORY_MODES = ("token", "channel")
TEXT, SPATIAL, HISTORY, NOISY = range(4)  # rows of the type embedding


@dataclass
class MMDiTConfig:
    """Defaults are the ``tiny`` preset (64x64 frames on two CPU cores); see ``world_model.presets``."""

    latent_channels: int = 18  # C: the codec's rgb + depth latent channels + 6 raymap channels (paper 16+16+6)
    latent_size: tuple[int, int] = (8, 8)  # (h, w) of a latent frame: 64x64 frames, 8x spatial compression
    patch_size: int = 2  # p: p x p latent pixels per token (paper 2)
    depth: int = 6  # blocks
    width: int = 128  # D
    heads: int = 2  # H
    head_dim: int = 64  # attention width is heads * head_dim (need not equal D)
    mlp_ratio: float = 4.0
    text_dim: int = 128  # width of the text encoder's tokens and pooled vector
    max_frames: int = 16  # history + noisy frames one call may hold (size of the RoPE table)
    history_mode: str = "token"  # "token" (paper Model 2, M5) or "channel" (Model 1, M7)
    history_frames: int = 4  # m; "channel" is built for exactly m, "token" takes 0..max_frames - k
    qk_norm: bool = True  # RMSNorm on Q and K per head: keeps attention logits bounded in deep/bf16 nets
    rope_base: float = 10000.0  # RoPE wavelength base over the frame index
    render_frame: bool = False  # M18: a clean context frame of the 3D cache rendered into the target camera

    def __post_init__(self):
        self.latent_size = tuple(self.latent_size)
        if self.history_mode not in HISTORY_MODES:
            raise ValueError(f"history_mode {self.history_mode!r} is not one of {HISTORY_MODES}")
        sizes = ("latent_channels", "patch_size", "depth", "width", "heads", "head_dim", "text_dim", "max_frames")
        for name in sizes:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if len(self.latent_size) != 2 or any(s % self.patch_size for s in self.latent_size):
            raise ValueError(
                f"latent_size {self.latent_size!r} must be two sizes divisible by patch_size {self.patch_size}"
            )
        if self.width % 4:
            raise ValueError(f"width {self.width} must be divisible by 4 (2D sincos positions)")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even (RoPE)")
        if not 0 <= self.history_frames < self.max_frames:
            raise ValueError(f"history_frames {self.history_frames} must be in [0, max_frames={self.max_frames})")
        if self.history_mode == "channel" and self.history_frames < 1:
            raise ValueError("history_mode 'channel' needs history_frames >= 1")
        if self.history_mode == "channel" and self.render_frame:
            raise ValueError("render_frame needs history_mode 'token' (the render is a token frame), got 'channel'")


def _any_present(frames: Tensor | None, mask: Tensor | None) -> bool:
    """Whether any sample has ``frames`` (B, T, C, h, w) given their presence ``mask`` (B,) (None = all)."""
    return frames is not None and (mask is None or bool(mask.any()))


@dataclass
class Condition:
    """What a chunk is generated from: the clean context of the MM-DiT, built by the world model and
    handed whole to ``encode_context`` (and through the flow, which only drops its parts for guidance).

    ``null_text`` is the learned empty text that stands in for ``text`` where text is dropped. The memory
    frame and the render form the *spatial* part: guidance and training dropout keep or drop them together.
    """

    text: TextEmbedding  # (B) the action sentences
    null_text: TextEmbedding  # (1 or B) the learned empty text
    history: Tensor | None = None  # (B, Th, C, h, w) recent latent frames, or None / Th = 0 for none
    history_t: Tensor | float = 0.0  # their noise-augmentation level, scalar or (B,) in [0, 1]; 0 = clean
    spatial: Tensor | None = None  # (B, S, C, h, w) retrieved memory frame(s), or None
    spatial_mask: Tensor | None = None  # (B,) bool, False = no memory frame for that sample; None = all present
    render: Tensor | None = None  # (B, 1, C, h, w) the 3D cache rendered into the target camera, or None
    render_cover: Tensor | None = None  # (B, 1, h, w) in [0, 1], share of the render's pixels covered
    render_mask: Tensor | None = None  # (B,) bool, False = no render for that sample; None = all present

    @property
    def batch_size(self) -> int:
        return self.text.tokens.shape[0]

    @property
    def has_history(self) -> bool:
        return self.history is not None and self.history.shape[1] > 0

    @property
    def has_spatial(self) -> bool:
        """Whether any sample has a memory frame or a render (the spatial guidance branch has something)."""
        return _any_present(self.spatial, self.spatial_mask) or _any_present(self.render, self.render_mask)

    @property
    def holds_spatial(self) -> bool:
        """Whether memory frames or renders are held at all, present or masked (what ``drop`` can drop)."""
        return self.spatial is not None or self.render is not None

    def drop(self, keep_text: Tensor, keep_spatial: Tensor | None, keep_render: Tensor | None = None) -> Condition:
        """Per sample (B,) bool: the text replaced by the null text where ``keep_text`` is False, the memory
        frame and the render masked out where ``keep_spatial`` is False, the render alone also where
        ``keep_render`` is False; ``keep_spatial=None`` removes the memory frames and the renders."""

        def kept(x: Tensor | None, mask: Tensor | None, keep: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
            if x is None or keep is None:
                return None, None
            return x, keep if mask is None else keep & mask.bool()

        spatial, spatial_mask = kept(self.spatial, self.spatial_mask, keep_spatial)
        if keep_render is None or keep_spatial is None:
            keep_render = keep_spatial
        else:
            keep_render = keep_spatial & keep_render
        render, render_mask = kept(self.render, self.render_mask, keep_render)
        return dataclasses.replace(
            self, text=self.text.where(keep_text, self.null_text), spatial=spatial, spatial_mask=spatial_mask,
            render=render, render_cover=None if render is None else self.render_cover, render_mask=render_mask,
        )

    @staticmethod
    def cat(conditions: list[Condition]) -> Condition:
        """Concatenate along the batch (the guidance branches of one call); all have history or none,
        memory frames or none, renders or none, and their ``history_t`` is (B,) or they share one scalar."""
        first = conditions[0]

        def joined(name: str):
            parts = [getattr(c, name) for c in conditions]
            return None if parts[0] is None else torch.cat(parts)

        levels = [torch.as_tensor(c.history_t) for c in conditions]
        if any(t.ndim for t in levels) or len({float(t) for t in levels}) > 1:
            history_t = torch.cat([t.expand(c.batch_size) for t, c in zip(levels, conditions)])  # (sum B,)
        else:
            history_t = first.history_t
        return Condition(
            TextEmbedding.cat([c.text for c in conditions]), first.null_text, joined("history"), history_t,
            joined("spatial"), joined("spatial_mask"), joined("render"), joined("render_cover"), joined("render_mask"),
        )


@dataclass
class Context:
    """The clean context of one chunk, encoded once and reused by every flow step and guidance branch.

    ``denoise`` writes the noisy tokens' K/V in place after the context's (``reserve``), so a Context
    serves any number of steps without autograd, and one ``denoise`` with autograd (training).
    """

    k: list[Tensor]  # per block: (B, H, Nc [+ Nn], hd) keys of text + spatial + render + history [+ noisy] tokens
    v: list[Tensor]  # per block: values, same shape
    tokens: int  # Nc, the context tokens
    key_mask: Tensor | None  # (B, Nc) bool, False = padding text / dropped memory frame or render; None = all valid
    cond: Tensor  # (B, D) added to the noisy tokens' time embedding: pooled text (+ history level, channel mode)
    history_frames: int  # Th, the history frames the context holds
    history: Tensor | None  # channel mode: (B, P, D) embedded history channels, added to each noisy frame

    def reserve(self, noisy_tokens: int) -> None:
        """Make room for ``noisy_tokens`` K/V rows after the context's (once per chunk, not per step)."""
        if self.k[0].shape[2] != self.tokens + noisy_tokens:
            pad = (0, 0, 0, noisy_tokens)
            self.k = [F.pad(k[:, :, : self.tokens], pad) for k in self.k]
            self.v = [F.pad(v[:, :, : self.tokens], pad) for v in self.v]


# --------------------------------------------------------------------------------------------------
# Embedders and position tables
# --------------------------------------------------------------------------------------------------


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, T, C, h, w) -> (B, T * P, C * p * p) tokens, frame-major then row-major patches."""
    B, T, C, h, w = x.shape
    x = x.reshape(B, T, C, h // p, p, w // p, p)
    x = x.permute(0, 1, 3, 5, 2, 4, 6)  # (B, T, h/p, w/p, C, p, p)
    return x.reshape(B, T * (h // p) * (w // p), C * p * p)


def unpatchify(x: Tensor, T: int, C: int, h: int, w: int, p: int) -> Tensor:
    """(B, T * P, C * p * p) -> (B, T, C, h, w), the inverse of ``patchify``."""
    B = x.shape[0]
    x = x.reshape(B, T, h // p, w // p, C, p, p)
    x = x.permute(0, 1, 4, 2, 5, 3, 6)  # (B, T, C, h/p, p, w/p, p)
    return x.reshape(B, T, C, h, w)


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """(N,) positions -> (N, dim) sin/cos features (DiT / "Attention is all you need")."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    angles = pos.double()[:, None] * omega  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()  # (N, dim)


def sincos_2d(dim: int, gh: int, gw: int) -> Tensor:
    """Frozen 2D position table for a gh x gw patch grid: half the channels per axis. Returns (gh * gw, dim)."""
    y, x = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, y.flatten()), sincos_1d(dim // 2, x.flatten())], dim=1)


def rope_table(positions: Tensor, dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin (len(positions), dim) for rotate-half RoPE over integer time indices."""
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    angles = positions.double()[:, None] * inv_freq  # (positions, dim/2)
    angles = torch.cat([angles, angles], dim=1)  # (positions, dim)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, N, hd) queries or keys by per-token angles; cos, sin: (N, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class QKNorm(nn.Module):
    """RMSNorm over head_dim of stacked queries and keys (..., 2, H, hd), one learned gain each."""

    def __init__(self, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(2, 1, head_dim))  # rows: q, k

    def forward(self, qk: Tensor) -> Tensor:
        return F.rms_norm(qk, (qk.shape[-1],), eps=self.eps) * self.weight


class TimestepEmbedder(nn.Module):
    """Flow time / noise level in [0, 1] -> (B, D): sinusoidal features of 1000 t, then an MLP (DiT)."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)  # (F/2,)
        args = 1000.0 * t.float()[:, None] * freqs  # (B, F/2)
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1).to(self.mlp[0].weight.dtype))  # (B, D)


# --------------------------------------------------------------------------------------------------
# Double-stream block
# --------------------------------------------------------------------------------------------------


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, N, D) with N = G groups of equal size; shift, scale (B, G, D) per group."""
    B, N, D = x.shape
    G = shift.shape[1]
    x = x.view(B, G, N // G, D)  # (B, G, N/G, D)
    return torch.addcmul(shift[:, :, None], x, 1 + scale[:, :, None]).view(B, N, D)


def add_gated(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """Residual x + y * gate for x, y (B, N, D) and a per-group gate (B, G, D)."""
    B, N, D = x.shape
    G = gate.shape[1]
    return torch.addcmul(x.view(B, G, N // G, D), y.view(B, G, N // G, D), gate[:, :, None]).view(B, N, D)


class Stream(nn.Module):
    """One modality's weights in a block: adaLN-Zero, QKV (+ QK RMSNorm), output projection and MLP.

    ``pre_only`` stops after QKV: the last block's text outputs would never be read.
    """

    def __init__(self, c: MMDiTConfig, pre_only: bool = False):
        super().__init__()
        D, inner = c.width, c.heads * c.head_dim
        self.heads, self.head_dim, self.pre_only = c.heads, c.head_dim, pre_only
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(D, 3 * inner)
        self.qk_norm = QKNorm(c.head_dim) if c.qk_norm else nn.Identity()
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(D, (2 if pre_only else 6) * D))
        if not pre_only:
            self.proj = nn.Linear(inner, D)
            self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
            hidden = int(D * c.mlp_ratio)
            # Exact (erf) GELU: on CPU it is ~5x faster than DiT's tanh approximation.
            self.mlp = nn.Sequential(nn.Linear(D, hidden), nn.GELU(), nn.Linear(hidden, D))

    def modulation(self, c: Tensor) -> list[Tensor]:
        """(B, G, D) conditioning -> shift1, scale1[, gate1, shift2, scale2, gate2], each (B, G, D)."""
        return list(self.adaLN(c).chunk(2 if self.pre_only else 6, dim=-1))

    def qkv_heads(self, x: Tensor, mod: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        B, N, _ = x.shape
        qkv = self.qkv(modulate(self.norm1(x), mod[0], mod[1])).view(B, N, 3, self.heads, self.head_dim)
        q, k = self.qk_norm(qkv[:, :, :2]).unbind(2)  # (B, N, H, hd) each
        return q.transpose(1, 2), k.transpose(1, 2), qkv[:, :, 2].transpose(1, 2)  # (B, H, N, hd) each

    def post(self, x: Tensor, o: Tensor, mod: list[Tensor]) -> Tensor:
        """Residual attention output o (B, H, N, hd) and MLP."""
        _, _, gate1, shift2, scale2, gate2 = mod
        B, N, D = x.shape
        o = o.transpose(1, 2).reshape(B, N, self.heads * self.head_dim)  # (B, N, H * hd)
        x = add_gated(x, self.proj(o), gate1)
        return add_gated(x, self.mlp(modulate(self.norm2(x), shift2, scale2)), gate2)


class MMDiTBlock(nn.Module):
    """Text and video streams with separate weights and one joint attention."""

    def __init__(self, c: MMDiTConfig, last: bool):
        super().__init__()
        self.text = Stream(c, pre_only=last)
        self.video = Stream(c)
        self.last = last

    def context(self, xt, ct, xv, cv, rope, mask):
        """Context tokens attend among themselves. Returns updated (xt, xv) and this block's (k, v).

        xt (B, L, D) text, ct (B, 1, D); xv (B, Nv, D) spatial + render + history or None, cv (B, G, D);
        rope: cos, sin (Nv, hd); mask (B, 1, Nc, Nc) bool or None.
        """
        mt = self.text.modulation(ct)
        q, k, v = self.text.qkv_heads(xt, mt)  # (B, H, L, hd)
        if xv is not None:
            mv = self.video.modulation(cv)
            qv, kv, vv = self.video.qkv_heads(xv, mv)  # (B, H, Nv, hd)
            q = torch.cat([q, apply_rope(qv, *rope)], dim=2)  # (B, H, Nc, hd)
            k = torch.cat([k, apply_rope(kv, *rope)], dim=2)
            v = torch.cat([v, vv], dim=2)
        if not self.last:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Nc, hd)
            L = xt.shape[1]
            xt = self.text.post(xt, o[:, :, :L], mt)
            if xv is not None:
                xv = self.video.post(xv, o[:, :, L:], mv)
        return xt, xv, k, v

    def noisy(self, x, c, rope, k_all, v_all, mask):
        """Noisy tokens x (B, Nn, D) attend to the cached context and to themselves.

        k_all, v_all: (B, H, Nc + Nn, hd), the context's K/V followed by room that this writes the noisy
        tokens' K/V into (no per-step copy of the context); rope: cos, sin (Nn, hd), or None when every
        noisy token sits at time 0 (identity rotation).
        """
        mod = self.video.modulation(c)
        q, k, v = self.video.qkv_heads(x, mod)  # (B, H, Nn, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        Nn = x.shape[1]
        k_all[:, :, -Nn:] = k
        v_all[:, :, -Nn:] = v
        o = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)  # (B, H, Nn, hd)
        return self.video.post(x, o, mod)


class FinalLayer(nn.Module):
    """adaLN + linear to p * p * C per token, zero-initialised so the model starts by predicting 0."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN(c).chunk(2, dim=-1)  # (B, 1, D) each
        return self.linear(modulate(self.norm(x), shift, scale))


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class MMDiT(nn.Module):
    """Predicts the flow velocity of k noisy latent frames from history, text, a memory frame and (with
    ``render_frame``) the 3D cache rendered into the target camera."""

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        self.config = c = config
        C, p, D = c.latent_channels, c.patch_size, c.width
        gh, gw = c.latent_size[0] // p, c.latent_size[1] // p
        self.patches = gh * gw  # P tokens per frame
        self.x_embed = nn.Linear(2 * C * p * p, D)  # patches of [frame, known-mask] -> tokens
        self.text_embed = nn.Linear(c.text_dim, D)
        self.pooled_embed = nn.Sequential(nn.Linear(c.text_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.t_embed = TimestepEmbedder(D)
        if c.history_mode == "channel":
            self.history_embed = nn.Linear(c.history_frames * C * p * p, D)  # history channels of a noisy token
            self.history_t_embed = TimestepEmbedder(D)  # their noise level joins the noisy tokens' modulation
        self.type_embed = nn.Parameter(torch.zeros(4, D))  # rows TEXT, SPATIAL, HISTORY, NOISY
        if c.render_frame:
            self.render_type = nn.Parameter(torch.zeros(D))  # the render frame's type embedding
        self.register_buffer("pos_embed", sincos_2d(D, gh, gw), persistent=False)  # (P, D), frozen
        # Time indices -max_frames .. max_frames - 1, counted from the first noisy frame (see module doc).
        cos, sin = rope_table(torch.arange(-c.max_frames, c.max_frames), c.head_dim, c.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # (2 * max_frames, hd)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(MMDiTBlock(c, last=i == c.depth - 1) for i in range(c.depth))
        self.final = FinalLayer(D, C * p * p)
        self.initialize_weights()

    def initialize_weights(self):
        """DiT init: xavier linears, small embeddings, and adaLN-Zero (every block starts as the identity)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        embedders = [self.t_embed] + ([self.history_t_embed] if self.config.history_mode == "channel" else [])
        for e in embedders:
            nn.init.normal_(e.mlp[0].weight, std=0.02)
            nn.init.normal_(e.mlp[2].weight, std=0.02)
        nn.init.normal_(self.type_embed, std=0.02)
        if self.config.render_frame:
            nn.init.normal_(self.render_type, std=0.02)
        adaLNs = [b.text.adaLN for b in self.blocks] + [b.video.adaLN for b in self.blocks] + [self.final.adaLN]
        for adaLN in adaLNs:
            nn.init.zeros_(adaLN[-1].weight)
            nn.init.zeros_(adaLN[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    # -- inputs ----------------------------------------------------------------------------------

    def _check_frames(self, name: str, x: Tensor, batch: int) -> int:
        """Validate a (B, T, C, h, w) latent stack; returns T."""
        c = self.config
        if x.ndim != 5 or x.shape[0] != batch or (x.shape[2], *x.shape[3:]) != (c.latent_channels, *c.latent_size):
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}; expected ({batch}, T, {c.latent_channels}, "
                f"{c.latent_size[0]}, {c.latent_size[1]})"
            )
        return x.shape[1]

    def _level(self, name: str, t: Tensor | float, batch: int, like: Tensor) -> Tensor:
        """A flow time or noise level, scalar or (B,), as (B,) in [0, 1]."""
        if t is None:
            raise ValueError(f"{name} is required here (got None)")
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected a scalar or ({batch},)")
        return t

    def _embed_frames(self, x: Tensor, known: Tensor, kind: int) -> Tensor:
        """Frames (B, T, C, h, w) and their known mask (B, T, C) -> tokens (B, T * P, D) of type row ``kind``."""
        B, T, C, h, w = x.shape
        return self._embed(x, known.to(x.dtype)[..., None, None].expand(B, T, C, h, w), self.type_embed[kind])

    def _embed(self, x: Tensor, known: Tensor, type_embedding: Tensor) -> Tensor:
        """Frames (B, T, C, h, w) and the share known of each value (B, T, C, h, w) in [0, 1] -> tokens
        (B, T * P, D) with the (D,) ``type_embedding``."""
        B, T = x.shape[:2]
        tokens = self.x_embed(patchify(torch.cat([x, known], dim=2), self.config.patch_size))  # (B, T * P, D)
        tokens = tokens.view(B, T, self.patches, -1) + self.pos_embed + type_embedding  # (B, T, P, D)
        return tokens.view(B, T * self.patches, -1)

    def _present(self, name: str, mask: Tensor | None, batch: int, device) -> Tensor:
        """A presence mask (B,) bool of memory frames or renders; None = all present."""
        if mask is None:
            return torch.ones(batch, dtype=torch.bool, device=device)
        if mask.shape != (batch,):
            raise ValueError(f"{name} has shape {tuple(mask.shape)}; expected ({batch},)")
        return mask.bool()

    def _rope(self, times: list[int]) -> tuple[Tensor, Tensor]:
        """cos, sin (len(times) * P, hd) for frames at the given time indices (relative to the noisy frame)."""
        idx = torch.tensor(times, dtype=torch.long, device=self.rope_cos.device) + self.config.max_frames
        idx = idx.repeat_interleave(self.patches)  # (len(times) * P,)
        return self.rope_cos[idx], self.rope_sin[idx]

    # -- the two halves ----------------------------------------------------------------------------

    def encode_context(self, cond: Condition) -> Context:
        """Run the clean context through every block once; keep each block's K/V.

        Args:
            cond: text (B), history (B, Th, C, h, w) noise-augmented to ``history_t`` (or none; "channel"
                mode needs exactly ``history_frames``), memory frames (B, S, C, h, w) or none, and
                ``spatial_mask`` (B,): False = that sample's memory tokens are removed from attention;
                with ``render_frame``, a render (B, 1, C, h, w) with its ``render_cover`` (B, 1, h, w), or
                none, and ``render_mask`` (B,) likewise.
        Returns:
            the ``Context`` that ``denoise`` attends to.
        """
        (text_tokens, text_mask, text_pooled), history, history_t = cond.text, cond.history, cond.history_t
        spatial, render, render_cover = cond.spatial, cond.render, cond.render_cover
        c = self.config
        B = text_tokens.shape[0]
        text_ok = text_tokens.ndim == 3 and text_tokens.shape[2] == c.text_dim and text_mask.shape == text_tokens.shape[:2]
        if not text_ok or text_pooled.shape != (B, c.text_dim):
            raise ValueError(
                f"text shapes tokens {tuple(text_tokens.shape)}, mask {tuple(text_mask.shape)}, pooled "
                f"{tuple(text_pooled.shape)}; expected (B, L, {c.text_dim}), (B, L), (B, {c.text_dim})"
            )
        Th = 0 if history is None else self._check_frames("history", history, B)
        if c.history_mode == "channel" and Th != c.history_frames:
            raise ValueError(f"history_mode 'channel' needs exactly {c.history_frames} history frames, got {Th}")
        if Th > c.max_frames - 1:
            raise ValueError(f"{Th} history frames leave no room for noisy frames (max_frames {c.max_frames})")
        y = self.pooled_embed(text_pooled)  # (B, D)
        clean = self.t_embed(torch.zeros(B, device=y.device)) + y  # (B, D) text, memory frames, render: level 0
        xt = self.text_embed(text_tokens) + self.type_embed[TEXT]  # (B, L, D)
        key_mask = [text_mask.bool()]
        video, conds, times = [], [], []  # token blocks (B, n, D), their (B, G, D) conditions, frame time indices
        if spatial is not None:
            S = self._check_frames("spatial", spatial, B)
            present = self._present("spatial_mask", cond.spatial_mask, B, spatial.device)
            # An absent memory frame is masked out of attention; zero it too, so that whatever its rows hold
            # (NaN included) cannot reach the other tokens through a zero attention weight (0 * NaN = NaN).
            spatial = spatial.where(present[:, None, None, None, None], 0)
            ones = torch.ones(B, S, c.latent_channels, dtype=torch.bool, device=spatial.device)
            video.append(self._embed_frames(spatial, ones, SPATIAL))
            conds.append(clean[:, None].expand(B, S, -1))
            times += [-Th - 1] * S
            key_mask.append(present[:, None].expand(B, S * self.patches))
        if render is not None:
            if not c.render_frame:
                raise ValueError("the condition holds a render but this MMDiT has render_frame=False")
            T = self._check_frames("render", render, B)
            h, w = c.latent_size
            if T != 1 or render_cover is None or render_cover.shape != (B, 1, h, w):
                cover = None if render_cover is None else tuple(render_cover.shape)
                raise ValueError(
                    f"a render needs shape ({B}, 1, {c.latent_channels}, {h}, {w}) and render_cover "
                    f"({B}, 1, {h}, {w}); got {tuple(render.shape)} and {cover}"
                )
            present = self._present("render_mask", cond.render_mask, B, render.device)
            # Absent renders are zeroed as well as masked, as absent memory frames are (see above).
            render = render.where(present[:, None, None, None, None], 0)
            cover = render_cover.to(render.dtype).where(present[:, None, None, None], 0)  # (B, 1, h, w)
            video.append(self._embed(render, cover[:, :, None].expand_as(render), self.render_type))
            conds.append(clean[:, None])
            times.append(0)  # the noisy frame's own slot: the render shows the target view
            key_mask.append(present[:, None].expand(B, self.patches))
        noisy_cond = y  # (B, D) what the noisy tokens' modulation adds to their time embedding
        history_tokens = None
        if Th:
            level = self._level("history_t", history_t, B, history)
            if c.history_mode == "token":
                ones = torch.ones(B, Th, c.latent_channels, dtype=torch.bool, device=history.device)
                video.append(self._embed_frames(history, ones, HISTORY))
                conds.append((self.t_embed(level) + y)[:, None].expand(B, Th, -1))
                times += range(-Th, 0)
                key_mask.append(torch.ones(B, Th * self.patches, dtype=torch.bool, device=y.device))
            else:
                frames = history.flatten(1, 2)[:, None]  # (B, 1, Th * C, h, w): history as channels
                history_tokens = self.history_embed(patchify(frames, c.patch_size))  # (B, P, D)
                noisy_cond = y + self.history_t_embed(level)
        xv = torch.cat(video, dim=1) if video else None  # (B, Nv, D)
        cv = torch.cat(conds, dim=1) if video else None  # (B, G, D), G = frames, P tokens each
        rope = self._rope(times)
        key_mask = torch.cat(key_mask, dim=1)  # (B, Nc)
        attn_mask = None
        if not key_mask.all():
            # Every query keeps itself, so a dropped memory frame's or render's (unused) rows stay finite.
            eye = torch.eye(key_mask.shape[1], dtype=torch.bool, device=key_mask.device)
            attn_mask = (key_mask[:, None, :] | eye)[:, None]  # (B, 1, Nc, Nc)
        ks, vs = [], []
        ct = clean[:, None]  # (B, 1, D)
        for block in self.blocks:
            xt, xv, k, v = block.context(xt, ct, xv, cv, rope, attn_mask)
            ks.append(k)
            vs.append(v)
        Nc = key_mask.shape[1]
        return Context(ks, vs, Nc, None if attn_mask is None else key_mask, noisy_cond, Th, history_tokens)

    def denoise(self, x_noisy: Tensor, t: Tensor | float, ctx: Context, known: Tensor | None = None) -> Tensor:
        """Velocity of the noisy frames given an encoded context.

        Args:
            x_noisy: (B, k, C, h, w) frames at flow time t (known channels hold their clean values).
            t: flow time, scalar or (B,), 1 = noise, 0 = data.
            ctx: from ``encode_context`` with the same batch.
            known: (B, k, C) bool, True = channel given clean; None = all unknown.
        Returns:
            (B, k, C, h, w) predicted velocity (noise - data).
        """
        c = self.config
        B = ctx.cond.shape[0]
        T = self._check_frames("x_noisy", x_noisy, B)
        if ctx.history_frames + T > c.max_frames:
            raise ValueError(f"{ctx.history_frames} history + {T} noisy frames exceed max_frames {c.max_frames}")
        if known is None:
            known = torch.zeros(B, T, c.latent_channels, dtype=torch.bool, device=x_noisy.device)
        elif known.shape != (B, T, c.latent_channels):
            raise ValueError(f"known has shape {tuple(known.shape)}; expected ({B}, {T}, {c.latent_channels})")
        x = self._embed_frames(x_noisy, known, NOISY)  # (B, T * P, D)
        if ctx.history is not None:
            x = (x.view(B, T, self.patches, -1) + ctx.history[:, None]).view(B, T * self.patches, -1)
        cond = (self.t_embed(self._level("t", t, B, x_noisy)) + ctx.cond)[:, None]  # (B, 1, D)
        rope = self._rope(list(range(T))) if T > 1 else None  # a single frame at time 0: no rotation
        mask = None
        if ctx.key_mask is not None:
            ones = torch.ones(B, x.shape[1], dtype=torch.bool, device=x.device)
            mask = torch.cat([ctx.key_mask, ones], dim=1)[:, None, None]  # (B, 1, 1, Nc + Nn)
        ctx.reserve(x.shape[1])
        for block, k, v in zip(self.blocks, ctx.k, ctx.v):
            x = block.noisy(x, cond, rope, k, v, mask)
        out = self.final(x, cond)  # (B, T * P, C * p * p)
        return unpatchify(out, T, c.latent_channels, *c.latent_size, c.patch_size)  # (B, T, C, h, w)

    def forward(self, x_noisy: Tensor, t: Tensor | float, cond: Condition, known: Tensor | None = None) -> Tensor:
        """``denoise(x_noisy, t, encode_context(cond), known)``: (B, k, C, h, w) velocity (see both)."""
        return self.denoise(x_noisy, t, self.encode_context(cond), known)
