"""Where one decode step's time goes: wall time per token against the GPU time its kernels
take, the kernel launches per token, and the top operators by CPU and by GPU time. A step
whose wall time is far above its GPU time is bound by the host (launches, Python).

    python scripts/profile_decode.py --config config/study.yaml --shape 1B \
        --variants transformer_mup gdn_mup [--prompt 16384] [--batch 1] [--steps 8] [--path graph]

`--path graph` profiles the static-cache step (gdn.models.generation) the same way, run eagerly:
its kernels per token are what one CUDA-graph replay launches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "kernels")]

from gdn.bench import shapes  # noqa: E402


def decode_step_fn(model, ids, path: str, room: int):
    """Prefills `ids` and returns a function that decodes one more token on the chosen path."""
    if path == "graph":
        cache = model.allocate_static_cache(ids.shape[0], ids.shape[1] + room)
        token = model.prefill_static(ids, cache).argmax(-1)
        return lambda: model.static_decode_step(token, cache)
    logits, caches = model.prefill(ids)
    state = {"caches": caches, "token": logits.argmax(-1)}

    def step():
        out, state["caches"] = model.decode_step(state["token"], state["caches"])
        return out

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shapes.shape_arguments(parser)
    parser.add_argument("--prompt", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--path", choices=["eager", "graph"], default="eager",
                        help="eager: the growing cache; graph: the static-cache step (profiled without the graph)")
    args = parser.parse_args()
    shape, bench = shapes.named_shape(args.config, args.shape)
    device = torch.device("cuda")
    vocab = bench.get("vocab_size", 50257)
    for variant in args.variants:
        model = shapes.build(shape, variant, vocab, device, torch.bfloat16).eval()
        ids = torch.randint(0, vocab, (args.batch, args.prompt), device=device)
        with torch.no_grad():
            step = decode_step_fn(model, ids, args.path, room=2 * args.steps + 4)
            for _ in range(3):  # warm-up (allocator, kernel compiles)
                step()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            torch.cuda.synchronize()
            wall_ms = (time.perf_counter() - start) * 1e3 / args.steps
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(args.steps):
                    step()
                torch.cuda.synchronize()
        events = prof.key_averages()
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        gpu_ms = sum(e.self_device_time_total for e in kernels) / 1e3 / args.steps
        launches = sum(e.count for e in kernels) / args.steps
        print(f"\n=== {variant} ({args.path}) at {args.shape}, batch {args.batch}, after {args.prompt} tokens: "
              f"{wall_ms:.2f} ms wall per token, {gpu_ms:.2f} ms of GPU kernels, {launches:.0f} kernels per token ===")
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
        print(events.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=60))
        del model, step
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
