"""Gated delta rule operators: Triton kernels for CUDA, PyTorch references beside them.

Import name `gdn_kernels` (the folder is `kernels/`): Hugging Face owns the `kernels`
import name and transformers probes for it.
"""

from gdn_kernels.api import (
    add_rms_norm,
    decode_attention,
    gated_delta_decode_fused,
    gated_delta_rule,
    gated_delta_rule_step,
    rope_kv_write,
    short_conv_silu,
    silu_mul,
)

__all__ = ["add_rms_norm", "decode_attention", "gated_delta_decode_fused", "gated_delta_rule", "gated_delta_rule_step",
           "rope_kv_write", "short_conv_silu", "silu_mul"]
