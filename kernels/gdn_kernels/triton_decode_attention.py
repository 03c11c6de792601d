"""Attention of one new token over a static KV cache whose length lives on the device (split-KV).

A decode step's query is one row per (sequence, head), so a kernel with one program per
(sequence, head) keeps B*H SMs busy: 16 of an H200's 132 at batch 1, too few to read a 16k-token
cache at the card's bandwidth. Here the cached keys are split into `splits` contiguous ranges
("flash-decoding"): program (b*h, s) reduces its range to a running maximum m, a sum of
exponentials l and an unnormalised output row, and a second kernel merges the ranges:
o = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s, M = max_s m_s.

The number of valid keys, pos + 1, is read from a device tensor inside the kernels and each range
is cut from that length, not from the buffer's: the same launch serves every position, so the step
can be captured in a CUDA graph and still reads only the keys written so far.
"""

import triton
import triton.language as tl


@triton.jit
def decode_attention_partial_kernel(
    q, k, v, pos, part_acc, part_m, part_l,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl,
    H, scale, SPLITS: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b, h = bh // H, bh % H
    n = tl.load(pos).to(tl.int32) + 1  # keys 0..pos are written; pos is the current token's row
    # Each split gets a whole number of blocks, so that ranges never overlap.
    blocks = tl.cdiv(n, BLOCK_N)
    per_split = tl.cdiv(blocks, SPLITS)
    start = split * per_split * BLOCK_N
    end = tl.minimum(start + per_split * BLOCK_N, n)
    d = tl.arange(0, DP)
    d_mask = d < D
    qv = tl.load(q + b * stride_qb + h * stride_qh + d, mask=d_mask, other=0.0).to(tl.float32) * scale
    m = tl.full((), float("-inf"), tl.float32)
    l_sum = tl.zeros((), tl.float32)
    acc = tl.zeros((DP,), tl.float32)
    k_base = k + b * stride_kb + h * stride_kh
    v_base = v + b * stride_vb + h * stride_vh
    for block_start in range(start, end, BLOCK_N):
        rows = block_start + tl.arange(0, BLOCK_N)
        row_mask = rows < end
        tile_mask = row_mask[:, None] & d_mask[None, :]
        kt = tl.load(k_base + rows[:, None] * stride_kl + d[None, :], mask=tile_mask, other=0.0).to(tl.float32)
        scores = tl.sum(kt * qv[None, :], axis=1)
        scores = tl.where(row_mask, scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(scores - m_new)
        vt = tl.load(v_base + rows[:, None] * stride_vl + d[None, :], mask=tile_mask, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * vt, axis=0)
        l_sum = l_sum * alpha + tl.sum(p, axis=0)
        m = m_new
    slot = bh * SPLITS + split
    tl.store(part_acc + slot * DP + d, acc)
    tl.store(part_m + slot, m)
    tl.store(part_l + slot, l_sum)


@triton.jit
def decode_attention_merge_kernel(part_acc, part_m, part_l, out, stride_ob, stride_oh, H,
                                  SPLITS: tl.constexpr, SP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr):
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    s = tl.arange(0, SP)
    s_mask = s < SPLITS
    m = tl.load(part_m + bh * SPLITS + s, mask=s_mask, other=float("-inf"))
    l_sum = tl.load(part_l + bh * SPLITS + s, mask=s_mask, other=0.0)
    m_max = tl.max(m, axis=0)
    # An empty range (more splits than blocks) has m = -inf and l = 0: weight 0.
    weight = tl.where(m > float("-inf"), tl.exp(m - m_max), 0.0)
    d = tl.arange(0, DP)
    acc = tl.load(part_acc + (bh * SPLITS + s)[:, None] * DP + d[None, :], mask=s_mask[:, None], other=0.0)
    o = tl.sum(acc * weight[:, None], axis=0) / tl.sum(l_sum * weight, axis=0)
    tl.store(out + b * stride_ob + h * stride_oh + d, o.to(out.dtype.element_ty), mask=d < D)
