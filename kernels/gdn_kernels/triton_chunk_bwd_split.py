"""Chunked gated delta rule, backward: `chunk_bwd_kernel`'s work split over three kernels.

The fused kernel keeps dq, dk and the WY gradients as float32 [C, K] accumulators live at once
across its loop over V, and compiled for sm_90 it needs every register and spills (kernels/
NOTES.md). Here each kernel holds only part of that, and float32 scratch carries the rest:

1. `chunk_bwd_v_kernel`, the loop over V blocks: dv, and the V-reduced products
   d_qh = do h^T, dw = -dv_new h^T, d_kend = v_new dh^T (all [C, K]), d_scores = do v_new^T,
   the v part of dT (both [C, C]), the v part of dbeta and sum(h * dh).
2. `chunk_bwd_output_kernel`, the output's terms: dq (through the q L2 norm), the output's
   part of dk (before the k L2 norm) and of dG.
3. `chunk_bwd_wy_kernel`, the state update, the WY inverse, the gates and the k L2 norm: dk,
   da, db and the per-token terms of dA_log and d dt_bias.

The algebra is `chunk_bwd_kernel`'s, line for line (its comments explain each step); only the
order of a few float32 sums differs. All three grids are (chunks, heads). The two forms are kept
side by side, duplicated on purpose, only until a GPU run times them against each other
(`bench_chunk.py --sweep`); the slower one is then deleted rather than the two kept in step.
"""

import triton
import triton.language as tl

from gdn_kernels.triton_common import (
    chunk_coordinates,
    gate_rows,
    load_cum_decay,
    load_row_vector,
    load_unit_rows,
    sigmoid,
    tile_ptrs,
)


@triton.jit(do_not_specialize=["H"])
def chunk_bwd_v_kernel(
    v, beta_in, t_inv, h, dh, v_new, dv_new, do,
    dv, d_qh, dw_acc, d_kend, d_scores, dT_v, dbeta_v, h_dh,
    chunk_index, cu_seqlens,
    H, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    C: tl.constexpr, DOT_PREC: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    dt = v.dtype.element_ty
    i_n, row0, n_valid = chunk_coordinates(chunk_index, cu_seqlens, i_c, C)
    beta = load_row_vector(beta_in, row0, n_valid, i_h, H, C)
    tp, tm = tile_ptrs(t_inv + i_h * C, row0, n_valid, H * C, 0, C, C, C)
    Tm = tl.load(tp, mask=tm, other=0.0)

    kc = tl.arange(0, BK)
    state_base = (i_c * H + i_h).to(tl.int64) * K * V
    acc_qh = tl.zeros([C, BK], dtype=tl.float32)
    acc_w = tl.zeros([C, BK], dtype=tl.float32)
    acc_kend = tl.zeros([C, BK], dtype=tl.float32)
    acc_scores = tl.zeros([C, C], dtype=tl.float32)
    acc_T = tl.zeros([C, C], dtype=tl.float32)
    acc_beta = tl.zeros([C], dtype=tl.float32)
    acc_h_dh = tl.zeros([BK], dtype=tl.float32)
    for v0 in range(0, V, BV):
        vc = v0 + tl.arange(0, BV)
        s_offs = kc[:, None] * V + vc[None, :]
        s_mask = (kc < K)[:, None] & (vc < V)[None, :]
        S = tl.load(h + state_base + s_offs, mask=s_mask, other=0.0)
        dS = tl.load(dh + state_base + s_offs, mask=s_mask, other=0.0)
        rp, rm = tile_ptrs(do + i_h * V, row0, n_valid, H * V, v0, V, C, BV)
        do_tile = tl.load(rp, mask=rm, other=0.0)
        rp, rm = tile_ptrs(v_new + i_h * V, row0, n_valid, H * V, v0, V, C, BV)
        vn = tl.load(rp, mask=rm, other=0.0)
        rp, rm = tile_ptrs(dv_new + i_h * V, row0, n_valid, H * V, v0, V, C, BV)
        dvn = tl.load(rp, mask=rm, other=0.0).to(tl.float32)
        rp, rm = tile_ptrs(v + i_h * V, row0, n_valid, H * V, v0, V, C, BV)
        v_tile = tl.load(rp, mask=rm, other=0.0).to(tl.float32)

        acc_qh += tl.dot(do_tile.to(dt), tl.trans(S).to(dt), input_precision=DOT_PREC)
        acc_w -= tl.dot(dvn.to(dt), tl.trans(S).to(dt), input_precision=DOT_PREC)
        acc_kend += tl.dot(vn.to(dt), tl.trans(dS).to(dt), input_precision=DOT_PREC)
        acc_scores += tl.dot(do_tile.to(dt), tl.trans(vn).to(dt), input_precision=DOT_PREC)
        x_u = v_tile * beta[:, None]
        acc_T += tl.dot(dvn, tl.trans(x_u), input_precision=DOT_PREC)
        acc_h_dh += tl.sum(S.to(tl.float32) * dS.to(tl.float32), 1)
        dx_u = tl.dot(tl.trans(Tm), dvn, input_precision=DOT_PREC)
        rp, rm = tile_ptrs(dv + i_h * V, row0, n_valid, H * V, v0, V, C, BV)
        tl.store(rp, (dx_u * beta[:, None]).to(dv.dtype.element_ty), mask=rm)
        acc_beta += tl.sum(dx_u * v_tile, 1)

    rows = tl.arange(0, C)
    valid = rows < n_valid
    # The [C, K] and [C, C] scratch arrays share the layouts of k and t_inv.
    p, m = tile_ptrs(i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    tl.store(d_qh + p, acc_qh, mask=m)
    tl.store(dw_acc + p, acc_w, mask=m)
    tl.store(d_kend + p, acc_kend, mask=m)
    p, m = tile_ptrs(i_h * C, row0, n_valid, H * C, 0, C, C, C)
    tl.store(d_scores + p, acc_scores, mask=m)
    tl.store(dT_v + p, acc_T, mask=m)
    tl.store(dbeta_v + (row0 + rows).to(tl.int64) * H + i_h, acc_beta, mask=valid)
    tl.store(h_dh + i_c * H + i_h, tl.sum(acc_h_dh, 0))


@triton.jit(do_not_specialize=["H"])
def chunk_bwd_output_kernel(
    q, k, g_cum, d_qh, d_scores,
    dq, dkn_out, dG_out,
    chunk_index, cu_seqlens, scale,
    H, K: tl.constexpr, BK: tl.constexpr, C: tl.constexpr, USE_L2: tl.constexpr, DOT_PREC: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    dt = k.dtype.element_ty
    i_n, row0, n_valid = chunk_coordinates(chunk_index, cu_seqlens, i_c, C)
    rows = tl.arange(0, C)
    causal = rows[:, None] >= rows[None, :]
    strict = rows[:, None] > rows[None, :]

    qp, qm = tile_ptrs(q + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    qn, q_rnorm = load_unit_rows(qp, qm, USE_L2)
    qs = qn * scale
    kp, km = tile_ptrs(k + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    kn, _ = load_unit_rows(kp, km, USE_L2)
    G, G_last = load_cum_decay(g_cum, row0, n_valid, i_h, H, C)
    sp, sm = tile_ptrs(d_qh + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    dqs = tl.load(sp, mask=sm, other=0.0) * tl.exp(G)[:, None]
    dG = tl.sum(dqs * qs, 1)
    sp, sm = tile_ptrs(d_scores + i_h * C, row0, n_valid, H * C, 0, C, C, C)
    M = tl.where(causal, tl.exp(tl.where(causal, G[:, None] - G[None, :], 0.0)), 0.0)
    d_raw = tl.load(sp, mask=sm, other=0.0) * M
    kn_in = kn.to(dt)
    qs_in = qs.to(dt)
    raw_scores = tl.dot(qs_in, tl.trans(kn_in), input_precision=DOT_PREC)
    dqs += tl.dot(d_raw.to(dt), kn_in, input_precision=DOT_PREC)
    d_exponent = tl.where(strict, d_raw * raw_scores, 0.0)
    dG += tl.sum(d_exponent, 1) - tl.sum(d_exponent, 0)

    dqn = dqs * scale
    if USE_L2:
        dqn = q_rnorm[:, None] * (dqn - qn * tl.sum(qn * dqn, 1)[:, None])
    dqp, _ = tile_ptrs(dq + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    tl.store(dqp, dqn.to(dq.dtype.element_ty), mask=qm)
    dkn = tl.dot(tl.trans(d_raw).to(dt), qs_in, input_precision=DOT_PREC)
    op, om = tile_ptrs(dkn_out + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    tl.store(op, dkn, mask=om)
    tl.store(dG_out + (row0 + rows).to(tl.int64) * H + i_h, dG, mask=rows < n_valid)


@triton.jit(do_not_specialize=["H"])
def chunk_bwd_wy_kernel(
    k, a, b, A_log, dt_bias, g_cum, beta_in, t_inv,
    dw_acc, d_kend, dT_v, dbeta_v, h_dh, dkn_out, dG_out,
    dk, da, db, dx_tok, dalog_tok,
    chunk_index, cu_seqlens, a_scale, b_scale,
    H, K: tl.constexpr, BK: tl.constexpr, C: tl.constexpr, USE_L2: tl.constexpr, DOT_PREC: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    dt = k.dtype.element_ty
    i_n, row0, n_valid = chunk_coordinates(chunk_index, cu_seqlens, i_c, C)
    rows = tl.arange(0, C)
    valid = rows < n_valid
    strict = rows[:, None] > rows[None, :]

    kp, km = tile_ptrs(k + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    kn, k_rnorm = load_unit_rows(kp, km, USE_L2)
    G, G_last = load_cum_decay(g_cum, row0, n_valid, i_h, H, C)
    beta = load_row_vector(beta_in, row0, n_valid, i_h, H, C)
    tp, tm = tile_ptrs(t_inv + i_h * C, row0, n_valid, H * C, 0, C, C, C)
    Tm = tl.load(tp, mask=tm, other=0.0)
    sp, sm = tile_ptrs(dkn_out + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    dkn = tl.load(sp, mask=sm, other=0.0)
    dG = load_row_vector(dG_out, row0, n_valid, i_h, H, C)
    dbeta = load_row_vector(dbeta_v, row0, n_valid, i_h, H, C)

    # State update h_{n+1} = exp(G_last) h_n + (k exp(G_last - G))^T v_new.
    to_end = tl.exp(G_last - G)
    sp, sm = tile_ptrs(d_kend + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    d_kend_tile = tl.load(sp, mask=sm, other=0.0)
    dkn += d_kend_tile * to_end[:, None]
    d_to_end = tl.where(rows < n_valid - 1, tl.sum(d_kend_tile * kn, 1) * to_end, 0.0)
    dG -= d_to_end
    dG_last = tl.sum(d_to_end, 0) + tl.load(h_dh + i_c * H + i_h) * tl.exp(G_last)
    # w = T x_w with x_w = beta exp(G) k.
    eG = tl.exp(G)
    beta_eG = beta * eG
    x_w = kn * beta_eG[:, None]
    sp, sm = tile_ptrs(dw_acc + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    dw = tl.load(sp, mask=sm, other=0.0)
    sp, sm = tile_ptrs(dT_v + i_h * C, row0, n_valid, H * C, 0, C, C, C)
    dT = tl.load(sp, mask=sm, other=0.0)
    if BK > 128:
        dT += tl.dot(dw.to(dt), tl.trans(x_w).to(dt), input_precision=DOT_PREC)
        dx_w = tl.dot(tl.trans(Tm).to(dt), dw.to(dt), input_precision=DOT_PREC)
    else:
        dT += tl.dot(dw, tl.trans(x_w), input_precision=DOT_PREC)
        dx_w = tl.dot(tl.trans(Tm), dw, input_precision=DOT_PREC)
    dkn += dx_w * beta_eG[:, None]
    dxw_k = tl.sum(dx_w * kn, 1) * eG
    dbeta += dxw_k
    dG += dxw_k * beta
    # T = (I + A)^-1  ->  dA = -T^T dT T^T on the strictly lower part where A lives.
    dA = -tl.dot(tl.dot(tl.trans(Tm), dT, input_precision=DOT_PREC), tl.trans(Tm), input_precision=DOT_PREC)
    decay = tl.where(strict, tl.exp(tl.where(strict, G[:, None] - G[None, :], 0.0)), 0.0)
    kn_in = kn.to(dt)
    kkt = tl.dot(kn_in, tl.trans(kn_in), input_precision=DOT_PREC)
    dA_decay = tl.where(strict, dA, 0.0) * decay
    dbeta += tl.sum(dA_decay * kkt, 1)
    D = dA_decay * beta[:, None]
    if BK > 128:
        dkn += tl.dot((D + tl.trans(D)).to(dt), kn_in, input_precision=DOT_PREC)
    else:
        dkn += tl.dot(D, kn, input_precision=DOT_PREC) + tl.dot(tl.trans(D), kn, input_precision=DOT_PREC)
    dA_exponent = D * kkt
    dG += tl.sum(dA_exponent, 1) - tl.sum(dA_exponent, 0)

    dG = tl.where(rows == n_valid - 1, dG + dG_last, dG)
    dG = tl.where(valid, dG, 0.0)
    dg = tl.sum(dG, 0) - tl.cumsum(dG, 0) + dG

    g, _, x, one_minus_beta = gate_rows(a, b, A_log, dt_bias, row0, n_valid, i_h, a_scale, b_scale, H, C)
    dx = dg * (-tl.exp(tl.load(A_log + i_h).to(tl.float32))) * sigmoid(x)
    vec_offs = (row0 + rows).to(tl.int64) * H + i_h
    tl.store(da + vec_offs, (dx * a_scale).to(da.dtype.element_ty), mask=valid)
    tl.store(dx_tok + vec_offs, dx, mask=valid)
    tl.store(dalog_tok + vec_offs, dg * g, mask=valid)
    tl.store(db + vec_offs, (dbeta * beta * one_minus_beta * b_scale).to(db.dtype.element_ty), mask=valid)

    if USE_L2:
        dkn = k_rnorm[:, None] * (dkn - kn * tl.sum(kn * dkn, 1)[:, None])
    dkp, _ = tile_ptrs(dk + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    tl.store(dkp, dkn.to(dk.dtype.element_ty), mask=km)
