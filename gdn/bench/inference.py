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


# Peak HBM bandwidth by card (bytes/s, the vendors' figures): the floor a decoded token cannot beat is
# the bytes it must read (every weight once per step, plus the cache) at this rate.
HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}
PATHS = ("eager", "graph")


def hbm_bytes_per_s(device: torch.device, override: float | None = None) -> float | None:
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for card, bw in HBM_BYTES_PER_S.items() if card in name), None)


def step_floor_bytes(weights_bytes: int, cache) -> int:
    """Bytes one decode step must move: the weights once, the static cache's buffers once, and the
    recurrent tensors (GDN's state and tails) twice, since the step also writes them back."""
    recurrent = {id(t) for t in cache.recurrent_tensors()}
    tensors = [t for layer in cache.layers for t in layer.values()]
    return weights_bytes + sum(t.numel() * t.element_size() * (2 if id(t) in recurrent else 1) for t in tensors)


def measure(shape: dict, variant: str, prompt_len: int, batch: int, decode_tokens: int, device: torch.device,
            iters: int, vocab_size: int, segment_on_oom: int | None = 2048, paths=PATHS,
            hbm_override: float | None = None) -> list[dict]:
    """One row per decode path ("eager": the dynamic cache, one launch per kernel; "graph": the
    static cache and the CUDA-graph step of gdn.models.generation, eager where there is no CUDA).
    If the whole-prompt prefill runs out of memory and the model can prefill in segments (GDN), it
    is measured again with segments of `segment_on_oom` tokens and the rows say so
    (`prefill_segment_len`); otherwise they record the out-of-memory."""
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ValueError(f"unknown decode path(s) {unknown}; known: {PATHS}")
    model = shapes.build(shape, variant, vocab_size, device, torch.bfloat16).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    common = {"suite": "inference", "shape": shape["name"], "variant": variant, "prompt_len": prompt_len,
              "batch": batch, "decode_tokens": decode_tokens, "weights_gb": weights / 2**30,
              **{f"params_{k}": v for k, v in shapes.parameter_counts(model).items()}}
    ids = torch.randint(0, vocab_size, (batch, prompt_len), device=device)
    segments = [None]
    if segment_on_oom and model.supports_segmented_prefill and segment_on_oom < prompt_len:
        segments.append(segment_on_oom)
    bandwidth = hbm_bytes_per_s(device, hbm_override)
    # The cache a step at this context must read, measured on shapes alone (the "meta" device).
    floor_bytes = step_floor_bytes(weights, model.allocate_static_cache(batch, prompt_len + decode_tokens, "meta"))
    rows = []
    for path in paths:
        row = {**common, "path": path}
        for segment in segments:
            try:
                if path == "eager":
                    row.update(_prefill_and_decode(model, ids, segment, decode_tokens, device, iters))
                else:
                    row.update(_prefill_and_decode_graph(model, ids, segment, decode_tokens, device, iters))
                if segment is not None:
                    row["prefill_segment_len"] = segment
                    _add_note(row, f"the whole-prompt prefill ran out of memory; prefilled in segments of "
                                   f"{segment} tokens")
                break
            except torch.OutOfMemoryError:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        else:
            row["status"] = "out of memory"
        row["floor_bytes_per_step"] = floor_bytes
        if bandwidth is None:
            _add_note(row, "no memory-bandwidth figure for this device: set bench.inference.hbm_gb_s "
                           "for floor_fraction")
        elif row.get("decode_ms_per_token"):
            floor_ms = floor_bytes / bandwidth * 1e3
            row["floor_ms_per_step"] = floor_ms
            # decode_ms_per_token is the time of one step, which decodes one token of every sequence
            row["floor_fraction"] = floor_ms / row["decode_ms_per_token"]
        rows.append(row)
    return rows


def _add_note(row: dict, text: str) -> None:
    row["note"] = f"{row['note']}; {text}" if row.get("note") else text


def _prefill_rate(prefill, batch: int, prompt_len: int, device: torch.device, iters: int) -> dict:
    stats = timing.interleaved({"prefill": prefill}, device, iters, warmup=1)["prefill"]
    return {"prefill_ms": stats["median_ms"], "prefill_tokens_per_s": batch * prompt_len / (stats["median_ms"] / 1e3)}


def _decode_rate(decode, batch: int, decode_tokens: int, device: torch.device, iters: int) -> dict:
    """Wall rate of `decode` (decode_tokens tokens per call), the kernels' GPU time per token and the
    peak memory since the caller's reset. Eager decoding at small batch is bound by the host
    (hundreds of kernel launches per token), so its wall rate compares launch overheads more than
    models; the kernels' own GPU time per token is the rate the card allows."""
    stats = timing.interleaved({"decode": decode}, device, max(1, iters // 2), warmup=1)["decode"]
    row = {"decode_tokens_per_s": batch * decode_tokens / (stats["median_ms"] / 1e3),
           "decode_ms_per_token": stats["median_ms"] / decode_tokens}
    gpu_ms = timing.kernel_ms(decode, device)
    if gpu_ms is not None:
        row["decode_kernel_ms_per_token"] = gpu_ms / decode_tokens
    if device.type == "cuda":
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _prefill_and_decode_graph(model, ids, segment, decode_tokens: int, device: torch.device, iters: int) -> dict:
    """Decode rate on the static cache, each token one replay of the captured step."""
    from gdn.models.generation import DecodeGraph

    batch, prompt_len = ids.shape
    _reset_peak(device)
    # Room for every decode round: the warm-up, the timed ones and the profiled one (kernel_ms).
    cache = model.allocate_static_cache(batch, prompt_len + decode_tokens * (max(1, iters // 2) + 2) + 1)
    row = _prefill_rate(partial(model.prefill_static, ids, cache, segment), batch, prompt_len, device, iters)
    token = model.prefill_static(ids, cache, segment).argmax(-1)
    step = DecodeGraph(model, cache, use_graph=True)

    def decode():
        tok = token
        for _ in range(decode_tokens):
            tok = step(tok).argmax(-1)

    row.update(_decode_rate(decode, batch, decode_tokens, device, iters), cache_gb=cache.nbytes() / 2**30,
               decode_weight_copies_gb=cache.weights_nbytes() / 2**30, status="ok")
    if step.fallback_reason:
        _add_note(row, step.fallback_reason)
    return row


def _prefill_and_decode(model, ids, segment, decode_tokens: int, device: torch.device, iters: int) -> dict:
    batch, prompt_len = ids.shape
    row = _prefill_rate(partial(model.prefill, ids, segment), batch, prompt_len, device, iters)
    _reset_peak(device)
    logits, caches = model.prefill(ids, segment)
    token = logits.argmax(-1)
    row["cache_gb_after_prompt"] = _cache_bytes(caches) / 2**30

    def decode():
        nonlocal logits, caches
        tok = token
        for _ in range(decode_tokens):
            logits, caches = model.decode_step(tok, caches)
            tok = logits.argmax(-1)

    row.update(_decode_rate(decode, batch, decode_tokens, device, iters))
    row["cache_gb_after_decode"] = _cache_bytes(caches) / 2**30
    row["status"] = "ok"
    return row
