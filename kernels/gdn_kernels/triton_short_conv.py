"""Causal depthwise short convolution + SiLU for training, fused in Triton (forward and backward).

For x [B, T, C], a depthwise weight [C, 1, W] (nn.Conv1d layout) and an optional tail [B, C, W-1]
of the inputs preceding x (None: zeros), with padded = cat(tail^T, x) along time:

    pre[b, t, c] = sum_{i<W} w[c, i] * padded[b, t + i, c]      (float32)
    y = silu(pre), stored in x's dtype

the math of gdn.models.gated_deltanet.ShortConv. Eager autograd on ShortConv keeps several float32
temporaries per convolution for the backward; here autograd keeps only x, the weight and the tail,
and the backward recomputes the pre-activation from them.

Forward: one program per (T block, C block, sequence). The T block plus its W-1 rows of halo are read
as W overlapping [BT, BC] tiles, one per tap, shifted by one row each; the overlap is served from
the cache, so DRAM sees x about once. Rows before the start of x come from the tail (or are zero).

Backward: with g = dy * silu'(pre) and rows indexed in padded time p in [0, T + W - 1):

    d padded[p] = sum_i w[:, i] * g[p - i]     (g = 0 outside [0, T))
    dx[t] = d padded[t + W - 1],  d tail[j] = d padded[j] for j < W - 1
    dw[:, i] = sum_{b, t} g[b, t] * padded[b, t + i]

One program per (padded-time block, C block, sequence) gathers d padded for its rows, recomputing g
at the W shifts it needs (W x W tap products per element; the kernel is memory bound, so the extra
arithmetic and the cached re-reads are cheap next to saving a float32 copy of g or pre). The same
program computes g for its own rows once more at shift 0 and forms its partial sums of dw; these go
to a float32 buffer [B * n_blocks, C, W] (one slot per program, every slot written once) that
torch.sum reduces afterwards. No atomics, so dw is bitwise reproducible run to run; the buffer is
W * 4 / (BT * itemsize) of x's size (1/8 for bfloat16 x, W = 4, BT = 64), and only lives during
the backward.

The tail is differentiable (d tail is written when the tail requires a gradient). The new tail
returned beside y (the last W-1 inputs, [B, C, W-1]) is NOT: it is a detached copy, which is all
the decode cache needs. Double backward is not supported.

STATUS: opt-in and not wired into the model. Checked only on the CPU under TRITON_INTERPRET=1, in
float32 and float16. Before the model uses it, on a GPU:
  * run tests/kernels/test_short_conv.py there (it compares the Triton gradients, float32 inputs,
    with a float64 reference on the GPU itself): Triton 3.6 on Hopper is known to miscompile some
    backward kernels in this repository (kernels/NOTES.md), and the interpreter cannot show that;
  * time forward + backward against the eager and the torch.compile'd ShortConv at training shapes
    (B * T = 16k-64k tokens, C = 2048-4096, bfloat16); block sizes and warps are untuned;
  * measure the activation memory saved per layer (torch.cuda.max_memory_allocated over a step).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gdn_kernels.triton_common import sigmoid

# Untuned defaults: [64, 64] tiles, 4096 elements, 32 per thread with 4 warps.
BLOCK_T = 64
BLOCK_C = 64
NUM_WARPS = 4
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _load_padded(x, tail, i_b, p, chan, cmask, T, sx_b, sx_t, sx_c, st_b, st_c, st_w,
                 W: tl.constexpr, HAS_TAIL: tl.constexpr):
    """[len(p), len(chan)] float32 tile of padded[i_b, p, chan]; zero for rows outside [0, T + W - 1).

    Row p of padded is x row p - (W - 1), or tail column p when p < W - 1.
    """
    s = p - (W - 1)
    in_x = (s >= 0) & (s < T)
    s = tl.where(in_x, s, 0)  # keep masked-off addresses inside the tensor
    ptrs = x + i_b * sx_b + s.to(tl.int64)[:, None] * sx_t + chan[None, :] * sx_c
    v = tl.load(ptrs, mask=in_x[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    if HAS_TAIL:
        in_tail = (p >= 0) & (p < W - 1)
        j = tl.where(in_tail, p, 0)
        tptrs = tail + i_b * st_b + chan[None, :] * st_c + j[:, None] * st_w
        prev = tl.load(tptrs, mask=in_tail[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        v = tl.where(in_tail[:, None], prev, v)
    return v


@triton.jit
def _tap_weight(w, chan, cmask, i, sw_c, sw_w):
    return tl.load(w + chan * sw_c + i * sw_w, mask=cmask, other=0.0).to(tl.float32)


@triton.jit
def _pre_activation(x, w, tail, i_b, t, chan, cmask, T, sx_b, sx_t, sx_c, st_b, st_c, st_w, sw_c, sw_w,
                    W: tl.constexpr, HAS_TAIL: tl.constexpr):
    """sum_i w[:, i] * padded[t + i], taps in ShortConv's order, float32."""
    acc = tl.zeros((t.shape[0], chan.shape[0]), dtype=tl.float32)
    for i in tl.static_range(W):
        tap = _load_padded(x, tail, i_b, t + i, chan, cmask, T, sx_b, sx_t, sx_c, st_b, st_c, st_w, W, HAS_TAIL)
        acc += _tap_weight(w, chan, cmask, i, sw_c, sw_w)[None, :] * tap
    return acc


@triton.jit
def _grad_pre(x, w, tail, dy, i_b, t, chan, cmask, T, sx_b, sx_t, sx_c, st_b, st_c, st_w, sw_c, sw_w,
              sd_b, sd_t, sd_c, W: tl.constexpr, HAS_TAIL: tl.constexpr):
    """dy * silu'(pre) at rows t, recomputing pre; zero for rows outside [0, T)."""
    pre = _pre_activation(x, w, tail, i_b, t, chan, cmask, T, sx_b, sx_t, sx_c, st_b, st_c, st_w, sw_c, sw_w,
                          W, HAS_TAIL)
    valid = (t >= 0) & (t < T)
    t_safe = tl.where(valid, t, 0)
    mask = valid[:, None] & cmask[None, :]
    d = tl.load(dy + i_b * sd_b + t_safe.to(tl.int64)[:, None] * sd_t + chan[None, :] * sd_c,
                mask=mask, other=0.0).to(tl.float32)
    s = sigmoid(pre)
    # silu'(z) = s (1 + z (1 - s)), as PyTorch's silu_backward.
    return tl.where(mask, d * s * (1.0 + pre * (1.0 - s)), 0.0)


@triton.jit
def short_conv_fwd_kernel(x, w, tail, y, T, C, sx_b, sx_t, sx_c, st_b, st_c, st_w, sw_c, sw_w,
                          W: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, HAS_TAIL: tl.constexpr):
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    t = i_t * BT + tl.arange(0, BT)
    chan = i_c * BC + tl.arange(0, BC)
    cmask = chan < C
    pre = _pre_activation(x, w, tail, i_b, t, chan, cmask, T, sx_b, sx_t, sx_c, st_b, st_c, st_w, sw_c, sw_w,
                          W, HAS_TAIL)
    out = pre * sigmoid(pre)
    # y is allocated contiguous [B, T, C].
    ptrs = y + (i_b * T + t.to(tl.int64))[:, None] * C + chan[None, :]
    tl.store(ptrs, out.to(y.dtype.element_ty), mask=(t < T)[:, None] & cmask[None, :])


@triton.jit
def short_conv_bwd_kernel(x, w, tail, dy, dx, dtail, dw_part, T, C, n_blocks,
                          sx_b, sx_t, sx_c, st_b, st_c, st_w, sw_c, sw_w, sd_b, sd_t, sd_c,
                          W: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                          HAS_TAIL: tl.constexpr, WRITE_DTAIL: tl.constexpr):
    """dx and d tail of rows p of padded time, and this program's partial sums of dw."""
    i_p, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    p = i_p * BT + tl.arange(0, BT)
    chan = i_c * BC + tl.arange(0, BC)
    cmask = chan < C

    dpad = tl.zeros((BT, BC), dtype=tl.float32)
    for k in tl.static_range(W):
        g = _grad_pre(x, w, tail, dy, i_b, p - k, chan, cmask, T, sx_b, sx_t, sx_c, st_b, st_c, st_w, sw_c, sw_w,
                      sd_b, sd_t, sd_c, W, HAS_TAIL)
        dpad += _tap_weight(w, chan, cmask, k, sw_c, sw_w)[None, :] * g
        if k == 0:
            # g at this block's own rows t = p: each t < T belongs to exactly one block, so the
            # blocks' partial sums add up to dw over all of (b, t) once.
            slot = dw_part + ((i_b * n_blocks + i_p) * C + chan) * W
            for i in tl.static_range(W):
                tap = _load_padded(x, tail, i_b, p + i, chan, cmask, T, sx_b, sx_t, sx_c, st_b, st_c, st_w,
                                   W, HAS_TAIL)
                tl.store(slot + i, tl.sum(g * tap, 0), mask=cmask)

    # dx and dtail are allocated contiguous: [B, T, C] and [B, C, W - 1].
    s = p - (W - 1)
    in_x = (s >= 0) & (s < T)
    s = tl.where(in_x, s, 0)
    tl.store(dx + (i_b * T + s.to(tl.int64))[:, None] * C + chan[None, :], dpad.to(dx.dtype.element_ty),
             mask=in_x[:, None] & cmask[None, :])
    if WRITE_DTAIL:
        in_tail = (p >= 0) & (p < W - 1)
        j = tl.where(in_tail, p, 0)
        tl.store(dtail + (i_b * C + chan[None, :]) * (W - 1) + j[:, None], dpad.to(dtail.dtype.element_ty),
                 mask=in_tail[:, None] & cmask[None, :])


def _tail_args(x: torch.Tensor, tail: torch.Tensor | None):
    """Pointer and strides of the tail; x stands in (never read) when there is none."""
    if tail is None:
        return x, (0, 0, 0)
    return tail, tuple(tail.stride())


def _forward(x, weight, tail, block_t, block_c):
    B, T, C = x.shape
    W = weight.shape[-1]
    y = torch.empty(B, T, C, device=x.device, dtype=x.dtype)
    tail_ptr, st = _tail_args(x, tail)
    grid = (triton.cdiv(T, block_t), triton.cdiv(C, block_c), B)
    short_conv_fwd_kernel[grid](
        x, weight, tail_ptr, y, T, C, *x.stride(), *st, weight.stride(0), weight.stride(2),
        W=W, BT=block_t, BC=block_c, HAS_TAIL=tail is not None, num_warps=NUM_WARPS,
    )
    return y


def _backward(dy, x, weight, tail, want_dtail, block_t, block_c):
    B, T, C = x.shape
    W = weight.shape[-1]
    n_blocks = triton.cdiv(T + W - 1, block_t)
    dx = torch.empty(B, T, C, device=x.device, dtype=x.dtype)
    dtail = torch.empty(B, C, W - 1, device=x.device, dtype=tail.dtype) if want_dtail else dx
    # Every slot is written by exactly one program, so no zero fill.
    dw_part = torch.empty(B * n_blocks, C, W, device=x.device, dtype=torch.float32)
    tail_ptr, st = _tail_args(x, tail)
    grid = (n_blocks, triton.cdiv(C, block_c), B)
    short_conv_bwd_kernel[grid](
        x, weight, tail_ptr, dy, dx, dtail, dw_part, T, C, n_blocks,
        *x.stride(), *st, weight.stride(0), weight.stride(2), *dy.stride(),
        W=W, BT=block_t, BC=block_c, HAS_TAIL=tail is not None, WRITE_DTAIL=want_dtail, num_warps=NUM_WARPS,
    )
    dw = dw_part.sum(0).view(C, 1, W).to(weight.dtype)
    return dx, dw, (dtail if want_dtail else None)


class ShortConvSiLU(torch.autograd.Function):
    """y = silu(causal depthwise conv(x)); saves x, weight, tail and recomputes the rest."""

    @staticmethod
    def forward(ctx, x, weight, tail, block_t, block_c):
        ctx.save_for_backward(x, weight, tail)
        ctx.blocks = (block_t, block_c)
        return _forward(x, weight, tail, block_t, block_c)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, tail = ctx.saved_tensors
        want_dtail = tail is not None and ctx.needs_input_grad[2]
        dx, dw, dtail = _backward(dy, x, weight, tail, want_dtail, *ctx.blocks)
        return dx, dw, dtail, None, None


def new_tail(x: torch.Tensor, tail: torch.Tensor | None, width: int) -> torch.Tensor:
    """The last width-1 inputs of cat(tail^T, x) as [B, C, width-1], detached (as ShortConv's second output).

    Only the last 2 (width - 1) rows are concatenated, so this copies O(B C W) whatever T is.
    """
    B, T, C = x.shape
    with torch.no_grad():
        before = x.new_zeros(B, width - 1, C) if tail is None else tail.transpose(1, 2)
        recent = torch.cat([before, x[:, max(0, T - (width - 1)):]], dim=1)
        return recent[:, recent.shape[1] - (width - 1):].transpose(1, 2)


def short_conv_silu(x: torch.Tensor, weight: torch.Tensor, tail: torch.Tensor | None = None, *,
                    block_t: int = BLOCK_T, block_c: int = BLOCK_C):
    """Fused forward/backward; arguments as api.short_conv_silu (checked there). Returns (y, new tail).

    block_t, block_c: tile sizes (powers of two), exposed so tests can cover partial tiles on small
    shapes.
    """
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"short_conv_silu (triton): x must be one of {SUPPORTED_DTYPES}, got {x.dtype}")
    if min(x.shape) == 0:
        raise ValueError(f"short_conv_silu (triton): x must be non-empty, got {tuple(x.shape)}")
    y = ShortConvSiLU.apply(x, weight, tail, block_t, block_c)
    return y, new_tail(x, tail, weight.shape[-1])
