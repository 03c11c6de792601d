"""Where one training step's GPU time goes: torch.profiler's per-kernel table for one
forward + backward + AdamW step of each named variant at a bench shape.

    python scripts/profile_train_step.py --config config/study.yaml --shape 125M \
        --variants transformer_mup gdn_mup [--seq-len 2048] [--compile]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "kernels")]

from gdn.bench import shapes, throughput  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shapes.shape_arguments(parser)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--tokens-per-step", type=int, default=16384)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    shape, bench = shapes.named_shape(args.config, args.shape)
    device = torch.device("cuda")
    batch = max(1, shape.get("tokens_per_step", args.tokens_per_step) // args.seq_len)
    for variant in args.variants:
        model, note = throughput.build_for_timing(shape, variant, bench.get("vocab_size", 50257), device, args.compile)
        if model is None:
            print(f"{variant}: skipped ({note})")
            continue
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        ids = torch.randint(0, model.config.vocab_size, (batch, args.seq_len), device=device)
        step = throughput.train_step(model, opt, ids, device)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        total_ms = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / 3
        print(f"\n=== {variant} at {args.shape}, B={batch} T={args.seq_len}, compiled={args.compile}"
              f" ({note or 'ours'}): {total_ms:.1f} ms GPU time per step ===")
        table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=args.rows,
                                          max_name_column_width=70)
        print(table)
        del model, opt, step
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
