"""Small fused kernels of the per-token decode step, where each separate PyTorch op would be one
more launch in a CUDA graph of a few hundred (a launch costs ~1-2 us there, the work ~0.1 us):

- add_rms_norm_kernel: the residual add and the next RMSNorm in one pass over a row: s = x + h,
  rounded to x's dtype and stored (the residual stream), then rms_norm(s) * weight;
- silu_mul_kernel: SwiGLU's activation on the fused gate/up product, silu(g) * u.

Both compute in float32 and round once at the end, one program per row.
"""

import triton
import triton.language as tl


@triton.jit
def add_rms_norm_kernel(x, h, weight, x_out, y_out, stride_x, stride_h, stride_xo, stride_yo, N, eps,
                        HAS_H: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    s = tl.load(x + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_H:
        s = (s.to(tl.float32) + tl.load(h + row * stride_h + cols, mask=mask, other=0.0).to(tl.float32))
        s = s.to(x_out.dtype.element_ty)
        tl.store(x_out + row * stride_xo + cols, s, mask=mask)
    sf = s.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(sf * sf, axis=0) / N + eps)
    w = tl.load(weight + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_out + row * stride_yo + cols, (sf * rstd * w).to(y_out.dtype.element_ty), mask=mask)


@triton.jit
def silu_mul_kernel(gate_up, out, stride_in, stride_out, N, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    g = tl.load(gate_up + row * stride_in + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gate_up + row * stride_in + N + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out + row * stride_out + cols, (g / (1.0 + tl.exp(-g)) * u).to(out.dtype.element_ty), mask=mask)


@triton.jit
def rope_kv_write_kernel(qkv, cos, sin, pos, q_out, k_cache, v_cache, stride_qkv_b, stride_qo_b, stride_qo_h,
                         stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl, stride_cos,
                         H, D: tl.constexpr, HALF: tl.constexpr, HP: tl.constexpr):
    """Program (b, h): rotary embedding of q and k at position pos (read on the device), q written to
    q_out, k and v written into the caches' row pos. qkv rows hold q, k, v heads back to back."""
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    p = tl.load(pos)
    i = tl.arange(0, HP)
    m = i < HALF
    # The tables rounded to the activations' dtype first, as the eager path does.
    c = tl.load(cos + p * stride_cos + i, mask=m, other=0.0).to(qkv.dtype.element_ty).to(tl.float32)
    s = tl.load(sin + p * stride_cos + i, mask=m, other=0.0).to(qkv.dtype.element_ty).to(tl.float32)
    row = qkv + b * stride_qkv_b
    q1 = tl.load(row + h * D + i, mask=m, other=0.0).to(tl.float32)
    q2 = tl.load(row + h * D + HALF + i, mask=m, other=0.0).to(tl.float32)
    k1 = tl.load(row + (H + h) * D + i, mask=m, other=0.0).to(tl.float32)
    k2 = tl.load(row + (H + h) * D + HALF + i, mask=m, other=0.0).to(tl.float32)
    qo = q_out + b * stride_qo_b + h * stride_qo_h
    tl.store(qo + i, (q1 * c - q2 * s).to(q_out.dtype.element_ty), mask=m)
    tl.store(qo + HALF + i, (q2 * c + q1 * s).to(q_out.dtype.element_ty), mask=m)
    kr = k_cache + b * stride_kb + h * stride_kh + p * stride_kl
    tl.store(kr + i, (k1 * c - k2 * s).to(k_cache.dtype.element_ty), mask=m)
    tl.store(kr + HALF + i, (k2 * c + k1 * s).to(k_cache.dtype.element_ty), mask=m)
    vr = v_cache + b * stride_vb + h * stride_vh + p * stride_vl
    for half in tl.static_range(2):
        tl.store(vr + half * HALF + i, tl.load(row + (2 * H + h) * D + half * HALF + i, mask=m), mask=m)
