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
):
    """Gated delta rule from raw gate logits.

    q, k: [B, T, H, K]; v: [B, T, H, V]; a, b: [B, T, H] gate logits; A_log, dt_bias: [H].
    g = -exp(A_log) * softplus(a_scale * a + dt_bias), beta = sigmoid(b_scale * b).
    Returns (o [B, T, H, V], final state [B or N, H, K, V] in float32, or None).
    """
    path = _resolve_backend(backend, q.device)
    if path == "triton":
        from gdn_kernels import triton_ops

        return triton_ops.gated_delta_rule(
            q, k, v, a, b, A_log, dt_bias,
            a_scale=a_scale, b_scale=b_scale, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens, use_qk_l2norm=use_qk_l2norm,
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
