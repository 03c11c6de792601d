"""What gating normalization costs: forward time of gdn_mup vs gdn_mup_nogn vs gdn_sp.

The three variants share every shape; they differ only in the gate-logit multipliers
(1/sqrt(m), 1/m, 1), which the kernel applies inside its fused gate. Forward passes are
timed interleaved in one process; the overhead is median(variant) / median(gdn_sp) - 1.
"""

from __future__ import annotations

import torch

from gdn.bench import shapes, timing

VARIANTS = ("gdn_sp", "gdn_mup", "gdn_mup_nogn")


def measure(shape: dict, device: torch.device, dtype: torch.dtype, iters: int, vocab_size: int) -> list[dict]:
    batch, seq_len = shape["batch"], shape["seq_len"]
    models = {v: shapes.build(shape, v, vocab_size, device, dtype).eval() for v in VARIANTS}
    ids = torch.randint(0, vocab_size, (batch, seq_len), device=device)

    def forward(model):
        def call():
            with torch.no_grad():
                model(ids)
        return call

    results = timing.interleaved({v: forward(m) for v, m in models.items()}, device, iters)
    base = results["gdn_sp"]["median_ms"]
    rows = []
    for variant, stats in results.items():
        mixer = models[variant].blocks[0].mixer
        rows.append({"suite": "overhead", "shape": shape["name"], "variant": variant, "batch": batch,
                     "seq_len": seq_len, "dtype": str(dtype).removeprefix("torch."), **stats,
                     "ratio_vs_gdn_sp": stats["median_ms"] / base,
                     "a_multiplier": mixer.a_proj.multiplier, "b_multiplier": mixer.b_proj.multiplier,
                     **{f"params_{k}": v for k, v in shapes.parameter_counts(models[variant]).items()}})
    return rows
