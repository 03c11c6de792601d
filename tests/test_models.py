import torch
from transformers import AutoModelForCausalLM

import gdn.models  # noqa: F401  (registers the Auto classes)
from gdn.build import build_model, parameter_table


def test_forward_shapes_and_loss(tiny_spec):
    for variant in ("transformer_sp", "gdn_mup"):
        model = build_model(tiny_spec, variant, 32, vocab_size=97, seed=0).model
        x = torch.randint(0, 97, (2, 11))
        out = model(x, labels=x)
        assert out.logits.shape == (2, 11, 97)
        assert torch.isfinite(out.loss)


def test_decode_continues_prefill_exactly(tiny_spec):
    torch.manual_seed(0)
    for variant in ("transformer_sp", "gdn_sp"):
        model = build_model(tiny_spec, variant, 32, vocab_size=50, seed=1).model.eval()
        x = torch.randint(0, 50, (3, 9))
        with torch.no_grad():
            full = model(x).logits
        logits, cache = model.prefill(x[:, :4])
        torch.testing.assert_close(logits, full[:, 3], rtol=1e-4, atol=1e-5)
        for t in range(4, 9):
            logits, cache = model.decode_step(x[:, t], cache)
            torch.testing.assert_close(logits, full[:, t], rtol=1e-4, atol=1e-5)


def test_gdn_prefill_in_segments_matches_one_pass_and_the_transformer_refuses(tiny_spec):
    import pytest

    gdn = build_model(tiny_spec, "gdn_mup", 32, vocab_size=50, seed=1).model.eval()
    torch.nn.init.normal_(gdn.lm_head.weight)  # μP zero-inits the readout; make logits non-trivial
    x = torch.randint(0, 50, (2, 37))
    whole, whole_cache = gdn.prefill(x)
    # 16 + 16 + 5 tokens (chunked continuations), and 12 + 12 + 12 + 1 (the last one a decode step).
    for segment in (16, 12):
        logits, cache = gdn.prefill(x, segment_len=segment)
        torch.testing.assert_close(logits, whole, rtol=1e-4, atol=1e-5)
        for layer, ref in zip(cache, whole_cache, strict=True):
            torch.testing.assert_close(layer["state"], ref["state"], rtol=1e-4, atol=1e-5)
            for tail, ref_tail in zip(layer["conv"], ref["conv"], strict=True):
                torch.testing.assert_close(tail, ref_tail)
    transformer = build_model(tiny_spec, "transformer_mup", 32, vocab_size=50, seed=1).model.eval()
    with pytest.raises(ValueError, match="cannot prefill in segments"):
        transformer.prefill(x, segment_len=16)
    transformer.prefill(x, segment_len=64)  # a segment longer than the prompt is one pass


def test_save_and_reload_through_auto_classes(tmp_path, tiny_spec):
    for variant in ("transformer_mup", "gdn_mup"):
        built = build_model(tiny_spec, variant, 64, vocab_size=61, seed=2)
        torch.nn.init.normal_(built.model.lm_head.weight)  # μP zero-inits the readout; make logits non-trivial
        built.model.save_pretrained(tmp_path / variant)
        assert (tmp_path / variant / "model.safetensors").exists()
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / variant)
        assert reloaded.config.multipliers == built.model.config.multipliers
        x = torch.randint(0, 61, (2, 7))
        torch.testing.assert_close(reloaded(x).logits, built.model(x).logits)


def test_gdn_layer_structure(tiny_spec):
    model = build_model(tiny_spec, "gdn_sp", 32, vocab_size=40, seed=0).model
    mixer = model.blocks[0].mixer
    H = mixer.n_heads
    assert mixer.a_proj.weight.shape == (H, 32) and mixer.b_proj.weight.shape == (H, 32)
    assert mixer.q_conv.conv.kernel_size == (4,)
    A = mixer.A_log.exp()
    assert A.min() >= 1 and A.max() <= 16
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001


def test_width_modes_give_expected_heads(tiny_spec):
    heads_spec = dict(tiny_spec, width_mode="heads", head_dim=8)
    by_heads = build_model(heads_spec, "gdn_sp", 64, vocab_size=40, seed=0).model.config
    by_dim = build_model(tiny_spec, "gdn_sp", 64, vocab_size=40, seed=0).model.config
    assert (by_heads.n_heads, by_heads.head_dim) == (8, 8)
    assert (by_dim.n_heads, by_dim.head_dim) == (2, 32)


def test_families_match_within_five_percent_in_shipped_quick_tier():
    import yaml

    from tests.synthetic import REPO

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    rows = parameter_table(cfg["model"], ["transformer_sp", "gdn_sp"], cfg["grid"]["widths"], 2048)
    for width in cfg["grid"]["widths"]:
        t, g = (r["total"] for r in rows if r["width"] == width)
        assert abs(t - g) / t <= 0.05, (width, t, g)


def test_short_conv_is_a_causal_depthwise_convolution_and_carries_its_tail():
    from gdn.models.gated_deltanet import ShortConv

    torch.manual_seed(0)
    conv = ShortConv(6, 4)
    x = torch.randn(2, 13, 6)
    # Reference: channels-first nn.functional.conv1d with kernel-1 zeros in front, then SiLU.
    expected = torch.nn.functional.silu(
        torch.nn.functional.conv1d(torch.nn.functional.pad(x.transpose(1, 2), (3, 0)), conv.conv.weight, groups=6)
    ).transpose(1, 2)
    y, _ = conv(x)
    torch.testing.assert_close(y, expected)
    # Split in two, the second half fed the first half's tail: the same output.
    y1, tail = conv(x[:, :5])
    y2, _ = conv(x[:, 5:], tail)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), expected)
    # One token at a time (the decoding path), each fed the previous tail: the same output.
    steps, tail = [], None
    for t in range(x.shape[1]):
        y_t, tail = conv(x[:, t : t + 1], tail)
        steps.append(y_t)
    torch.testing.assert_close(torch.cat(steps, dim=1), expected)


def test_readout_is_padded_for_alignment_but_logits_and_counts_are_the_vocabulary(tiny_spec):
    for variant in ("transformer_sp", "gdn_mup"):
        model = build_model(tiny_spec, variant, 32, vocab_size=97, seed=0).model
        assert model.lm_head.out_features == 128  # 97 padded to a multiple of 64
        torch.nn.init.normal_(model.lm_head.weight)
        x = torch.randint(0, 97, (2, 9))
        out = model(x, labels=x)
        assert out.logits.shape[-1] == 97
        out.loss.backward()
        assert model.lm_head.weight.grad[97:].abs().sum() == 0  # padding rows never act
        unpadded = sum(p.numel() for p in model.parameters()) - 31 * model.config.d_model
        assert model.num_parameters_split()["total"] == unpadded


def test_compiled_blocks_compute_the_same_loss_and_gradients(tiny_spec):
    # aot_eager exercises the compiler's graph capture (and the kernel staying outside it)
    # without needing a C++ toolchain; inductor's code generation is covered on the GPU.
    for variant in ("transformer_mup", "gdn_mup"):
        model = build_model(tiny_spec, variant, 32, vocab_size=50, seed=3).model
        torch.nn.init.normal_(model.lm_head.weight, std=0.02)
        x = torch.randint(0, 50, (2, 12))
        eager = model(x, labels=x).loss
        eager.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        keys = set(model.state_dict())
        model.compile_blocks(backend="aot_eager")
        compiled = model(x, labels=x).loss
        compiled.backward()
        assert set(model.state_dict()) == keys  # checkpoints keep their names
        torch.testing.assert_close(compiled, eager)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, grads[name], msg=name)


def test_short_conv_keeps_views_of_its_input_for_backward_not_float32_copies():
    from gdn.models.gated_deltanet import ShortConv

    conv = ShortConv(64, 4)
    x = torch.randn(2, 128, 64, dtype=torch.bfloat16, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = conv(x)
    big = [t for t in saved if t.numel() >= x.numel()]
    float32_bytes = sum(t.numel() * t.element_size() for t in big if t.dtype == torch.float32)
    # What must stay: one float32 pre-activation for SiLU's backward (and sums it needs); no
    # float32 copy per tap of the shifted input.
    assert float32_bytes <= 2 * x.numel() * 4
    assert all(t.dtype == torch.bfloat16 or t.numel() <= 2 * x.numel() for t in big)
    y.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()
