"""Where does the colour go? Probe a codec's RGB latent on held-out test clips (issue 12).

    python scripts/codec_probe.py                                  # the shipped model's codec
    python scripts/codec_probe.py --checkpoint DIR --batches 4 --png recon.png

Prints JSON: the chroma of the truth and of the codec's reconstruction decode(encode(clip)) (``metrics.chroma``,
0-255 levels), split into each frame's mean colour and the colour within the frame; and how much of the truth the
RGB latent holds, as the held-out R2 of probes fitted on half the clips and scored on the other half: the keyframes'
chroma and luminance pooled to the latent grid, from the latent at the same position (linear, and a small MLP for
the chroma), and from the decoded frames themselves; a trivial codec beside it (8x8 block means, upsampled; both scored
by L1, PSNR, SSIM and sharpness ratio); and how much each latent channel carries (its KL to the prior,
and its posterior noise against the spread of its values).
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from world_model.datamodule import DeepVerseDataModule
from world_model.lit_module import decoded_frames
from world_model.metrics import chroma, psnr, sharpness_ratio, ssim
from world_model.model import SHIPPED, DeepVerse


def r2(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Coefficient of determination per column of (N, k) -> k values."""
    score = 1 - ((pred - target) ** 2).sum(0) / ((target - target.mean(0)) ** 2).sum(0)
    return [round(float(x), 3) for x in score]


def linear_probe(x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Least squares (with a bias) on the first half of rows, R2 on the second half."""
    X = torch.cat([x, torch.ones(len(x), 1)], 1)
    n = len(X) // 2
    w = torch.linalg.lstsq(X[:n], y[:n]).solution
    return r2(X[n:] @ w, y[n:])


def mlp_probe(x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> list[float]:
    """A 64-unit MLP trained with Adam on the first half of rows, R2 on the second half."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.SiLU(), torch.nn.Linear(64, y.shape[1]))
    opt = torch.optim.Adam(mlp.parameters(), 1e-2)
    n = len(x) // 2
    for _ in range(steps):
        opt.zero_grad()
        ((mlp(x[:n]) - y[:n]) ** 2).mean().backward()
        opt.step()
    with torch.no_grad():
        return r2(mlp(x[n:]), y[n:])


def levels(frames: torch.Tensor) -> float:
    """Mean chroma (``metrics.chroma``) of frames (..., H, W, 3) on the 0-255 scale, in 0-255 levels (as uint8 pictures,
    clamped to 0-255 first: a uint8 cast alone wraps)."""
    return round(255 * float(chroma(frames.clamp(0, 255).round().to(torch.uint8)).mean()), 2)


def image_scores(pred: torch.Tensor, truth: torch.Tensor) -> dict:
    """Mean PSNR (dB), SSIM and sharpness ratio of frames (..., H, W, 3) on the 0-255 scale against the truth."""
    p, t = pred.clamp(0, 255).round() / 255, truth / 255
    return {name: round(float(f(p, t).mean()), 3) for name, f in (("psnr", psnr), ("ssim", ssim), ("sharpness", sharpness_ratio))}


def block_baseline(frames: torch.Tensor, block: int) -> dict:
    """L1 (in [-1, 1] units) and chroma levels of frames (N, T, H, W, 3) 0-255 rebuilt from their block x block
    means, upsampled bilinearly; and the same with the colour removed (its luminance alone)."""
    x = frames.flatten(0, 1).movedim(-1, 1)  # (N T, 3, H, W)
    up = F.interpolate(F.avg_pool2d(x, block), scale_factor=block, mode="bilinear", align_corners=False)
    gray = up.mean(1, keepdim=True).expand_as(up)
    l1 = lambda y: round(float((y - x).abs().mean() / 127.5), 4)  # noqa: E731
    rebuilt = up.movedim(1, -1).unflatten(0, frames.shape[:2])  # (N, T, H, W, 3)
    return {"l1": l1(up), "chroma_levels": levels(rebuilt), **image_scores(rebuilt, frames), "gray_l1": l1(gray)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(SHIPPED), help="a save_pretrained directory (default: the shipped model)")
    p.add_argument("--data", default="data/sim", help="the recorded dataset (default data/sim)")
    p.add_argument("--batches", type=int, default=2, help="test batches of 8 clips of 17 frames (default 2)")
    p.add_argument("--png", help="also save truth above reconstruction (frames 0, 8, 16 of 4 clips spread over the batches) here")
    args = p.parse_args(argv)
    if args.batches < 1:
        p.error(f"--batches must be >= 1, got {args.batches}")
    model = DeepVerse.from_pretrained(args.checkpoint).eval()
    dm = DeepVerseDataModule(args.data, chunks=4, memory=False, batch_size=8)
    dm.setup("test")
    batches = iter(dm.test_dataloader())
    truth, recon, latent, kl, noise = [], [], [], [], []
    with torch.no_grad():
        for _ in range(args.batches):
            batch = next(batches)
            z, logvar = model.codec.encode_posterior(batch["rgb"], batch["depth"], batch["raymap"])  # (B, T', C, h, w)
            mean = z[:, :, : logvar.shape[2]]  # the learned channels, [rgb | depth]
            kl.append(0.5 * (mean.square() + logvar.exp() - 1 - logvar))  # (B, T', C_learned, h, w) nats
            noise.append((0.5 * logvar).exp() / mean.std(dim=(0, 1, 3, 4))[:, None, None])  # posterior std / spread
            truth.append(((batch["rgb"].float() + 1) * 127.5).movedim(2, -1))  # (B, T, H, W, 3) 0-255
            recon.append(decoded_frames(model, z, batch["scale"])["rgb"].float())  # (B, T, H, W, 3) 0-255
            latent.append(z[:, :, model.codec.rgb_slice])
    t, r, z = torch.cat(truth), torch.cat(recon), torch.cat(latent)
    per_channel = lambda x: [round(float(v), 2) for v in torch.cat(x).mean(dim=(0, 1, 3, 4))]  # noqa: E731
    mean_t, mean_r = t.mean(dim=(2, 3), keepdim=True), r.mean(dim=(2, 3), keepdim=True)  # each frame's mean colour
    h = z.shape[-1]
    tf = model.codec.temporal_factor

    def pooled(frames: torch.Tensor, part: str) -> torch.Tensor:  # keyframes pooled to the latent grid, (N, k)
        key = frames[:, ::tf]  # (B, T', H, W, 3)
        x = key - key.mean(-1, keepdim=True) if part == "chroma" else key.mean(-1, keepdim=True)
        return F.adaptive_avg_pool2d(x.movedim(-1, 2).flatten(0, 1), h).movedim(1, -1).reshape(-1, x.shape[-1])

    feats = z.flatten(0, 1).movedim(1, -1).reshape(-1, z.shape[2])  # (N, C_rgb)
    out = {
        "checkpoint": args.checkpoint, "frames": int(t.shape[0] * t.shape[1]),
        "chroma_levels": {"truth": levels(t), "reconstruction": levels(r)},
        "frame_mean_colour_chroma_levels": {"truth": levels(mean_t.expand_as(t)), "reconstruction": levels(mean_r.expand_as(r))},
        "within_frame_chroma_levels": {"truth": levels(t - mean_t + 128), "reconstruction": levels(r - mean_r + 128)},
        # A trivial codec beside it: every frame's spatial_factor^2 block means (3 values a block a frame, against the
        # RGB latent's 8 a block for a whole chunk of 4 frames), upsampled bilinearly; and its luminance alone (gray).
        "block_mean_baseline": block_baseline(t, model.codec.spatial_factor),
        "reconstruction_l1": round(float((r - t).abs().mean() / 127.5), 4),
        "reconstruction": image_scores(r, t),
        # How much each latent channel carries ([rgb | depth]): its KL to the prior in nats per value, and the
        # posterior's noise against the spread of its means over the clips (~1 = the value is mostly noise).
        "latent_kl_nats": per_channel(kl),
        "latent_noise_to_spread": per_channel(noise),
        "probe_r2": {
            "chroma_from_latent_linear": linear_probe(feats, pooled(t, "chroma")),
            "chroma_from_latent_mlp": mlp_probe(feats, pooled(t, "chroma")),
            "luminance_from_latent_linear": linear_probe(feats, pooled(t, "gray")),
            "chroma_of_reconstruction": r2(pooled(r, "chroma"), pooled(t, "chroma")),
            "luminance_of_reconstruction": r2(pooled(r, "gray"), pooled(t, "gray")),
        },
    }
    print(json.dumps(out, indent=1))
    if args.png:
        from PIL import Image

        pick = lambda x: x[:: max(1, len(x) // 4)][:4, ::8].round().clamp(0, 255).to(torch.uint8)  # (4, 3, H, W, 3)  # noqa: E731
        rows = [torch.cat(list(pick(x).flatten(0, 1)), dim=1) for x in (t, r)]  # (H, 12 W, 3) each
        Image.fromarray(torch.cat(rows, dim=0).numpy()).resize((12 * 128, 2 * 128), Image.NEAREST).save(args.png)
    return out


if __name__ == "__main__":
    main()
