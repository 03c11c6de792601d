"""The decode step's small fused kernels (add_rms_norm, silu_mul, rope_kv_write): the Triton path
against the PyTorch reference (the models' own eager arithmetic), on the GPU when there is one, else
under TRITON_INTERPRET=1 in float32 and float16. The Triton kernels round once at the end where the
eager ops round after each op, so low-precision outputs may differ by about one unit of rounding."""

from __future__ import annotations

import pytest
import torch
from gdn_kernels import add_rms_norm, rope_kv_write, silu_mul

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.bfloat16] if ON_GPU else [torch.float32, torch.float16]
TOL = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def randn(*shape, dtype, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_branch", [True, False])
def test_add_rms_norm(dtype, with_branch):
    x, w = randn(3, 200, dtype=dtype), randn(200, dtype=dtype, seed=1)
    h = randn(3, 200, dtype=dtype, seed=2) if with_branch else None
    s, y = add_rms_norm(x, h, w, 1e-6, backend="triton")
    s_ref, y_ref = add_rms_norm(x, h, w, 1e-6, backend="torch")
    assert torch.equal(s, s_ref)  # the residual add rounds once in both
    assert rel_err(y, y_ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(dtype):
    gate_up = randn(2, 2 * 1500, dtype=dtype)
    assert rel_err(silu_mul(gate_up, backend="triton"), silu_mul(gate_up, backend="torch")) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos", [0, 5, 9])
def test_rope_kv_write(dtype, pos):
    B, H, L, D = 2, 3, 10, 16
    qkv = randn(B, 3 * H * D, dtype=dtype)
    angles = torch.randn(L, D // 2, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    cos, sin = angles.cos(), angles.sin()
    position = torch.tensor([pos], device=DEVICE)
    caches = {}
    for backend in ("triton", "torch"):
        k, v = randn(B, H, L, D, dtype=dtype, seed=4), randn(B, H, L, D, dtype=dtype, seed=5)
        q = rope_kv_write(qkv, cos, sin, position, k, v, backend=backend)
        caches[backend] = (q, k, v)
    (q, k, v), (q_ref, k_ref, v_ref) = caches["triton"], caches["torch"]
    assert rel_err(q, q_ref) < TOL[dtype] and rel_err(k, k_ref) < TOL[dtype]
    assert torch.equal(v, v_ref)  # v is copied as is
    others = [i for i in range(L) if i != pos]
    assert torch.equal(k[:, :, others], randn(B, H, L, D, dtype=dtype, seed=4)[:, :, others])  # only row pos written


def test_bad_shapes_are_named():
    x = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="add_rms_norm"):
        add_rms_norm(x, torch.zeros(2, 4), torch.ones(8), 1e-6)
    with pytest.raises(ValueError, match="silu_mul"):
        silu_mul(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="rope_kv_write"):
        rope_kv_write(torch.zeros(2, 10), torch.zeros(4, 2), torch.zeros(4, 2), torch.tensor([0]),
                      torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
