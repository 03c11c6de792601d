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
        return (super().forward(x).float() * F.silu(gate.float())).to(x.dtype)


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
