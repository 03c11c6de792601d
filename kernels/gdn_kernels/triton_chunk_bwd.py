"""Chunked gated delta rule, backward: two kernels.

1. `state_bwd_kernel` (sequential over chunks, last to first) carries dh, the gradient
   of the chunk-entry state, and with it the full gradient of v_new:
       dv_new_n = P_n^T do_n + (k exp(G_last - G)) dh_{n+1}
       dh_n     = exp(G_last) dh_{n+1} + (scale q exp(G))^T do_n - w_n^T dv_new_n
   where P_n are the decayed causal scores of the forward's output kernel.
2. `chunk_bwd_kernel` (all chunks in parallel) turns h, dh, v_new and dv_new into the
   gradients of q, k, v, beta and the cumulative decay G, back-propagates through the
   WY inverse T = (I + A)^-1 (dA = -T^T dT T^T), the in-chunk cumsum, the gate
   g = -exp(A_log) softplus(a_scale a + dt_bias), beta = sigmoid(b_scale b) and the q/k
   L2 norms, and writes da, db and the per-token terms that sum to dA_log and d dt_bias.
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
def state_bwd_kernel(
    q, k, w, g_cum, do, dh, dv_new, dht, dh0,
    chunk_offsets, cu_seqlens, scale,
    H, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    C: tl.constexpr, USE_L2: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    dt = k.dtype.element_ty
    bos = tl.load(cu_seqlens + i_n)
    eos = tl.load(cu_seqlens + i_n + 1)
    n_chunks = tl.cdiv(eos - bos, C)
    first_chunk = tl.load(chunk_offsets + i_n)
    rows = tl.arange(0, C)
    causal = rows[:, None] >= rows[None, :]
    kc = tl.arange(0, BK)
    vc = i_v * BV + tl.arange(0, BV)
    s_offs = kc[:, None] * V + vc[None, :]
    s_mask = (kc < K)[:, None] & (vc < V)[None, :]

    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dS += tl.load(dht + i_nh.to(tl.int64) * K * V + s_offs, mask=s_mask, other=0.0).to(tl.float32)
    for j in range(0, n_chunks):
        i_t = n_chunks - 1 - j
        row0 = bos + i_t * C
        n_valid = tl.minimum(eos - row0, C)
        dh_base = dh + ((first_chunk + i_t) * H + i_h).to(tl.int64) * K * V
        tl.store(dh_base + s_offs, dS.to(dh.dtype.element_ty), mask=s_mask)

        qp, qm = tile_ptrs(q + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
        qs, _ = load_unit_rows(qp, qm, USE_L2)
        qs = qs * scale
        kp, km = tile_ptrs(k + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
        kn, _ = load_unit_rows(kp, km, USE_L2)
        wp, wm = tile_ptrs(w + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
        w_tile = tl.load(wp, mask=wm, other=0.0)
        G, G_last = load_cum_decay(g_cum, row0, n_valid, i_h, H, C)
        dop, dom = tile_ptrs(do + i_h * V, row0, n_valid, H * V, i_v * BV, V, C, BV)
        do_tile = tl.load(dop, mask=dom, other=0.0)

        P = tl.dot(qs.to(dt), tl.trans(kn).to(dt), input_precision=DOT_PREC)
        P = tl.where(causal, P * tl.exp(tl.where(causal, G[:, None] - G[None, :], 0.0)), 0.0)
        k_to_end = kn * tl.exp(G_last - G)[:, None]
        dvn = tl.dot(tl.trans(P).to(dt), do_tile.to(dt), input_precision=DOT_PREC)
        dvn += tl.dot(k_to_end.to(dt), dS.to(dt), input_precision=DOT_PREC)
        dvp, dvm = tile_ptrs(dv_new + i_h * V, row0, n_valid, H * V, i_v * BV, V, C, BV)
        tl.store(dvp, dvn.to(dv_new.dtype.element_ty), mask=dvm)

        q_decayed = qs * tl.exp(G)[:, None]
        dS = dS * tl.exp(G_last)
        dS += tl.dot(tl.trans(q_decayed).to(dt), do_tile.to(dt), input_precision=DOT_PREC)
        dS -= tl.dot(tl.trans(w_tile).to(dt), dvn.to(dt), input_precision=DOT_PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + s_offs, dS, mask=s_mask)


@triton.jit(do_not_specialize=["H"])
def chunk_bwd_kernel(
    q, k, v, a, b, A_log, dt_bias,
    g_cum, beta_in, t_inv, h, dh, v_new, dv_new, do,
    dq, dk, dv, da, db, dx_tok, dalog_tok,
    chunk_index, cu_seqlens, scale, a_scale, b_scale,
    H, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    C: tl.constexpr, USE_L2: tl.constexpr, DOT_PREC: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    dt = k.dtype.element_ty
    i_n, row0, n_valid = chunk_coordinates(chunk_index, cu_seqlens, i_c, C)
    rows = tl.arange(0, C)
    valid = rows < n_valid
    causal = rows[:, None] >= rows[None, :]
    strict = rows[:, None] > rows[None, :]

    qp, qm = tile_ptrs(q + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    qn, q_rnorm = load_unit_rows(qp, qm, USE_L2)
    qs = qn * scale
    kp, km = tile_ptrs(k + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    kn, k_rnorm = load_unit_rows(kp, km, USE_L2)
    G, G_last = load_cum_decay(g_cum, row0, n_valid, i_h, H, C)
    beta = load_row_vector(beta_in, row0, n_valid, i_h, H, C)
    tp, tm = tile_ptrs(t_inv + i_h * C, row0, n_valid, H * C, 0, C, C, C)
    Tm = tl.load(tp, mask=tm, other=0.0)

    kc = tl.arange(0, BK)
    state_base = (i_c * H + i_h).to(tl.int64) * K * V
    d_qh = tl.zeros([C, BK], dtype=tl.float32)  # do h^T
    dw = tl.zeros([C, BK], dtype=tl.float32)
    d_kend = tl.zeros([C, BK], dtype=tl.float32)  # gradient of k exp(G_last - G)
    d_scores = tl.zeros([C, C], dtype=tl.float32)  # do v_new^T
    dT = tl.zeros([C, C], dtype=tl.float32)
    dbeta = tl.zeros([C], dtype=tl.float32)
    h_dh = tl.zeros([BK], dtype=tl.float32)
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

        d_qh += tl.dot(do_tile.to(dt), tl.trans(S).to(dt), input_precision=DOT_PREC)
        dw -= tl.dot(dvn.to(dt), tl.trans(S).to(dt), input_precision=DOT_PREC)
        d_kend += tl.dot(vn.to(dt), tl.trans(dS).to(dt), input_precision=DOT_PREC)
        d_scores += tl.dot(do_tile.to(dt), tl.trans(vn).to(dt), input_precision=DOT_PREC)
        x_u = v_tile * beta[:, None]
        dT += tl.dot(dvn, tl.trans(x_u), input_precision=DOT_PREC)
        h_dh += tl.sum(S.to(tl.float32) * dS.to(tl.float32), 1)
        # u = T x_u  ->  d x_u = T^T du, with du = dv_new.
        dx_u = tl.dot(tl.trans(Tm), dvn, input_precision=DOT_PREC)
        rp, rm = tile_ptrs(dv + i_h * V, row0, n_valid, H * V, v0, V, C, BV)
        tl.store(rp, (dx_u * beta[:, None]).to(dv.dtype.element_ty), mask=rm)
        dbeta += tl.sum(dx_u * v_tile, 1)

    eG = tl.exp(G)
    # Inter-chunk output term (scale q exp(G)) h.
    dqs = d_qh * eG[:, None]
    dG = tl.sum(dqs * qs, 1)
    # Intra-chunk output term (scale q k^T * exp(G_i - G_j) * causal) v_new.
    M = tl.where(causal, tl.exp(tl.where(causal, G[:, None] - G[None, :], 0.0)), 0.0)
    d_raw = d_scores * M
    if BK > 128:
        # One input-dtype copy of q and k each, shared by every product below: separate
        # conversions per product kept too many [C, K] operand buffers alive at K = 256.
        kn_in = kn.to(dt)
        qs_in = qs.to(dt)
        raw_scores = tl.dot(qs_in, tl.trans(kn_in), input_precision=DOT_PREC)
        dqs += tl.dot(d_raw.to(dt), kn_in, input_precision=DOT_PREC)
        dkn = tl.dot(tl.trans(d_raw).to(dt), qs_in, input_precision=DOT_PREC)
    else:
        raw_scores = tl.dot(qs.to(dt), tl.trans(kn).to(dt), input_precision=DOT_PREC)
        dqs += tl.dot(d_raw.to(dt), kn.to(dt), input_precision=DOT_PREC)
        dkn = tl.dot(tl.trans(d_raw).to(dt), qs.to(dt), input_precision=DOT_PREC)
    # The diagonal's exponent G_i - G_i is constant; leaving it in would add and subtract
    # the same O(1) term, and the float32 residue swamps the true dg when the decay is
    # strong (dg ~ exp(g) ~ 1e-13).
    d_exponent = tl.where(strict, d_raw * raw_scores, 0.0)
    dG += tl.sum(d_exponent, 1) - tl.sum(d_exponent, 0)
    # State update h_{n+1} = exp(G_last) h_n + (k exp(G_last - G))^T v_new.
    to_end = tl.exp(G_last - G)
    dkn += d_kend * to_end[:, None]
    # Same for the last valid row, whose exponent G_last - G_last is constant.
    d_to_end = tl.where(rows < n_valid - 1, tl.sum(d_kend * kn, 1) * to_end, 0.0)
    dG -= d_to_end
    dG_last = tl.sum(d_to_end, 0) + tl.sum(h_dh, 0) * tl.exp(G_last)
    # w = T x_w with x_w = beta exp(G) k.
    beta_eG = beta * eG
    x_w = kn * beta_eG[:, None]
    if BK > 128:
        # At K = 256 float32 [C, K] dot operands need more shared memory than Hopper has
        # (328 KiB for this kernel compiled for sm_90); the input dtype halves them.
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
    if BK > 128:
        kkt = tl.dot(kn_in, tl.trans(kn_in), input_precision=DOT_PREC)
    else:
        kkt = tl.dot(kn.to(dt), tl.trans(kn).to(dt), input_precision=DOT_PREC)
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
    # G_s = sum_{t<=s} g_t  ->  dg_t = sum_{s>=t} dG_s.
    dg = tl.sum(dG, 0) - tl.cumsum(dG, 0) + dG

    g, _, x, one_minus_beta = gate_rows(a, b, A_log, dt_bias, row0, n_valid, i_h, a_scale, b_scale, H, C)
    dx = dg * (-tl.exp(tl.load(A_log + i_h).to(tl.float32))) * sigmoid(x)
    vec_offs = (row0 + rows).to(tl.int64) * H + i_h
    tl.store(da + vec_offs, (dx * a_scale).to(da.dtype.element_ty), mask=valid)
    tl.store(dx_tok + vec_offs, dx, mask=valid)
    tl.store(dalog_tok + vec_offs, dg * g, mask=valid)
    tl.store(db + vec_offs, (dbeta * beta * one_minus_beta * b_scale).to(db.dtype.element_ty), mask=valid)

    dqn = dqs * scale
    if USE_L2:
        # x -> x r with r = (|x|^2 + eps)^-1/2:  dx = r (dy - y (y . dy)), y = x r.
        dqn = q_rnorm[:, None] * (dqn - qn * tl.sum(qn * dqn, 1)[:, None])
        dkn = k_rnorm[:, None] * (dkn - kn * tl.sum(kn * dkn, 1)[:, None])
    dqp, _ = tile_ptrs(dq + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    tl.store(dqp, dqn.to(dq.dtype.element_ty), mask=qm)
    dkp, _ = tile_ptrs(dk + i_h * K, row0, n_valid, H * K, 0, K, C, BK)
    tl.store(dkp, dkn.to(dk.dtype.element_ty), mask=km)
