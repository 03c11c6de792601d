"""Gated DeltaNet language model.

Per layer: q, k, v, g (output gate), a (decay logit), b (write-strength logit) projections;
a causal depthwise short convolution (kernel 4) with SiLU on q, k, v; L2-normalized q, k;
decay g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b); the gated delta rule;
a gated RMSNorm on the output and o_proj. The recurrence itself lives in `gdn_kernels`,
which picks the Triton kernels on CUDA and the PyTorch chunked form on the CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from gdn_kernels import gated_delta_decode_fused, gated_delta_rule, gated_delta_rule_step, short_conv_silu
from gdn_kernels.reference import short_conv as short_conv_reference

from gdn.models.base import CausalLMBase
from gdn.models.configuration import GatedDeltaNetLMConfig
from gdn.models.layers import GatedRMSNorm, ScaledLinear

# The recurrence is hand-written Triton (or the PyTorch chunked form on the CPU): torch.compile
# leaves it out of its graphs and compiles what surrounds it.
_chunked_rule = torch.compiler.disable(gated_delta_rule)
_decode_rule = torch.compiler.disable(gated_delta_rule_step)
_fused_short_conv = torch.compiler.disable(short_conv_silu)


class ShortConv(nn.Module):
    """Causal depthwise convolution followed by SiLU; keeps its last inputs as decode state.

    Written as a sum of shifted products in the [B, T, C] layout rather than nn.Conv1d: no
    transposes to channels-first and back, float32 accumulation, and under torch.compile the
    whole thing (pad, taps, SiLU, cast) is one kernel each way. The weight keeps nn.Conv1d's
    [C, 1, kernel] layout and name, so checkpoints are unchanged.
    """

    def __init__(self, channels: int, kernel_size: int, backend: str = "torch"):
        super().__init__()
        self.kernel_size = kernel_size
        self.backend = backend
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=False)

    def forward(self, x, tail=None):
        """x: [B, T, C]; tail: [B, C, kernel-1] inputs preceding x (None: zeros). Returns (y, new tail)."""
        if self.backend == "triton":  # the fused kernels: only x and the weight are kept for backward
            return _fused_short_conv(x, self.conv.weight, None if tail is None else tail.to(x.dtype), backend="triton")
        # The arithmetic lives with the kernels (gdn_kernels.reference.short_conv): products of
        # input-dtype slices and the float32 weight, then a sum per tap (not addcmul_, whose fused
        # rounding changed training numerics), so autograd keeps only views of the padded input.
        return short_conv_reference(x, self.conv.weight, tail)


class GatedDeltaNetMixer(nn.Module):
    def __init__(self, config: GatedDeltaNetLMConfig):
        super().__init__()
        d, H = config.d_model, config.n_heads
        self.n_heads, self.head_k_dim, self.head_v_dim = H, config.head_dim, config.head_v_dim
        key_dim, value_dim = H * config.head_dim, H * config.head_v_dim
        self.query_scale = config.query_scale
        self.backend = config.kernel_backend
        self.recompute_states = getattr(config, "recompute_states", False)  # configs saved before it: False
        self.q_proj = nn.Linear(d, key_dim, bias=False)
        self.k_proj = nn.Linear(d, key_dim, bias=False)
        self.v_proj = nn.Linear(d, value_dim, bias=False)
        self.g_proj = nn.Linear(d, value_dim, bias=False)
        # Gate-logit projections: their multipliers carry the gating normalization.
        self.a_proj = ScaledLinear(d, H, config.multiplier("a_proj"))
        self.b_proj = ScaledLinear(d, H, config.multiplier("b_proj"))
        conv_backend = getattr(config, "conv_backend", "torch")  # configs saved before it existed: torch
        self.q_conv = ShortConv(key_dim, config.conv_size, conv_backend)
        self.k_conv = ShortConv(key_dim, config.conv_size, conv_backend)
        self.v_conv = ShortConv(value_dim, config.conv_size, conv_backend)
        self.A_log = nn.Parameter(torch.empty(H, dtype=torch.float32))
        self.dt_bias = nn.Parameter(torch.empty(H, dtype=torch.float32))
        self.o_norm = GatedRMSNorm(config.head_v_dim, config.norm_eps)
        self.o_proj = nn.Linear(value_dim, d, bias=False)
        # Identity taps so the coordinate check can hook intermediate activations by name.
        self.tap_a, self.tap_b, self.tap_state = nn.Identity(), nn.Identity(), nn.Identity()
        self.record_state = False
        self.reset_gate_parameters()

    @torch.no_grad()
    def reset_gate_parameters(self, generator: torch.Generator | None = None):
        """A ~ U(1, 16); dt log-uniform in [1e-3, 1e-1], dt_bias = softplus^-1(dt). Sampled in fp32."""
        H = self.n_heads
        A = torch.empty(H, dtype=torch.float32).uniform_(1.0, 16.0, generator=generator)
        u = torch.rand(H, dtype=torch.float32, generator=generator)
        dt = torch.exp(u * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3)).clamp_min(1e-4)
        self.A_log.copy_(A.log())
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x, cache=None):
        B, T, _ = x.shape
        H, K, V = self.n_heads, self.head_k_dim, self.head_v_dim
        tails = cache.get("conv") if cache else None
        q, tq = self.q_conv(self.q_proj(x), None if tails is None else tails[0])
        k, tk = self.k_conv(self.k_proj(x), None if tails is None else tails[1])
        v, tv = self.v_conv(self.v_proj(x), None if tails is None else tails[2])
        q, k, v = q.view(B, T, H, K), k.view(B, T, H, K), v.view(B, T, H, V)
        # Raw gate logits; their width multipliers are applied inside the fused gate of the kernel.
        a, b = F.linear(x, self.a_proj.weight), F.linear(x, self.b_proj.weight)
        a_scale, b_scale = self.a_proj.multiplier, self.b_proj.multiplier
        if self.tap_a._forward_hooks or self.tap_b._forward_hooks:
            self.tap_a(a * a_scale), self.tap_b(b * b_scale)
        rule_kwargs = dict(scale=self.query_scale, a_scale=a_scale, b_scale=b_scale, backend=self.backend)
        state = cache.get("state") if cache else None
        new_cache = None
        if cache is not None and state is not None and T == 1:
            o, state = _decode_rule(
                q[:, 0], k[:, 0], v[:, 0], a[:, 0], b[:, 0], self.A_log, self.dt_bias, state, **rule_kwargs
            )
            o = o[:, None]
        else:
            want_state = cache is not None or self.record_state
            o, state = _chunked_rule(
                q, k, v, a, b, self.A_log, self.dt_bias,
                initial_state=state, output_final_state=want_state, recompute_states=self.recompute_states,
                **rule_kwargs,
            )
        if state is not None:
            state = self.tap_state(state)
        if cache is not None:
            new_cache = {"conv": (tq, tk, tv), "state": state}
        gate = self.g_proj(x).view(B, T, H, V)
        o = self.o_norm(o, gate).reshape(B, T, H * V)
        return self.o_proj(o), new_cache


    # Static cache (gdn.models.generation): the recurrent state and the three convolution tails,
    # updated in place by one fused kernel call per layer and token.

    def allocate_static(self, batch: int, max_len: int, device, dtype) -> dict:
        H, K, V = self.n_heads, self.head_k_dim, self.head_v_dim
        width = self.q_conv.kernel_size - 1
        return {
            "state": torch.zeros(batch, H, K, V, device=device, dtype=torch.float32),
            "tail_q": torch.zeros(batch, width, H * K, device=device, dtype=dtype),
            "tail_k": torch.zeros(batch, width, H * K, device=device, dtype=dtype),
            "tail_v": torch.zeros(batch, width, H * V, device=device, dtype=dtype),
        }

    def load_static(self, static: dict, dynamic: dict, length: int) -> None:
        static["state"].copy_(dynamic["state"])
        for name, tail in zip(("tail_q", "tail_k", "tail_v"), dynamic["conv"], strict=True):
            static[name].copy_(tail.transpose(1, 2))  # the chunked path keeps tails as [B, C, width]

    def decode_input_weight(self) -> torch.Tensor:
        """q, k, v, g and the raw gate-logit weights a, b stacked: one product per decoded token."""
        return torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.g_proj.weight,
                          self.a_proj.weight, self.b_proj.weight])

    def static_step(self, x, layer: dict, w_in):
        """x [B, d]: the stacked projections (w_in, decode_input_weight), then convolutions, gates, the
        delta rule and the gated norm in one fused call that updates the layer's state and tails in place.
        Returns [B, d]."""
        HK, HV, H = self.n_heads * self.head_k_dim, self.n_heads * self.head_v_dim, self.n_heads
        x_q, x_k, x_v, gate, a, b = F.linear(x, w_in).split([HK, HK, HV, HV, H, H], dim=-1)
        o = gated_delta_decode_fused(
            x_q, x_k, x_v, self.q_conv.conv.weight, self.k_conv.conv.weight, self.v_conv.conv.weight,
            layer["tail_q"], layer["tail_k"], layer["tail_v"], a, b, self.A_log, self.dt_bias,
            layer["state"], gate, self.o_norm.weight,
            n_heads=self.n_heads, scale=self.query_scale, a_scale=self.a_proj.multiplier,
            b_scale=self.b_proj.multiplier, norm_eps=self.o_norm.eps, backend=self.backend,
        )
        return self.o_proj(o)


class GatedDeltaNetLM(CausalLMBase):
    config_class = GatedDeltaNetLMConfig
    supports_segmented_prefill = True  # the recurrent state and the convolution tails carry over

    def make_mixer(self, config, layer_idx):
        return GatedDeltaNetMixer(config)
