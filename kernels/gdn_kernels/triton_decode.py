"""One-token recurrent step for generation after a chunked prefill.

Per (batch, head, block of V columns): S <- exp(g) S; u = beta (v - S^T k);
S <- S + k u^T; o = S^T (scale q). The gate and the q/k norms are formed in-kernel
from the raw logits, as in the chunked path. The state stays float32.
"""

import triton
import triton.language as tl

from gdn_kernels.triton_common import sigmoid, softplus


@triton.jit(do_not_specialize=["H"])
def decode_step_kernel(
    q, k, v, a, b, A_log, dt_bias, state, new_state, o,
    scale, a_scale, b_scale,
    H, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_L2: tl.constexpr,
):
    i_bh, i_v = tl.program_id(0), tl.program_id(1)
    i_h = i_bh % H
    kc = tl.arange(0, BK)
    vc = i_v * BV + tl.arange(0, BV)
    k_ok = kc < K
    v_ok = vc < V

    q_vec = tl.load(q + i_bh * K + kc, mask=k_ok, other=0.0).to(tl.float32)
    k_vec = tl.load(k + i_bh * K + kc, mask=k_ok, other=0.0).to(tl.float32)
    if USE_L2:
        q_vec = q_vec * tl.rsqrt(tl.sum(q_vec * q_vec, 0) + 1e-6)
        k_vec = k_vec * tl.rsqrt(tl.sum(k_vec * k_vec, 0) + 1e-6)
    v_vec = tl.load(v + i_bh * V + vc, mask=v_ok, other=0.0).to(tl.float32)
    x = tl.load(a + i_bh).to(tl.float32) * a_scale + tl.load(dt_bias + i_h).to(tl.float32)
    g = -tl.exp(tl.load(A_log + i_h).to(tl.float32)) * softplus(x)
    beta = sigmoid(tl.load(b + i_bh).to(tl.float32) * b_scale)

    s_offs = i_bh.to(tl.int64) * K * V + kc[:, None] * V + vc[None, :]
    s_mask = k_ok[:, None] & v_ok[None, :]
    S = tl.load(state + s_offs, mask=s_mask, other=0.0).to(tl.float32) * tl.exp(g)
    u = beta * (v_vec - tl.sum(S * k_vec[:, None], 0))
    S += k_vec[:, None] * u[None, :]
    out = tl.sum(S * (q_vec * scale)[:, None], 0)
    tl.store(new_state + s_offs, S.to(new_state.dtype.element_ty), mask=s_mask)
    tl.store(o + i_bh * V + vc, out.to(o.dtype.element_ty), mask=v_ok)
