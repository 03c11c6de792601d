"""A whole Gated DeltaNet layer step for one token, between the projections and o_proj, in one kernel.

One program per (sequence, head) does, in float32 registers:
  1. the short convolutions of q, k (the head's K channels) and v (its V channels, block by block):
     y = silu(sum_i w[c, i] window[i, c]), window = the W-1 stored inputs then the new one; the
     stored inputs (the tail) are shifted in place;
  2. the L2 norms of q and k and the query scale;
  3. the gate g and write strength beta from the raw logits;
  4. the delta rule on the float32 state, in place, over blocks of BV value columns:
     S <- exp(g) S; u = beta (v - S^T k); S <- S + k u^T; o = S^T (scale q);
  5. the gated RMSNorm of the head's whole output row: rms_norm(o) * weight * silu(gate).

Why one program per head rather than one per (head, V block) as in decode_step_kernel: the
RMSNorm needs the sum of squares over the full row of V outputs, and the q/k tails are shared
by all the V blocks of a head (one program per head owns them, so the in-place shift cannot race
with another program's read). The state is still never held whole: the program walks it in
[K, BV] tiles, each read and written once, and gathers its BV outputs into the [V] row it keeps
for the norm (a register gather, cheap next to the tile's own arithmetic; a second kernel or a
second pass over V would need a float32 scratch row, an allocation, or would read the state
twice). So: one kernel launch per call. The cost is parallelism (B*H programs), which matters
little for decoding, where the launches dominate at small batch and there are many heads times
sequences at large batch. Launch sizes (4 warps, tiles of 4096 elements) are not tuned on a GPU.
"""

import triton
import triton.language as tl

from gdn_kernels.triton_common import sigmoid, softplus


@triton.jit
def short_conv_step(x_row, tail_row, w, w_stride_c, w_stride_t, chan, mask, C, W: tl.constexpr):
    """silu(conv) of one sequence's new input at channels `chan`, in float32; shifts its tail in place.

    x_row points at the sequence's new input [C], tail_row at its tail [W-1, C] (oldest row first).
    The shift is done after every read of the tail, with a barrier between each read and the write
    that follows it: where the CTA has more threads than `chan` has elements, several threads hold
    the same element, and without the barriers one thread's write could land before another
    thread's read of the same address (seen on an H200: wrong tails at 16 channels per head).
    """
    x = tl.load(x_row + chan, mask=mask, other=0.0)
    y = tl.zeros(chan.shape, dtype=tl.float32)
    for i in tl.static_range(W - 1):
        prev = tl.load(tail_row + i * C + chan, mask=mask, other=0.0)
        y += tl.load(w + chan * w_stride_c + i * w_stride_t, mask=mask, other=0.0).to(tl.float32) * prev.to(tl.float32)
    y += tl.load(w + chan * w_stride_c + (W - 1) * w_stride_t, mask=mask, other=0.0).to(tl.float32) * x.to(tl.float32)
    for i in tl.static_range(1, W - 1):
        row = tl.load(tail_row + i * C + chan, mask=mask, other=0.0)
        tl.debug_barrier()
        tl.store(tail_row + (i - 1) * C + chan, row, mask=mask)
        tl.debug_barrier()
    if W > 1:
        tl.store(tail_row + (W - 2) * C + chan, x, mask=mask)
    return y * sigmoid(y)


@triton.jit
def fused_decode_kernel(
    x_q, x_k, x_v, conv_q, conv_k, conv_v, tail_q, tail_k, tail_v,
    a, b, A_log, dt_bias, state, gate, norm_weight, out,
    stride_xq, stride_xk, stride_xv, stride_a, stride_b, stride_gate,
    stride_cq, stride_cq_t, stride_ck, stride_ck_t, stride_cv, stride_cv_t,
    scale, a_scale, b_scale, norm_eps,
    H, K: tl.constexpr, V: tl.constexpr, W: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, VP: tl.constexpr,
):
    i_bh = tl.program_id(0)
    i_b, i_h = i_bh // H, i_bh % H
    CK, CV = H * K, H * V  # channels of q/k and of v

    kc = tl.arange(0, BK)
    k_ok = kc < K
    q = short_conv_step(x_q + i_b * stride_xq, tail_q + i_b * (W - 1) * CK, conv_q, stride_cq, stride_cq_t,
                        i_h * K + kc, k_ok, CK, W)
    k = short_conv_step(x_k + i_b * stride_xk, tail_k + i_b * (W - 1) * CK, conv_k, stride_ck, stride_ck_t,
                        i_h * K + kc, k_ok, CK, W)
    q = q * tl.rsqrt(tl.sum(q * q, 0) + 1e-6) * scale
    k = k * tl.rsqrt(tl.sum(k * k, 0) + 1e-6)

    x = tl.load(a + i_b * stride_a + i_h).to(tl.float32) * a_scale + tl.load(dt_bias + i_h).to(tl.float32)
    decay = tl.exp(-tl.exp(tl.load(A_log + i_h).to(tl.float32)) * softplus(x))
    beta = sigmoid(tl.load(b + i_b * stride_b + i_h).to(tl.float32) * b_scale)

    S_head = state + i_bh.to(tl.int64) * K * V
    v_all = tl.arange(0, VP)
    o_row = tl.zeros([VP], dtype=tl.float32)
    for i_v in range(VP // BV):
        vc = i_v * BV + tl.arange(0, BV)
        v_ok = vc < V
        v = short_conv_step(x_v + i_b * stride_xv, tail_v + i_b * (W - 1) * CV, conv_v, stride_cv, stride_cv_t,
                            i_h * V + vc, v_ok, CV, W)
        ptrs = S_head + kc[:, None] * V + vc[None, :]
        mask = k_ok[:, None] & v_ok[None, :]
        S = tl.load(ptrs, mask=mask, other=0.0) * decay
        u = beta * (v - tl.sum(S * k[:, None], 0))
        S += k[:, None] * u[None, :]
        tl.store(ptrs, S, mask=mask)
        o = tl.sum(S * q[:, None], 0)
        if BV == VP:
            o_row = o
        else:
            # Place the block's outputs in the row: a register gather through a [BV, VP] one-hot
            # (the launcher keeps it no larger than a state tile). Every entry is written once, so
            # the sum adds exact zeros.
            o_row += tl.sum(tl.where(vc[:, None] == v_all[None, :], o[:, None], 0.0), 0)

    v_ok = v_all < V
    rstd = tl.rsqrt(tl.sum(o_row * o_row, 0) / V + norm_eps)
    gt = tl.load(gate + i_b * stride_gate + i_h * V + v_all, mask=v_ok, other=0.0).to(tl.float32)
    nw = tl.load(norm_weight + v_all, mask=v_ok, other=0.0).to(tl.float32)
    y = o_row * rstd * nw * (gt * sigmoid(gt))
    tl.store(out + i_b * CV + i_h * V + v_all, y.to(out.dtype.element_ty), mask=v_ok)
