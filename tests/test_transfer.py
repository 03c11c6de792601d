"""Transfer metrics on synthetic sweeps whose optima and verdicts are known by construction."""

import math

import numpy as np
import pandas as pd
import pytest

from gdn import transfer

GRID = np.arange(-12.0, -3.0)  # log2 LRs, one octave apart
CURVATURE = 0.05  # nats per octave^2


def sweep(variant, optimum_by_width, diverge_above=None, seeds=(0,), grid=GRID):
    """Runs whose loss is a parabola in log2 LR with the given optimum per width.

    diverge_above: width -> log2 LR above which runs diverge.
    """
    rows = []
    for width, opt in optimum_by_width.items():
        for x in grid:
            for seed in seeds:
                diverged = diverge_above is not None and x > diverge_above.get(width, math.inf)
                loss = 3.0 + CURVATURE * (x - opt) ** 2 + 0.001 * seed
                rows.append({"variant": variant, "width": width, "log2_lr": float(x), "seed": seed,
                             "status": "diverged" if diverged else "completed",
                             "final_val_loss": math.nan if diverged else loss})
    return pd.DataFrame(rows)


def row(table, **match):
    hit = table
    for k, v in match.items():
        hit = hit[hit[k] == v]
    assert len(hit) == 1, hit
    return hit.iloc[0]


def test_parabola_fit_recovers_an_optimum_between_grid_points():
    runs = sweep("gdn_mup", {64: -7.3, 128: -7.3, 256: -7.3})
    optima = transfer.analyze(runs)["lr_optima"]
    for width in (64, 128, 256):
        r = row(optima, width=width)
        assert r.fit_ok and not r.at_grid_edge
        assert r.opt_log2_lr == pytest.approx(-7.3, abs=1e-6)
        assert r.argmin_log2_lr == -7.0
        assert r.best_loss == pytest.approx(3.0 + CURVATURE * 0.3**2)
        assert r.n_points == len(GRID) and r.n_diverged == 0


def test_stable_optimum_transfers():
    runs = sweep("gdn_mup", {64: -7.3, 128: -7.3, 512: -7.3})
    table = transfer.analyze(runs)["transfer"]
    assert list(table["target_width"]) == [128, 512]
    assert (table["verdict"] == "yes").all()
    assert table["shift"].abs().max() < 1e-6
    # Linear interpolation of a parabola between grid points overshoots by at most c * h^2 / 4.
    assert (table["regret"] >= 0).all() and table["regret"].max() <= CURVATURE / 4 + 1e-9


def test_two_octave_shift_requires_retuning():
    runs = sweep("gdn_sp", {64: -7.0, 512: -9.0})
    r = row(transfer.analyze(runs)["transfer"], target_width=512)
    assert r["shift"] == pytest.approx(-2.0, abs=1e-6)
    assert r.regret == pytest.approx(CURVATURE * 4)
    assert not r.diverged_at_base_lr
    assert r.verdict == "no (required retuning)"


def test_small_shift_with_large_regret_still_requires_retuning():
    runs = sweep("gdn_sp", {64: -7.0, 512: -7.8})
    out = transfer.analyze(runs, {"max_regret_nats": 0.01})["transfer"]
    r = row(out, target_width=512)
    assert abs(r["shift"]) < 1.0 and r.regret > 0.01
    assert r.verdict == "no (required retuning)"
    assert r.max_regret_nats == 0.01


def test_base_optimum_diverging_at_target_width():
    runs = sweep("gdn_sp", {64: -7.0, 512: -10.0}, diverge_above={512: -8.0})
    r = row(transfer.analyze(runs)["transfer"], target_width=512)
    assert r.diverged_at_base_lr and math.isnan(r.regret)
    assert r.verdict == "no (diverged with same LR)"
    opt = row(transfer.analyze(runs)["lr_optima"], width=512)
    assert opt.n_diverged == int((GRID > -8.0).sum())


def test_one_diverged_seed_makes_the_grid_point_a_failure():
    runs = sweep("transformer_mup", {64: -7.0, 128: -7.0}, seeds=(0, 1))
    bad = (runs["width"] == 128) & (runs["log2_lr"] == -7.0) & (runs["seed"] == 1)
    runs.loc[bad, "status"] = "completed"
    runs.loc[bad, "final_val_loss"] = math.inf  # a completed run with a non-finite loss diverged too
    points = transfer.grid_points(runs)
    p = row(points, width=128, log2_lr=-7.0)
    assert p.diverged and math.isnan(p.loss)
    r = row(transfer.analyze(runs)["transfer"], target_width=128)
    assert r.verdict == "no (diverged with same LR)"


def test_unfinished_runs_are_ignored_and_seed_spread_is_reported():
    runs = sweep("gdn_mup", {64: -7.0, 128: -7.0}, seeds=(0, 1))
    runs = pd.concat([runs, pd.DataFrame([{"variant": "gdn_mup", "width": 128, "log2_lr": -20.0, "seed": 0,
                                           "status": "running", "final_val_loss": None}])])
    optima = transfer.analyze(runs)["lr_optima"]
    assert row(optima, width=128).n_points == len(GRID)
    assert row(optima, width=128).seed_sd == pytest.approx(np.std([0.0, 0.001], ddof=1))


def test_optimum_at_the_grid_edge_is_not_extrapolated():
    runs = sweep("gdn_sp", {64: -14.0})
    r = row(transfer.analyze(runs)["lr_optima"], width=64)
    assert r.at_grid_edge and not r.fit_ok
    assert r.opt_log2_lr == GRID[0]


def test_fit_window_stops_at_a_diverged_neighbour():
    x = np.array([-8.0, -7.0, -6.0])
    fit = transfer.fit_optimum(x, np.array([3.2, 3.0, np.nan]))
    assert not fit["fit_ok"] and fit["opt_log2_lr"] == -7.0 and not fit["at_grid_edge"]
    nothing = transfer.fit_optimum(x, np.array([np.nan] * 3))
    assert math.isnan(nothing["opt_log2_lr"])


def test_loss_at_interpolates_and_reads_divergence_from_the_nearest_point():
    x = np.array([-8.0, -7.0, -6.0])
    assert transfer.loss_at(x, np.array([3.2, 3.0, 3.4]), -7.25) == (pytest.approx(3.05), False)
    assert transfer.loss_at(x, np.array([3.2, 3.0, np.nan]), -6.4) == (pytest.approx(math.nan, nan_ok=True), True)
    assert transfer.loss_at(x, np.array([3.2, 3.0, np.nan]), -6.6) == (3.0, False)
    assert transfer.loss_at(x, np.array([3.2, 3.0, 3.4]), -9.5) == (3.2, False)


def test_a_base_width_with_nothing_completed_gives_no_transfer_row():
    runs = sweep("gdn_sp", {64: -7.0, 128: -7.0}, diverge_above={64: -100.0})
    out = transfer.analyze(runs)
    assert out["transfer"].empty
    assert list(out["transfer"].columns) == transfer.TRANSFER_COLUMNS


def confirmation_runs(variant, width, center, losses, diverged=(False, False, False)):
    return pd.DataFrame([
        {"variant": variant, "width": width, "log2_lr": center + off, "seed": 0,
         "status": "diverged" if d else "completed", "final_val_loss": math.nan if d else loss}
        for off, loss, d in zip((-1, 0, 1), losses, diverged, strict=True)
    ])


def test_confirm_verdicts():
    runs = pd.concat([
        confirmation_runs("gdn_mup", 2048, -7.3, (3.05, 3.00, 3.02)),
        confirmation_runs("gdn_sp", 2048, -7.0, (3.00, 3.10, 3.50)),
        confirmation_runs("transformer_sp", 2048, -6.5, (3.30, 0.0, 0.0), diverged=(False, True, True)),
        confirmation_runs("transformer_mup", 2048, -7.0, (3.01, 3.00, 3.02)),
    ])
    transferred = {"gdn_mup": -7.3, "gdn_sp": -7.0, "transformer_sp": -6.5}  # no entry: not judged
    out = transfer.confirm(runs, transferred).set_index("variant")
    assert set(out.index) == {"gdn_mup", "gdn_sp", "transformer_sp"}
    assert out.loc["gdn_mup", "verdict"] == "yes" and out.loc["gdn_mup", "best_offset"] == 0
    assert out.loc["gdn_sp", "verdict"] == "no (required retuning)"
    assert out.loc["gdn_sp", "regret"] == pytest.approx(0.10)
    assert out.loc["gdn_sp", "best_offset"] == -1
    assert out.loc["transformer_sp", "verdict"] == "no (diverged with same LR)"
    assert set(out["verdict"]) <= set(transfer.VERDICTS)


def test_confirm_small_regret_at_a_neighbour_is_still_transfer():
    runs = confirmation_runs("gdn_mup", 1024, -7.0, (2.99, 3.00, 3.05))
    out = transfer.confirm(runs, {"gdn_mup": -7.0})
    assert out["verdict"].iloc[0] == "yes" and out["best_offset"].iloc[0] == -1


def test_report_section_renders_curves_and_verdicts():
    import duckdb

    from gdn.report.sections import transfer as section

    runs = pd.concat([sweep("gdn_mup", {64: -7.0, 256: -7.0}),
                      sweep("gdn_sp", {64: -7.0, 256: -10.0}, diverge_above={256: -8.0})])
    runs["run_id"] = [f"<run {i}>" for i in range(len(runs))]
    con = duckdb.connect()
    for name, table in {"runs": runs, **transfer.analyze(runs)}.items():
        con.register("frame_view", table)
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM frame_view')
        con.unregister("frame_view")
    out = section.build(con, {"tier": "test", "commit": "abc", "claims": []})
    assert out["id"] == "transfer" and "<svg" in out["html"]
    assert "no (diverged with same LR)" in out["html"] and ">yes<" in out["html"]
    assert section.build(duckdb.connect(), {"tier": "test", "commit": "abc", "claims": []}) is None
