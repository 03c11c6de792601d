"""decode_attention: one token's attention over a static KV cache, the length read on the device.

Both paths are checked against a float64 softmax over the rows 0..pos written so far; the Triton
path on the GPU when there is one, else under TRITON_INTERPRET=1 (conftest) in float32 and
float16. Positions cover the first row, a block boundary and the last row; forced split counts
cover ranges that are empty (more splits than blocks of keys) and uneven ones.
"""

from __future__ import annotations

import pytest
import torch
from gdn_kernels import decode_attention

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.bfloat16] if ON_GPU else [torch.float32, torch.float16]
# float32: float32 arithmetic in another order (~1e-7); float16/bfloat16: one rounding of the output.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def reference(q, k, v, pos, scale):
    n = int(pos) + 1
    scores = torch.einsum("bhd,bhld->bhl", q.double(), k[:, :, :n].double()) * scale
    return torch.einsum("bhl,bhld->bhd", scores.softmax(-1), v[:, :, :n].double())


def inputs(B, H, L, D, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, *s, D, generator=gen).to(DEVICE, dtype) for s in ((), (L,), (L,)))
    return q, k, v


def rel_err(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(("B", "H", "L", "D", "pos", "splits"), [
    (1, 2, 200, 64, 0, None),       # the first token: one key
    (2, 3, 200, 64, 63, None),      # the end of the first block
    (1, 2, 200, 96, 199, 3),        # the last row; a head dim that is not a power of two
    (2, 1, 130, 32, 100, 7),        # more splits than blocks: some ranges are empty
])
def test_matches_softmax_over_written_rows(dtype, backend, B, H, L, D, pos, splits):
    q, k, v = inputs(B, H, L, D, dtype)
    # Rows past pos hold garbage that must not leak into the result.
    k[:, :, pos + 1:] = 1e4
    v[:, :, pos + 1:] = float("nan") if backend == "triton" else 1e4
    position = torch.tensor([pos], device=DEVICE)
    out = decode_attention(q, k, v, position, scale=D ** -0.5, backend=backend, splits=splits)
    assert out.shape == (B, H, D) and out.dtype == dtype
    if backend == "torch":  # the masked SDPA multiplies masked rows by 0: keep them finite
        assert torch.isfinite(out).all()
    assert rel_err(out, reference(q, k, v, position, D ** -0.5)) < TOL[dtype]


def test_one_launch_serves_every_position():
    """The same tensors, the position moved on the device: the result follows the position."""
    q, k, v = inputs(1, 2, 256, 64, DTYPES[0], seed=1)
    position = torch.tensor([10], device=DEVICE)
    for pos in (10, 64, 200):
        position.fill_(pos)
        out = decode_attention(q, k, v, position, scale=0.125, backend="triton")
        assert rel_err(out, reference(q, k, v, position, 0.125)) < TOL[DTYPES[0]]


@pytest.mark.parametrize(("change", "message"), [
    (lambda q, k, v, p: (q[:, :, None], k, v, p), "q must be"),
    (lambda q, k, v, p: (q, k[:, :1], v, p), "k_cache must be"),
    (lambda q, k, v, p: (q, k, v[..., :32], p), "v_cache must be"),
    (lambda q, k, v, p: (q, k, v, p.float()), "pos must be"),
    (lambda q, k, v, p: (q, k.transpose(2, 3).contiguous().transpose(2, 3), v, p), "unit stride"),
])
def test_bad_arguments_are_named(change, message):
    q, k, v = inputs(1, 2, 64, 64, torch.float32)
    with pytest.raises(ValueError, match=message):
        decode_attention(*change(q, k, v, torch.tensor([3], device=DEVICE)), scale=0.125)
