"""Fast decoding (gdn.models.generation): the static-cache step computes what the full forward
computes, the graph wrapper falls back cleanly where there is no CUDA, and generation through it
produces what transformers' own generate produces without any cache."""

import copy

import pytest
import torch

import gdn.models  # noqa: F401  (registers the Auto classes)
from gdn.build import build_model
from gdn.models import generation

FAMILY_VARIANTS = ("transformer_mup", "gdn_mup")


def _model(tiny_spec, variant, vocab=61, seed=1):
    model = build_model(tiny_spec, variant, 32, vocab_size=vocab, seed=seed).model.eval()
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # non-trivial logits whatever the readout init
    return model


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
@pytest.mark.parametrize("segment_len", [None, 3])
def test_static_step_equals_the_full_forward_token_by_token(tiny_spec, variant, segment_len):
    model = _model(tiny_spec, variant)
    if segment_len and not model.supports_segmented_prefill:
        pytest.skip("the Transformer prefills in one pass")
    x = torch.randint(0, 61, (2, 13))
    with torch.no_grad():
        full = model(x).logits
    cache = model.allocate_static_cache(2, 16)
    logits = model.prefill_static(x[:, :7], cache, segment_len=segment_len)
    torch.testing.assert_close(logits, full[:, 6], rtol=1e-4, atol=1e-5)
    for t in range(7, 13):
        logits = model.static_decode_step(x[:, t], cache)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-4, atol=1e-5)
    assert int(cache.pos) == 13


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_graph_wrapper_falls_back_to_the_eager_step_on_the_cpu(tiny_spec, variant):
    model = _model(tiny_spec, variant)
    x = torch.randint(0, 61, (1, 5))
    cache = model.allocate_static_cache(1, 8)
    model.prefill_static(x, cache)
    step = generation.DecodeGraph(model, cache, use_graph=True)
    assert step.path == "eager" and "CUDA" in step.fallback_reason
    reference = copy.deepcopy(model)
    ref_cache = reference.allocate_static_cache(1, 8)
    reference.prefill_static(x, ref_cache)
    token = torch.tensor([3])
    torch.testing.assert_close(step(token), reference.static_decode_step(token, ref_cache))


def test_a_prompt_that_leaves_no_room_is_refused(tiny_spec):
    model = _model(tiny_spec, "gdn_mup")
    cache = model.allocate_static_cache(1, 4)
    with pytest.raises(ValueError, match="does not fit a static cache"):
        model.prefill_static(torch.zeros(1, 4, dtype=torch.long), cache)


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_generate_with_the_static_cache_equals_generate_without_a_cache(tiny_spec, variant):
    model = _model(tiny_spec, variant)
    x = torch.randint(0, 61, (2, 6))
    fast = model.generate(x, max_new_tokens=9, do_sample=False)
    slow = super(type(model), model).generate(x, max_new_tokens=9, do_sample=False, use_cache=False,
                                              pad_token_id=0, eos_token_id=None)
    assert fast.shape == (2, 15)
    assert torch.equal(fast, slow)


def test_end_of_sequence_pads_the_rest_of_a_finished_sequence(tiny_spec):
    model = _model(tiny_spec, "transformer_mup")
    x = torch.randint(0, 61, (2, 4))
    free = generation.generate(model, x, 8)
    eos = int(free[0, 6])  # the first sequence's third generated token
    out = generation.generate(model, x, 8, eos_token_id=eos, pad_token_id=60)
    first_eos = (out[0, 4:] == eos).nonzero()[0, 0].item()
    assert torch.equal(out[0, 4 : 5 + first_eos], free[0, 4 : 5 + first_eos])
    assert (out[0, 5 + first_eos :] == 60).all()


def test_sampling_is_seeded_and_top_k_one_is_greedy(tiny_spec):
    model = _model(tiny_spec, "gdn_mup")
    x = torch.randint(0, 61, (2, 5))
    draws = [generation.generate(model, x, 6, do_sample=True, temperature=0.8, top_p=0.9,
                                 generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    greedy = generation.generate(model, x, 6)
    top1 = generation.generate(model, x, 6, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(greedy, top1)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {int(generation.sample_next(logits, True, top_p=0.75, generator=torch.Generator().manual_seed(s)))
            for s in range(200)}
    assert seen == {0, 1}


def test_a_step_past_the_end_of_the_cache_is_refused(tiny_spec):
    model = _model(tiny_spec, "transformer_mup")
    cache = model.allocate_static_cache(1, 5)
    model.prefill_static(torch.zeros(1, 3, dtype=torch.long), cache)
    step = generation.DecodeGraph(model, cache)
    step(torch.tensor([1]))
    step(torch.tensor([2]))
    with pytest.raises(ValueError, match="static cache is full"):
        step(torch.tensor([3]))


def test_a_padded_batch_is_refused_with_what_to_do(tiny_spec):
    model = _model(tiny_spec, "gdn_mup")
    x = torch.randint(0, 61, (2, 5))
    mask = torch.ones_like(x)
    mask[1, :2] = 0
    with pytest.raises(ValueError, match="equal length"):
        model.generate(x, attention_mask=mask, max_new_tokens=3)
    assert model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=3).shape == (2, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and the GPU kernels need a CUDA device")
@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_captured_step_equals_the_full_forward_on_the_gpu(tiny_spec, variant):
    """On CUDA the step runs the Triton decode kernels inside a CUDA graph; replayed token by token
    it must give the full forward's logits (float32, whole-prompt kernels)."""
    model = _model(tiny_spec, variant).cuda()
    x = torch.randint(0, 61, (2, 80), device="cuda")
    with torch.no_grad():
        full = model(x).logits
    cache = model.allocate_static_cache(2, 96)
    logits = model.prefill_static(x[:, :70], cache)
    step = generation.DecodeGraph(model, cache)
    assert step.path == "graph", step.fallback_reason
    torch.testing.assert_close(logits, full[:, 69], rtol=1e-3, atol=1e-3)
    for t in range(70, 80):
        logits = step(x[:, t])
        torch.testing.assert_close(logits, full[:, t], rtol=1e-3, atol=1e-3)
