"""Model shapes for benchmarks: a named shape is a model spec (as in a tier's `model` section)
plus the width it is built at. Named scales are defined in the tier configs (`bench.shapes`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from gdn.build import build_model


def build(shape: dict, variant: str, vocab_size: int, device: torch.device, dtype: torch.dtype):
    """Random-weight model for timing (the parametrization's init; weights do not matter for speed)."""
    spec = {k: v for k, v in shape.items() if k not in ("name", "width", "vocab_size")}
    spec.setdefault("base_width", shape["width"])
    spec.setdefault("init_std", 0.02)
    model = build_model(spec, variant, shape["width"], vocab_size, seed=0, device=device, exact_init=False).model
    return model.to(device=device, dtype=dtype)


def parameter_counts(model) -> dict:
    """Total and non-embedding parameters (the input embedding is the one left out). Our models
    count themselves (the readout's alignment-padding rows never act and are not counted); an
    outside reference model (fla's) is counted parameter by parameter."""
    if hasattr(model, "num_parameters_split"):
        return model.num_parameters_split()
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "non_embedding": total - model.get_input_embeddings().weight.numel()}


def shape_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --shape and --variants, as the profiling scripts take them."""
    parser.add_argument("--config", required=True, type=Path, help="tier config whose bench.shapes names the shape")
    parser.add_argument("--shape", required=True, help="a name under bench.shapes, e.g. 125M or 1B")
    parser.add_argument("--variants", nargs="+", required=True)


def named_shape(config_path: Path, name: str) -> tuple[dict, dict]:
    """(the named bench shape with its name, the config's whole bench section)."""
    bench = (yaml.safe_load(Path(config_path).read_text()) or {}).get("bench") or {}
    shapes = bench.get("shapes") or {}
    if name not in shapes:
        raise SystemExit(f"{config_path}: bench.shapes has no {name!r} (it has {sorted(shapes)})")
    return {"name": name, **shapes[name]}, bench
