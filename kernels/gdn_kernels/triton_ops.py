"""Triton gated delta rule: the autograd function and the two entry points used by api.py.

Inputs arrive as [B, T, H, *] (or B = 1 with packed sequences and cu_seqlens) and are
viewed as one packed [B*T, H, *] stream; equal-length batches get evenly spaced offsets,
so the kernels only know the packed case. Intermediates kept for the backward: the
cumulative decay G and beta (float32, one value per token and head), the WY inverse T
(float32, C values per token and head), w, v_new and the chunk-entry states h (input
dtype, as the tensor-core matmuls read them).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
import torch.nn.functional as F
import triton
from triton.runtime.errors import OutOfResources

from gdn_kernels.triton_chunk_bwd import chunk_bwd_kernel, state_bwd_kernel
from gdn_kernels.triton_chunk_bwd_split import chunk_bwd_output_kernel, chunk_bwd_v_kernel, chunk_bwd_wy_kernel
from gdn_kernels.triton_chunk_fwd import output_fwd_kernel, prep_fwd_kernel, state_fwd_kernel
from gdn_kernels.triton_common import CHUNK
from gdn_kernels.triton_decode import decode_step_kernel
from gdn_kernels.triton_decode_attention import decode_attention_merge_kernel, decode_attention_partial_kernel
from gdn_kernels.triton_fused_decode import fused_decode_kernel

MAX_HEAD_DIM = 256
# On an H200 with Triton 3.6, narrow heads fault (an illegal address) in the chunk kernels: value
# heads of 16 and 32 with K = 128 (kernels/NOTES.md). On CUDA heads below 64 are zero-padded to 64,
# which leaves every result unchanged (a zero key component adds nothing to the norms, the
# products or the state; a zero value column stays zero) and is cut off again afterwards.
MIN_HEAD_DIM_ON_GPU = 64


def _head_padding(dim: int, device: torch.device) -> int:
    return max(0, MIN_HEAD_DIM_ON_GPU - dim) if device.type == "cuda" else 0


@dataclasses.dataclass
class LaunchConfig:
    """Tile widths over V and warp counts of the chunk kernels (K is always one full tile).

    Module-level so the benchmark's --sweep can try alternatives. The defaults are the
    configuration whose correctness and timings kernels/NOTES.md records on an H200; they
    have not been swept on a GPU yet.
    """

    prep_warps_small_k: int = 4  # K <= 128
    prep_warps_large_k: int = 8
    state_block_v: int = 64
    state_warps: int = 4
    state_stages: int = 2
    output_block_v: int = 64
    output_warps: int = 4
    bwd_block_v: int = 32
    bwd_warps: int = 8
    bwd_stages: int = 2
    # The backward's chunk-parallel part as three kernels (triton_chunk_bwd_split) instead of
    # chunk_bwd_kernel. Compiled for sm_90 (kernels/benchmarks/sm90_resources.py), the V loop at
    # BV 16 / 8 warps and the output kernel are spill-free, the WY kernel spills 216 B per thread,
    # where the fused kernel spills 1,088-1,288 B; whether that pays for the float32 scratch
    # round trip is not measured on a GPU yet, so the fused kernel stays the default.
    bwd_split: bool = False
    bwd_split_block_v: int = 16
    bwd_split_warps: int = 8
    # Fused decode step: most elements of the [K, BV] state tile (and of the [BV, V] gather of the
    # output row) one program holds at a time; 32 per thread with 4 warps. Not measured on a GPU.
    fused_decode_tile: int = 4096
    fused_decode_warps: int = 4


LAUNCH = LaunchConfig()


def _block(n: int, cap: int) -> int:
    """Power-of-two tile covering n (tl.dot needs at least 16), at most cap."""
    return min(cap, max(16, triton.next_power_of_2(n)))


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs ask for full-precision products; half inputs already run the
    # tensor cores in their own format, and float32 intermediates then use tf32.
    return "ieee" if dtype == torch.float32 else "tf32"


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


class ChunkLayout:
    """Sequence offsets and the flat list of (sequence, chunk) pairs the kernels walk."""

    def __init__(self, B: int, T: int, cu_seqlens: torch.Tensor | None, device: torch.device):
        C = CHUNK
        if cu_seqlens is None:
            n_per_seq = triton.cdiv(T, C)
            self.n_seqs = B
            self.cu_seqlens = torch.arange(0, (B + 1) * T, T, dtype=torch.int32, device=device)
            seq_ids = torch.arange(B, dtype=torch.int32, device=device).repeat_interleave(n_per_seq)
            chunk_ids = torch.arange(n_per_seq, dtype=torch.int32, device=device).repeat(B)
            self.chunk_offsets = torch.arange(0, (B + 1) * n_per_seq, n_per_seq, dtype=torch.int32, device=device)
            self.n_chunks = B * n_per_seq
        else:
            if B != 1:
                raise ValueError(f"cu_seqlens needs batch size 1 (sequences packed along T), got B={B}")
            bounds = cu_seqlens.tolist()
            if bounds[0] != 0 or bounds[-1] != T or any(e < s for s, e in zip(bounds[:-1], bounds[1:], strict=True)):
                raise ValueError(f"cu_seqlens must rise from 0 to T={T}, got {bounds}")
            per_seq = [triton.cdiv(e - s, C) for s, e in zip(bounds[:-1], bounds[1:], strict=True)]
            self.n_seqs = len(per_seq)
            self.cu_seqlens = cu_seqlens.to(device=device, dtype=torch.int32)
            pairs = [(n, t) for n, count in enumerate(per_seq) for t in range(count)]
            seq_ids = torch.tensor([p[0] for p in pairs], dtype=torch.int32)
            chunk_ids = torch.tensor([p[1] for p in pairs], dtype=torch.int32)
            offsets = [0]
            for count in per_seq:
                offsets.append(offsets[-1] + count)
            self.chunk_offsets = torch.tensor(offsets, dtype=torch.int32, device=device)
            self.n_chunks = offsets[-1]
        self.chunk_index = torch.stack([seq_ids, chunk_ids], dim=1).to(device=device).contiguous()


def _state_block_v(n_seqs: int, H: int, K: int, V: int, device: torch.device) -> int:
    # The state kernels run one program per (sequence, head, V block) through all the
    # chunks in order; narrower V blocks buy parallelism when there are fewer programs than
    # SMs. (Halving already below two programs per SM was slower: at (8,2048,16,128,128) on
    # an H200, 256 programs of BV = 64 ran the forward in 0.755 ms, 512 of BV = 32 in 0.847.)
    # At K = 256, 64-wide blocks would need 240 KiB of shared memory in the backward
    # state kernel (sm_90 compile), over Hopper's 227 KiB.
    wide = _block(V, LAUNCH.state_block_v if K <= 128 else 32)
    if n_seqs * H * triton.cdiv(V, wide) < _sm_count(device):
        return _block(V, max(16, min(wide, LAUNCH.state_block_v // 2)))
    return wide


_FITTING: dict[tuple, tuple[int, int]] = {}


def _launch_first_fitting(kernel, grid, args, candidates, key, **meta):
    """Launches `kernel` with the first (BV, num_stages) in `candidates` whose compiled form
    fits the card (Triton raises OutOfResources before running anything, so a retry is safe)."""
    if key in _FITTING:
        candidates = [_FITTING[key]]
    for i, (block_v, stages) in enumerate(candidates):
        try:
            kernel[grid](*args, BV=block_v, num_stages=stages, **meta)
        except OutOfResources:
            if i == len(candidates) - 1:
                raise
            continue
        _FITTING[key] = (block_v, stages)
        if i > 0:
            warnings.warn(f"{key[0]}: launch (BV={candidates[0][0]}, num_stages={candidates[0][1]}) needs more "
                          f"shared memory than this GPU has; using BV={block_v}, num_stages={stages} "
                          f"(same results, possibly slower)", stacklevel=2)
        return


def chunk_forward(q, k, v, a, b, A_log, dt_bias, a_scale, b_scale, scale, h0, store_ht, use_l2, layout):
    """q, k: [TT, H, K]; v: [TT, H, V]; a, b: [TT, H]. Returns o, ht and the saved intermediates."""
    g_cum, beta, t_inv, w, h, v_new, ht = chunk_states(k, v, a, b, A_log, dt_bias, a_scale, b_scale, h0, store_ht,
                                                       use_l2, layout)
    TT, H, K = k.shape
    V = v.shape[-1]
    o = torch.empty_like(v)
    # Never narrower than 64: on an H200 with Triton 3.6 the output kernel faults (an illegal
    # address) with 16-wide tiles, with 32-wide tiles at V = 32 or V = 256 or with 8 warps, while
    # 64-wide tiles are right at every V measured (kernels/NOTES.md). A value head narrower than
    # 64 gets a 64-wide tile masked to V.
    BV_out = max(64, _block(V, LAUNCH.output_block_v))
    BK = _block(K, MAX_HEAD_DIM)
    warps = LAUNCH.prep_warps_small_k if BK <= 128 else LAUNCH.prep_warps_large_k
    output_fwd_kernel[(layout.n_chunks, H, triton.cdiv(V, BV_out))](
        q, k, v_new, g_cum, h, o, layout.chunk_index, layout.cu_seqlens, float(scale),
        H=H, K=K, V=V, BK=BK, BV=BV_out, C=CHUNK, USE_L2=use_l2, DOT_PREC=_dot_precision(k.dtype),
        num_warps=max(LAUNCH.output_warps, warps),
    )
    return o, ht, (g_cum, beta, t_inv, w, h, v_new)


def chunk_states(k, v, a, b, A_log, dt_bias, a_scale, b_scale, h0, store_ht, use_l2, layout):
    """The forward up to the output: gates, the WY factors and every chunk-entry state (also what
    a backward that recomputes instead of saving needs). Returns g_cum, beta, t_inv, w, h, v_new, ht."""
    TT, H, K = k.shape
    V = v.shape[-1]
    C = CHUNK
    BK = _block(K, MAX_HEAD_DIM)
    prec = _dot_precision(k.dtype)
    warps = LAUNCH.prep_warps_small_k if BK <= 128 else LAUNCH.prep_warps_large_k
    g_cum = torch.empty(TT, H, dtype=torch.float32, device=k.device)
    beta = torch.empty_like(g_cum)
    t_inv = torch.empty(TT, H, C, dtype=torch.float32, device=k.device)
    w = torch.empty_like(k)
    u = torch.empty_like(v)
    prep_fwd_kernel[(layout.n_chunks, H)](
        k, v, a, b, A_log, dt_bias, g_cum, beta, t_inv, w, u,
        layout.chunk_index, layout.cu_seqlens, float(a_scale), float(b_scale),
        H=H, K=K, V=V, BK=BK, BV=_block(V, 64), C=C, USE_L2=use_l2, DOT_PREC=prec, num_warps=warps,
    )

    h = torch.empty(layout.n_chunks, H, K, V, dtype=k.dtype, device=k.device)
    v_new = torch.empty_like(v)
    N = layout.n_seqs
    ht = torch.empty(N, H, K, V, dtype=torch.float32, device=k.device) if store_ht else None
    BV = _state_block_v(N, H, K, V, k.device)
    state_fwd_kernel[(triton.cdiv(V, BV), N * H)](
        k, w, u, g_cum, h, v_new, h0, ht, layout.chunk_offsets, layout.cu_seqlens,
        H=H, K=K, V=V, BK=BK, BV=BV, C=C, USE_L2=use_l2, HAS_H0=h0 is not None, STORE_HT=store_ht,
        DOT_PREC=prec, num_warps=max(LAUNCH.state_warps, warps), num_stages=LAUNCH.state_stages,
    )
    return g_cum, beta, t_inv, w, h, v_new, ht


def chunk_backward(q, k, v, a, b, A_log, dt_bias, a_scale, b_scale, scale, use_l2, layout, saved, do, dht, need_dh0):
    g_cum, beta, t_inv, w, h, v_new = saved
    TT, H, K = k.shape
    V = v.shape[-1]
    C = CHUNK
    N = layout.n_seqs
    BK = _block(K, MAX_HEAD_DIM)
    prec = _dot_precision(k.dtype)
    warps = LAUNCH.state_warps if BK <= 128 else max(LAUNCH.state_warps, 8)

    dh = torch.empty_like(h)
    dv_new = torch.empty(TT, H, V, dtype=torch.float32, device=k.device)
    dh0 = torch.empty(N, H, K, V, dtype=torch.float32, device=k.device) if need_dh0 else None
    BV = _state_block_v(N, H, K, V, k.device)
    state_bwd_kernel[(triton.cdiv(V, BV), N * H)](
        q, k, w, g_cum, do, dh, dv_new, dht, dh0, layout.chunk_offsets, layout.cu_seqlens, float(scale),
        H=H, K=K, V=V, BK=BK, BV=BV, C=C, USE_L2=use_l2, HAS_DHT=dht is not None, STORE_DH0=need_dh0,
        DOT_PREC=prec, num_warps=warps, num_stages=LAUNCH.state_stages,
    )

    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    da, db = torch.empty_like(a), torch.empty_like(b)
    dx_tok = torch.empty(TT, H, dtype=torch.float32, device=k.device)
    dalog_tok = torch.empty_like(dx_tok)
    if LAUNCH.bwd_split:
        _chunk_bwd_split(q, k, v, a, b, A_log, dt_bias, g_cum, beta, t_inv, h, dh, v_new, dv_new, do,
                         dq, dk, dv, da, db, dx_tok, dalog_tok, layout, scale, a_scale, b_scale, use_l2, prec)
    else:
        bwd_args = (q, k, v, a, b, A_log, dt_bias, g_cum, beta, t_inv, h, dh, v_new, dv_new, do,
                    dq, dk, dv, da, db, dx_tok, dalog_tok,
                    layout.chunk_index, layout.cu_seqlens, float(scale), float(a_scale), float(b_scale))
        BV_bwd = _block(V, LAUNCH.bwd_block_v)
        # Fallbacks for cards with less shared memory per block than the first choice needs (at
        # K = 256 on an H200 it needed 233,472 bytes of the 232,448 allowed): one pipeline stage,
        # then half-width V tiles. The first that launches is remembered per shape and card.
        candidates = [(BV_bwd, LAUNCH.bwd_stages), (BV_bwd, 1), (max(16, BV_bwd // 2), 1)]
        _launch_first_fitting(
            chunk_bwd_kernel, (layout.n_chunks, H), bwd_args, candidates,
            key=("chunk_bwd", K, V, q.dtype, q.device),
            H=H, K=K, V=V, BK=BK, C=C, USE_L2=use_l2, DOT_PREC=prec, num_warps=LAUNCH.bwd_warps,
        )
    # dt_bias and A_log are per head: their gradients are sums of per-token terms.
    d_dt_bias = dx_tok.sum(0).to(dt_bias.dtype)
    d_A_log = dalog_tok.sum(0).to(A_log.dtype)
    return dq, dk, dv, da, db, d_A_log, d_dt_bias, dh0


def _chunk_bwd_split(q, k, v, a, b, A_log, dt_bias, g_cum, beta, t_inv, h, dh, v_new, dv_new, do,
                     dq, dk, dv, da, db, dx_tok, dalog_tok, layout, scale, a_scale, b_scale, use_l2, prec):
    """chunk_bwd_kernel's outputs from the three split kernels, through float32 scratch."""
    TT, H, K = k.shape
    V = v.shape[-1]
    C = CHUNK
    BK = _block(K, MAX_HEAD_DIM)
    f32 = dict(dtype=torch.float32, device=k.device)
    # [C, K] products reduced over V (do h^T, -dv_new h^T, v_new dh^T), in k's layout.
    d_qh, dw_acc, d_kend = (torch.empty(TT, H, K, **f32) for _ in range(3))
    # [C, C] products (do v_new^T and dv_new's part of dT), in t_inv's layout.
    d_scores, dT_v = (torch.empty(TT, H, C, **f32) for _ in range(2))
    dbeta_v, dG_out = torch.empty(TT, H, **f32), torch.empty(TT, H, **f32)
    h_dh = torch.empty(layout.n_chunks, H, **f32)
    dkn_out = torch.empty(TT, H, K, **f32)
    grid = (layout.n_chunks, H)
    warps = LAUNCH.bwd_split_warps
    chunk_bwd_v_kernel[grid](
        v, beta, t_inv, h, dh, v_new, dv_new, do, dv, d_qh, dw_acc, d_kend, d_scores, dT_v, dbeta_v, h_dh,
        layout.chunk_index, layout.cu_seqlens,
        H=H, K=K, V=V, BK=BK, BV=_block(V, LAUNCH.bwd_split_block_v), C=C, DOT_PREC=prec, num_warps=warps,
    )
    chunk_bwd_output_kernel[grid](
        q, k, g_cum, d_qh, d_scores, dq, dkn_out, dG_out, layout.chunk_index, layout.cu_seqlens, float(scale),
        H=H, K=K, BK=BK, C=C, USE_L2=use_l2, DOT_PREC=prec, num_warps=warps,
    )
    chunk_bwd_wy_kernel[grid](
        k, a, b, A_log, dt_bias, g_cum, beta, t_inv, dw_acc, d_kend, dT_v, dbeta_v, h_dh, dkn_out, dG_out,
        dk, da, db, dx_tok, dalog_tok, layout.chunk_index, layout.cu_seqlens, float(a_scale), float(b_scale),
        H=H, K=K, BK=BK, C=C, USE_L2=use_l2, DOT_PREC=prec, num_warps=warps,
    )


class ChunkGatedDeltaRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, a, b, A_log, dt_bias, initial_state, cu_seqlens, a_scale, b_scale, scale,
                output_final_state, use_l2, recompute_states):
        B, T, H, K = q.shape
        V = v.shape[-1]
        layout = ChunkLayout(B, T, cu_seqlens, q.device)
        flat = (
            q.reshape(B * T, H, K).contiguous(),
            k.reshape(B * T, H, K).contiguous(),
            v.reshape(B * T, H, V).contiguous(),
            a.reshape(B * T, H).contiguous(),
            b.reshape(B * T, H).contiguous(),
            A_log.contiguous(),
            dt_bias.contiguous(),
        )
        h0 = None if initial_state is None else initial_state.contiguous()
        o, ht, saved = chunk_forward(
            *flat, a_scale, b_scale, scale, h0, output_final_state, use_l2, layout,
        )
        # Recomputing: keep the inputs (and h0) only, and rerun the forward's state pass in the
        # backward; otherwise keep its intermediates (the chunk states h are the largest).
        ctx.recompute_states = recompute_states
        ctx.save_for_backward(*flat, *((h0,) if recompute_states else saved))
        ctx.layout = layout
        ctx.shape = (B, T, H, K, V)
        ctx.args = (a_scale, b_scale, scale, use_l2)
        ctx.initial_state_dtype = None if initial_state is None else initial_state.dtype
        return o.reshape(B, T, H, V), ht

    @staticmethod
    def backward(ctx, do, dht):
        B, T, H, K, V = ctx.shape
        q, k, v, a, b, A_log, dt_bias, *saved = ctx.saved_tensors
        a_scale, b_scale, scale, use_l2 = ctx.args
        if ctx.recompute_states:
            saved = chunk_states(k, v, a, b, A_log, dt_bias, a_scale, b_scale, saved[0], False, use_l2,
                                 ctx.layout)[:6]
        need_dh0 = ctx.initial_state_dtype is not None and ctx.needs_input_grad[7]
        do = do.reshape(B * T, H, V).contiguous()
        dht = None if dht is None else dht.contiguous()
        dq, dk, dv, da, db, dA_log, ddt, dh0 = chunk_backward(
            q, k, v, a, b, A_log, dt_bias, a_scale, b_scale, scale, use_l2, ctx.layout, saved, do, dht, need_dh0,
        )
        if dh0 is not None:
            dh0 = dh0.to(ctx.initial_state_dtype)
        return (
            dq.reshape(B, T, H, K), dk.reshape(B, T, H, K), dv.reshape(B, T, H, V),
            da.reshape(B, T, H), db.reshape(B, T, H), dA_log, ddt, dh0,
            None, None, None, None, None, None, None,
        )


def _check_shapes(q, k, v, a, b):
    if q.shape != k.shape:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must match")
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        raise ValueError(f"head dims up to {MAX_HEAD_DIM} are supported, got K={q.shape[-1]}, V={v.shape[-1]}")
    if a.shape != q.shape[:-1] or b.shape != q.shape[:-1]:
        raise ValueError(f"gate logits must be {tuple(q.shape[:-1])}, got a {tuple(a.shape)}, b {tuple(b.shape)}")


def gated_delta_rule(
    q, k, v, a, b, A_log, dt_bias, *,
    a_scale: float = 1.0, b_scale: float = 1.0, scale: float | None = None,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None, use_qk_l2norm: bool = True, recompute_states: bool = False,
):
    """Chunked gated delta rule from raw gate logits; see api.gated_delta_rule.

    Returns (o [B, T, H, V] in v's dtype, final state [B or N, H, K, V] float32 or None).
    """
    _check_shapes(q, k, v, a, b)
    if not (q.dtype == k.dtype == v.dtype):
        q, k = q.to(v.dtype), k.to(v.dtype)
    K, V = q.shape[-1], v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    pad_k, pad_v = _head_padding(K, q.device), _head_padding(V, q.device)
    if pad_k or pad_v:
        q, k, v = F.pad(q, (0, pad_k)), F.pad(k, (0, pad_k)), F.pad(v, (0, pad_v))
        if initial_state is not None:
            initial_state = F.pad(initial_state, (0, pad_v, 0, pad_k))
    o, ht = ChunkGatedDeltaRule.apply(
        q, k, v, a, b, A_log, dt_bias, initial_state, cu_seqlens,
        a_scale, b_scale, scale, output_final_state, use_qk_l2norm, recompute_states,
    )
    if pad_k or pad_v:
        o, ht = o[..., :V], (None if ht is None else ht[..., :K, :V])
    return o, (ht if output_final_state else None)


def gated_delta_rule_step(
    q, k, v, a, b, A_log, dt_bias, state, *,
    a_scale: float = 1.0, b_scale: float = 1.0, scale: float | None = None, use_qk_l2norm: bool = True,
):
    """One decode step (inference only, no autograd): q, k [B, H, K]; v [B, H, V]; a, b [B, H];
    state [B, H, K, V] float32. Returns (o [B, H, V] in v's dtype, new state in state's dtype)."""
    B, H, K = q.shape
    V = v.shape[-1]
    if max(K, V) > MAX_HEAD_DIM:
        raise ValueError(f"head dims up to {MAX_HEAD_DIM} are supported, got K={K}, V={V}")
    scale = K**-0.5 if scale is None else scale
    pad_k, pad_v = _head_padding(K, q.device), _head_padding(V, q.device)
    if pad_k or pad_v:
        o, new_state = gated_delta_rule_step(
            F.pad(q, (0, pad_k)), F.pad(k, (0, pad_k)), F.pad(v, (0, pad_v)), a, b, A_log, dt_bias,
            F.pad(state, (0, pad_v, 0, pad_k)), a_scale=a_scale, b_scale=b_scale, scale=scale,
            use_qk_l2norm=use_qk_l2norm,
        )
        return o[..., :V].contiguous(), new_state[..., :K, :V].contiguous()
    q, k, v, a, b, state = (x.contiguous() for x in (q, k, v, a, b, state))
    new_state = torch.empty_like(state)
    o = torch.empty_like(v)
    BV = _block(V, 32)
    decode_step_kernel[(B * H, triton.cdiv(V, BV))](
        q, k, v, a, b, A_log.contiguous(), dt_bias.contiguous(), state, new_state, o,
        float(scale), float(a_scale), float(b_scale),
        H=H, K=K, V=V, BK=_block(K, MAX_HEAD_DIM), BV=BV, USE_L2=use_qk_l2norm,
        num_warps=4,
    )
    return o, new_state


def gated_delta_decode_fused(
    x_q, x_k, x_v, conv_q, conv_k, conv_v, tail_q, tail_k, tail_v, a, b, A_log, dt_bias, state, gate, norm_weight,
    *, n_heads: int, scale: float, a_scale: float = 1.0, b_scale: float = 1.0, norm_eps: float = 1e-6,
):
    """One fused decode step in one launch; see api.gated_delta_decode_fused (which checks the shapes).

    Tails and state are updated in place; the output is the only allocation. Heads are not padded
    to 64 as in the chunked path on CUDA (that would copy the state): the fused kernel has no tl.dot.
    """
    B, CK = x_q.shape
    H = n_heads
    K, V = CK // H, x_v.shape[1] // H
    W = conv_q.shape[-1]
    if max(K, V) > MAX_HEAD_DIM:
        raise ValueError(f"gated_delta_decode_fused: head dims up to {MAX_HEAD_DIM} are supported, got K={K}, V={V}")
    named = dict(x_q=x_q, x_k=x_k, x_v=x_v, gate=gate, a=a, b=b, A_log=A_log, dt_bias=dt_bias,
                 norm_weight=norm_weight)
    strided = [name for name, t in named.items() if t.stride(-1) != 1]
    if strided:
        raise ValueError(f"gated_delta_decode_fused: {', '.join(strided)} need unit stride along the last dim")
    BK, VP = triton.next_power_of_2(K), triton.next_power_of_2(V)
    tile = LAUNCH.fused_decode_tile
    # The whole [K, V] state of a head as one tile when it is small enough (no gather of the output
    # row needed), else V blocks within both limits. On a GPU the block width and warps are then
    # tuned once per shape (timed on copies of the state and tails, which the kernel updates).
    default = (VP if BK * VP <= tile else max(1, min(tile // BK, tile // VP)), LAUNCH.fused_decode_warps)
    candidates = [default] + [(bv, w) for bv in (16, 32, 64, 128, 256) if bv <= VP for w in (4, 8, 16)
                              if (bv, w) != default]

    def launch(config, state_, tails):
        BV, warps = config
        out = torch.empty(B, H * V, dtype=x_v.dtype, device=x_v.device)
        fused_decode_kernel[(B * H,)](
            x_q, x_k, x_v, conv_q, conv_k, conv_v, *tails,
            a, b, A_log, dt_bias, state_, gate, norm_weight, out,
            x_q.stride(0), x_k.stride(0), x_v.stride(0), a.stride(0), b.stride(0), gate.stride(0),
            conv_q.stride(0), conv_q.stride(2), conv_k.stride(0), conv_k.stride(2), conv_v.stride(0),
            conv_v.stride(2), float(scale), float(a_scale), float(b_scale), float(norm_eps),
            H, K=K, V=V, W=W, BK=BK, BV=BV, VP=VP, num_warps=warps,
        )
        return out

    def trial(config):
        return launch(config, state.clone(), [t.clone() for t in (tail_q, tail_k, tail_v)])

    config = _tuned_launch(("fused_decode", B, H, K, V, W, x_v.dtype), candidates, trial)
    out = launch(config, state, (tail_q, tail_k, tail_v))
    return out


_TUNED: dict = {}


def _tuned_launch(key, candidates: list, trial):
    """The fastest of `candidates` (launch settings) for `key`, timed once per key with
    triton.testing.do_bench by calling `trial(candidate)`, then remembered. Off a real GPU (the CPU
    interpreter), and while a CUDA graph is being captured, the first candidate, untimed."""
    if key in _TUNED:
        return _TUNED[key]
    if not torch.cuda.is_available() or _interpreting() or torch.cuda.is_current_stream_capturing():
        return candidates[0]
    from triton.testing import do_bench

    timings = []
    for candidate in candidates:
        try:
            timings.append((do_bench(lambda c=candidate: trial(c), warmup=5, rep=20), candidate))
        except OutOfResources:  # e.g. too many registers or too much shared memory at this size
            continue
    _TUNED[key] = min(timings, key=lambda t: t[0])[1]
    return _TUNED[key]


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def decode_attention(q, k_cache, v_cache, pos, *, scale: float, splits: int | None = None):
    """Split-KV attention of one token per (sequence, head) over the cache rows 0..pos; see
    api.decode_attention (which checks the shapes). Two launches, no host synchronization."""
    B, H, D = q.shape
    L = k_cache.shape[2]
    DP = triton.next_power_of_2(D)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4

    def launch(config):
        block_n, warps, waves = config
        # Enough key ranges to cover the SMs `waves` times over, never more ranges than blocks of keys.
        n_splits = splits or max(1, min(triton.cdiv(waves * sms, B * H), triton.cdiv(L, block_n)))
        part_acc = torch.empty(B * H * n_splits, DP, dtype=torch.float32, device=q.device)
        part_m = torch.empty(B * H * n_splits, dtype=torch.float32, device=q.device)
        part_l = torch.empty(B * H * n_splits, dtype=torch.float32, device=q.device)
        decode_attention_partial_kernel[(B * H, n_splits)](
            q, k_cache, v_cache, pos, part_acc, part_m, part_l,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            H, float(scale), SPLITS=n_splits, D=D, DP=DP, BLOCK_N=block_n, num_warps=warps,
        )
        out = torch.empty(B, H, D, dtype=q.dtype, device=q.device)
        decode_attention_merge_kernel[(B * H,)](
            part_acc, part_m, part_l, out, out.stride(0), out.stride(1), H,
            SPLITS=n_splits, SP=triton.next_power_of_2(n_splits), D=D, DP=DP, num_warps=4,
        )
        return out

    candidates = [(64, 4, 2)] + [(bn, w, waves) for bn in (32, 64, 128) for w in (4, 8) for waves in (1, 2, 4)
                                 if (bn, w, waves) != (64, 4, 2)]
    # Tuned at the length the cache holds when first called (the prompt's), once per shape.
    return launch(_tuned_launch(("decode_attention", B, H, L, D, q.dtype, splits), candidates, launch))


def rope_kv_write(qkv, cos, sin, pos, k_cache, v_cache):
    """Rotary q [B, H, D] from qkv [B, 3*H*D]; k (rotated) and v written into the caches at row pos."""
    from gdn_kernels.triton_decode_ops import rope_kv_write_kernel

    B, H, _, D = k_cache.shape
    q = torch.empty(B, H, D, dtype=qkv.dtype, device=qkv.device)
    rope_kv_write_kernel[(B * H,)](
        qkv, cos, sin, pos, q, k_cache, v_cache, qkv.stride(0), q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), cos.stride(0), H, D=D, HALF=D // 2, HP=triton.next_power_of_2(D // 2), num_warps=1,
    )
    return q


def add_rms_norm(x, h, weight, eps: float):
    """(x + h rounded to x's dtype, rms_norm(x + h) * weight); h may be None (the norm alone). [B, N]."""
    from gdn_kernels.triton_decode_ops import add_rms_norm_kernel

    B, N = x.shape
    x_out = torch.empty_like(x) if h is not None else x
    y = torch.empty_like(x)
    h_arg = h if h is not None else x
    add_rms_norm_kernel[(B,)](
        x, h_arg, weight, x_out, y, x.stride(0), h_arg.stride(0), x_out.stride(0), y.stride(0), N, float(eps),
        HAS_H=h is not None, BLOCK=triton.next_power_of_2(N), num_warps=4 if N <= 4096 else 8,
    )
    return x_out, y


def silu_mul(gate_up):
    """silu(gate_up[:, :N]) * gate_up[:, N:] for gate_up [B, 2N]."""
    from gdn_kernels.triton_decode_ops import silu_mul_kernel

    B, two_n = gate_up.shape
    N = two_n // 2
    out = torch.empty(B, N, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    silu_mul_kernel[(B, triton.cdiv(N, block))](gate_up, out, gate_up.stride(0), out.stride(0), N, BLOCK=block,
                                               num_warps=4)
    return out
