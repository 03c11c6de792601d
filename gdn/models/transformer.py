"""Llama-style Transformer: RMSNorm, RoPE, SwiGLU, SDPA attention."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from gdn_kernels import decode_attention, rope_kv_write

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

    def forward(self, x, cache=None, rope=None):
        """rope: (cos, sin) float32 [T, head_dim / 2] for this call's positions (the model computes
        them once per forward for all layers)."""
        B, T, _ = x.shape
        q, k, v = (
            proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        past = cache["len"] if cache else 0
        if past and T > 1:
            raise ValueError("chunked prefill after a cache is not supported; prefill once, then decode")
        if rope is None:
            rope = rotary_tables(past + T, self.head_dim, self.rope_theta, x.device)
            rope = (rope[0][past:], rope[1][past:])
        cos, sin = rope[0].to(q.dtype), rope[1].to(q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        new_cache = None
        if cache is not None:
            new_cache = _append_to_cache(cache, k, v)
            k, v = new_cache["k"][:, :, : past + T], new_cache["v"][:, :, : past + T]
        # A single new token attends to everything before it: no mask needed.
        o = F.scaled_dot_product_attention(q, k, v, is_causal=past == 0, scale=self.scale)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1)), new_cache


    # Static cache (gdn.models.generation): K and V for the whole context, written at the position.

    def allocate_static(self, batch: int, max_len: int, device, dtype) -> dict:
        shape = (batch, self.n_heads, max_len, self.head_dim)
        return {name: torch.zeros(shape, device=device, dtype=dtype) for name in ("k", "v")}

    def load_static(self, static: dict, dynamic: dict, length: int) -> None:
        static["k"][:, :, :length] = dynamic["k"][:, :, :length]
        static["v"][:, :, :length] = dynamic["v"][:, :, :length]

    def decode_input_weight(self) -> torch.Tensor:
        """q, k and v weights stacked: one product per decoded token."""
        return torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])

    def static_step(self, x, layer: dict, w_in, rope_tables, pos):
        """x [B, d] at position `pos` (device tensor [1]). The rotated K and the V row are written at
        `pos` (gdn_kernels.rope_kv_write); attention reads rows 0..pos (gdn_kernels.decode_attention:
        on CUDA, split-KV kernels that read pos on the device, so a step reads only the rows written
        so far). Returns [B, d]."""
        cos, sin = rope_tables
        q = rope_kv_write(F.linear(x, w_in), cos, sin, pos, layer["k"], layer["v"])
        o = decode_attention(q, layer["k"], layer["v"], pos, scale=self.scale)
        return self.o_proj(o.reshape(x.shape[0], -1))


def _append_to_cache(cache: dict, k: torch.Tensor, v: torch.Tensor, reserve: int = 256) -> dict:
    """Writes k, v at the end of preallocated buffers (grown by doubling), so that a decode
    step copies one token, not the whole cache."""
    past, T = cache.get("len", 0), k.shape[2]
    buf_k = cache.get("k")
    if buf_k is None or past + T > buf_k.shape[2]:
        capacity = max(past + T + reserve, 2 * (0 if buf_k is None else buf_k.shape[2]))
        new_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
        new_v = v.new_empty(v.shape[0], v.shape[1], capacity, v.shape[3])
        if past:
            new_k[:, :, :past] = cache["k"][:, :, :past]
            new_v[:, :, :past] = cache["v"][:, :, :past]
        cache = {"k": new_k, "v": new_v, "len": past}
    cache["k"][:, :, past : past + T] = k
    cache["v"][:, :, past : past + T] = v
    return {"k": cache["k"], "v": cache["v"], "len": past + T}


class TransformerLM(CausalLMBase):
    config_class = TransformerLMConfig

    def make_mixer(self, config, layer_idx):
        return Attention(config)

    def static_tables(self, max_len: int, device) -> dict:
        cos, sin = rotary_tables(max_len, self.config.head_dim, self.config.rope_theta, device)
        return {"cos": cos, "sin": sin}

    def static_step_inputs(self, cache) -> dict:
        return {"rope_tables": (cache.shared["cos"], cache.shared["sin"]), "pos": cache.pos}

    def mixer_inputs(self, seq_len: int, caches) -> dict:
        past = caches[0].get("len", 0) if caches and caches[0] else 0
        cfg = self.config
        cos, sin = rotary_tables(past + seq_len, cfg.head_dim, cfg.rope_theta, self.embed.weight.device)
        return {"rope": (cos[past:], sin[past:])}
