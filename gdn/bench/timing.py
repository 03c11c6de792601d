"""Timing that survives asynchronous GPUs: CUDA events on the device, perf_counter on the CPU,
warm-up first, many repetitions, medians with their spread, candidates interleaved so that
clock and thermal drift hit every candidate alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds for one call."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def summarize(samples: list[float]) -> dict:
    ordered = sorted(samples)
    n = len(ordered)
    return {"median_ms": statistics.median(ordered), "p10_ms": ordered[int(0.1 * (n - 1))],
            "p90_ms": ordered[int(0.9 * (n - 1))], "n": n}


def interleaved(candidates: dict[str, Callable[[], object]], device: torch.device, iters: int,
                warmup: int = 3) -> dict[str, dict]:
    """Times every candidate `iters` times, rotating the order each round."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(iters):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            samples[name].append(_time_once(candidates[name], device))
    return {name: summarize(s) for name, s in samples.items()}


def kernel_ms(fn: Callable[[], object], device: torch.device) -> float | None:
    """Milliseconds the GPU spends in the kernels one call of `fn` launches (torch.profiler,
    kernel records only), None off CUDA. Against the wall time it tells how much of a step is
    the host's: launching many small kernels one by one, as eager decoding does."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    return sum(e.self_device_time_total for e in prof.key_averages()
               if e.device_type == torch.autograd.DeviceType.CUDA) / 1e3
