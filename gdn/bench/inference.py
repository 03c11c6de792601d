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
            iters: int, vocab_size: int, segment_on_oom: int | None = 2048) -> dict:
    """One row. If the whole-prompt prefill runs out of memory and the model can prefill in
    segments (GDN), it is measured again with segments of `segment_on_oom` tokens and the row
    says so (`prefill_segment_len`); otherwise the row records the out-of-memory."""
    model = shapes.build(shape, variant, vocab_size, device, torch.bfloat16).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    row = {"suite": "inference", "shape": shape["name"], "variant": variant, "prompt_len": prompt_len, "batch": batch,
           "decode_tokens": decode_tokens, "weights_gb": weights / 2**30,
           **{f"params_{k}": v for k, v in shapes.parameter_counts(model).items()}}
    ids = torch.randint(0, vocab_size, (batch, prompt_len), device=device)
    segments = [None]
    if segment_on_oom and model.supports_segmented_prefill and segment_on_oom < prompt_len:
        segments.append(segment_on_oom)
    for segment in segments:
        try:
            row.update(_prefill_and_decode(model, ids, segment, decode_tokens, device, iters))
            if segment is not None:
                row["prefill_segment_len"] = segment
                row["note"] = f"the whole-prompt prefill ran out of memory; prefilled in segments of {segment} tokens"
            return row
        except torch.OutOfMemoryError:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    row["status"] = "out of memory"
    return row


def _prefill_and_decode(model, ids, segment, decode_tokens: int, device: torch.device, iters: int) -> dict:
    batch, prompt_len = ids.shape
    row = {}
    prefill = timing.interleaved({"prefill": partial(model.prefill, ids, segment)}, device, iters, warmup=1)["prefill"]
    row["prefill_ms"] = prefill["median_ms"]
    row["prefill_tokens_per_s"] = batch * prompt_len / (prefill["median_ms"] / 1e3)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    logits, caches = model.prefill(ids, segment)
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
    return row
