"""Launch configurations the kernels may be given (tile widths, warps, pipeline stages) give
the same results as the defaults: each against the float64 reference of the main tests.

On a GPU run this file in its own pytest process after the main kernel tests: a launch that
faults (an illegal address) leaves the CUDA context unusable for every later test. (Output
tiles narrower than 64 did fault on an H200 with Triton 3.6; the kernels no longer use them.)
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from gdn_kernels import triton_ops

from tests.kernels import test_triton_gdn as main_tests
from tests.kernels.test_triton_gdn import DTYPES, ON_GPU, check_against_reference, make_inputs

# Wide state tiles: with the SM count taken as 1 the state kernels keep their first-choice
# V tile instead of narrowing it for parallelism (what large batches get on a real card).
VARIANTS = {
    "wide_state_tiles": ({}, 1),
    "state_three_stages": ({"state_stages": 3}, None),
    "output_tile_128": ({"output_block_v": 128}, None),
    "backward_tile_16": ({"bwd_block_v": 16}, None),
    "backward_four_warps": ({"bwd_warps": 4}, None),
}
SHAPE = (2, 300, 4, 128, 128) if ON_GPU else (1, 70, 2, 16, 64)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_launch_variant_matches_fp64(variant, monkeypatch):
    change, sm_count = VARIANTS[variant]
    monkeypatch.setattr(triton_ops, "LAUNCH", dataclasses.replace(triton_ops.LAUNCH, **change))
    if sm_count is not None:
        monkeypatch.setattr(triton_ops, "_sm_count", lambda device: sm_count)
    monkeypatch.setattr(triton_ops, "_FITTING", {})
    dtype = DTYPES[0]
    x = make_inputs(*SHAPE, dtype, n_states=SHAPE[0])
    check_against_reference(x, dtype, a_scale=1.3, b_scale=0.7)


# Heads narrower than 64. On an H200 with Triton 3.6 the chunk kernels faulted (an illegal
# address) at value heads of 16 and 32, so on CUDA such heads are zero-padded to 64 and cut back.
# On the CPU the interpreter runs them unpadded, and again with the padding forced on, so the
# padding's own algebra (outputs, state and every gradient unchanged) is checked here too.
@pytest.mark.parametrize("padded", [True] if ON_GPU else [False, True], ids=lambda p: "padded" if p else "unpadded")
@pytest.mark.parametrize("K, V", [(128, 16), (128, 32), (32, 64)] if ON_GPU else [(16, 16), (8, 32)])
def test_heads_narrower_than_64(K, V, padded, monkeypatch):
    if padded and not ON_GPU:
        monkeypatch.setattr(triton_ops, "_head_padding", lambda dim, device: max(0, 64 - dim))
    dtype = DTYPES[0]
    B, T, H = (2, 300, 4) if ON_GPU else (1, 70, 2)
    x = make_inputs(B, T, H, K, V, dtype, n_states=B)
    check_against_reference(x, dtype, a_scale=1.3, b_scale=0.7)


@pytest.mark.skipif(ON_GPU, reason="forces on the CPU the padding CUDA applies to narrow heads")
def test_decode_with_padded_heads(monkeypatch):
    monkeypatch.setattr(triton_ops, "_head_padding", lambda dim, device: max(0, 64 - dim))
    main_tests.test_decode_steps_continue_a_chunked_prefill(DTYPES[0])


# The backward's chunk-parallel part split over three kernels (LaunchConfig.bwd_split): every
# gradient against float64 at each main shape (K = 256 takes its own operand branch), for
# packed sequences and without the L2 norm, and against the fused kernel's gradients.
def _split_backward(monkeypatch, **change):
    monkeypatch.setattr(triton_ops, "LAUNCH", dataclasses.replace(triton_ops.LAUNCH, bwd_split=True, **change))


@pytest.mark.parametrize("shape_name", list(main_tests.SHAPES))
def test_split_backward_matches_fp64(shape_name, monkeypatch):
    _split_backward(monkeypatch)
    dtype = DTYPES[0]
    B, T, H, K, V = main_tests.SHAPES[shape_name]
    check_against_reference(make_inputs(B, T, H, K, V, dtype, n_states=B), dtype, a_scale=1.3, b_scale=0.7)


@pytest.mark.skipif(ON_GPU, reason="compile-time flags covered by the CPU run")
def test_split_backward_packed_sequences_without_l2(monkeypatch):
    _split_backward(monkeypatch, bwd_split_block_v=32)
    dtype = DTYPES[0]
    lengths = [5, 64, 1, 30]
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    x = make_inputs(1, sum(lengths), 2, 16, 64, dtype, n_states=len(lengths), use_l2=False)
    check_against_reference(x, dtype, cu_seqlens=cu, use_l2=False, scale=0.5)


def _gradients(x, **kwargs):
    leaves = {name: t.detach().clone().requires_grad_() for name, t in x.items()}
    o, ht = triton_ops.gated_delta_rule(leaves["q"], leaves["k"], leaves["v"], leaves["a"], leaves["b"],
                                        leaves["A_log"], leaves["dt_bias"], initial_state=leaves["h0"],
                                        output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(2)
    ((o.float() * torch.randn(o.shape, generator=gen).to(o.device)).sum() + ht.sum()).backward()
    return {name: t.grad for name, t in leaves.items()}


@pytest.mark.parametrize("regime", list(main_tests.GATE_REGIMES))
def test_split_backward_equals_the_fused_kernel(regime, monkeypatch):
    """Same algebra, a few float32 sums in another order: the gradients agree far inside the
    float64 tolerances, in every gate regime (where a dropped or doubled term would show)."""
    dtype = DTYPES[0]
    B, T, H, K, V = (1, 500, 2, 128, 128) if ON_GPU else (1, 70, 1, 16, 16)
    x = make_inputs(B, T, H, K, V, dtype, n_states=B, **main_tests.GATE_REGIMES[regime])
    fused = _gradients(x, a_scale=1.3, b_scale=0.7)
    _split_backward(monkeypatch)
    split = _gradients(x, a_scale=1.3, b_scale=0.7)
    limit = 1e-5 if dtype == torch.float32 else 1e-2
    for name in fused:
        assert main_tests.rel_err(split[name], fused[name]) <= limit, name
