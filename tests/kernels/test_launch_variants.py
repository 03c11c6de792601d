"""Launch configurations the kernels may be given (tile widths, warps, pipeline stages) give
the same results as the defaults: each against the float64 reference of the main tests.

On a GPU run this file in its own pytest process after the main kernel tests: a launch that
faults (an illegal address) leaves the CUDA context unusable for every later test. (Output
tiles narrower than 64 did fault on an H200 with Triton 3.6; the kernels no longer use them.)
"""

from __future__ import annotations

import dataclasses

import pytest
from gdn_kernels import triton_ops

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


# Value heads narrower than the kernels' 64-wide output tile (masked to V). On an H200 with
# Triton 3.6 the output kernel faulted at V = 32 before its tile was held at 64 or wider.
@pytest.mark.parametrize("V", [16, 32])
def test_value_heads_narrower_than_a_tile(V):
    dtype = DTYPES[0]
    B, T, H, K = (2, 300, 4, 128) if ON_GPU else (1, 70, 2, 16)
    x = make_inputs(B, T, H, K, V, dtype, n_states=B)
    check_against_reference(x, dtype, a_scale=1.3, b_scale=0.7)
