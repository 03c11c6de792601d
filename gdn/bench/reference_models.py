"""Outside reference models for the throughput suite, built at one of our named shapes.

`fla_gdn` is flash-linear-attention's GatedDeltaNetForCausalLM (its fused norm, SwiGLU and
cross-entropy on, as fla ships it) with our GDN's shape: width, layers, heads, head dims,
MLP width and vocabulary. It needs the `flash-linear-attention` package; without it the
throughput rows for `fla_gdn` are recorded as skipped, with the reason.
"""

from __future__ import annotations

import torch
from gdn_kernels import fla_reference

from gdn.build import shape_for_width

REFERENCES = ("fla_gdn",)


def is_reference(variant: str) -> bool:
    return variant in REFERENCES


def build(shape: dict, variant: str, vocab_size: int, device: torch.device):
    """(model in float32 on `device`, note) or (None, why not)."""
    if variant != "fla_gdn":
        raise ValueError(f"unknown reference model {variant!r}; known: {REFERENCES}")
    fla, note = fla_reference.load()
    if fla is None:
        return None, note
    if device.type != "cuda":
        return None, "fla's kernels need a CUDA GPU"
    from fla.models import GatedDeltaNetForCausalLM

    model = GatedDeltaNetForCausalLM(fla_gdn_config(shape, vocab_size, use_cache=False)).to(device)
    return model, note or f"fla {fla.__version__} GatedDeltaNetForCausalLM"


def fla_gdn_config(shape: dict, vocab_size: int, n_layers: int | None = None, **extra):
    """fla's GatedDeltaNetConfig with our GDN's shape at `shape` (width, layers, heads, head dims,
    MLP width, vocabulary); `extra` sets fla's own keys (use_cache, pad_token_id)."""
    from fla.models import GatedDeltaNetConfig

    spec = {k: v for k, v in shape.items() if k not in ("name", "width")}
    ours = shape_for_width(spec, "gdn", shape["width"])
    keys = dict(
        hidden_size=ours["d_model"], num_hidden_layers=n_layers or ours["n_layers"], num_heads=ours["n_heads"],
        head_dim=ours["head_dim"], expand_v=ours["head_v_dim"] / ours["head_dim"],
        intermediate_size=ours["mlp_hidden"], vocab_size=vocab_size, conv_size=4,
        max_position_embeddings=ours["max_position_embeddings"],
    )
    return GatedDeltaNetConfig(**{**keys, **extra})
