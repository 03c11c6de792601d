"""Chunked gated delta rule, forward: three kernels.

Per chunk of C = 64 rows (one head), with unit-norm k, G the in-chunk cumulative log
decay and A_ij = beta_i (k_i . k_j) exp(G_i - G_j) for i > j:

    T = (I + A)^-1,   u = T (beta v),   w = T (beta exp(G) k)          (WY form)
    v_new_n = u_n - w_n h_n
    h_{n+1} = exp(G_last) h_n + (k exp(G_last - G))^T v_new_n
    o_n     = (scale q exp(G)) h_n + ((scale q k^T) * exp(G_i - G_j) * causal) v_new_n

1. `prep_fwd_kernel` (all chunks in parallel): gate from the raw logits, its cumsum,
   the k L2 norm, A, its inverse T and the WY factors w, u. The gate and the norm are
   formed from the same loads that A needs, so they cost no extra pass over memory.
2. `state_fwd_kernel` (sequential over the chunks of a sequence): v_new and the
   chunk-entry states h_n.
3. `output_fwd_kernel` (all chunks in parallel): o.
"""

import triton
import triton.language as tl

from gdn_kernels.triton_common import (
    chunk_coordinates,
    gate_rows,
    load_cum_decay,
    load_unit_rows,
    tile_ptrs,
)


@triton.jit
def _block16(base, row_stride, row0, n_valid, r0, c0):
    """[16, 16] block (chunk rows r0.., columns c0..) of a per-chunk [C, C] matrix."""
    r = tl.arange(0, 16)
    ptrs = base + (row0 + r0 + r).to(tl.int64)[:, None] * row_stride + (c0 + r)[None, :]
    return tl.load(ptrs, mask=(r0 + r < n_valid)[:, None], other=0.0)


@triton.jit
def _store_block16(base, row_stride, row0, n_valid, r0, c0, x):
    r = tl.arange(0, 16)
    ptrs = base + (row0 + r0 + r).to(tl.int64)[:, None] * row_stride + (c0 + r)[None, :]
    tl.store(ptrs, x, mask=(r0 + r < n_valid)[:, None])


@triton.jit
def _invert_unit_lower16(base, row_stride, row0, n_valid, r0):
    """(I + L)^-1 for the strictly lower [16, 16] diagonal block L at (r0, r0), by forward
    substitution: row i of Y = (I + L)^-1 - I is -L_i - sum_{j<i} L_ij Y_j."""
    r = tl.arange(0, 16)
    y = -_block16(base, row_stride, row0, n_valid, r0, r0)  # rows 0 and 1 are already final
    for i in range(2, 16):
        row_ok = (r * 0 + r0 + i) < n_valid
        a_row = -tl.load(base + (row0 + r0 + i).to(tl.int64) * row_stride + r0 + r, mask=row_ok, other=0.0)
        a_row = a_row + tl.sum(a_row[:, None] * y, 0)
        y = tl.where((r == i)[:, None], a_row[None, :], y)
    return y + tl.where(r[:, None] == r[None, :], 1.0, 0.0)


# The head count only enters strides; not specializing on it lets one compiled
# kernel serve every H (Triton would otherwise key on H % 16 == 0).
@triton.jit(do_not_specialize=["H"])
def prep_fwd_kernel(
    k, v, a, b, A_log, dt_bias,
    g_cum, beta_out, t_inv, w, u,
    chunk_index, cu_seqlens, a_scale, b_scale,
    H, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    C: tl.constexpr, USE_L2: tl.constexpr, DOT_PREC: tl.constexpr,
):
    tl.static_assert(C == 64, "the block inverse is written for 4 blocks of 16")
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    dt = k.dtype.element_ty
    i_n, row0, n_valid = chunk_coordinates(chunk_index, cu_seqlens, i_c, C)
    rows = tl.arange(0, C)
    valid = rows < n_valid

    g, beta, _, _ = gate_rows(a, b, A_log, dt_bias, row0, n_valid, i_h, a_scale, b_scale, H, C)
    G = tl.cumsum(g, 0)
    vec_offs = (row0 + rows).to(tl.int64) * H + i_h
    tl.store(g_cum + vec_offs, G, mask=valid)
    tl.store(beta_out + vec_offs, beta, mask=valid)

    kp, km = tile_ptrs(k + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    kn, _ = load_unit_rows(kp, km, USE_L2)
    strict = rows[:, None] > rows[None, :]
    A = tl.dot((kn * beta[:, None]).to(dt), tl.trans(kn).to(dt), input_precision=DOT_PREC)
    A = tl.where(strict, A * tl.exp(tl.where(strict, G[:, None] - G[None, :], 0.0)), 0.0)

    # A goes through memory because Triton cannot slice register tensors into the
    # 16-row blocks of the inverse; T later overwrites it in place (same rows).
    t_base = t_inv + i_h * C
    t_stride = H * C
    tp, tm = tile_ptrs(t_base, row0, n_valid, t_stride, 0, C, C, C)
    tl.store(tp, A, mask=tm)
    tl.debug_barrier()

    T00 = _invert_unit_lower16(t_base, t_stride, row0, n_valid, 0)
    T11 = _invert_unit_lower16(t_base, t_stride, row0, n_valid, 16)
    T22 = _invert_unit_lower16(t_base, t_stride, row0, n_valid, 32)
    T33 = _invert_unit_lower16(t_base, t_stride, row0, n_valid, 48)
    A10 = _block16(t_base, t_stride, row0, n_valid, 16, 0)
    A20 = _block16(t_base, t_stride, row0, n_valid, 32, 0)
    A21 = _block16(t_base, t_stride, row0, n_valid, 32, 16)
    A30 = _block16(t_base, t_stride, row0, n_valid, 48, 0)
    A31 = _block16(t_base, t_stride, row0, n_valid, 48, 16)
    A32 = _block16(t_base, t_stride, row0, n_valid, 48, 32)
    # Block row i of (I + A) T = I below the diagonal: T_ij = -T_ii sum_{j<=m<i} A_im T_mj.
    T10 = -tl.dot(T11, tl.dot(A10, T00, input_precision=DOT_PREC), input_precision=DOT_PREC)
    T21 = -tl.dot(T22, tl.dot(A21, T11, input_precision=DOT_PREC), input_precision=DOT_PREC)
    T32 = -tl.dot(T33, tl.dot(A32, T22, input_precision=DOT_PREC), input_precision=DOT_PREC)
    T20 = -tl.dot(
        T22,
        tl.dot(A20, T00, input_precision=DOT_PREC) + tl.dot(A21, T10, input_precision=DOT_PREC),
        input_precision=DOT_PREC,
    )
    T31 = -tl.dot(
        T33,
        tl.dot(A31, T11, input_precision=DOT_PREC) + tl.dot(A32, T21, input_precision=DOT_PREC),
        input_precision=DOT_PREC,
    )
    T30 = -tl.dot(
        T33,
        tl.dot(A30, T00, input_precision=DOT_PREC)
        + tl.dot(A31, T10, input_precision=DOT_PREC)
        + tl.dot(A32, T20, input_precision=DOT_PREC),
        input_precision=DOT_PREC,
    )
    # Every read of A above must land before any block of T overwrites it.
    tl.debug_barrier()
    _store_block16(t_base, t_stride, row0, n_valid, 0, 0, T00)
    _store_block16(t_base, t_stride, row0, n_valid, 16, 16, T11)
    _store_block16(t_base, t_stride, row0, n_valid, 32, 32, T22)
    _store_block16(t_base, t_stride, row0, n_valid, 48, 48, T33)
    _store_block16(t_base, t_stride, row0, n_valid, 16, 0, T10)
    _store_block16(t_base, t_stride, row0, n_valid, 32, 16, T21)
    _store_block16(t_base, t_stride, row0, n_valid, 48, 32, T32)
    _store_block16(t_base, t_stride, row0, n_valid, 32, 0, T20)
    _store_block16(t_base, t_stride, row0, n_valid, 48, 16, T31)
    _store_block16(t_base, t_stride, row0, n_valid, 48, 0, T30)
    tl.debug_barrier()
    # The upper blocks still hold A's zeros, so the full tile is T.
    Tm = tl.load(tp, mask=tm, other=0.0)

    x_w = kn * (beta * tl.exp(G))[:, None]
    w_tile = tl.dot(Tm.to(dt), x_w.to(dt), input_precision=DOT_PREC)
    wp, wm = tile_ptrs(w + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    tl.store(wp, w_tile.to(w.dtype.element_ty), mask=wm)
    for v0 in range(0, V, BV):
        vp, vm = tile_ptrs(v + i_h * V, row0, n_valid, H * V, v0, V, C, BV)
        x_u = tl.load(vp, mask=vm, other=0.0).to(tl.float32) * beta[:, None]
        u_tile = tl.dot(Tm.to(dt), x_u.to(dt), input_precision=DOT_PREC)
        up, um = tile_ptrs(u + i_h * V, row0, n_valid, H * V, v0, V, C, BV)
        tl.store(up, u_tile.to(u.dtype.element_ty), mask=um)


@triton.jit(do_not_specialize=["H"])
def state_fwd_kernel(
    k, w, u, g_cum, h, v_new, h0, ht,
    chunk_offsets, cu_seqlens,
    H, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    C: tl.constexpr, USE_L2: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    dt = k.dtype.element_ty
    bos = tl.load(cu_seqlens + i_n)
    eos = tl.load(cu_seqlens + i_n + 1)
    n_chunks = tl.cdiv(eos - bos, C)
    first_chunk = tl.load(chunk_offsets + i_n)
    kc = tl.arange(0, BK)
    vc = i_v * BV + tl.arange(0, BV)
    s_offs = kc[:, None] * V + vc[None, :]
    s_mask = (kc < K)[:, None] & (vc < V)[None, :]

    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_nh.to(tl.int64) * K * V + s_offs, mask=s_mask, other=0.0).to(tl.float32)
    for i_t in range(0, n_chunks):
        row0 = bos + i_t * C
        n_valid = tl.minimum(eos - row0, C)
        h_base = h + ((first_chunk + i_t) * H + i_h).to(tl.int64) * K * V
        tl.store(h_base + s_offs, S.to(h.dtype.element_ty), mask=s_mask)

        wp, wm = tile_ptrs(w + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
        w_tile = tl.load(wp, mask=wm, other=0.0)
        up, um = tile_ptrs(u + i_h * V, row0, n_valid, H * V, i_v * BV, V, C, BV)
        vn = tl.load(up, mask=um, other=0.0).to(tl.float32)
        vn -= tl.dot(w_tile.to(dt), S.to(dt), input_precision=DOT_PREC)
        vp, vm = tile_ptrs(v_new + i_h * V, row0, n_valid, H * V, i_v * BV, V, C, BV)
        tl.store(vp, vn.to(v_new.dtype.element_ty), mask=vm)

        kp, km = tile_ptrs(k + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
        kn, _ = load_unit_rows(kp, km, USE_L2)
        G, G_last = load_cum_decay(g_cum, row0, n_valid, i_h, H, C)
        k_to_end = kn * tl.exp(G_last - G)[:, None]
        S = S * tl.exp(G_last) + tl.dot(tl.trans(k_to_end).to(dt), vn.to(dt), input_precision=DOT_PREC)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + s_offs, S, mask=s_mask)


@triton.jit(do_not_specialize=["H"])
def output_fwd_kernel(
    q, k, v_new, g_cum, h, o,
    chunk_index, cu_seqlens, scale,
    H, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    C: tl.constexpr, USE_L2: tl.constexpr, DOT_PREC: tl.constexpr,
):
    i_c, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    dt = k.dtype.element_ty
    i_n, row0, n_valid = chunk_coordinates(chunk_index, cu_seqlens, i_c, C)
    rows = tl.arange(0, C)

    qp, qm = tile_ptrs(q + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    qs, _ = load_unit_rows(qp, qm, USE_L2)
    qs = qs * scale
    kp, km = tile_ptrs(k + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    kn, _ = load_unit_rows(kp, km, USE_L2)
    G, _ = load_cum_decay(g_cum, row0, n_valid, i_h, H, C)

    causal = rows[:, None] >= rows[None, :]
    P = tl.dot(qs.to(dt), tl.trans(kn).to(dt), input_precision=DOT_PREC)
    P = tl.where(causal, P * tl.exp(tl.where(causal, G[:, None] - G[None, :], 0.0)), 0.0)

    kc = tl.arange(0, BK)
    vc = i_v * BV + tl.arange(0, BV)
    h_base = h + (i_c * H + i_h).to(tl.int64) * K * V
    S = tl.load(h_base + kc[:, None] * V + vc[None, :], mask=(kc < K)[:, None] & (vc < V)[None, :], other=0.0)
    vp, vm = tile_ptrs(v_new + i_h * V, row0, n_valid, H * V, i_v * BV, V, C, BV)
    vn = tl.load(vp, mask=vm, other=0.0)

    out = tl.dot((qs * tl.exp(G)[:, None]).to(dt), S.to(dt), input_precision=DOT_PREC)
    out += tl.dot(P.to(dt), vn.to(dt), input_precision=DOT_PREC)
    op, om = tile_ptrs(o + i_h * V, row0, n_valid, H * V, i_v * BV, V, C, BV)
    tl.store(op, out.to(o.dtype.element_ty), mask=om)
