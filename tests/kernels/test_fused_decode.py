"""The fused decode step (gdn_kernels.gated_delta_decode_fused) over several tokens in a row.

The PyTorch path ("torch") is checked against a float64 composition of the separate pieces
(short convolutions with explicit tails, L2 norms, gates, reference.naive_recurrent, gated
RMSNorm); the Triton path against the PyTorch path, on the GPU when there is one, else on the
CPU under TRITON_INTERPRET=1 (set in conftest) in float32 and float16 only, since the
interpreter's bfloat16 arithmetic is not faithful. Tails and state are carried in place from
step to step on both sides. Errors are relative: ||x - ref|| / ||ref||.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from gdn_kernels import api, gated_delta_decode_fused, reference, triton_ops

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
STEPS = 3
GATE_KW = dict(a_scale=1.3, b_scale=0.7, norm_eps=1e-6)

# Torch path vs float64, per dtype of the inputs. Every intermediate is float32 in the torch path,
# so the output and the state carry a few float32 roundings (measured ~2e-7); 1e-5 catches any
# wrong term. A float16 output is also rounded once to float16 (unit roundoff 4.9e-4).
# Triton vs torch: the same float32 math in another order (measured ~2e-7 in float32); in float16
# the outputs may differ by one float16 ulp where the float32 values straddle a rounding boundary.
# Tails are copies of inputs: compared exactly.
TOL = {
    torch.float32: {"out": 1e-5, "state": 1e-5},
    torch.float16: {"out": 2e-3, "state": 1e-5},
}
DTYPES = [torch.bfloat16] if ON_GPU else [torch.float32, torch.float16]
if ON_GPU:
    TOL[torch.bfloat16] = {"out": 1.6e-2, "state": 1e-5}

NAMES = ("x_q", "x_k", "x_v", "conv_q", "conv_k", "conv_v", "tail_q", "tail_k", "tail_v",
         "a", "b", "A_log", "dt_bias", "state", "gate", "norm_weight")
TOKEN_INPUTS = ("x_q", "x_k", "x_v", "a", "b", "gate")  # new for every token
TAILS = ("tail_q", "tail_k", "tail_v")


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def make_inputs(B, H, K, V, W, dtype, *, conv_dtype=torch.float32, sliced=False, seed=0):
    """Arguments of gated_delta_decode_fused on DEVICE, with nonzero tails and state (mid-sequence).

    sliced: x_q, x_k, x_v, gate are column slices of one [B, 2HK + 2HV] tensor (a fused
    projection), so their rows are strided."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, std=1.0):
        return torch.randn(*shape, generator=gen) * std

    CK, CV = H * K, H * V
    x = {
        "conv_q": rand(CK, 1, W, std=0.5).to(conv_dtype),
        "conv_k": rand(CK, 1, W, std=0.5).to(conv_dtype),
        "conv_v": rand(CV, 1, W, std=0.5).to(conv_dtype),
        "tail_q": rand(B, W - 1, CK).to(dtype),
        "tail_k": rand(B, W - 1, CK).to(dtype),
        "tail_v": rand(B, W - 1, CV).to(dtype),
        "A_log": rand(H, std=0.5),
        "dt_bias": rand(H, std=0.5),
        "state": rand(B, H, K, V, std=0.5),
        "norm_weight": 1.0 + rand(V, std=0.2),
    }
    x.update(new_token(B, H, K, V, dtype, gen, sliced))
    return {name: t.to(DEVICE) for name, t in x.items()}


def new_token(B, H, K, V, dtype, gen, sliced=False):
    CK, CV = H * K, H * V
    if sliced:
        proj = torch.randn(B, 2 * CK + 2 * CV, generator=gen).to(dtype)
        x_q, x_k, x_v, gate = proj.split([CK, CK, CV, CV], dim=1)
    else:
        x_q, x_k, x_v, gate = (torch.randn(B, C, generator=gen).to(dtype) for C in (CK, CK, CV, CV))
    a, b = torch.randn(B, H, generator=gen), torch.randn(B, H, generator=gen)
    return {"x_q": x_q, "x_k": x_k, "x_v": x_v, "a": a, "b": b, "gate": gate}


def fused(x, H, K, backend):
    return gated_delta_decode_fused(*(x[n] for n in NAMES), n_heads=H, scale=K**-0.5, backend=backend, **GATE_KW)


def fp64_step(x, tails, S, *, H, scale, a_scale, b_scale, norm_eps):
    """The step composed from separate pieces in float64: returns (out [B, H*V], new tails, new S)."""
    d = {n: x[n].double() for n in TOKEN_INPUTS + ("conv_q", "conv_k", "conv_v", "A_log", "dt_bias", "norm_weight")}
    B = d["x_q"].shape[0]
    conv, new_tails = {}, {}
    for c in "qkv":
        # As ShortConv at T = 1 with the tail in [B, W-1, C] layout: the window is tail then input.
        window = torch.cat([tails["tail_" + c], d["x_" + c][:, None]], dim=1)
        conv[c] = F.silu((window * d["conv_" + c][:, 0, :].t()).sum(1)).view(B, H, -1)
        new_tails["tail_" + c] = window[:, 1:]
    # reference.l2_normalize and gate_from_logits compute in float32; spelled out here in float64.
    q, k = (t * torch.rsqrt((t * t).sum(-1, keepdim=True) + 1e-6) for t in (conv["q"], conv["k"]))
    g = -d["A_log"].exp() * F.softplus(d["a"] * a_scale + d["dt_bias"])
    beta = torch.sigmoid(d["b"] * b_scale)
    o, S = reference.naive_recurrent(
        q[:, None], k[:, None], conv["v"][:, None], g[:, None], beta[:, None], scale=scale,
        initial_state=S, output_final_state=True, compute_dtype=torch.float64,
    )
    V = o.shape[-1]
    gate = d["gate"].view(B, H, V)
    out = F.rms_norm(o[:, 0], (V,), d["norm_weight"], norm_eps) * F.silu(gate)
    return out.reshape(B, H * V), new_tails, S


def check(label, errors, tol):
    print(f"\n[{label}] relative errors: " + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    failed = {n: f"{e:.2e} > {tol[n.split('@')[0]]:.0e}" for n, e in errors.items() if not e <= tol[n.split("@")[0]]}
    assert not failed, f"relative errors over tolerance: {failed}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 32, 64, 4), (2, 3, 16, 16, 2), (1, 2, 24, 40, 3)], ids=str)
def test_torch_path_matches_fp64_composition(shape, dtype):
    B, H, K, V, W = shape
    x = make_inputs(B, H, K, V, W, dtype, seed=1)
    tails = {n: x[n].double() for n in TAILS}
    S = x["state"].double()
    gen = torch.Generator().manual_seed(2)
    errors = {}
    for step in range(STEPS):
        ref_out, tails, S = fp64_step(x, tails, S, H=H, scale=K**-0.5, **GATE_KW)
        out = fused(x, H, K, backend="torch")
        assert out.dtype == dtype and out.shape == (B, H * V)
        errors[f"out@{step}"] = rel_err(out, ref_out)
        errors[f"state@{step}"] = rel_err(x["state"], S)
        for n in TAILS:
            assert torch.equal(x[n].double(), tails[n]), f"{n} after step {step}"
        x.update({n: t.to(DEVICE) for n, t in new_token(B, H, K, V, dtype, gen).items()})
    check(f"torch vs fp64 {dtype} (B,H,K,V,W)={shape}", errors, TOL[dtype])


# (B, H, K, V, W, state tile, sliced projections). The tile (most elements of the [K, BV] state block
# a program holds) sets the V block: 4096 gives one V block at these sizes, 128 or 256 several (8, 2
# and 16 here), which exercises the V loop and the gathering of the output row for the norm.
TRITON_CASES = {
    "one_v_block": (2, 2, 16, 32, 4, 4096, False),
    "eight_v_blocks": (2, 2, 16, 32, 4, 128, False),
    "k_wider_than_v_sliced": (2, 2, 32, 16, 4, 256, True),
    "not_powers_of_two": (1, 2, 24, 40, 3, 256, False),
}
if ON_GPU:
    TRITON_CASES = {"k128_v128": (8, 16, 128, 128, 4, 4096, False), "k256_v256": (2, 4, 256, 256, 4, 4096, True),
                    "k64_v32": (4, 4, 64, 32, 4, 4096, False)}


# Masking is dtype-independent: the odd shape runs in the first dtype only.
TRITON_RUNS = [(case, dtype) for case in TRITON_CASES for dtype in DTYPES
               if dtype == DTYPES[0] or case != "not_powers_of_two"]


@pytest.mark.parametrize("case, dtype", TRITON_RUNS, ids=str)
def test_triton_path_matches_torch_path(case, dtype, monkeypatch):
    B, H, K, V, W, tile, sliced = TRITON_CASES[case]
    monkeypatch.setattr(triton_ops, "LAUNCH", dataclasses.replace(triton_ops.LAUNCH, fused_decode_tile=tile))
    # Half inputs come with half conv weights: the weights may be any float dtype.
    x = make_inputs(B, H, K, V, W, dtype, conv_dtype=torch.float32 if dtype == torch.float32 else dtype,
                    sliced=sliced, seed=3)
    y = {n: t.clone() for n, t in x.items()}  # the torch path's own tails and state
    gen = torch.Generator().manual_seed(4)
    errors = {}
    for step in range(STEPS):
        out = fused(x, H, K, backend="triton")
        ref = fused(y, H, K, backend="torch")
        assert out.dtype == dtype and out.shape == (B, H * V)
        errors[f"out@{step}"] = rel_err(out, ref)
        errors[f"state@{step}"] = rel_err(x["state"], y["state"])
        for n in TAILS:
            assert torch.equal(x[n], y[n]), f"{n} after step {step}"
        token = new_token(B, H, K, V, dtype, gen, sliced)
        x.update({n: t.to(DEVICE) for n, t in token.items()})
        y.update({n: t.to(DEVICE) for n, t in token.items()})
    check(f"triton vs torch {dtype} {case}", errors, TOL[dtype])


def test_auto_backend_on_cpu_is_the_torch_path():
    x = make_inputs(2, 2, 8, 8, 4, torch.float32, seed=5)
    x = {n: t.cpu() for n, t in x.items()}
    y = {n: t.clone() for n, t in x.items()}
    out = fused(x, 2, 8, backend="auto")
    ref = reference.fused_decode_step(*(y[n] for n in NAMES), n_heads=2, scale=8**-0.5, **GATE_KW)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for n in TAILS + ("state",):
        torch.testing.assert_close(x[n], y[n], rtol=0, atol=0)


def test_torch_path_matches_the_models_modules():
    """The same step through the model's ShortConv (tails in its [B, C, W-1] layout),
    gated_delta_rule_step and GatedRMSNorm, in float32."""
    models = pytest.importorskip("gdn.models.gated_deltanet")
    layers = pytest.importorskip("gdn.models.layers")
    B, H, K, V, W = 2, 2, 16, 32, 4
    x = make_inputs(B, H, K, V, W, torch.float32, seed=6)
    x = {n: t.cpu() for n, t in x.items()}
    convs = {}
    for c, C in (("q", H * K), ("k", H * K), ("v", H * V)):
        convs[c] = models.ShortConv(C, W)
        convs[c].conv.weight.data.copy_(x["conv_" + c])
    norm = layers.GatedRMSNorm(V, GATE_KW["norm_eps"])
    norm.weight.data.copy_(x["norm_weight"])
    tails = {c: x["tail_" + c].transpose(1, 2).clone() for c in "qkv"}
    S = x["state"].clone()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for step in range(STEPS):
            qkv = {}
            for c in "qkv":
                y, tails[c] = convs[c](x["x_" + c][:, None], tails[c])
                qkv[c] = y[:, 0].view(B, H, -1)
            o, S = api.gated_delta_rule_step(
                qkv["q"], qkv["k"], qkv["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], S, scale=K**-0.5,
                a_scale=GATE_KW["a_scale"], b_scale=GATE_KW["b_scale"], backend="torch",
            )
            ref = norm(o, x["gate"].view(B, H, V)).reshape(B, H * V)
            out = fused(x, H, K, backend="torch")
            assert rel_err(out, ref) < 1e-5, step
            assert rel_err(x["state"], S) < 1e-5, step
            for c in "qkv":
                assert torch.equal(x["tail_" + c], tails[c].transpose(1, 2)), (c, step)
            x.update(new_token(B, H, K, V, torch.float32, gen))


def _bad(change):
    """Valid CPU arguments (B=2, H=2, K=8, V=16, W=4) with one changed by `change(x)`."""
    x = {n: t.cpu() for n, t in make_inputs(2, 2, 8, 16, 4, torch.float32, seed=8).items()}
    change(x)
    return x


BAD_ARGUMENTS = {
    "x_k_shape": (lambda x: x.update(x_k=x["x_k"][:, :8]), "x_q .* and x_k .* must match"),
    "heads_do_not_divide": (lambda x: x.update(x_v=torch.zeros(2, 31)), "x_v has 31 channels, not a multiple"),
    "x_q_3d": (lambda x: x.update(x_q=x["x_q"][:, None]), r"x_q must be \[B, H\*head_dim\]"),
    "conv_width_differs": (lambda x: x.update(conv_v=torch.zeros(32, 1, 3)), "conv_v must be"),
    "tail_layout_transposed": (lambda x: x.update(tail_q=x["tail_q"].transpose(1, 2).contiguous()), "tail_q must be"),
    "tail_dtype": (lambda x: x.update(tail_k=x["tail_k"].half()), "tail_k is torch.float16"),
    "tail_not_contiguous": (lambda x: x.update(tail_v=x["tail_v"].transpose(0, 1).contiguous().transpose(0, 1)),
                            "tail_v must be contiguous"),
    "gate_logits_shape": (lambda x: x.update(b=x["b"][:, :1]), r"b must be \(2, 2\)"),
    "A_log_shape": (lambda x: x.update(A_log=torch.zeros(3)), r"A_log must be \(2,\)"),
    "state_shape": (lambda x: x.update(state=x["state"].transpose(2, 3).contiguous()),
                    r"state must be \(2, 2, 8, 16\)"),
    "state_dtype": (lambda x: x.update(state=x["state"].double()), "state must be float32"),
    "gate_shape": (lambda x: x.update(gate=x["gate"][:, :16]), "gate must be"),
    "norm_weight_shape": (lambda x: x.update(norm_weight=torch.ones(8)), "norm_weight must be"),
}


@pytest.mark.parametrize("bad", list(BAD_ARGUMENTS))
def test_bad_arguments_raise_a_value_error_naming_them(bad):
    change, message = BAD_ARGUMENTS[bad]
    x = _bad(change)
    with pytest.raises(ValueError, match=message):
        fused(x, 2, 8, backend="torch")


@pytest.mark.skipif(ON_GPU, reason="checks made before any launch; the CPU run covers them")
def test_triton_only_limits_raise_a_value_error():
    x = {n: t.cpu() for n, t in make_inputs(1, 1, 512, 16, 4, torch.float32, seed=9).items()}
    with pytest.raises(ValueError, match="head dims up to 256"):
        fused(x, 1, 512, backend="triton")
    x = _bad(lambda x: x.update(gate=torch.zeros(32, 2).t()))
    with pytest.raises(ValueError, match="gate need unit stride"):
        fused(x, 2, 8, backend="triton")
    with pytest.raises(ValueError, match="unknown gated delta rule backend"):
        fused(_bad(lambda x: None), 2, 8, backend="cuda")
