"""Training throughput: tokens/s, model FLOPs utilisation and peak memory per variant.

One optimizer step = forward + backward (bf16 autocast on CUDA) + fused AdamW.
FLOPs per token (stated in the output): 6 * N_matmul (every weight matrix, the readout
included, forward and backward) plus the sequence mixer's own work:
  attention: 12 * n_layers * d_attn * T / 2   (causal; PaLM's 12*L*d*T halved for the mask)
  gated delta rule (chunk C=64): 3 * n_layers * H * (4*K*V + 2*C*(K + V))   per token
MFU = achieved FLOP/s / the card's dense bf16 peak (datasheet).

`gdn_options` times our GDN variants again with named changes (the fused short convolution,
recomputed states, the split chunk backward), each as a row of its own, `<variant>+<option>`,
side by side with the plain variant in the same run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json

import torch

from gdn.bench import reference_models, shapes, timing

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
CHUNK = 64


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def flops_per_token(model, seq_len: int) -> float:
    """Our models, or fla's GatedDeltaNetForCausalLM (the reference), by the formula above."""
    cfg = model.config
    embedding = model.get_input_embeddings().weight
    matmul = sum(p.numel() for p in model.parameters() if p.dim() == 2 and p is not embedding)
    layers = getattr(cfg, "n_layers", None) or cfg.num_hidden_layers
    if cfg.model_type.endswith("transformer"):
        mixer = 12 * layers * cfg.n_heads * cfg.head_dim * seq_len / 2
    else:
        H, K = getattr(cfg, "n_heads", None) or cfg.num_heads, cfg.head_dim
        V = getattr(cfg, "head_v_dim", None) or int(K * cfg.expand_v)
        mixer = 3 * layers * H * (4 * K * V + 2 * CHUNK * (K + V))
    return 6 * matmul + mixer


def train_step(model, optimizer, ids, device):
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# Option keys that change the model's build spec; `bwd_split` changes the kernels' launch settings.
MODEL_OPTIONS = ("conv_backend", "recompute_states")
LAUNCH_OPTIONS = ("bwd_split",)


def expand_variants(variants: list[str], gdn_options: dict | None) -> list[tuple[str, str, dict]]:
    """(row label, variant, option changes) for each variant, then each of our GDN variants again
    under every named option."""
    out = []
    for variant in variants:
        out.append((variant, variant, {}))
        if variant.startswith("gdn"):  # ours (the outside reference is fla_gdn)
            out += [(f"{variant}+{name}", variant, dict(change)) for name, change in (gdn_options or {}).items()]
    return out


@contextlib.contextmanager
def kernel_launch(options: dict):
    """The chunk kernels' launch settings with `options`' launch keys applied, restored after."""
    changes = {key: options[key] for key in LAUNCH_OPTIONS if key in options}
    if not changes:
        yield
        return
    from gdn_kernels import triton_ops

    before = triton_ops.LAUNCH
    triton_ops.LAUNCH = dataclasses.replace(before, **changes)
    try:
        yield
    finally:
        triton_ops.LAUNCH = before


def build_for_timing(shape: dict, variant: str, vocab_size: int, device: torch.device, compiled: bool,
                     options: dict | None = None):
    """(model, note): one of our variants, or an outside reference model (None if unavailable)."""
    if reference_models.is_reference(variant):
        model, note = reference_models.build(shape, variant, vocab_size, device)
        if model is not None and compiled:
            return None, "outside reference models are timed as shipped, not compiled"
        return model, note
    spec_changes = {key: value for key, value in (options or {}).items() if key in MODEL_OPTIONS}
    model = shapes.build(dict(shape, **spec_changes), variant, vocab_size, device, torch.float32)
    if compiled:
        model.compile_blocks()
    return model, None


def measure(shape: dict, variants: list[str], seq_len: int, tokens_per_step: int, device: torch.device,
            iters: int, vocab_size: int, compiled: bool = False, gdn_options: dict | None = None) -> list[dict]:
    tokens_per_step = shape.get("tokens_per_step", tokens_per_step)
    batch = max(1, tokens_per_step // seq_len)
    rows = []
    for label, variant, options in expand_variants(variants, gdn_options):
        base = {"suite": "throughput", "shape": shape["name"], "variant": label, "batch": batch,
                "seq_len": seq_len, "compiled": compiled}
        if options:  # a JSON string: one column type in the database whatever the option keys
            base["options"] = json.dumps(options, sort_keys=True)
        model, note = build_for_timing(shape, variant, vocab_size, device, compiled, options)
        if model is None:
            rows.append({**base, "status": "skipped", "note": note})
            continue
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        ids = torch.randint(0, vocab_size, (batch, seq_len), device=device)
        step = train_step(model, opt, ids, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            # Compilation happens in the first calls: three warm-up steps keep it out of the timing.
            with kernel_launch(options):
                stats = timing.interleaved({label: step}, device, iters, warmup=3)[label]
        except torch.OutOfMemoryError:
            rows.append({**base, "status": "out of memory", "note": note})
            del model, opt, step
            torch.cuda.empty_cache()
            continue
        tok_s = batch * seq_len / (stats["median_ms"] / 1e3)
        fpt = flops_per_token(model, seq_len)
        peak = peak_flops(device)
        rows.append({**base, "status": "measured", "note": note, **stats, "tokens_per_s": tok_s,
                     "flops_per_token": fpt, "mfu": tok_s * fpt / peak if peak else None,
                     "peak_memory_gb": (torch.cuda.max_memory_allocated(device) / 2**30
                                        if device.type == "cuda" else None),
                     **{f"params_{k}": v for k, v in shapes.parameter_counts(model).items()}})
        del model, opt, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows
