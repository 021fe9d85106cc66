"""Speed of the world model's generative core on this machine: FLOPs, ms per flow step, frames/s, MFU.

    python -m world_model.bench            # prints the JSON of bench_model()

One chunk = one env step = ``frames_per_chunk`` video frames (the codec's temporal factor, 4 for tiny)
from one latent frame, made by the default sampler: 10 Euler steps x 3 guidance branches (null, text,
text + memory) in one batched call, context K/V cached once per chunk, text encoded by the (eval-mode,
cached) ``VocabTextEncoder``. Chunks are rolled out autoregressively (each generated latent frame joins
the history). Codec decoding is *excluded*: frames/s counts latent chunks x ``frames_per_chunk``.

Times are the best of ``repeats`` runs (other tenants share the cores; the best run is the one least
disturbed), with the median next to it. FLOPs are counted with ``torch.utils.flop_counter``; MFU divides
the achieved FLOP/s by fp32 and bf16 matmul peaks timed in the same run.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from world_model.flow import FlowMatching, SamplerConfig
from world_model.mmdit import Condition
from world_model.presets import build
from world_model.text import SENTENCES
from world_model.text_encoder import TextEmbedding, TextEncoderConfig, VocabTextEncoder

TARGET_FPS = {1: 25.0, 16: 200.0}  # generated frames/s on 2 CPU cores at 64x64 (the tiny preset)


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


# FlopCounterMode has no formula for the CPU flash-attention kernel; without this attention counts 0.
_CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_flops(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def _timings(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def matmul_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n matmul in ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = min(_timings(lambda: [a @ b for _ in range(4)], repeats))
    return 4 * 2 * n**3 / best


def bench_model(
    preset: str = "tiny",
    batch_sizes: tuple[int, ...] = (1, 16),
    chunks: int = 2,
    frames_per_chunk: int = 4,
    repeats: int = 3,
    sampler: SamplerConfig | None = None,
    seed: int = 0,
    **overrides,
) -> dict:
    """Benchmark ``build(preset, **overrides)`` with the default sampler; returns a JSON-able dict.

    Args:
        batch_sizes: rollouts generated side by side (B).
        chunks: chunks rolled out per timed run; frames = B x chunks x frames_per_chunk.
        frames_per_chunk: video frames per latent frame (the codec's temporal compression).
        repeats: timed runs per measurement (best and median reported).
        sampler: sampler settings (default ``SamplerConfig()``: 10 steps, s_T 3.5, s_S 6.0).
    """
    torch.manual_seed(seed)
    model = build(preset, **overrides).eval()
    c = model.config
    flow, sampler = FlowMatching(), sampler or SamplerConfig()
    text_encoder = VocabTextEncoder(TextEncoderConfig(dim=c.text_dim)).eval()
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    result = {
        "preset": preset,
        "overrides": overrides,
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "latent": [c.latent_channels, *c.latent_size],
        "history_frames": c.history_frames,
        "sampler": {
            **dataclasses.asdict(sampler), "guidance_branches": 3,
        },
        "frames_per_chunk": frames_per_chunk,
        "codec_decode": "excluded",
        "matmul_peak_gflops": {k: round(v / 1e9, 1) for k, v in peak.items()},
        "timing": f"best of {repeats} runs (median alongside)",
        "batches": {},
    }
    shape = (c.latent_channels, *c.latent_size)
    with torch.no_grad():
        for B in batch_sizes:
            g = torch.Generator().manual_seed(seed)
            history0 = torch.randn(B, c.history_frames, *shape, generator=g)
            spatial = torch.randn(B, 1, *shape, generator=g)
            sentences = [SENTENCES[i % len(SENTENCES)] for i in range(B)]
            null = text_encoder.null(1)

            def rollout(use_cache: bool):
                history = history0
                for _ in range(chunks):
                    cond = Condition(text_encoder.encode(sentences), null, history, 0.0, spatial)
                    z = torch.randn(B, 1, *shape, generator=g)
                    x = flow.sample(model, z, cond, sampler, generator=g, use_cache=use_cache)
                    history = torch.cat([history[:, 1:], x], dim=1)

            # One flow step: all three guidance branches of the batch in one denoise call.
            text = text_encoder.encode(sentences).expand(B)
            spatial_mask = torch.cat([torch.zeros(2 * B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)])
            branches = Condition(
                TextEmbedding.cat([text] * 3), null, history0.repeat(3, 1, 1, 1, 1), 0.0,
                spatial.repeat(3, 1, 1, 1, 1), spatial_mask,
            )
            ctx = model.encode_context(branches)
            x = torch.randn(3 * B, 1, *shape, generator=g)

            step_flops = count_flops(lambda: model.denoise(x, 0.5, ctx))
            context_flops = count_flops(lambda: model.encode_context(branches))
            chunk_flops = context_flops + sampler.steps * step_flops
            step_s = _timings(lambda: model.denoise(x, 0.5, ctx), repeats * 4)
            cached = _timings(lambda: rollout(True), repeats)
            uncached = _timings(lambda: rollout(False), repeats)
            frames = B * chunks * frames_per_chunk
            fps = frames / min(cached)
            achieved = chunks * chunk_flops / min(cached)
            result["batches"][str(B)] = {
                "flops_per_flow_step": step_flops,
                "flops_context_per_chunk": context_flops,
                "flops_per_chunk": chunk_flops,
                "ms_per_flow_step": round(1e3 * min(step_s), 3),
                "ms_per_chunk": round(1e3 * min(cached) / chunks, 2),
                "ms_per_chunk_median": round(1e3 * statistics.median(cached) / chunks, 2),
                "frames_per_s": round(fps, 1),
                "frames_per_s_median": round(frames / statistics.median(cached), 1),
                "frames_per_s_no_cache": round(frames / min(uncached), 1),
                "kv_cache_speedup": round(min(uncached) / min(cached), 2),
                "achieved_gflops": round(achieved / 1e9, 1),
                "mfu_fp32": round(achieved / peak["fp32"], 3),
                "mfu_bf16": round(achieved / peak["bf16"], 3),
                "target_frames_per_s": TARGET_FPS.get(B),
            }
    return result


if __name__ == "__main__":
    print(json.dumps(bench_model(), indent=2))
