"""Building blocks shared by both families."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x * rsqrt(mean(x^2) + eps) * weight in float32; F.rms_norm is one fused kernel on CUDA
        # where the spelled-out form launches six (it matters when decoding one token at a time).
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """RMSNorm of the mixer output, then multiplied by silu(gate) (GDN's output gate)."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if torch.is_grad_enabled() and (x.requires_grad or gate.requires_grad or self.weight.requires_grad):
            return _GatedRMSNormFunction.apply(x, gate, self.weight, self.eps)
        return _gated_rms_norm(x, gate, self.weight, self.eps)


def _gated_rms_norm(x, gate, weight, eps):
    # The normalized product is rounded to x's dtype before the gate multiplies it (as RMSNorm returns it).
    normed = F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)
    return (normed.float() * F.silu(gate.float())).to(x.dtype)


class _GatedRMSNormFunction(torch.autograd.Function):
    """The gated norm with a hand-written backward that keeps only x, the gate and the per-row 1/rms.

    Autograd through the float32 form keeps five float32 copies of the activation per layer (the
    largest item of GDN's saved activations: docs/activation-memory.md); backward recomputes them
    instead. The forward is the same computation as `_gated_rms_norm`, to the bit; the gradients
    differ from autograd's only by rounding (autograd rounds one intermediate gradient to x's dtype
    where this stays in float32).
    """

    @staticmethod
    def forward(ctx, x, gate, weight, eps):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, gate, weight, rstd)
        return _gated_rms_norm(x, gate, weight, eps)

    @staticmethod
    def backward(ctx, dy):
        x, gate, weight, rstd = ctx.saved_tensors
        gf, dyf, w = gate.float(), dy.float(), weight.float()
        x_hat = x.float() * rstd
        sig = torch.sigmoid(gf)
        d_normed = dyf * gf * sig  # through the product with silu(gate)
        d_weight = (d_normed * x_hat).reshape(-1, x.shape[-1]).sum(0)
        d_xhat = d_normed * w
        dx = rstd * (d_xhat - x_hat * (d_xhat * x_hat).mean(-1, keepdim=True))
        d_gate = dyf * (x_hat * w) * sig * (1 + gf * (1 - sig))  # silu'(g) = sig (1 + g (1 - sig))
        return dx.to(x.dtype), d_gate.to(gate.dtype), d_weight.to(weight.dtype), None


class ScaledLinear(nn.Linear):
    """A bias-free linear layer whose output is multiplied by a fixed width multiplier.

    The multiplier is what μP's readout and gating-normalization rules set; under SP it is 1.
    """

    def __init__(self, in_features: int, out_features: int, multiplier: float = 1.0):
        super().__init__(in_features, out_features, bias=False)
        self.multiplier = multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y * self.multiplier if self.multiplier != 1.0 else y


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ScaledEmbedding(nn.Embedding):
    """Token embedding with μP's input multiplier alpha_in (1 under SP)."""

    def __init__(self, num_embeddings: int, dim: int, multiplier: float = 1.0):
        super().__init__(num_embeddings, dim)
        self.multiplier = multiplier

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y = super().forward(ids)
        return y * self.multiplier if self.multiplier != 1.0 else y


def rotary_tables(seq_len: int, dim: int, theta: float, device, dtype=torch.float32):
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    return freqs.cos().to(dtype), freqs.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [T, D/2] (rotate-half convention)."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    cos, sin = cos[None, None], sin[None, None]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
