"""Inference: prefill tokens/s, decode tokens/s after a prompt, and memory split into weights
and cache (the Transformer's KV cache grows with the context; GDN's recurrent state does not)."""

from __future__ import annotations

from functools import partial

import torch

from gdn.bench import shapes, timing


def _cache_bytes(caches) -> int:
    total = 0
    for layer in caches:
        for value in layer.values():
            tensors = value if isinstance(value, tuple) else (value,)
            total += sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))
    return total


def measure(shape: dict, variant: str, prompt_len: int, batch: int, decode_tokens: int, device: torch.device,
            iters: int, vocab_size: int) -> dict:
    model = shapes.build(shape, variant, vocab_size, device, torch.bfloat16).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    row = {"suite": "inference", "shape": shape["name"], "variant": variant, "prompt_len": prompt_len, "batch": batch,
           "decode_tokens": decode_tokens, "weights_gb": weights / 2**30,
           **{f"params_{k}": v for k, v in shapes.parameter_counts(model).items()}}
    ids = torch.randint(0, vocab_size, (batch, prompt_len), device=device)
    try:
        prefill = timing.interleaved({"prefill": partial(model.prefill, ids)}, device, iters, warmup=1)["prefill"]
        row["prefill_ms"] = prefill["median_ms"]
        row["prefill_tokens_per_s"] = batch * prompt_len / (prefill["median_ms"] / 1e3)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        logits, caches = model.prefill(ids)
        token = logits.argmax(-1)
        row["cache_gb_after_prompt"] = _cache_bytes(caches) / 2**30

        def decode():
            nonlocal logits, caches
            tok = token
            for _ in range(decode_tokens):
                logits, caches = model.decode_step(tok, caches)
                tok = logits.argmax(-1)

        stats = timing.interleaved({"decode": decode}, device, max(1, iters // 2), warmup=1)["decode"]
        row["decode_tokens_per_s"] = batch * decode_tokens / (stats["median_ms"] / 1e3)
        row["decode_ms_per_token"] = stats["median_ms"] / decode_tokens
        # Eager decoding at small batch is bound by the host (hundreds of kernel launches per
        # token), so the wall rate compares launch overheads more than models; the kernels' own
        # GPU time per token is the rate the card allows (what CUDA graphs would approach).
        gpu_ms = timing.kernel_ms(decode, device)
        if gpu_ms is not None:
            row["decode_kernel_ms_per_token"] = gpu_ms / decode_tokens
        row["cache_gb_after_decode"] = _cache_bytes(caches) / 2**30
        if device.type == "cuda":
            row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        row["status"] = "ok"
    except torch.OutOfMemoryError:
        row["status"] = "out of memory"
    return row
