"""The chunked gated delta rule (the CPU training path) against the step-by-step definition."""

import pytest
import torch
from gdn_kernels import gated_delta_rule, gated_delta_rule_step, reference


def _inputs(B=2, T=37, H=2, K=8, V=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g, dtype=dtype)
    k = reference.l2_normalize(torch.randn(B, T, H, K, generator=g, dtype=dtype))
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    gate = -torch.rand(B, T, H, generator=g, dtype=dtype) * 2
    beta = torch.rand(B, T, H, generator=g, dtype=dtype)
    S0 = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    return q, k, v, gate, beta, S0


@pytest.mark.parametrize("T, chunk", [(1, 16), (16, 16), (37, 16), (70, 64)])
def test_chunked_matches_naive_float64(T, chunk):
    q, k, v, g, beta, S0 = _inputs(T=T)
    o_ref, s_ref = reference.naive_recurrent(q, k, v, g, beta, initial_state=S0, output_final_state=True)
    o, s = reference.chunked(q, k, v, g, beta, initial_state=S0, output_final_state=True, chunk_size=chunk)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


def test_chunked_gradients_match_naive_float64():
    tensors = [t.requires_grad_() for t in _inputs(T=21)]
    o, s = reference.chunked(*tensors[:5], initial_state=tensors[5], output_final_state=True, chunk_size=8)
    grads = torch.autograd.grad((o.sum() + (s * s).sum()), tensors)
    o_ref, s_ref = reference.naive_recurrent(*tensors[:5], initial_state=tensors[5], output_final_state=True)
    grads_ref = torch.autograd.grad((o_ref.sum() + (s_ref * s_ref).sum()), tensors)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_packed_sequences_are_independent():
    q, k, v, g, beta, _ = _inputs(B=1, T=40)
    bounds = [0, 3, 19, 40]
    o, states = reference.chunked(q, k, v, g, beta, cu_seqlens=torch.tensor(bounds), output_final_state=True,
                                  chunk_size=8)
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        o_ref, s_ref = reference.naive_recurrent(q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], beta[:, s:e],
                                                 output_final_state=True)
        torch.testing.assert_close(o[:, s:e], o_ref)
        torch.testing.assert_close(states[i : i + 1], s_ref)


def test_decode_steps_continue_a_prefill():
    g = torch.Generator().manual_seed(3)
    B, T, H, K, V = 2, 12, 2, 8, 8
    q, k, v = (torch.randn(B, T, H, D, generator=g, dtype=torch.float64) for D in (K, K, V))
    a, b = (torch.randn(B, T, H, generator=g, dtype=torch.float64) for _ in range(2))
    A_log, dt_bias = torch.rand(H, dtype=torch.float64) + 0.5, torch.randn(H, dtype=torch.float64)
    kw = dict(a_scale=0.5, b_scale=0.7)
    o_full, _ = gated_delta_rule(q, k, v, a, b, A_log, dt_bias, **kw)
    o_pre, state = gated_delta_rule(q[:, :5], k[:, :5], v[:, :5], a[:, :5], b[:, :5], A_log, dt_bias,
                                    output_final_state=True, **kw)
    outs = [o_pre]
    for t in range(5, T):
        o_t, state = gated_delta_rule_step(q[:, t], k[:, t], v[:, t], a[:, t], b[:, t], A_log, dt_bias, state, **kw)
        outs.append(o_t[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), o_full)


def test_unknown_backend_is_an_error():
    q, k, v, g, beta, _ = _inputs(T=4)
    with pytest.raises(ValueError, match="unknown gated delta rule backend"):
        gated_delta_rule(q, k, v, g, beta, torch.zeros(2), torch.zeros(2), backend="cuda-magic")
