"""Model shapes for benchmarks: a named shape is a model spec (as in a tier's `model` section)
plus the width it is built at. Named scales are defined in the tier configs (`bench.shapes`)."""

from __future__ import annotations

import torch

from gdn.build import build_model


def build(shape: dict, variant: str, vocab_size: int, device: torch.device, dtype: torch.dtype):
    """Random-weight model for timing (the parametrization's init; weights do not matter for speed)."""
    spec = {k: v for k, v in shape.items() if k not in ("name", "width", "vocab_size")}
    spec.setdefault("base_width", shape["width"])
    spec.setdefault("init_std", 0.02)
    model = build_model(spec, variant, shape["width"], vocab_size, seed=0, device=device, exact_init=False).model
    return model.to(device=device, dtype=dtype)


def parameter_counts(model) -> dict:
    """Total and non-embedding parameters (the input embedding is the one left out)."""
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "non_embedding": total - model.get_input_embeddings().weight.numel()}
