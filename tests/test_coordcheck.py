"""Coordinate-check judgement on synthetic power laws, and a tiny real check on the CPU."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gdn import coordcheck
from gdn.cli import main as cli_main

WIDTHS = [32, 64, 128, 256, 512]
REPO = Path(__file__).resolve().parents[1]


def power_law_rows(variant, module, exponent, seeds=(0, 1), steps=(0, 1), noise=0.0, seed_exponents=None):
    rng = np.random.default_rng(0)
    rows = []
    for step in steps:
        for seed in seeds:
            p = seed_exponents[seed] if seed_exponents else exponent
            for w in WIDTHS:
                value = 0.1 * (w / WIDTHS[0]) ** p * float(np.exp(rng.normal(0, noise)))
                rows.append({"variant": variant, "width": w, "seed": seed, "step": step, "module": module,
                             "mean_abs": value})
    return rows


def slope_of(slopes, **match):
    hit = slopes
    for k, v in match.items():
        hit = hit[hit[k] == v]
    assert len(hit) == 1, hit
    return hit.iloc[0]


def test_power_law_slopes_are_recovered_and_flagged():
    rows = (power_law_rows("v", "mlp", 0.0, noise=0.02) + power_law_rows("v", "mixer", 1.0)
            + power_law_rows("v", "state", -0.5) + power_law_rows("v", "delta_logits", 0.5, steps=(1,))
            + power_law_rows("v", "gate_a", -0.5))
    out = coordcheck.analyze(pd.DataFrame(rows), {})
    slopes = out["coord_slopes"]
    assert slope_of(slopes, module="mixer", step=1).slope == pytest.approx(1.0)
    assert slope_of(slopes, module="state", step=0).slope == pytest.approx(-0.5)
    assert abs(slope_of(slopes, module="mlp", step=1).slope) < 0.05
    assert not slope_of(slopes, module="mlp", step=1).flagged
    assert slope_of(slopes, module="mixer", step=1).flagged and slope_of(slopes, module="state", step=0).flagged
    logits = slope_of(slopes, module="delta_logits", step=1)
    assert logits.rule == "update" and logits.judged and logits.flagged
    gate = slope_of(slopes, module="gate_a", step=0)
    assert gate.rule == "info" and not gate.judged and gate.flagged  # reported, not judged
    verdict = out["coord_verdict"].iloc[0]
    assert verdict.step == 1 and verdict.n_judged == 4 and verdict.n_flagged == 3
    assert verdict.verdict == "scales with width"
    assert "mixer (+1.00 [+1.00, +1.00])" in verdict.flagged_modules and "gate_a" not in verdict.flagged_modules


def test_ci_from_seed_slopes_decides_ok_unclear_and_flagged():
    # Two seeds with slopes 0 and 0.8: mean 0.4, se 0.4, 90% CI 0.4 ± 6.314 * 0.4 straddles the band.
    rows = power_law_rows("v", "mlp", None, seed_exponents={0: 0.0, 1: 0.8})
    s = slope_of(coordcheck.analyze(pd.DataFrame(rows), {})["coord_slopes"], step=0)
    assert s.slope == pytest.approx(0.4) and s.slope_se == pytest.approx(0.4)
    assert s.slope_ci_low == pytest.approx(0.4 - 6.3138 * 0.4) and s.slope_ci_high == pytest.approx(0.4 + 6.3138 * 0.4)
    assert s.status == "unclear" and not s.flagged
    # Three seeds close to +1: the CI excludes the band -> flagged; close to 0 -> ok.
    steep = power_law_rows("v", "mlp", None, seeds=(0, 1, 2), seed_exponents={0: 0.95, 1: 1.0, 2: 1.05})
    flat = power_law_rows("w", "mlp", None, seeds=(0, 1, 2), seed_exponents={0: -0.05, 1: 0.0, 2: 0.05})
    out = coordcheck.analyze(pd.DataFrame(steep + flat), {})["coord_slopes"]
    hi, lo = slope_of(out, variant="v", step=0), slope_of(out, variant="w", step=0)
    assert hi.slope_se == pytest.approx(0.05 / 3**0.5)  # sd of (0.95, 1, 1.05) / sqrt(3)
    assert hi.slope_ci_low == pytest.approx(1.0 - 2.92 * 0.05 / 3**0.5)
    assert hi.status == "flagged" and hi.flagged and lo.status == "ok"
    # A narrower band turns the flat slope's CI into a straddle.
    tight = coordcheck.analyze(pd.DataFrame(flat), {"slope_tolerance": 0.05})["coord_slopes"]
    assert slope_of(tight, step=0).status == "unclear"
    # One seed: the regression's own standard error, at least noise_factor of them.
    noisy = power_law_rows("v", "mlp", 0.0, seeds=(0,), noise=0.1)
    one = slope_of(coordcheck.analyze(pd.DataFrame(noisy), {"noise_factor": 3.0})["coord_slopes"], step=0)
    assert one.n_seeds == 1 and one.slope_se > 0
    assert one.slope_ci_high - one.slope == pytest.approx(3.0 * one.slope_se)  # 3 > t(0.95, 3 dof) = 2.35


def test_bounded_rule_flags_growth_only():
    rows = (power_law_rows("v", "gate_a_w0dx", -0.6, seeds=(0, 1, 2), steps=(5,))
            + power_law_rows("w", "gate_a_w0dx", 0.6, seeds=(0, 1, 2), steps=(5,)))
    for r in rows:
        r["mean_abs"] *= float(np.exp(0.01 * (r["seed"] - 1) * np.log2(r["width"])))  # small seed spread
    out = coordcheck.analyze(pd.DataFrame(rows), {})
    shrinking = slope_of(out["coord_slopes"], variant="v", step=5)
    growing = slope_of(out["coord_slopes"], variant="w", step=5)
    assert shrinking.rule == "bounded" and shrinking.judged and shrinking.status == "ok"
    assert growing.status == "flagged"
    verdict = out["coord_verdict"].set_index("variant")
    assert verdict.loc["v", "verdict"] == "width-stable" and verdict.loc["w", "verdict"] == "scales with width"


def test_t_quantile():
    assert coordcheck.t_quantile_95(1) == pytest.approx(6.3138)
    assert coordcheck.t_quantile_95(40) == pytest.approx(1.6839, abs=2e-4)
    assert coordcheck.t_quantile_95(200) == pytest.approx(1.6525, abs=2e-4)
    assert np.isnan(coordcheck.t_quantile_95(0))


def test_zero_sizes_have_no_slope_and_a_width_stable_variant_passes():
    rows = power_law_rows("mup", "mlp", 0.0) + power_law_rows("mup", "logits", 0.0)
    for r in rows:
        if r["module"] == "logits" and r["step"] == 0:
            r["mean_abs"] = 0.0  # the zero-initialized μP readout
    out = coordcheck.analyze(pd.DataFrame(rows), {})
    logits = out["coord_slopes"].query("module == 'logits'")
    assert list(logits["step"]) == [1]
    assert out["coord_verdict"].iloc[0].verdict == "width-stable"
    lines = coordcheck.judgement_lines(out)
    assert lines[0].startswith("mup: step 1") and "FLAG" not in "\n".join(lines)


def write_tokens(tmp_path, n=40_000, vocab=128):
    rng = np.random.default_rng(0)
    # A skewed unigram distribution with repeated bigrams, so a few steps already learn something.
    base = rng.zipf(1.3, size=n // 2) % vocab
    tokens = np.stack([base, (base * 7 + 3) % vocab], axis=1).reshape(-1).astype(np.uint16)
    path = tmp_path / "train.bin"
    tokens.tofile(path)
    (tmp_path / "train.meta.json").write_text(json.dumps({"dtype": "uint16", "n_tokens": int(tokens.size)}))
    return path


SPEC = {"n_layers": 1, "base_width": 16, "width_mode": "head_dim", "n_heads": 2, "head_dim": 8, "gdn_expand_v": 1,
        "mlp_ratio": {"transformer": 2.0, "gdn": 2.0}, "init_std": 0.02, "readout_zero_init": True}


def run_cli(tmp_path, train_bin, variant):
    config = {"model": SPEC, "vocab_size": 128, "train": {"betas": [0.9, 0.95], "weight_decay": 0.1},
              "coordcheck": {"widths": [16, 32, 64], "steps": 2, "seeds": [0], "log2_lr": -6, "batch_size": 2,
                             "seq_len": 32, "threads": 2}}
    out = tmp_path / f"{variant}.json"
    assert cli_main(["coordcheck", "--variant", variant, "--config-json", json.dumps(config),
                     "--train-bin", str(train_bin), "--out", str(out), "--device", "cpu"]) == 0
    payload = json.loads(out.read_text())
    assert payload["kind"] == "coordcheck" and payload["variant"] == variant
    assert payload["device"].startswith("cpu")
    assert payload["config"]["coordcheck"]["widths"] == [16, 32, 64]
    rows = pd.DataFrame(payload["rows"])
    assert {"variant", "width", "seed", "step", "module", "mean_abs"} <= set(rows.columns)
    assert sorted(rows["step"].unique()) == [0, 1, 2]
    return rows


def test_cli_coordcheck_on_cpu(tmp_path, capsys):
    train_bin = write_tokens(tmp_path)
    variants = ("transformer_sp", "transformer_mup", "gdn_mup", "gdn_mup_nogn")
    runs = {v: run_cli(tmp_path, train_bin, v) for v in variants}
    assert "=>" in capsys.readouterr().out  # the judgement is printed after the JSON is written
    slopes = coordcheck.analyze(pd.concat(runs.values()), {})["coord_slopes"]

    def s(variant, module, step):
        return slope_of(slopes, variant=variant, module=module, step=step).slope

    # SP grows the MLP output with width (by ~1.5-2 here); μP keeps it near flat (widths 16-64 are
    # small enough for finite-width drifts of ~0.3 after the first hidden update).
    assert s("transformer_sp", "mlp", 2) > s("transformer_mup", "mlp", 2) + 0.8
    assert abs(s("transformer_mup", "mlp", 2)) < 0.45
    # Readout-style gates (x 1/m) start smaller at larger width; gating normalization keeps them flat.
    assert s("gdn_mup_nogn", "gate_a", 0) < -0.3 and s("gdn_mup_nogn", "gate_b", 0) < -0.3
    assert abs(s("gdn_mup", "gate_a", 0)) < 0.2 and abs(s("gdn_mup", "gate_b", 0)) < 0.2
    gdn = runs["gdn_mup"]
    assert {"state", "decay_g", "beta", "delta_gate_a", "delta_logits"} <= set(gdn["module"])
    assert (gdn.query("module == 'decay_g'")["mean_abs"] > 0).all()
    beta = gdn.query("module == 'beta'")["mean_abs"]
    assert ((beta > 0) & (beta < 1)).all()
    # The μP readout starts at zero: logits are exactly zero at init.
    assert (gdn.query("module == 'logits' and step == 0")["mean_abs"] == 0).all()
    # The gate decomposition: the init part at step 0 is the gate itself; update part and W0 dx
    # term exist after training starts (the latter from step 2: the zero readout holds x still at step 1).
    parts = {"gate_a_init", "gate_a_update", "gate_a_w0dx", "gate_b_init", "gate_b_update", "gate_b_w0dx"}
    assert parts <= set(gdn["module"])
    at0 = gdn[gdn["step"] == 0].set_index(["width", "module"])["mean_abs"]
    for w in (16, 32, 64):
        assert at0[(w, "gate_a_init")] == pytest.approx(at0[(w, "gate_a")])
    assert set(gdn.query("module == 'gate_a_update'")["step"]) == {1, 2}
    assert (gdn.query("module == 'gate_a_w0dx' and step == 2")["mean_abs"] > 0).all()
    assert (gdn["log2_lr"] == -6).all()
    # Attention logits (Transformer only). At init μP's 1/d_head scale shrinks random q.k like
    # 1/sqrt(m); SP's q and k coordinates grow like sqrt(m) (width-independent init std), so its
    # logits start at slope +1. After two steps SP's grow steeply, μP's do not.
    assert "attn_logits" not in set(gdn["module"])
    assert s("transformer_mup", "attn_logits", 0) == pytest.approx(-0.5, abs=0.2)
    assert s("transformer_sp", "attn_logits", 0) == pytest.approx(1.0, abs=0.2)
    assert s("transformer_sp", "attn_logits", 2) > 1.0
    assert s("transformer_mup", "attn_logits", 2) < 0.25
    judged = slopes.query("module == 'attn_logits'").set_index("step")["judged"]
    assert not judged.loc[0].any() and judged.loc[2].all()


def tiny_tokens(n=20_000, vocab=128):
    rng = np.random.default_rng(1)
    base = rng.zipf(1.3, size=n // 2) % vocab
    return np.stack([base, (base * 7 + 3) % vocab], axis=1).reshape(-1).astype(np.int64)


def test_gate_decomposition_sums_to_the_total_change():
    import torch
    import torch.nn.functional as F

    from gdn.build import build_model
    from gdn.data.tokens import train_batch
    from gdn.parametrization import optimizer_groups

    torch.manual_seed(0)
    spec = dict(SPEC, n_layers=2, readout_zero_init=False)
    with torch.no_grad():
        built = build_model(spec, "gdn_mup", 32, 128, seed=0)
    model = built.model
    tokens = tiny_tokens()
    inputs, targets = train_batch(tokens, 2, 32, 9_999, 0)
    baseline = coordcheck.probe(model, inputs, targets)
    w0 = coordcheck.initial_gate_weights(model)
    opt = torch.optim.AdamW(optimizer_groups(model, built.infos, 2.0**-5, 0.1), lr=2.0**-5)
    for step in range(3):
        x, y = train_batch(tokens, 2, 32, 0, step)
        logits = model(x).logits
        opt.zero_grad()
        F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).backward()
        opt.step()
    after = coordcheck.probe(model, inputs, targets, w0)
    for gate in ("gate_a", "gate_b"):
        for layer in range(2):
            total = after.tensors[gate][layer] - baseline.tensors[gate][layer]
            update = after.tensors[f"{gate}_update"][layer]
            w0dx = after.tensors[f"{gate}_init"][layer] - baseline.tensors[f"{gate}_init"][layer]
            assert total.abs().mean() > 1e-3 and update.abs().mean() > 1e-4 and w0dx.abs().mean() > 1e-5
            torch.testing.assert_close(update + w0dx, total, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(baseline.tensors[f"{gate}_init"][layer], baseline.tensors[gate][layer])
    measured = coordcheck.sizes(after, baseline)
    assert measured["gate_a_w0dx"] == pytest.approx(float(np.mean(
        [(a - b).abs().mean().item() for a, b in zip(after.tensors["gate_a_init"], baseline.tensors["gate_a_init"])])))


def test_attention_logits_are_the_ones_the_attention_uses():
    import torch

    from gdn.build import build_model

    with torch.no_grad():
        model = build_model(SPEC, "transformer_mup", 32, 128, seed=0).model
        attn = model.blocks[0].mixer
        x = torch.randn(2, 12, 32)
        rope = model.mixer_inputs(12, None)["rope"]
        out, _ = attn(x, rope=rope)
        logits = coordcheck.attention_logits(attn, x, rope)
        causal = torch.ones(12, 12, dtype=torch.bool).tril()
        weights = logits.masked_fill(~causal, float("-inf")).softmax(-1)
        v = attn.v_proj(x).view(2, 12, attn.n_heads, attn.head_dim).transpose(1, 2)
        manual = attn.o_proj((weights @ v).transpose(1, 2).reshape(2, 12, -1))
    torch.testing.assert_close(manual, out, atol=1e-6, rtol=1e-4)


def test_log2_lr_mapping_is_honoured_per_variant():
    import torch

    tokens = tiny_tokens()

    def rows(variant, log2_lr, **extra):
        config = {"model": SPEC, "vocab_size": 128, "train": {"weight_decay": 0.1},
                  "coordcheck": {"widths": [16, 32], "steps": 2, "seeds": [0], "log2_lr": log2_lr, "batch_size": 2,
                                 "seq_len": 16, **extra}}
        out = pd.DataFrame(coordcheck.run_check(variant, config, tokens, torch.device("cpu"))[0])
        return out.set_index(["width", "step", "module"])["mean_abs"], set(out["log2_lr"])

    mapping = {"gdn_mup": -5, "transformer_mup": -9}
    mapped, lrs = rows("gdn_mup", mapping)
    plain, _ = rows("gdn_mup", -5)
    other, other_lrs = rows("transformer_mup", mapping)
    slow, _ = rows("transformer_mup", -9)
    assert lrs == {-5.0} and other_lrs == {-9.0}
    pd.testing.assert_series_equal(mapped, plain)
    pd.testing.assert_series_equal(other, slow)
    fast, _ = rows("transformer_mup", -5)
    assert not np.allclose(fast.loc[(32, 2, "mlp")], slow.loc[(32, 2, "mlp")])
    # A warmup of 4 steps runs step 1 at a quarter of the rate: different sizes after it.
    warm, _ = rows("gdn_mup", -5, warmup_steps=4)
    assert warm.loc[(32, 0, "mixer")] == plain.loc[(32, 0, "mixer")]
    assert warm.loc[(32, 2, "delta_mixer")] < plain.loc[(32, 2, "delta_mixer")]
    with pytest.raises(ValueError, match="no learning rate for 'gdn_mup'"):
        rows("gdn_mup", {"gdn_sp": -7})


def test_schedule_helpers():
    assert coordcheck.record_steps(50) == [0, 1, 2, 5, 10, 20, 50]
    assert coordcheck.record_steps(3) == [0, 1, 2, 3]
    assert coordcheck.record_steps(120) == [0, 1, 2, 5, 10, 20, 50, 100, 120]
    assert [coordcheck.warmup_factor(s, 4) for s in (1, 2, 4, 5)] == [0.25, 0.5, 1.0, 1.0]
    assert coordcheck.warmup_factor(1, 0) == 1.0
    settings = coordcheck.settings_from_config({"coordcheck": {"log2_lr": {"gdn_mup": -6}, "readout_zero_init": False}})
    assert settings["steps"] == coordcheck.DEFAULTS["steps"] >= 50
    assert coordcheck.model_spec_for_check(SPEC, settings)["readout_zero_init"] is False
    assert coordcheck.model_spec_for_check(SPEC, coordcheck.settings_from_config({}))["readout_zero_init"] is True


def test_analysis_imports_without_torch():
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import pandas as pd
        from gdn import coordcheck
        from gdn.coordcheck import analyze, judgement_lines
        rows = [{"variant": "v", "width": w, "seed": s, "step": 1, "module": "mlp", "mean_abs": 0.1 * w ** 0.02}
                for w in (32, 64, 128) for s in (0, 1)]
        out = analyze(pd.DataFrame(rows), {})
        assert out["coord_verdict"].iloc[0].verdict == "width-stable", out
        print("\\n".join(judgement_lines(out)))
        assert "torch" not in {m.split(".")[0] for m, mod in sys.modules.items() if mod is not None}
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "width-stable" in proc.stdout


def test_report_section_renders_panels_and_flags():
    import duckdb

    from gdn.report.sections import coord as section

    gate_rows = []
    for variant, w0dx in (("gdn_mup", 0.5), ("gdn_mup_nogn", 0.0)):
        for module, p in (("gate_a_init", 0.0), ("gate_a_update", 0.0), ("gate_a_w0dx", w0dx), ("delta_gate_a", 0.0),
                          ("gate_b_init", 0.0), ("gate_b_update", 0.1), ("gate_b_w0dx", w0dx)):
            gate_rows += power_law_rows(variant, module, p, steps=(0, 2) if module.endswith("init") else (2,))
    rows = pd.DataFrame(power_law_rows("gdn_sp", "mlp", 1.0, steps=(0, 2)) + power_law_rows("gdn_sp", "gate_a", 0.5)
                        + power_law_rows("gdn_mup", "mlp", 0.0, steps=(0, 2)) + gate_rows
                        + power_law_rows("transformer_sp", "attn_logits", 1.5, steps=(0, 2))
                        + power_law_rows("transformer_mup", "attn_logits", 0.0, steps=(0, 2)))
    rows["log2_lr"] = -7.0
    con = duckdb.connect()
    for name, table in {"coord": rows, **coordcheck.analyze(rows, {})}.items():
        con.register("frame_view", table)
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM frame_view')
        con.unregister("frame_view")
    out = section.build(con, {"tier": "test", "commit": "abc", "claims": []})
    html = out["html"]
    # per-variant panels for the five variants, the gate figure and the attention figure
    assert out["id"] == "coord" and html.count("<svg") == 5 + 2
    assert 'class="bad">+1.00 [+1.00, +1.00]' in html and "scales with width" in html
    assert "W⁰Δx term" in html and "attention logits" in html.lower() and "2<sup>-7</sup>" in html
    assert 'class="bad">+0.50 [+0.50, +0.50]' in html  # gdn_mup's growing W0 dx term in the gate table
    assert section.build(duckdb.connect(), {"tier": "test", "commit": "abc", "claims": []}) is None
