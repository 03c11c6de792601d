"""Llama-style Transformer: RMSNorm, RoPE, SwiGLU, SDPA attention."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gdn.models.base import CausalLMBase
from gdn.models.configuration import TransformerLMConfig
from gdn.models.layers import apply_rotary, rotary_tables


class Attention(nn.Module):
    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        inner = config.n_heads * config.head_dim
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.scale = config.attn_logit_scale
        self.rope_theta = config.rope_theta
        self.q_proj = nn.Linear(config.d_model, inner, bias=False)
        self.k_proj = nn.Linear(config.d_model, inner, bias=False)
        self.v_proj = nn.Linear(config.d_model, inner, bias=False)
        self.o_proj = nn.Linear(inner, config.d_model, bias=False)

    def forward(self, x, cache=None):
        B, T, _ = x.shape
        q, k, v = (
            proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        past = 0 if not cache else cache["k"].shape[2]
        cos, sin = rotary_tables(past + T, self.head_dim, self.rope_theta, x.device, q.dtype)
        q, k = apply_rotary(q, cos[past:], sin[past:]), apply_rotary(k, cos[past:], sin[past:])
        new_cache = None
        if cache is not None:
            if cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            new_cache = {"k": k, "v": v}
        # With a cache and a single new token, that token attends to everything before it.
        causal = past == 0 or T > 1
        if past and T > 1:
            raise ValueError("chunked prefill after a cache is not supported; prefill once, then decode")
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=self.scale)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1)), new_cache


class TransformerLM(CausalLMBase):
    config_class = TransformerLMConfig

    def make_mixer(self, config, layer_idx):
        return Attention(config)
