import math

import pytest
import torch

from gdn import parametrization as P
from gdn.build import build_model


def _roles(built):
    return {name: info.role for name, info in built.infos.items()}


def test_roles_follow_shapes_when_widening_head_dim(tiny_spec):
    built = build_model(tiny_spec, "gdn_mup", 64, vocab_size=50, seed=0)
    roles = _roles(built)
    assert roles["embed.weight"] == "embedding"
    assert roles["lm_head.weight"] == "readout"
    assert roles["blocks.0.mixer.q_proj.weight"] == "hidden"
    assert roles["blocks.0.mixer.o_proj.weight"] == "hidden"
    assert roles["blocks.0.mlp.down_proj.weight"] == "hidden"
    # Fixed head count: a and b map width -> H (finite): gate role.
    assert roles["blocks.0.mixer.a_proj.weight"] == "gate"
    assert roles["blocks.0.mixer.A_log"] == "vector"
    assert roles["blocks.0.mixer.q_conv.conv.weight"] == "vector"


def test_gates_are_hidden_when_widening_by_heads(tiny_spec):
    spec = dict(tiny_spec, width_mode="heads", head_dim=8)
    built = build_model(spec, "gdn_mup", 64, vocab_size=50, seed=0)
    assert _roles(built)["blocks.0.mixer.a_proj.weight"] == "hidden"
    # ... so gating normalization and the readout-style rule coincide in that mode.
    nogn = build_model(spec, "gdn_mup_nogn", 64, vocab_size=50, seed=0)
    assert built.model.config.multipliers == nogn.model.config.multipliers


@pytest.mark.parametrize("variant, a_mult", [("gdn_sp", 1.0), ("gdn_mup", 0.5), ("gdn_mup_nogn", 0.25)])
def test_gate_multipliers(tiny_spec, variant, a_mult):
    built = build_model(tiny_spec, variant, 64, vocab_size=50, seed=0)  # m = 64 / 16 = 4
    mixer = built.model.blocks[0].mixer
    assert mixer.a_proj.multiplier == pytest.approx(a_mult)
    assert mixer.b_proj.multiplier == pytest.approx(a_mult)


def test_hidden_rules_scale_init_and_lr(tiny_spec):
    base = build_model(tiny_spec, "gdn_mup", 16, vocab_size=50, seed=0)
    wide = build_model(tiny_spec, "gdn_mup", 256, vocab_size=50, seed=0)  # m = 16
    name = "blocks.0.mixer.v_proj.weight"
    std_ratio = dict(wide.model.named_parameters())[name].std() / dict(base.model.named_parameters())[name].std()
    assert std_ratio.item() == pytest.approx(0.25, rel=0.1)
    groups = P.optimizer_groups(wide.model, wide.infos, lr=1e-2, weight_decay=0.1)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name[name]["lr"] == pytest.approx(1e-2 / 16)
    assert by_name[name]["weight_decay"] == pytest.approx(0.1 * 16)  # lr * wd fixed
    assert by_name["lm_head.weight"]["lr"] == pytest.approx(1e-2)
    assert by_name["blocks.0.mixer.a_proj.weight"]["lr"] == pytest.approx(1e-2 / 4)  # gating normalization: / sqrt(m)
    assert by_name["blocks.0.mixer.A_log"]["weight_decay"] == 0.0
    assert by_name["embed.weight"]["weight_decay"] == 0.0
    assert wide.model.lm_head.weight.abs().sum() == 0  # zero-initialized readout


def test_gate_preactivation_size_is_width_independent_only_with_gating_normalization(tiny_spec):
    """At init: GN keeps |a| flat in width; the readout-style rule shrinks it like 1/sqrt(m)."""
    sizes = {}
    for variant in ("gdn_mup", "gdn_mup_nogn"):
        for width in (32, 512):
            model = build_model(tiny_spec, variant, width, vocab_size=50, seed=0).model
            x = torch.randn(4096, width)
            a = model.blocks[0].mixer.a_proj(x)
            sizes[variant, width] = a.abs().mean().item()
    gn_ratio = sizes["gdn_mup", 512] / sizes["gdn_mup", 32]
    nogn_ratio = sizes["gdn_mup_nogn", 512] / sizes["gdn_mup_nogn", 32]
    assert gn_ratio == pytest.approx(1.0, rel=0.15)
    assert nogn_ratio == pytest.approx(1 / math.sqrt(16), rel=0.15)


def test_transformer_learning_rates_match_mup_muadamw(tiny_spec):
    mup = pytest.importorskip("mup")
    base = build_model(tiny_spec, "transformer_mup", 16, vocab_size=50, seed=0).model
    delta = build_model(tiny_spec, "transformer_mup", 32, vocab_size=50, seed=0).model
    built = build_model(tiny_spec, "transformer_mup", 128, vocab_size=50, seed=0)
    # do_assert=False: our readout is a plain Linear whose 1/m multiplier lives in the model config.
    mup.set_base_shapes(built.model, base, delta=delta, rescale_params=False, do_assert=False)
    lr = 3e-3
    ours = {n: g["lr"] for g in P.optimizer_groups(built.model, built.infos, lr, 0.0) for n in g["names"]}
    theirs = {}
    names = {id(p): n for n, p in built.model.named_parameters()}
    for group in mup.MuAdamW(built.model.parameters(), lr=lr).param_groups:
        for p in group["params"]:
            theirs[names[id(p)]] = group["lr"]
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name]), name


def test_unknown_variant_is_rejected(tiny_spec):
    with pytest.raises(ValueError, match="unknown variant"):
        build_model(tiny_spec, "gdn_magic", 32, vocab_size=50, seed=0)


def test_role_lr_multipliers_scale_one_role_at_every_width(tiny_spec):
    lr, factors = 1e-2, {"embedding": 0.25, "vector": 0.5}
    for variant in ("gdn_sp", "gdn_mup"):
        for width in (tiny_spec["base_width"], 4 * tiny_spec["base_width"]):
            built = build_model(tiny_spec, variant, width, vocab_size=64, seed=0)
            plain = {n: g["lr"] for g in P.optimizer_groups(built.model, built.infos, lr, 0.1) for n in g["names"]}
            scaled = P.optimizer_groups(built.model, built.infos, lr, 0.1, factors)
            for group in scaled:
                for name in group["names"]:
                    assert group["lr"] == pytest.approx(plain[name] * factors.get(group["role"], 1.0))
    # the same constants for SP and μP: at the base width the two stay identical
    base = tiny_spec["base_width"]
    sp, mup = (build_model(tiny_spec, v, base, vocab_size=64, seed=0) for v in ("gdn_sp", "gdn_mup"))
    lrs = [{n: g["lr"] for g in P.optimizer_groups(b.model, b.infos, lr, 0.1, factors) for n in g["names"]}
           for b in (sp, mup)]
    assert lrs[0] == pytest.approx(lrs[1])
