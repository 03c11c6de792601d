"""Causal depthwise short convolution + SiLU for training (gdn_kernels.short_conv_silu).

The PyTorch path ("torch") is checked bitwise against the model's ShortConv and by a float64
gradient check; the Triton path against the PyTorch path in the same dtype and against a float64
evaluation of it, on the GPU when there is one, else on the CPU under TRITON_INTERPRET=1 (set in
conftest) in float32 and float16 only, since the interpreter's bfloat16 arithmetic is not faithful.
Errors are relative: ||x - ref|| / ||ref||. Shapes stay tiny: the interpreter runs every program
in Python, and small tiles (BT = 16, BC = 32) give several partial tiles in both T and C.
"""

from __future__ import annotations

import pytest
import torch
from gdn_kernels import api, reference, short_conv_silu, triton_short_conv

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32, torch.float16]
SMALL_TILES = dict(block_t=16, block_c=32)

# Triton vs the torch path in the same dtype.
# float32: the same float32 products and sums, with exp/sigmoid from another library (and, on a
#   GPU, possibly fused multiply-adds); measured 4e-8 to 1.3e-7 on the CPU, so 1e-6 - a wrong or
#   missing tap shows up above 1e-2.
# float16: y is one float16 rounding of nearly equal float32 values, so they differ by at most an
#   ulp where a value straddles a rounding boundary. The torch path's dx is rounded to float16 once
#   per tap (autograd casts each slice's gradient to x's dtype before summing), Triton's once, so
#   dx differs by a few float16 roundings (unit roundoff 4.9e-4; measured 3.4e-4 to 4.5e-4 between
#   the paths, and against float64 2.1e-4 for Triton, 3.7e-4 for torch). dw is a float32 sum of the
#   same float32 products in another order (measured 1.3e-7).
# bfloat16 (GPU only, not yet run): as float16 with 8x the unit roundoff.
TOL = {
    torch.float32: {"y": 1e-6, "dx": 1e-6, "dw": 1e-6, "dtail": 1e-6},
    torch.float16: {"y": 1e-3, "dx": 2e-3, "dw": 1e-5, "dtail": 2e-3},
    torch.bfloat16: {"y": 8e-3, "dx": 1.6e-2, "dw": 1e-4, "dtail": 1.6e-2},
}
# Triton in float32 vs the torch path in float64 on the same inputs: a handful of float32
# roundings per element (measured ~1e-7); this is the check to run on the GPU itself.
TOL_FP64 = 1e-5


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def make_inputs(B, T, C, W, dtype, *, with_tail, seed=0, device=DEVICE):
    """Leaf tensors x [B, T, C] and tail [B, C, W-1] in dtype, weight [C, 1, W] in float32, and dy."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=gen).to(dtype)
    weight = torch.randn(C, 1, W, generator=gen) * W**-0.5
    tail = torch.randn(B, C, W - 1, generator=gen).to(dtype) if with_tail else None
    dy = torch.randn(B, T, C, generator=gen).to(dtype)
    leaves = [t.to(device).requires_grad_() if t is not None else None for t in (x, weight, tail)]
    return (*leaves, dy.to(device))


def run(fn, x, weight, tail, dy):
    """Outputs and gradients of fn on fresh copies of the leaves: (y, new tail, dx, dw, dtail)."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, weight, tail)]
    y, new_tail = fn(*leaves)
    y.backward(dy)
    grads = [t.grad if t is not None else None for t in leaves]
    return (y, new_tail, *grads)


# --- the torch path is ShortConv ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("T", [1, 2, 37])
@pytest.mark.parametrize("with_tail", [False, True], ids=["no_tail", "tail"])
def test_torch_path_is_short_conv_bitwise(dtype, T, with_tail):
    models = pytest.importorskip("gdn.models.gated_deltanet")
    B, C, W = 2, 24, 4
    x, weight, tail, dy = make_inputs(B, T, C, W, dtype, with_tail=with_tail, device="cpu")
    module = models.ShortConv(C, W)
    with torch.no_grad():
        module.conv.weight.copy_(weight)

    def with_module(x, w, t):
        return module(x, t)  # the module's own weight stands in for w; its gradient is read below

    got = run(lambda x, w, t: short_conv_silu(x, w, t, backend="torch"), x, weight, tail, dy)
    module.zero_grad()
    want = run(with_module, x, weight, tail, dy)
    want = (*want[:3], module.conv.weight.grad, want[4])
    for name, a, b in zip(("y", "new_tail", "dx", "dw", "dtail"), got, want, strict=True):
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), f"{name}: max |diff| {(a.double() - b.double()).abs().max().item():.3e}"


@pytest.mark.parametrize("T", [1, 6])
@pytest.mark.parametrize("with_tail", [False, True], ids=["no_tail", "tail"])
def test_torch_path_gradcheck_float64(T, with_tail):
    x, weight, tail, _ = make_inputs(2, T, 3, 4, torch.float64, with_tail=with_tail, device="cpu")
    weight = weight.detach().double().requires_grad_()

    def f(*args):
        return short_conv_silu(*args, backend="torch")  # y and the new tail, both differentiable

    args = (x, weight) if tail is None else (x, weight, tail)
    assert torch.autograd.gradcheck(f, args)


# --- the Triton path against the torch path ----------------------------------------------------


def check_triton(B, T, C, W, dtype, *, with_tail, **tiles):
    x, weight, tail, dy = make_inputs(B, T, C, W, dtype, with_tail=with_tail)
    got = run(lambda x, w, t: triton_short_conv.short_conv_silu(x, w, t, **tiles), x, weight, tail, dy)
    want = run(reference.short_conv, x, weight, tail, dy)
    y, new_tail, dx, dw, dtail = got
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == weight.dtype
    assert not new_tail.requires_grad
    assert torch.equal(new_tail, want[1].detach()), "new tail"
    errors = {name: rel_err(a, b) for name, a, b in zip(("y", "dx", "dw", "dtail"), (y, dx, dw, dtail),
                                                         (want[0], want[2], want[3], want[4]), strict=True)
              if b is not None and b.numel()}
    print(f"\n[{DEVICE} {dtype} B,T,C,W={B},{T},{C},{W} tail={with_tail}] triton vs torch: "
          + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    failed = {n: f"{e:.2e} > {TOL[dtype][n]:.0e}" for n, e in errors.items() if not e <= TOL[dtype][n]}
    assert not failed, f"relative errors over tolerance: {failed}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("W", [2, 4])
@pytest.mark.parametrize("with_tail", [False, True], ids=["no_tail", "tail"])
def test_triton_matches_torch_partial_tiles(dtype, W, with_tail):
    # T = 37 and T + W - 1 are not multiples of 16; C = 40 is not a multiple of 32.
    check_triton(2, 37, 40, W, dtype, with_tail=with_tail, **SMALL_TILES)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_tail", [False, True], ids=["no_tail", "tail"])
def test_triton_matches_torch_default_tiles(dtype, with_tail):
    check_triton(2, 40, 48, 4, dtype, with_tail=with_tail)  # one partial default tile each way


@pytest.mark.parametrize("T", [1, 2])
def test_triton_sequence_shorter_than_the_window(T):
    # T < W - 1: part of the new tail and of every output comes from the old tail.
    check_triton(2, T, 40, 4, torch.float32, with_tail=True, **SMALL_TILES)


def test_triton_float32_against_float64():
    """The kernels' own error: Triton on float32 inputs vs the torch path in float64 on the same values."""
    x, weight, tail, dy = make_inputs(2, 37, 40, 4, torch.float32, with_tail=True)
    got = run(lambda x, w, t: triton_short_conv.short_conv_silu(x, w, t, **SMALL_TILES), x, weight, tail, dy)
    want = run(reference.short_conv, *(t.detach().double() for t in (x, weight, tail, dy)))
    errors = {name: rel_err(got[i], want[i]) for i, name in ((0, "y"), (2, "dx"), (3, "dw"), (4, "dtail"))}
    print(f"\n[{DEVICE}] triton float32 vs torch float64: " + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    assert all(e <= TOL_FP64 for e in errors.values()), errors


def test_triton_backward_is_deterministic():
    x, weight, tail, dy = make_inputs(2, 37, 40, 4, DTYPES[-1], with_tail=True)
    first = run(lambda x, w, t: triton_short_conv.short_conv_silu(x, w, t, **SMALL_TILES), x, weight, tail, dy)
    second = run(lambda x, w, t: triton_short_conv.short_conv_silu(x, w, t, **SMALL_TILES), x, weight, tail, dy)
    for name, i in (("dx", 2), ("dw", 3), ("dtail", 4)):
        assert torch.equal(first[i], second[i]), f"{name} differs between two identical runs"


def test_triton_tail_without_gradient():
    x, weight, tail, dy = make_inputs(1, 20, 40, 4, torch.float32, with_tail=True)
    tail = tail.detach()
    y, _ = api.short_conv_silu(x, weight, tail, backend="triton")
    y.backward(dy)
    assert x.grad is not None and weight.grad is not None and tail.grad is None


# --- argument checks ---------------------------------------------------------------------------


def _bad_arguments():
    x = torch.randn(2, 5, 8)
    w = torch.randn(8, 1, 4)
    tail = torch.randn(2, 8, 3)
    return {
        "x_not_3d": ((x[0], w, None), "x must be"),
        "x_integer": ((x.long(), w, None), "x must be a floating-point"),
        "weight_2d": ((x, w[:, 0], None), "weight must be"),
        "weight_wrong_channels": ((x, torch.randn(7, 1, 4), None), "weight must be"),
        "weight_not_depthwise": ((x, torch.randn(8, 2, 4), None), "weight must be"),
        "weight_integer": ((x, w.long(), None), "weight must be a floating-point"),
        "tail_decode_layout": ((x, w, tail.transpose(1, 2).contiguous()), r"tail must be \[B, C, W-1\]"),
        "tail_wrong_width": ((x, w, tail[..., :2]), r"tail must be \[B, C, W-1\]"),
        "tail_dtype": ((x, w, tail.half()), "tail is torch.float16 but x is torch.float32"),
    }


@pytest.mark.parametrize("case", list(_bad_arguments()))
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bad_arguments_raise_value_error(case, backend):
    args, message = _bad_arguments()[case]
    with pytest.raises(ValueError, match=message):
        short_conv_silu(*args, backend=backend)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="unknown"):
        short_conv_silu(torch.randn(1, 3, 4), torch.randn(4, 1, 2), backend="cuda")


@pytest.mark.skipif(ON_GPU, reason="dtype check of the Triton path, on the CPU")
def test_triton_rejects_float64():
    x, weight, _, _ = make_inputs(1, 3, 4, 2, torch.float64, with_tail=False)
    with pytest.raises(ValueError, match="x must be one of"):
        short_conv_silu(x, weight, backend="triton")
