"""recompute_states: the chunked rule keeps only its inputs for backward and reruns the state
pass there. The gradients are the saving path's (the same kernels on the same inputs) and autograd
holds less: the chunk states h, w, v_new, t_inv and the gates are no longer kept."""

from __future__ import annotations

import pytest
import torch
from gdn_kernels import triton_ops

from tests.kernels.test_triton_gdn import DTYPES, GATE_REGIMES, make_inputs


def _run(x, recompute, cu_seqlens=None):
    leaves = {name: t.detach().clone().requires_grad_() for name, t in x.items()}
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        o, ht = triton_ops.gated_delta_rule(
            leaves["q"], leaves["k"], leaves["v"], leaves["a"], leaves["b"], leaves["A_log"], leaves["dt_bias"],
            a_scale=1.3, b_scale=0.7, initial_state=leaves.get("h0"), output_final_state=True,
            cu_seqlens=cu_seqlens, recompute_states=recompute,
        )
    gen = torch.Generator().manual_seed(3)
    ((o.float() * torch.randn(o.shape, generator=gen).to(o.device)).sum() + ht.square().sum()).backward()
    saved_bytes = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}.values())
    return o.detach(), ht.detach(), {name: t.grad for name, t in leaves.items()}, saved_bytes


@pytest.mark.parametrize("regime", ["default", *GATE_REGIMES])
def test_recomputed_states_give_the_saved_path_gradients_exactly(regime):
    dtype = DTYPES[0]
    B, T, H, K, V = (2, 300, 4, 128, 128) if torch.cuda.is_available() else (2, 70, 2, 16, 32)
    x = make_inputs(B, T, H, K, V, dtype, n_states=B, **GATE_REGIMES.get(regime, {}))
    o_saved, ht_saved, grads_saved, bytes_saved = _run(x, recompute=False)
    o_re, ht_re, grads_re, bytes_re = _run(x, recompute=True)
    assert torch.equal(o_saved, o_re) and torch.equal(ht_saved, ht_re)
    for name in grads_saved:
        assert torch.equal(grads_saved[name], grads_re[name]), name
    # Kept when recomputing: q, k, v, a, b, A_log, dt_bias, h0 (the inputs, which the model holds anyway).
    inputs = sum(t.numel() * t.element_size() for t in x.values())
    assert bytes_re <= inputs < bytes_saved


def test_recomputed_states_for_packed_sequences():
    dtype = DTYPES[0]
    lengths = [5, 64, 1, 30]
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    x = make_inputs(1, sum(lengths), 2, 16, 32, dtype, n_states=len(lengths))
    _, _, grads_saved, _ = _run(x, recompute=False, cu_seqlens=cu)
    _, _, grads_re, _ = _run(x, recompute=True, cu_seqlens=cu)
    for name in grads_saved:
        assert torch.equal(grads_saved[name], grads_re[name]), name


def test_recomputed_states_without_an_initial_state():
    """The training path: no h0 (saved as None) and no final state asked for by the model."""
    dtype = DTYPES[0]
    x = make_inputs(1, 70, 2, 16, 32, dtype)
    assert "h0" not in x
    _, _, grads_saved, _ = _run(x, recompute=False)
    _, _, grads_re, _ = _run(x, recompute=True)
    for name in grads_saved:
        assert torch.equal(grads_saved[name], grads_re[name]), name
