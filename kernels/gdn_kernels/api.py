"""One entry point for the gated delta rule; it picks the implementation by device.

The model hands over raw gate logits; the decay g and write strength beta are formed
here (in the Triton path, inside the kernel), together with the L2 normalization of q
and k, so the gating-normalization scales cost no extra pass over memory.
"""

from __future__ import annotations

import torch

from gdn_kernels import reference

BACKENDS = ("auto", "torch", "triton")


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown gated delta rule backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type != "cuda" and not _triton_interpreting():
        raise ValueError("backend 'triton' needs a CUDA tensor (or TRITON_INTERPRET=1 on the CPU)")
    return backend


def _triton_interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    a_scale: float = 1.0,
    b_scale: float = 1.0,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm: bool = True,
    backend: str = "auto",
    recompute_states: bool = False,
):
    """Gated delta rule from raw gate logits.

    q, k: [B, T, H, K]; v: [B, T, H, V]; a, b: [B, T, H] gate logits; A_log, dt_bias: [H].
    g = -exp(A_log) * softplus(a_scale * a + dt_bias), beta = sigmoid(b_scale * b).
    Returns (o [B, T, H, V], final state [B or N, H, K, V] in float32, or None).
    recompute_states (Triton path): keep only the inputs for backward and rerun the forward's
    gate/WY/state pass there, instead of keeping the chunk states and WY factors; the
    PyTorch reference path is autograd through its own operations and ignores it.
    """
    path = _resolve_backend(backend, q.device)
    if path == "triton":
        from gdn_kernels import triton_ops

        return triton_ops.gated_delta_rule(
            q, k, v, a, b, A_log, dt_bias,
            a_scale=a_scale, b_scale=b_scale, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens, use_qk_l2norm=use_qk_l2norm,
            recompute_states=recompute_states,
        )
    if use_qk_l2norm:
        q, k = reference.l2_normalize(q), reference.l2_normalize(k)
    g, beta = reference.gate_from_logits(a, b, A_log, dt_bias, a_scale, b_scale)
    return reference.chunked(
        q, k, v, g, beta, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens,
    )


def gated_delta_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    state: torch.Tensor,
    *,
    a_scale: float = 1.0,
    b_scale: float = 1.0,
    scale: float | None = None,
    use_qk_l2norm: bool = True,
    backend: str = "auto",
):
    """One decode step. q, k: [B, H, K]; v: [B, H, V]; a, b: [B, H]; state [B, H, K, V] (float32).

    Returns (o [B, H, V], new state). Used by generation after a chunked prefill.
    """
    path = _resolve_backend(backend, q.device)
    if path == "triton":
        from gdn_kernels import triton_ops

        return triton_ops.gated_delta_rule_step(
            q, k, v, a, b, A_log, dt_bias, state,
            a_scale=a_scale, b_scale=b_scale, scale=scale, use_qk_l2norm=use_qk_l2norm,
        )
    if use_qk_l2norm:
        q, k = reference.l2_normalize(q), reference.l2_normalize(k)
    g, beta = reference.gate_from_logits(a, b, A_log, dt_bias, a_scale, b_scale)
    o, new_state = reference.naive_recurrent(
        q[:, None], k[:, None], v[:, None], g[:, None], beta[:, None],
        scale=scale, initial_state=state, output_final_state=True, compute_dtype=state.dtype,
    )
    return o[:, 0].to(v.dtype), new_state


def _check_fused_decode(x_q, x_k, x_v, conv_q, conv_k, conv_v, tail_q, tail_k, tail_v, a, b, A_log, dt_bias,
                        state, gate, norm_weight, n_heads):
    """Shapes, dtypes and layouts of gated_delta_decode_fused's arguments (metadata only, no sync).

    Returns (B, H, K, V, W). Raises ValueError naming the first argument that does not fit.
    """
    def fail(msg):
        raise ValueError(f"gated_delta_decode_fused: {msg}")

    H = n_heads
    if H < 1:
        fail(f"n_heads must be positive, got {H}")
    for name, x in (("x_q", x_q), ("x_k", x_k), ("x_v", x_v)):
        if x.dim() != 2:
            fail(f"{name} must be [B, H*head_dim], got {tuple(x.shape)}")
        if x.shape[1] % H:
            fail(f"{name} has {x.shape[1]} channels, not a multiple of n_heads={H}")
    if x_k.shape != x_q.shape:
        fail(f"x_q {tuple(x_q.shape)} and x_k {tuple(x_k.shape)} must match")
    if x_v.shape[0] != x_q.shape[0]:
        fail(f"x_v {tuple(x_v.shape)} has a different batch size than x_q {tuple(x_q.shape)}")
    B, CK, CV = x_q.shape[0], x_q.shape[1], x_v.shape[1]
    K, V = CK // H, CV // H
    W = conv_q.shape[-1] if conv_q.dim() == 3 else 0
    if W < 1:
        fail(f"conv_q must be [C, 1, W] with W >= 1, got {tuple(conv_q.shape)}")
    for name, w, x, tail, C in (("q", conv_q, x_q, tail_q, CK), ("k", conv_k, x_k, tail_k, CK),
                                ("v", conv_v, x_v, tail_v, CV)):
        if tuple(w.shape) != (C, 1, W):
            fail(f"conv_{name} must be {(C, 1, W)} (depthwise [C, 1, W], same W for q, k, v), got {tuple(w.shape)}")
        if tuple(tail.shape) != (B, W - 1, C):
            fail(f"tail_{name} must be {(B, W - 1, C)} ([B, W-1, C]), got {tuple(tail.shape)}")
        if tail.dtype != x.dtype:
            fail(f"tail_{name} is {tail.dtype} but x_{name} is {x.dtype}; they must match")
        if not tail.is_contiguous():
            fail(f"tail_{name} must be contiguous (it is updated in place)")
    for name, t in (("a", a), ("b", b)):
        if tuple(t.shape) != (B, H):
            fail(f"{name} must be {(B, H)} ([B, H]), got {tuple(t.shape)}")
    for name, t in (("A_log", A_log), ("dt_bias", dt_bias)):
        if tuple(t.shape) != (H,):
            fail(f"{name} must be {(H,)} ([H]), got {tuple(t.shape)}")
    if tuple(state.shape) != (B, H, K, V):
        fail(f"state must be {(B, H, K, V)} ([B, H, K, V]), got {tuple(state.shape)}")
    if state.dtype != torch.float32:
        fail(f"state must be float32, got {state.dtype}")
    if not state.is_contiguous():
        fail("state must be contiguous (it is updated in place)")
    if tuple(gate.shape) != (B, CV):
        fail(f"gate must be {(B, CV)} ([B, H*V]), got {tuple(gate.shape)}")
    if tuple(norm_weight.shape) != (V,):
        fail(f"norm_weight must be {(V,)} ([V]), got {tuple(norm_weight.shape)}")
    args = dict(x_q=x_q, x_k=x_k, x_v=x_v, conv_q=conv_q, conv_k=conv_k, conv_v=conv_v, tail_q=tail_q,
                tail_k=tail_k, tail_v=tail_v, a=a, b=b, A_log=A_log, dt_bias=dt_bias, state=state, gate=gate,
                norm_weight=norm_weight)
    off_device = [name for name, t in args.items() if t.device != x_v.device]
    if off_device:
        fail(f"{', '.join(off_device)} not on {x_v.device} like x_v")
    return B, H, K, V, W


def gated_delta_decode_fused(
    x_q: torch.Tensor,
    x_k: torch.Tensor,
    x_v: torch.Tensor,
    conv_q: torch.Tensor,
    conv_k: torch.Tensor,
    conv_v: torch.Tensor,
    tail_q: torch.Tensor,
    tail_k: torch.Tensor,
    tail_v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    state: torch.Tensor,
    gate: torch.Tensor,
    norm_weight: torch.Tensor,
    *,
    n_heads: int,
    scale: float,
    a_scale: float = 1.0,
    b_scale: float = 1.0,
    norm_eps: float = 1e-6,
    backend: str = "auto",
) -> torch.Tensor:
    """One decode token of a Gated DeltaNet layer, from the projections to o_proj's input (inference only).

    x_q, x_k: [B, H*K]; x_v, gate: [B, H*V] (projections of the new token; gate before its SiLU).
    conv_q/k/v: depthwise weights [C, 1, W]. tail_q/k/v: [B, W-1, C] contiguous, dtype of their x,
    the previous W-1 conv inputs oldest first, UPDATED IN PLACE. a, b: [B, H] raw gate logits;
    A_log, dt_bias: [H]; state: [B, H, K, V] float32 contiguous, UPDATED IN PLACE; norm_weight: [V].

    Per token and head, in float32: q, k, v = silu(short conv) of the window (tail, new input);
    q, k L2-normalized (eps 1e-6); g = -exp(A_log) softplus(a_scale a + dt_bias), beta =
    sigmoid(b_scale b); S <- exp(g) S, u = beta (v - S^T k), S <- S + k u^T, o = S^T (scale q);
    returns rms_norm(o) * norm_weight * silu(gate) as [B, H*V] in x_v's dtype.

    Triton ("triton", or "auto" on CUDA): one kernel launch per call, no host synchronization and
    no allocation besides the output, so it can be captured in a CUDA graph (the tensors' addresses
    and shapes must then stay fixed). Needs K, V <= 256 and unit stride along the last dim of x_*,
    gate, a, b, A_log, dt_bias and norm_weight. "torch" (the CPU default) is
    reference.fused_decode_step, the same math in PyTorch ops.
    """
    _check_fused_decode(x_q, x_k, x_v, conv_q, conv_k, conv_v, tail_q, tail_k, tail_v, a, b, A_log, dt_bias,
                        state, gate, norm_weight, n_heads)
    args = (x_q, x_k, x_v, conv_q, conv_k, conv_v, tail_q, tail_k, tail_v, a, b, A_log, dt_bias, state, gate,
            norm_weight)
    kwargs = dict(n_heads=n_heads, scale=scale, a_scale=a_scale, b_scale=b_scale, norm_eps=norm_eps)
    if _resolve_backend(backend, x_v.device) == "triton":
        from gdn_kernels import triton_ops

        return triton_ops.gated_delta_decode_fused(*args, **kwargs)
    return reference.fused_decode_step(*args, **kwargs)


def _check_short_conv(x, weight, tail):
    """Shapes, dtypes and devices of short_conv_silu's arguments. Raises ValueError naming the problem."""
    def fail(msg):
        raise ValueError(f"short_conv_silu: {msg}")

    if x.dim() != 3:
        fail(f"x must be [B, T, C], got {tuple(x.shape)}")
    if not x.is_floating_point():
        fail(f"x must be a floating-point tensor, got {x.dtype}")
    B, T, C = x.shape
    if weight.dim() != 3 or weight.shape[0] != C or weight.shape[1] != 1 or weight.shape[2] < 1:
        fail(f"weight must be [C, 1, W] = [{C}, 1, W] with W >= 1 (depthwise nn.Conv1d layout), "
             f"got {tuple(weight.shape)}")
    if not weight.is_floating_point():
        fail(f"weight must be a floating-point tensor, got {weight.dtype}")
    if weight.device != x.device:
        fail(f"weight is on {weight.device} but x is on {x.device}")
    if tail is None:
        return
    W = weight.shape[2]
    if tuple(tail.shape) != (B, C, W - 1):
        fail(f"tail must be [B, C, W-1] = {(B, C, W - 1)}, got {tuple(tail.shape)}")
    # Stricter than ShortConv, which casts the tail silently: a tail in another dtype than its
    # inputs means the cache was built for another dtype.
    if tail.dtype != x.dtype:
        fail(f"tail is {tail.dtype} but x is {x.dtype}; they must match")
    if tail.device != x.device:
        fail(f"tail is on {tail.device} but x is on {x.device}")


def short_conv_silu(x: torch.Tensor, weight: torch.Tensor, tail: torch.Tensor | None = None, *,
                    backend: str = "auto"):
    """Causal depthwise short convolution followed by SiLU, for training (forward and backward).

    x: [B, T, C]; weight: [C, 1, W] (depthwise nn.Conv1d layout, any float dtype); tail: [B, C, W-1]
    in x's dtype, the inputs preceding x (None: zeros). With padded = cat(tail^T, x) along time,
    y[b, t, c] = silu(sum_i weight[c, 0, i] * padded[b, t + i, c]) in float32, returned in x's dtype,
    as gdn.models.gated_deltanet.ShortConv. Returns (y, new tail [B, C, W-1], the last W-1 inputs).

    "torch" (the CPU default): reference.short_conv, ShortConv's operations in PyTorch; autograd
    differentiates y and the new tail (a view, as ShortConv's). "triton" ("auto" on CUDA):
    triton_short_conv, fused kernels that save only x, weight and tail for the backward; y is
    differentiable in x, weight and tail, the new tail is a detached copy. The Triton path needs
    float16, bfloat16 or float32 x and is opt-in: not yet checked on a GPU (see that module).
    """
    _check_short_conv(x, weight, tail)
    if _resolve_backend(backend, x.device) == "triton":
        from gdn_kernels import triton_short_conv

        return triton_short_conv.short_conv_silu(x, weight, tail)
    return reference.short_conv(x, weight, tail)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor, *,
                     scale: float, backend: str = "auto", splits: int | None = None) -> torch.Tensor:
    """Attention of one new token per sequence and head over a static KV cache (inference only).

    q: [B, H, D]; k_cache, v_cache: [B, H, L, D] with unit stride along D (rows past the current
    position may hold anything); pos: a one-element integer device tensor, the current token's row:
    rows 0..pos are attended to. Returns softmax(scale q k^T) v as [B, H, D] in q's dtype.

    Triton ("auto" on CUDA): split-KV kernels (triton_decode_attention) that read pos on the device,
    so one launch serves every position (CUDA-graph capture) and reads only the rows written so far;
    `splits` overrides the number of key ranges. "torch": reference.decode_attention, SDPA with a mask
    over the whole buffer.
    """
    def fail(msg):
        raise ValueError(f"decode_attention: {msg}")

    if q.dim() != 3:
        fail(f"q must be [B, H, D], got {tuple(q.shape)}")
    B, H, D = q.shape
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dim() != 4 or tuple(t.shape[:2]) != (B, H) or t.shape[3] != D:
            fail(f"{name} must be [B, H, L, D] = [{B}, {H}, L, {D}], got {tuple(t.shape)}")
        if t.stride(-1) != 1:
            fail(f"{name} needs unit stride along D")
        if t.device != q.device:
            fail(f"{name} is on {t.device} but q is on {q.device}")
    if k_cache.shape != v_cache.shape:
        fail(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ")
    if pos.numel() != 1 or pos.dtype not in (torch.int32, torch.int64) or pos.device != q.device:
        fail(f"pos must be one int32/int64 element on {q.device}, got {pos.dtype} {tuple(pos.shape)} on {pos.device}")
    if q.stride(-1) != 1:
        fail("q needs unit stride along D")
    if _resolve_backend(backend, q.device) == "triton":
        from gdn_kernels import triton_ops

        return triton_ops.decode_attention(q, k_cache, v_cache, pos, scale=scale, splits=splits)
    return reference.decode_attention(q, k_cache, v_cache, pos, scale)


def add_rms_norm(x: torch.Tensor, h: torch.Tensor | None, weight: torch.Tensor, eps: float, *,
                 backend: str = "auto"):
    """Residual add and RMSNorm of a decode step's rows: returns (s, rms_norm(s) * weight) with s = x + h in
    x's dtype (s = x when h is None). x, h: [B, N] with unit stride along N; weight: [N]. Triton on CUDA
    (one launch), reference.add_rms_norm otherwise."""
    if x.dim() != 2 or (h is not None and h.shape != x.shape) or weight.shape != (x.shape[-1],):
        raise ValueError(f"add_rms_norm: x must be [B, N], h the same or None, weight [N]; got x {tuple(x.shape)}, "
                         f"h {None if h is None else tuple(h.shape)}, weight {tuple(weight.shape)}")
    if _resolve_backend(backend, x.device) == "triton" and x.stride(-1) == 1 and (h is None or h.stride(-1) == 1):
        from gdn_kernels import triton_ops

        return triton_ops.add_rms_norm(x, h, weight, eps)
    return reference.add_rms_norm(x, h, weight, eps)


def silu_mul(gate_up: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """SwiGLU's activation on a fused gate/up product [B, 2N]: silu(gate) * up, float32 math, rounded once.
    Triton on CUDA (one launch), reference.silu_mul otherwise."""
    if gate_up.dim() != 2 or gate_up.shape[-1] % 2:
        raise ValueError(f"silu_mul: gate_up must be [B, 2N], got {tuple(gate_up.shape)}")
    if _resolve_backend(backend, gate_up.device) == "triton" and gate_up.stride(-1) == 1:
        from gdn_kernels import triton_ops

        return triton_ops.silu_mul(gate_up)
    return reference.silu_mul(gate_up)


def rope_kv_write(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
                  k_cache: torch.Tensor, v_cache: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """A decode step's attention inputs: qkv [B, 3*H*D] (q, k, v heads back to back), float32 rotary tables
    cos, sin [L, D/2], pos a one-element device tensor. Returns q rotated [B, H, D]; writes k rotated and v
    into k_cache, v_cache [B, H, L, D] at row pos. Triton on CUDA (one launch), reference otherwise."""
    B, H, L, D = k_cache.shape
    if qkv.shape != (B, 3 * H * D) or v_cache.shape != k_cache.shape or cos.shape != (L, D // 2) \
            or sin.shape != cos.shape or pos.numel() != 1:
        raise ValueError(f"rope_kv_write: qkv must be [B, 3*H*D] = {(B, 3 * H * D)}, caches [B, H, L, D], tables "
                         f"[L, D/2], pos one element; got qkv {tuple(qkv.shape)}, k_cache {tuple(k_cache.shape)}, "
                         f"v_cache {tuple(v_cache.shape)}, cos {tuple(cos.shape)}, pos {tuple(pos.shape)}")
    if _resolve_backend(backend, qkv.device) == "triton" and qkv.stride(-1) == 1 and k_cache.stride(-1) == 1 \
            and v_cache.stride(-1) == 1 and cos.stride(-1) == 1 and sin.stride() == cos.stride():
        from gdn_kernels import triton_ops

        return triton_ops.rope_kv_write(qkv, cos, sin, pos, k_cache, v_cache)
    return reference.rope_kv_write(qkv, cos, sin, pos, k_cache, v_cache)
