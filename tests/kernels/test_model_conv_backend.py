"""`model.conv_backend: triton` swaps GDN's short convolutions for the fused kernels without
changing what the model computes: the same loss and gradients as the model's own arithmetic
(on the CPU under the Triton interpreter, float32)."""

import torch

from gdn.build import build_model


def _loss_and_grads(model, x):
    model.zero_grad()
    loss = model(x, labels=x).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fused_short_conv_backend_gives_the_models_loss_and_gradients(tiny_spec):
    spec = {**tiny_spec, "kernel_backend": "torch"}
    reference = build_model(spec, "gdn_mup", 32, vocab_size=53, seed=4).model
    fused = build_model({**spec, "conv_backend": "triton"}, "gdn_mup", 32, vocab_size=53, seed=4).model
    assert fused.config.conv_backend == "triton" and fused.blocks[0].mixer.q_conv.backend == "triton"
    torch.nn.init.normal_(reference.lm_head.weight, std=0.3)
    fused.load_state_dict(reference.state_dict())
    x = torch.randint(0, 53, (2, 19))
    loss_ref, grads_ref = _loss_and_grads(reference, x)
    loss_fused, grads_fused = _loss_and_grads(fused, x)
    torch.testing.assert_close(loss_fused, loss_ref, rtol=1e-5, atol=1e-6)
    assert grads_fused.keys() == grads_ref.keys()
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_fused[name], grad, rtol=1e-4, atol=1e-6, msg=name)
