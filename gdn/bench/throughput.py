"""Training throughput: tokens/s, model FLOPs utilisation and peak memory per variant.

One optimizer step = forward + backward (bf16 autocast on CUDA) + fused AdamW.
FLOPs per token (stated in the output): 6 * N_matmul (every weight matrix, the readout
included, forward and backward) plus the sequence mixer's own work:
  attention: 12 * n_layers * d_attn * T / 2   (causal; PaLM's 12*L*d*T halved for the mask)
  gated delta rule (chunk C=64): 3 * n_layers * H * (4*K*V + 2*C*(K + V))   per token
MFU = achieved FLOP/s / the card's dense bf16 peak (datasheet).
"""

from __future__ import annotations

import torch

from gdn.bench import shapes, timing

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
CHUNK = 64


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def flops_per_token(model, seq_len: int) -> float:
    cfg = model.config
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith("embed"))
    if cfg.model_type.endswith("transformer"):
        mixer = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len / 2
    else:
        K, V, H = cfg.head_dim, cfg.head_v_dim, cfg.n_heads
        mixer = 3 * cfg.n_layers * H * (4 * K * V + 2 * CHUNK * (K + V))
    return 6 * matmul + mixer


def _train_step(model, optimizer, ids, device):
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(shape: dict, variants: list[str], seq_len: int, tokens_per_step: int, device: torch.device,
            iters: int, vocab_size: int) -> list[dict]:
    batch = max(1, tokens_per_step // seq_len)
    rows = []
    for variant in variants:
        model = shapes.build(shape, variant, vocab_size, device, torch.float32)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        ids = torch.randint(0, vocab_size, (batch, seq_len), device=device)
        step = _train_step(model, opt, ids, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stats = timing.interleaved({variant: step}, device, iters, warmup=2)[variant]
        tok_s = batch * seq_len / (stats["median_ms"] / 1e3)
        fpt = flops_per_token(model, seq_len)
        peak = peak_flops(device)
        rows.append({"suite": "throughput", "shape": shape["name"], "variant": variant, "batch": batch,
                     "seq_len": seq_len, **stats, "tokens_per_s": tok_s, "flops_per_token": fpt,
                     "mfu": tok_s * fpt / peak if peak else None,
                     "peak_memory_gb": (torch.cuda.max_memory_allocated(device) / 2**30
                                        if device.type == "cuda" else None),
                     **{f"params_{k}": v for k, v in shapes.parameter_counts(model).items()}})
        del model, opt, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows
