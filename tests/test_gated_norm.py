"""GDN's gated output norm keeps only its inputs and the per-row 1/rms for backward, computes
exactly the forward it always did, and gives the float64 gradients to float32 rounding."""

import torch
import torch.nn.functional as F

from gdn.models.layers import GatedRMSNorm, _gated_rms_norm


def _inputs(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, 2, 24, generator=gen).to(dtype).requires_grad_()
    gate = torch.randn(3, 7, 2, 24, generator=gen).to(dtype).requires_grad_()
    norm = GatedRMSNorm(24, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(24, generator=gen))
    return norm, x, gate


def test_forward_is_the_autograd_form_to_the_bit():
    for dtype in (torch.float32, torch.bfloat16):
        norm, x, gate = _inputs(dtype)
        assert torch.equal(norm(x, gate), _gated_rms_norm(x, gate, norm.weight, 1e-6))
        with torch.no_grad():
            assert torch.equal(norm(x, gate), _gated_rms_norm(x, gate, norm.weight, 1e-6))


def test_gradients_match_float64():
    norm, x, gate = _inputs(torch.float32, seed=1)
    dy = torch.randn(3, 7, 2, 24, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad(norm(x, gate), (x, gate, norm.weight), dy)
    x64, g64 = x.detach().double().requires_grad_(), gate.detach().double().requires_grad_()
    w64 = norm.weight.detach().double().requires_grad_()
    y64 = F.rms_norm(x64, (24,), w64, 1e-6) * F.silu(g64)
    reference = torch.autograd.grad(y64, (x64, g64, w64), dy.double())
    for mine, ref in zip(grads, reference, strict=True):
        assert ((mine.double() - ref).norm() / ref.norm()).item() < 1e-6


def test_backward_keeps_only_the_inputs_and_one_float_per_row():
    norm, x, gate = _inputs(torch.bfloat16)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        norm(x, gate)
    # x, gate, the weight (a parameter, not an activation) and 1/rms [..., 1] in float32
    assert len(saved) == 4
    activation_bytes = sum(t.numel() * t.element_size() for t in saved if t is not norm.weight)
    assert activation_bytes == 2 * x.numel() * 2 + x[..., :1].numel() * 4
