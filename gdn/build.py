"""From (architecture spec, variant, width) to an initialized model and its μP bookkeeping.

The architecture spec is the tier config's `model` section (see config/config.yaml).
Widening is either by heads at fixed head dim (`width_mode: heads`) or by head dim at a
fixed head count (`width_mode: head_dim`); both families follow the same mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdn import parametrization as P
from gdn.models import FAMILIES

READOUT_PAD_MULTIPLE = 64


def shape_for_width(spec: dict, family: str, width: int) -> dict:
    """Head count, head dims and MLP width of `family` at model width `width`."""
    mode = spec["width_mode"]
    if mode == "head_dim":
        n_heads = spec["n_heads"]
        if width % n_heads:
            raise ValueError(f"width {width} is not divisible by model.n_heads={n_heads} (width_mode: head_dim)")
        head_dim = width // n_heads
    elif mode == "heads":
        head_dim = spec["head_dim"]
        if width % head_dim:
            raise ValueError(f"width {width} is not divisible by model.head_dim={head_dim} (width_mode: heads)")
        n_heads = width // head_dim
    else:
        raise ValueError(f"model.width_mode must be 'heads' or 'head_dim', got {mode!r}")
    shape = {
        "d_model": width,
        "n_layers": spec["n_layers"],
        "n_heads": n_heads,
        "head_dim": head_dim,
        # A multiple of 8: bf16 GEMM dimensions off 16-byte alignment fall back to slow kernels.
        "mlp_hidden": max(8, 8 * round(spec["mlp_ratio"][family] * width / 8)),
        "max_position_embeddings": spec.get("max_position_embeddings", 4096),
        "readout_pad_multiple": READOUT_PAD_MULTIPLE,
    }
    if family == "gdn":
        shape["head_v_dim"] = int(spec.get("gdn_expand_v", 1) * head_dim)
    return shape


@dataclass
class BuiltModel:
    model: torch.nn.Module
    infos: dict
    variant: P.Variant
    width: int


def _meta_shapes(family: str, config_kwargs: dict) -> dict:
    config_cls, model_cls = FAMILIES[family]
    with torch.device("meta"):
        model = model_cls(config_cls(**config_kwargs))
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def model_config(spec: dict, variant_name: str, width: int, vocab_size: int, multipliers: dict | None = None):
    variant = _variant(variant_name)
    config_cls, _ = FAMILIES[variant.family]
    shape = shape_for_width(spec, variant.family, width)
    base = shape_for_width(spec, variant.family, spec["base_width"])
    kwargs = dict(shape, vocab_size=vocab_size, parametrization=variant.parametrization)
    if multipliers is not None:
        kwargs["multipliers"] = multipliers
    if variant.family == "transformer":
        kwargs["attn_logit_scale"] = P.attention_logit_scale(
            variant.parametrization, shape["head_dim"], base["head_dim"])
    else:
        kwargs["query_scale"] = P.gdn_query_scale(variant.parametrization, shape["head_dim"], base["head_dim"])
        kwargs["kernel_backend"] = spec.get("kernel_backend", "auto")
        kwargs["conv_backend"] = spec.get("conv_backend", "torch")
        kwargs["recompute_states"] = spec.get("recompute_states", False)
    return config_cls(**kwargs)


def _variant(name: str) -> P.Variant:
    if name not in P.VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known variants: {sorted(P.VARIANTS)}")
    return P.VARIANTS[name]


def build_model(spec: dict, variant_name: str, width: int, vocab_size: int, seed: int,
                device: torch.device | str = "cpu", exact_init: bool = True) -> BuiltModel:
    """`exact_init=False` (benchmarks only) draws the same per-role stds on `device` directly,
    without the seeded CPU generator: much faster for billion-parameter models, not reproducible."""
    variant = _variant(variant_name)
    family = variant.family
    base_width = spec["base_width"]
    base_kwargs = dict(shape_for_width(spec, family, base_width), vocab_size=vocab_size)
    wider_kwargs = dict(shape_for_width(spec, family, 2 * base_width), vocab_size=vocab_size)
    base_shapes, wider_shapes = _meta_shapes(family, base_kwargs), _meta_shapes(family, wider_kwargs)

    # Classify on a meta model at the target width, then build the real one with its multipliers.
    probe_cfg = model_config(spec, variant_name, width, vocab_size)
    with torch.device("meta"):
        probe = FAMILIES[family][1](probe_cfg)
    infos = P.classify(probe, base_shapes, wider_shapes, variant.parametrization)
    multipliers = P.module_multipliers(infos, spec.get("input_multiplier", 1.0), spec.get("output_multiplier", 1.0))
    config = model_config(spec, variant_name, width, vocab_size, multipliers)
    readout_zero = spec.get("readout_zero_init", True) and variant.parametrization != "sp"
    if exact_init:
        model = FAMILIES[family][1](config)
        P.initialize(model, infos, spec["init_std"], readout_zero, seed, spec.get("gate_init_std"))
    else:
        with torch.device(device):
            model = FAMILIES[family][1](config)
        P.initialize_on_device(model, infos, spec["init_std"], readout_zero, spec.get("gate_init_std"))
    return BuiltModel(model=model, infos=infos, variant=variant, width=width)


# ---------------------------------------------------------------- CLI: python -m gdn params


def parameter_table(spec: dict, variants: list[str], widths: list[int], vocab_size: int) -> list[dict]:
    """Total and non-embedding parameter counts, built on the meta device (no memory, no init)."""
    rows = []
    for variant_name in variants:
        for width in widths:
            family = _variant(variant_name).family
            config = model_config(spec, variant_name, width, vocab_size)
            with torch.device("meta"):
                model = FAMILIES[family][1](config)
            rows.append({"variant": variant_name, "width": width, **model.num_parameters_split()})
    return rows


def add_arguments(parser) -> None:
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="default: tokenizer.vocab_size for a trained tokenizer, 50257 for GPT-2")


def run(args) -> int:
    from gdn import config as gdn_config

    config = gdn_config.load(args.configfile)
    tok = config["tokenizer"]
    vocab = args.vocab_size or (tok.get("vocab_size", 4096) if tok["kind"] == "trained_bpe" else 50257)
    print(f"{'variant':<16} {'width':>6} {'total':>14} {'non-embedding':>14}   (vocab {vocab})")
    for row in parameter_table(config["model"], config["variants"], config["grid"]["widths"], vocab):
        print(f"{row['variant']:<16} {row['width']:>6} {row['total']:>14,} {row['non_embedding']:>14,}")
    return 0
