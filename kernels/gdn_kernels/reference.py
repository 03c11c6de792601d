"""Pure-PyTorch gated delta rule: the step-by-step definition and the chunked form.

Layout follows flash-linear-attention: q, k are [B, T, H, K], v is [B, T, H, V],
the log-decay g and the write strength beta are [B, T, H]. The state S is [B, H, K, V].
Per step t (one head):

    S <- exp(g_t) * S
    u_t = beta_t * (v_t - S^T k_t)
    S <- S + k_t u_t^T
    o_t = S^T (scale * q_t)

`naive_recurrent` is that loop verbatim (float64 capable: it keeps the input dtype
when asked), the ground truth every faster path is checked against. `chunked` is
the WY-form chunk algorithm written with dense tensor ops; autograd differentiates
it, so it is the CPU training path and the reference for the Triton kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    compute_dtype: torch.dtype | None = None,
):
    """Token-by-token recurrence. Returns (o [B,T,H,V], final state [B,H,K,V] or None)."""
    dtype = compute_dtype or torch.promote_types(q.dtype, torch.float32)
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype).clone()
    outs = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]
        kt = k[:, t]
        u = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, kt))
        S = S + kt[..., :, None] * u[..., None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, V)
    return o, (S if output_final_state else None)


def _chunked_one_sequence(q, k, v, g, beta, scale, S, chunk_size):
    """q,k: [B,T,H,K] etc. in float32/64. Returns o [B,T,H,V] and the final state."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    pad = (-T) % C
    if pad:
        # Padding with g = 0, beta = 0, k = v = 0 leaves the state untouched.
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, 0, 0, pad)) for x in (g, beta))
    N = (T + pad) // C
    # -> [B, H, N, C, *]
    q, k, v = (x.reshape(B, N, C, H, -1).permute(0, 3, 1, 2, 4) for x in (q, k, v))
    g, beta = (x.reshape(B, N, C, H).permute(0, 3, 1, 2) for x in (g, beta))
    q = q * scale
    G = g.cumsum(-1)  # within-chunk cumulative log decay, decreasing
    diff = G[..., :, None] - G[..., None, :]  # G_i - G_j
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    strict = lower.clone().fill_diagonal_(False)
    decay_ij = torch.where(lower, diff, torch.full_like(diff, float("-inf"))).exp()
    k_beta = k * beta[..., None]
    # (I + A) with A_ij = beta_i k_i.k_j exp(G_i - G_j), i > j; its inverse gives the WY factors.
    A = (k_beta @ k.transpose(-1, -2)) * decay_ij * strict
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    Tinv = torch.linalg.solve_triangular(A + eye, eye.expand_as(A), upper=False, unitriangular=True)
    u = Tinv @ (v * beta[..., None])  # pseudo-values
    w = Tinv @ (k_beta * G.exp()[..., None])  # decayed keys that read the chunk-entry state
    qk = (q @ k.transpose(-1, -2)) * decay_ij  # causal intra-chunk scores, diagonal included
    outs = []
    for n in range(N):
        v_new = u[:, :, n] - w[:, :, n] @ S
        o_inter = (q[:, :, n] * G[:, :, n, :, None].exp()) @ S
        outs.append(o_inter + qk[:, :, n] @ v_new)
        G_last = G[:, :, n, -1]
        k_to_end = k[:, :, n] * (G_last[..., None] - G[:, :, n]).exp()[..., None]
        S = S * G_last.exp()[..., None, None] + k_to_end.transpose(-1, -2) @ v_new
    o = torch.stack(outs, dim=2)  # [B, H, N, C, V]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o, S


def chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
):
    """Chunked gated delta rule (differentiable by autograd).

    With `cu_seqlens` (int tensor [N+1] of offsets), B must be 1 and the N packed
    sequences are independent; `initial_state` is then [N, H, K, V].
    Returns (o in v's dtype, final state in float32/64 or None).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    dtype = torch.promote_types(q.dtype, torch.float32)
    q32, k32, v32, g32, b32 = (x.to(dtype) for x in (q, k, v, g, beta))
    if cu_seqlens is None:
        S0 = q32.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
        o, S = _chunked_one_sequence(q32, k32, v32, g32, b32, scale, S0, chunk_size)
        return o.to(v.dtype), (S if output_final_state else None)
    if B != 1:
        raise ValueError(f"cu_seqlens needs batch size 1 (sequences packed along T), got B={B}")
    bounds = cu_seqlens.tolist()
    n_seq = len(bounds) - 1
    outs, states = [], []
    for i in range(n_seq):
        s, e = bounds[i], bounds[i + 1]
        S0 = q32.new_zeros(1, H, K, V) if initial_state is None else initial_state[i : i + 1].to(dtype)
        o_i, S_i = _chunked_one_sequence(
            q32[:, s:e], k32[:, s:e], v32[:, s:e], g32[:, s:e], b32[:, s:e], scale, S0, chunk_size
        )
        outs.append(o_i)
        states.append(S_i)
    o = torch.cat(outs, dim=1)
    return o.to(v.dtype), (torch.cat(states, dim=0) if output_final_state else None)


def gate_from_logits(a, b, A_log, dt_bias, a_scale: float = 1.0, b_scale: float = 1.0):
    """Decay and write strength from raw gate logits (computed in float32).

    g = -exp(A_log) * softplus(a_scale * a + dt_bias),  beta = sigmoid(b_scale * b).
    a_scale, b_scale are the gating-normalization width factors (1 under SP).
    """
    a32 = a.float() * a_scale + dt_bias.float()
    g = -A_log.float().exp() * F.softplus(a32)
    beta = torch.sigmoid(b.float() * b_scale)
    return g, beta


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-head L2 normalization over the last dim, in float32 for stability."""
    x32 = x.float()
    return (x32 * torch.rsqrt((x32 * x32).sum(-1, keepdim=True) + eps)).to(x.dtype)


def short_conv(x: torch.Tensor, weight: torch.Tensor, tail: torch.Tensor | None = None):
    """Causal depthwise convolution + SiLU over a sequence, differentiable by autograd.

    x: [B, T, C]; weight: [C, 1, W]; tail: [B, C, W-1] inputs preceding x (None: zeros).
    Returns (y [B, T, C] in x's dtype, new tail [B, C, W-1]: the last W-1 inputs, a view).

    This is the model's own short convolution (gdn.models.gated_deltanet.ShortConv calls it on
    its "torch" backend) and the reference the fused kernels are checked against. The weight is
    promoted to at least float32, so a float64 weight stays float64 (gradient checks).
    """
    B, T, C = x.shape
    width = weight.shape[-1]
    before = x.new_zeros(B, width - 1, C) if tail is None else tail.transpose(1, 2).to(x.dtype)
    padded = torch.cat([before, x], dim=1)  # [B, T + width - 1, C]
    w = weight[:, 0, :].to(torch.promote_types(weight.dtype, torch.float32))  # [C, width]
    if T == 1:
        y = (padded * w.t()).sum(1, keepdim=True)
    else:
        # Product then sum per tap, not addcmul_: ShortConv's training numerics.
        y = padded[:, 0:T] * w[:, 0]
        for i in range(1, width):
            y = y + padded[:, i : i + T] * w[:, i]
    return F.silu(y).to(x.dtype), padded[:, T:].transpose(1, 2)


def short_conv_step(x: torch.Tensor, weight: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """One token of the causal depthwise convolution followed by SiLU, in float32.

    x: [B, C] the new input; weight: [C, 1, W] (nn.Conv1d depthwise layout); tail: [B, W-1, C]
    the previous W-1 inputs, oldest first, shifted IN PLACE to end with x.
    """
    window = torch.cat([tail, x[:, None].to(tail.dtype)], dim=1)  # [B, W, C], oldest first
    y = (window.float() * weight[:, 0, :].float().t()).sum(1)
    tail.copy_(window[:, 1:])
    return F.silu(y)


@torch.no_grad()
def fused_decode_step(
    x_q, x_k, x_v, conv_q, conv_k, conv_v, tail_q, tail_k, tail_v, a, b, A_log, dt_bias, state, gate, norm_weight,
    *, n_heads: int, scale: float, a_scale: float = 1.0, b_scale: float = 1.0, norm_eps: float = 1e-6,
):
    """One decode step of a Gated DeltaNet layer from the q/k/v/gate projections to o_proj's input.

    Short convolutions (tails updated in place), L2 norms of q and k, gates from the raw logits,
    the delta rule on the float32 state (in place) and the gated RMSNorm, all in float32; no
    intermediate is rounded to the input dtype. Returns [B, H*V] in x_v's dtype. See
    api.gated_delta_decode_fused for the shapes.
    """
    B, H = x_q.shape[0], n_heads
    q = short_conv_step(x_q, conv_q, tail_q).view(B, H, -1)
    k = short_conv_step(x_k, conv_k, tail_k).view(B, H, -1)
    v = short_conv_step(x_v, conv_v, tail_v).view(B, H, -1)
    q, k = l2_normalize(q), l2_normalize(k)
    g, beta = gate_from_logits(a, b, A_log, dt_bias, a_scale, b_scale)

    S = state  # [B, H, K, V] float32, updated in place
    S.mul_(g.exp()[..., None, None])
    u = beta[..., None] * (v - torch.einsum("bhkv,bhk->bhv", S, k))
    S.add_(k[..., :, None] * u[..., None, :])
    o = torch.einsum("bhkv,bhk->bhv", S, q * scale)

    V = o.shape[-1]
    y = F.rms_norm(o, (V,), norm_weight.float(), norm_eps) * F.silu(gate.reshape(B, H, V).float())
    return y.to(x_v.dtype).reshape(B, H * V)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """q [B, H, D] attends to cache rows 0..pos of k_cache, v_cache [B, H, L, D]: SDPA with a mask
    over the whole buffer (fixed shapes, no host read of pos). Returns [B, H, D] in q's dtype."""
    visible = (torch.arange(k_cache.shape[2], device=q.device) <= pos)[None, :]
    return F.scaled_dot_product_attention(q[:, :, None], k_cache, v_cache, attn_mask=visible, scale=scale)[:, :, 0]


def add_rms_norm(x: torch.Tensor, h: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """The residual add (in x's dtype) then RMSNorm in float32, as the models' Block and RMSNorm do."""
    s = x if h is None else x + h
    return s, F.rms_norm(s.float(), (s.shape[-1],), weight.float(), eps).to(s.dtype)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of a fused [.., 2N] gate/up product, in float32, rounded once."""
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)


def rope_kv_write(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
                  k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding of q and k at `pos` (tables rounded to the activations' dtype, as the
    Transformer's forward does), k and v written into the caches' row pos; returns q [B, H, D]."""
    B, H, _, D = k_cache.shape
    q, k, v = qkv.view(B, 3, H, D).unbind(1)
    c, s = cos.index_select(0, pos).to(qkv.dtype), sin.index_select(0, pos).to(qkv.dtype)  # [1, D/2]

    def rotate(x):
        x1, x2 = x[..., : D // 2], x[..., D // 2 :]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

    k_cache.index_copy_(2, pos, rotate(k)[:, :, None])
    v_cache.index_copy_(2, pos, v[:, :, None])
    return rotate(q)
