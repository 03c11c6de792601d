"""The inference table's outside models (gdn.bench.peers): timing and cache accounting on the CPU with
a small transformers Llama; fla's models need its package and a GPU and are checked there."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gdn.bench import peers

SHAPE = {"name": "tiny", "width": 64, "base_width": 32, "n_layers": 2, "width_mode": "head_dim", "n_heads": 4,
         "gdn_expand_v": 2, "mlp_ratio": {"transformer": 2.75, "gdn": 1.42}}


def test_llama_config_has_our_transformer_shape():
    config = peers._llama_config(SHAPE, vocab=100, max_len=64)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.head_dim) == (64, 2, 4, 16)
    assert config.intermediate_size == 176  # 2.75 x 64, as our Transformer's MLP


def test_timing_splits_prefill_from_decoding():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, vocab_size=50, pad_token_id=0)).eval()
    row = peers._time(model, prompt_len=8, batch=2, decode_tokens=4, device=torch.device("cpu"), iters=1, vocab=50)
    assert row["generate_ms"] > 0 and row["prefill_ms"] > 0
    assert row["decode_tokens_per_s"] == 2 / (row["decode_ms_per_token"] / 1e3)
    # the prompt's KV cache: 1 layer x (K and V) x batch 2 x 2 heads x 8 tokens x 16 dims x 4 bytes
    assert row["cache_bytes"] == 1 * 2 * 2 * 2 * 8 * 16 * 4


def test_shared_tensors_are_counted_once():
    t = torch.zeros(10)
    assert peers._tensor_bytes({"a": t, "b": [t, torch.zeros(2)]}) == 48


def test_a_peer_off_cuda_is_listed_as_skipped():
    rows = peers.measure("fla_rwkv7", SHAPE, 16, 1, 4, torch.device("cpu"), 1, 100, target_params=1000)
    assert rows[0]["status"] == "skipped" and rows[0]["path"] == "fla-generate"


def test_our_gdn_parameter_count_is_the_models():
    from gdn.bench import shapes

    model = shapes.build(SHAPE, "gdn_mup", 100, torch.device("cpu"), torch.float32)
    assert peers.gdn_parameter_count(SHAPE, 100) == model.num_parameters_split()["total"]


def _fla_or_skip():
    """fla comes with the test extra; outside CI a missing package skips, saying so, in CI it fails."""
    import os

    import pytest

    try:
        import fla  # noqa: F401
    except ImportError as error:
        reason = f"flash-linear-attention is not installed ({error})"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI installs it with the test extra")
        pytest.skip(reason)


def test_each_fla_peer_gets_the_layer_count_closest_to_our_gdn_size():
    """The configs fla's models are built from are checked here, on the meta device: a wrong key
    or a layer count the model cannot take (RWKV-7 divides by layers - 1) fails on the CPU
    instead of costing a GPU run."""
    _fla_or_skip()
    vocab = 100
    shape = dict(SHAPE, n_layers=4)
    target = peers.gdn_parameter_count(shape, vocab)
    for peer in ("fla_gdn", "fla_mamba2", "fla_rwkv7"):
        cls = peers._fla_class(peer)
        layers = peers.matched_layers(peer, shape, vocab, target)
        counts = {n: peers._count_on_meta(cls, peers._fla_config(peer, shape, vocab, n))
                  for n in (layers - 1, layers, layers + 1) if n >= 2}
        assert min(counts, key=lambda n: abs(counts[n] - target)) == layers, (peer, counts, target)
    # fla's GDN at our shape and depth is our GDN's size, give or take its own details.
    fla_gdn = peers._count_on_meta(peers._fla_class("fla_gdn"), peers._fla_config("fla_gdn", shape, vocab))
    assert abs(fla_gdn - target) / target < 0.05, (fla_gdn, target)


def test_a_peer_without_its_fast_path_packages_says_so(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "causal_conv1d" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    note = peers.missing_fast_path("fla_mamba2")
    assert note and "causal_conv1d" in note and "fastest" in note
    assert peers.missing_fast_path("fla_rwkv7") is None and peers.missing_fast_path("hf_llama") is None
