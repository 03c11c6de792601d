"""The transfer estimator: optima, confidence intervals, verdicts, gates and controls, on
synthetic sweeps whose truth is known; and its power, by simulation, at the noise and
curvature the study measured (docs/mup_gdn.md §5 has the power table)."""

import math

import numpy as np
import pandas as pd
import pytest

from gdn import transfer

GRID = np.arange(-10.0, -3.0)  # 7 log2 LRs, one octave apart (the study's GDN grid)
WIDTHS = (128, 256, 512, 1024)
# The study's regime as measured on the H200 (docs/mup_gdn.md §5): run-to-run SD 0.069 nats,
# curvature of loss vs log2 LR 0.08-0.11 nats/octave^2 for the Transformer variants (the
# controls) and 0.02-0.03 for GDN, whose curves are flatter.
NOISE_SD = 0.07
CURVATURE = 0.08
FLAT_CURVATURE = 0.03


def sweep(variant, optimum_by_width, rng=None, noise=0.0, curvature=CURVATURE, seeds_base=3, seeds=2,
          diverge_above=None, grid=GRID, gain_per_width=0.1, offset=0.0):
    """Seed-level runs whose loss is a parabola in log2 LR with the given optimum per width,
    improving by `gain_per_width` per width step, plus Gaussian noise."""
    rng = rng or np.random.default_rng(0)
    rows = []
    for k, (width, opt) in enumerate(optimum_by_width.items()):
        for x in grid:
            for seed in range(seeds_base if k == 0 else seeds):
                diverged = diverge_above is not None and x > diverge_above.get(width, math.inf)
                loss = 3.0 + offset - gain_per_width * k + curvature * (x - opt) ** 2 + rng.normal(0.0, noise)
                rows.append({"variant": variant, "width": width, "log2_lr": float(x), "seed": seed,
                             "status": "diverged" if diverged else "completed",
                             "final_val_loss": math.nan if diverged else loss})
    return pd.DataFrame(rows)


def drifting(base_opt, drift_octaves, widths=WIDTHS):
    """Optimum per width moving linearly in log2 width, by drift_octaves from first to last."""
    return {w: base_opt + drift_octaves * k / (len(widths) - 1) for k, w in enumerate(widths)}


def one(table, **match):
    hit = table
    for k, v in match.items():
        hit = hit[hit[k] == v]
    assert len(hit) == 1, hit
    return hit.iloc[0]


SETTINGS = {"bootstrap_draws": 600}


def test_quadratic_fit_recovers_an_optimum_between_grid_points():
    runs = sweep("gdn_mup", {w: -6.3 for w in WIDTHS})
    optima = transfer.analyze(runs, SETTINGS)["lr_optima"]
    for width in WIDTHS:
        r = one(optima, width=width)
        assert r.convex and r.inside_grid
        assert r.opt_log2_lr == pytest.approx(-6.3, abs=1e-6)
        assert r.argmin_log2_lr == -6.0
        assert r.curvature == pytest.approx(CURVATURE)
        assert r.n_fit_points == 5 * (3 if width == 128 else 2)  # ±2 octaves of seed-level points


def test_noise_is_the_pooled_seed_to_seed_sd():
    runs = sweep("gdn_mup", {w: -6.0 for w in WIDTHS}, rng=np.random.default_rng(3), noise=0.05)
    noise = transfer.analyze(runs, SETTINGS)["noise"].iloc[0]
    assert noise.seed_sd == pytest.approx(0.05, rel=0.2)
    assert noise.seed_sd_dof == len(GRID) * (2 + 3 * 1)  # (3-1) seeds at the base + (2-1) at three widths


def test_optimum_beyond_the_grid_is_unbounded_not_the_edge():
    runs = sweep("transformer_sp", {128: -6.0, 256: -8.0, 512: -10.0, 1024: -12.0})
    out = transfer.analyze(runs, SETTINGS)
    r = one(out["lr_optima"], width=1024)
    assert not r.inside_grid and r.opt_log2_lr == -math.inf and r.argmin_log2_lr == -10.0
    t = one(out["transfer"], target_width=1024)
    assert t["shift"] == -math.inf and t.shift_ci_high < -1
    assert t.raw_verdict == "fails"


def test_diverging_at_the_base_optimum_fails():
    runs = sweep("gdn_sp", {w: -6.0 for w in WIDTHS}, diverge_above={1024: -7.0})
    t = one(transfer.analyze(runs, SETTINGS)["transfer"], target_width=1024)
    assert t.diverged_at_base_lr and t.raw_verdict == "fails"
    assert "diverges" in t.reason


def test_a_diverged_seed_fails_its_grid_point():
    runs = sweep("gdn_mup", {w: -6.0 for w in WIDTHS})
    hit = (runs.width == 256) & (runs.log2_lr == -4.0) & (runs.seed == 1)
    runs.loc[hit, ["status", "final_val_loss"]] = ["diverged", math.nan]
    points = transfer.seed_points(runs)
    failed = points[(points.width == 256) & (points.log2_lr == -4.0)]
    assert failed["failed"].all() and failed["loss"].isna().all()


def test_regret_comes_from_the_fit():
    runs = sweep("gdn_mup", {128: -7.0, 256: -7.0, 512: -7.0, 1024: -6.0})
    t = one(transfer.analyze(runs, SETTINGS)["transfer"], target_width=1024)
    assert t["shift"] == pytest.approx(1.0)
    assert t.regret == pytest.approx(CURVATURE * 1.0**2)


def test_unfinished_runs_are_ignored():
    runs = sweep("gdn_mup", {w: -6.0 for w in WIDTHS})
    runs.loc[runs.index[:5], "status"] = "running"
    assert transfer.seed_points(runs).shape[0] == len(runs) - 5


# ---------------------------------------------------------------- gates and controls


def full_study(rng, noise=0.02, mup_drift=0.0, sp_drift=-3.0, gain=0.1, gdn_offset=0.0):
    """A five-variant study: μP optima drift by mup_drift octaves over the widths, SP's by sp_drift."""
    parts = []
    for variant, drift in (("transformer_sp", sp_drift), ("transformer_mup", mup_drift), ("gdn_sp", sp_drift),
                           ("gdn_mup", mup_drift), ("gdn_mup_nogn", mup_drift)):
        # μP and SP share the base width exactly: same seeds, same losses (the base rng is reset)
        parts.append(sweep(variant, drifting(-6.0, drift), rng=np.random.default_rng([rng, hash(variant) % 97]),
                           noise=noise, gain_per_width=gain, offset=gdn_offset if "gdn" in variant else 0.0))
    runs = pd.concat(parts, ignore_index=True)
    for family in ("transformer", "gdn"):
        base = runs[(runs.variant == f"{family}_sp") & (runs.width == 128)].set_index(["log2_lr", "seed"])
        for mup in [v for v in runs.variant.unique() if v.startswith(family) and v != f"{family}_sp"]:
            hit = (runs.variant == mup) & (runs.width == 128)
            keys = list(zip(runs.loc[hit, "log2_lr"], runs.loc[hit, "seed"]))
            runs.loc[hit, "final_val_loss"] = base.loc[keys, "final_val_loss"].to_numpy()
    return runs


def test_a_healthy_study_passes_every_gate_and_control():
    out = transfer.analyze(full_study(1), SETTINGS)
    assert out["gates"]["passed"].all(), out["gates"]
    assert out["controls"]["passed"].all(), out["controls"]
    verdicts = out["study_verdict"].set_index("variant")["verdict"]
    assert verdicts["transformer_mup"] == verdicts["gdn_mup"] == "transfers"
    assert verdicts["transformer_sp"] == verdicts["gdn_sp"] == "fails"
    assert verdicts["gdn_mup"] != "inconclusive"
    assert out["study_verdict"].set_index("variant").loc["gdn_mup", "claimed_transfer"] == "yes"


def test_gate_a_fails_when_wider_is_not_better_and_every_verdict_becomes_inconclusive():
    out = transfer.analyze(full_study(2, gain=0.0), SETTINGS)
    gate_a = out["gates"][out["gates"].gate == "a_mup_improves_with_width"]
    assert not gate_a["passed"].any()
    assert (out["transfer"]["verdict"] == "inconclusive").all()
    assert out["transfer"]["reason"].str.contains("a_mup_improves_with_width").all()
    assert (out["transfer"]["raw_verdict"] != "inconclusive").any()  # the raw verdicts are kept


def test_gate_b_fails_when_mup_differs_from_sp_at_the_base_width():
    runs = full_study(3)
    runs.loc[(runs.variant == "gdn_mup") & (runs.width == 128), "final_val_loss"] += 0.3
    gates = transfer.analyze(runs, SETTINGS)["gates"].set_index(["gate", "variant"])
    assert not gates.loc[("b_mup_equals_sp_at_base", "gdn_mup"), "passed"]
    assert gates.loc[("b_mup_equals_sp_at_base", "gdn_mup_nogn"), "passed"]


def test_gate_c_fails_when_the_mup_optimum_leaves_the_grid():
    runs = full_study(4)
    hit = (runs.variant == "gdn_mup_nogn") & (runs.width == 512)
    runs.loc[hit, "final_val_loss"] = 3.0 - 0.2 * (runs.loc[hit, "log2_lr"] + 10)  # decreasing to the top edge
    gates = transfer.analyze(runs, SETTINGS)["gates"].set_index(["gate", "variant"])
    row = gates.loc[("c_optimum_inside_convex", "gdn_mup_nogn")]
    assert not row["passed"] and "w512" in row["detail"]


def test_a_failed_control_makes_the_gdn_verdicts_inconclusive():
    out = transfer.analyze(full_study(5, sp_drift=0.0), SETTINGS)  # SP that transfers: the negative control fails
    controls = out["controls"].set_index("role")
    assert not controls.loc["negative", "passed"] and controls.loc["positive", "passed"]
    verdicts = out["study_verdict"].set_index("variant")
    for variant in ("gdn_sp", "gdn_mup", "gdn_mup_nogn"):
        assert verdicts.loc[variant, "verdict"] == "inconclusive"
        assert "cannot judge GDN" in verdicts.loc[variant, "reason"]
    assert verdicts.loc["transformer_mup", "verdict"] == "transfers"


# ---------------------------------------------------------------- power, by simulation


def verdict_rate(drift, expected, n_studies, noise=NOISE_SD, curvature=CURVATURE, seed=0):
    rng = np.random.default_rng(seed)
    hits = 0
    for rep in range(n_studies):
        runs = sweep("transformer_mup", drifting(-7.0, drift), rng=rng, noise=noise, curvature=curvature)
        table = transfer.analyze(runs, {"bootstrap_draws": 500, "bootstrap_seed": rep})["transfer"]
        hits += one(table, target_width=1024).raw_verdict == expected
    return hits / n_studies


def test_power_perfect_transfer_is_called_transfers_at_least_90_percent():
    assert verdict_rate(0.0, "transfers", 60) >= 0.9


def test_power_a_two_octave_drift_is_called_fails_at_least_90_percent():
    assert verdict_rate(-2.0, "fails", 60, seed=1) >= 0.9
    assert verdict_rate(+2.0, "fails", 60, seed=2) >= 0.9


def test_flat_curves_give_inconclusive_never_a_wrong_verdict():
    # At GDN's measured curvature the design has little power (docs/mup_gdn.md §5): the
    # estimator must then say "inconclusive", not "fails", for a perfect transfer.
    assert verdict_rate(0.0, "fails", 40, curvature=FLAT_CURVATURE, seed=4) == 0.0
    assert verdict_rate(0.0, "inconclusive", 40, curvature=FLAT_CURVATURE, seed=4) >= 0.3


def test_a_one_octave_drift_is_rarely_called_transfers():
    # The estimator must not hand out "transfers" for a drift at the tolerance's edge.
    assert verdict_rate(-1.0, "transfers", 40, seed=3) <= 0.2


# ---------------------------------------------------------------- confirmation runs (paper tier)


def test_confirm_reads_three_runs_around_the_transferred_lr():
    runs = sweep("gdn_mup", {2048: -7.0}, grid=np.array([-8.0, -7.0, -6.0]), seeds_base=1)
    table = transfer.confirm(runs, {"gdn_mup": -7.0})
    assert one(table, variant="gdn_mup").verdict == "transfers"
    moved = sweep("gdn_mup", {2048: -9.0}, grid=np.array([-8.0, -7.0, -6.0]), seeds_base=1, curvature=0.2)
    assert one(transfer.confirm(moved, {"gdn_mup": -7.0}), variant="gdn_mup").verdict == "fails"


def test_one_seed_and_two_lrs_still_give_rows_but_no_verdict():
    runs = sweep("gdn_mup", {16: -7.0, 32: -7.0}, grid=np.array([-8.0, -6.0]), seeds_base=1, seeds=1)
    table = transfer.analyze(runs, SETTINGS)["transfer"]
    row = one(table, target_width=32)
    assert math.isnan(row.shift_ci_low) and row.raw_verdict == "inconclusive"
    assert "no noise estimate" in row.reason
