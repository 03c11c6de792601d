"""A small tier on disk for the report's tests: job files of a seeded sweep (five variants,
three widths, seven learning rates, 3 seeds at the base width and 2 above), one evaluation per
variant, and the transfer analysis' tables fabricated from the sweep with known verdicts, so the
report can be rendered and checked without training anything or importing torch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

VARIANTS = ["transformer_sp", "transformer_mup", "gdn_sp", "gdn_mup", "gdn_mup_nogn"]
WIDTHS = [64, 128, 256]
BASE_WIDTH = 64
LOG2_LRS = [-11.0, -10.0, -9.0, -8.0, -7.0, -6.0, -5.0]
CURVATURE = 0.08
NOISE = 0.02
# Optimal log2 LR per variant at the base width and its drift per width doubling (SP drifts).
OPTIMUM = {"transformer_sp": (-7.5, -1.0), "transformer_mup": (-7.5, 0.0), "gdn_sp": (-8.0, -0.9),
           "gdn_mup": (-8.0, 0.05), "gdn_mup_nogn": (-8.0, 0.4)}
VERDICTS = {"transformer_sp": "fails", "transformer_mup": "transfers", "gdn_sp": "fails", "gdn_mup": "transfers",
            "gdn_mup_nogn": "inconclusive"}
COMMIT = "0123abc"


def seeds_at(width: int) -> list[int]:
    return [0, 1, 2] if width == BASE_WIDTH else [0, 1]


def true_loss(variant: str, width: int, log2_lr: float) -> float:
    start, drift = OPTIMUM[variant]
    doublings = math.log2(width / BASE_WIDTH)
    return 5.0 - 0.15 * doublings + CURVATURE * (log2_lr - (start + drift * doublings)) ** 2


def write_tier(root: Path, tier: str = "t") -> dict[str, list[str]]:
    """Job files under root/results/runs/<tier>/...; returns the lists ingest takes."""
    rng = np.random.default_rng(0)
    metrics_files, eval_files = [], []
    for variant in VARIANTS:
        for width in WIDTHS:
            for log2_lr in LOG2_LRS:
                for seed in seeds_at(width):
                    diverged = variant.endswith("_sp") and log2_lr >= -5.0 and width == 256
                    loss = None if diverged else true_loss(variant, width, log2_lr) + NOISE * rng.standard_normal()
                    run_dir = root / "results" / "runs" / tier / variant / f"w{width}" / f"lr{log2_lr:g}" / f"s{seed}"
                    run_dir.mkdir(parents=True, exist_ok=True)
                    m = width / BASE_WIDTH
                    mup = not variant.endswith("_sp")
                    groups = [
                        {"role": "embedding", "lr": 2.0**log2_lr, "weight_decay": 0.0, "n_tensors": 1},
                        {"role": "hidden", "lr": 2.0**log2_lr / (m if mup else 1),
                         "weight_decay": 0.1 * (m if mup else 1), "n_tensors": 8},
                        {"role": "readout", "lr": 2.0**log2_lr, "weight_decay": 0.1, "n_tensors": 1},
                        {"role": "vector", "lr": 2.0**log2_lr, "weight_decay": 0.0, "n_tensors": 6},
                    ]
                    metrics = {
                        "run_id": f"{tier}/{variant}/w{width}/lr{log2_lr:g}/s{seed}",
                        "cell": {"tier": tier, "variant": variant, "width": width, "log2_lr": log2_lr, "seed": seed},
                        "status": "diverged" if diverged else "completed", "steps_done": 40 if diverged else 100,
                        "params": {"total": 2000 * width + 50000, "non_embedding": 1500 * width},
                        "tokens": 409600, "initial_loss": 7.6, "final_train_loss": None if diverged else loss + 0.05,
                        "final_val_loss": loss, "wall_s": 10.0, "tok_s": 40960.0, "device": "cpu",
                        "precision": "fp32", "commit": COMMIT, "param_groups": groups,
                        "config": {"model": {"base_width": BASE_WIDTH}, "train": {"weight_decay": 0.1}},
                    }
                    (run_dir / "metrics.json").write_text(json.dumps(metrics))
                    (run_dir / "log.jsonl").write_text("".join(
                        json.dumps({"step": s, "loss": 7.6 - (7.6 - (loss or 7.6)) * s / 100, "lr": 2.0**log2_lr,
                                    "grad_norm": 1.0, "tokens": 4096 * (s + 1), "tok_s": 40960.0,
                                    **({"val_loss": loss} if s == 99 and loss else {})}) + "\n"
                        for s in range(0, 100, 10)))
                    metrics_files.append(str(run_dir / "metrics.json"))
                    if width == WIDTHS[-1] and seed == 0 and not diverged:
                        (run_dir / "eval").mkdir(exist_ok=True)
                        eval_file = run_dir / "eval" / "wikitext.json"
                        eval_file.write_text(json.dumps({"wall_s": 1.0, "results": [
                            {"task": "wikitext103", "metric": "word_perplexity", "value": math.exp(loss) * 3}]}))
                        eval_files.append(str(eval_file))
    return {"metrics": metrics_files, "evals": eval_files}


def _fit(points: pd.DataFrame) -> tuple[float, float, float]:
    c2, c1, c0 = np.polyfit(points["log2_lr"], points["final_val_loss"], 2)
    vertex = -c1 / (2 * c2)
    return vertex, c2 * vertex**2 + c1 * vertex + c0, c2


def analysis(runs: pd.DataFrame, settings: dict | None = None) -> dict[str, pd.DataFrame]:
    """The transfer analysis' tables (lr_optima, transfer, gates, controls, study_verdict, noise),
    fitted honestly enough from the runs, verdicts as constructed (VERDICTS)."""
    ok = runs[runs["status"] == "completed"]
    optima = []
    for (variant, width), g in ok.groupby(["variant", "width"]):
        argmin = g.groupby("log2_lr")["final_val_loss"].mean().idxmin()
        near = g[(g["log2_lr"] - argmin).abs() <= 2]
        opt, fit_loss, curvature = _fit(near)
        optima.append({"variant": variant, "width": int(width), "n_seeds": g["seed"].nunique(),
                       "n_points": len(g), "n_fit_points": len(near),
                       "n_diverged": int((runs[(runs["variant"] == variant) & (runs["width"] == width)]["status"]
                                          == "diverged").sum()),
                       "grid_min": min(LOG2_LRS), "grid_max": max(LOG2_LRS), "argmin_log2_lr": argmin,
                       "best_grid_loss": g.groupby("log2_lr")["final_val_loss"].mean().min(),
                       "opt_log2_lr": opt, "opt_ci_low": opt - 0.3, "opt_ci_high": opt + 0.3, "fit_loss": fit_loss,
                       "curvature": curvature, "convex": bool(curvature > 0),
                       "inside_grid": bool(min(LOG2_LRS) < opt < max(LOG2_LRS)), "seed_sd": NOISE})
    lr_optima = pd.DataFrame(optima)
    transfer, verdict_rows = [], []
    for variant in VARIANTS:
        o = lr_optima[lr_optima["variant"] == variant].set_index("width")
        for target in WIDTHS[1:]:
            shift = o.loc[target, "opt_log2_lr"] - o.loc[BASE_WIDTH, "opt_log2_lr"]
            verdict = VERDICTS[variant] if target == WIDTHS[-1] else "inconclusive"
            transfer.append({"variant": variant, "base_width": BASE_WIDTH, "target_width": target,
                             "base_opt_log2_lr": o.loc[BASE_WIDTH, "opt_log2_lr"],
                             "target_opt_log2_lr": o.loc[target, "opt_log2_lr"], "shift": shift,
                             "shift_ci_low": shift - 0.45, "shift_ci_high": shift + 0.45, "ci_level": 0.9,
                             "regret": CURVATURE * shift**2, "regret_ci_low": 0.0, "regret_ci_high": 0.1,
                             "diverged_at_base_lr": False, "raw_verdict": verdict, "verdict": verdict,
                             "reason": f"<shift {shift:+.2f} octaves> by construction"})
        last = transfer[-1]
        claimed = {"transformer_mup": "yes", "gdn_sp": "no (required retuning)", "gdn_mup": "yes"}.get(variant)
        verdict_rows.append({"variant": variant, "family": variant.split("_")[0],
                             "parametrization": variant.split("_", 1)[1], "base_width": BASE_WIDTH,
                             "target_width": WIDTHS[-1], **{k: last[k] for k in (
                                 "shift", "shift_ci_low", "shift_ci_high", "ci_level", "regret", "verdict",
                                 "reason")}, "claimed_transfer": claimed})
    gates = pd.DataFrame(
        [{"gate": "a_mup_improves_with_width", "variant": v, "passed": True, "value": 0.3, "threshold": 0.06,
          "detail": "best loss falls by 0.30 nats from width 64 to 256"} for v in ("transformer_mup", "gdn_mup",
                                                                                  "gdn_mup_nogn")]
        + [{"gate": "b_mup_equals_sp_at_base", "variant": v, "passed": True, "value": 0.01, "threshold": 0.04,
            "detail": "equal within noise"} for v in ("transformer_mup", "gdn_mup", "gdn_mup_nogn")]
        + [{"gate": "c_optimum_inside_convex", "variant": v, "passed": True, "value": 1.0, "threshold": 1.0,
            "detail": "inside at every width"} for v in ("transformer_mup", "gdn_mup", "gdn_mup_nogn")])
    controls = pd.DataFrame([
        {"role": "negative", "variant": "transformer_sp", "expected": "fails", "observed": "fails", "passed": True},
        {"role": "positive", "variant": "transformer_mup", "expected": "transfers", "observed": "transfers",
         "passed": True}])
    noise = pd.DataFrame([{"seed_sd": NOISE, "seed_sd_dof": 60, "residual_sd": 0.021, "residual_dof": 200,
                           "noise_sd": NOISE, "n_runs": len(runs)}])
    return {"lr_optima": lr_optima, "transfer": pd.DataFrame(transfer), "gates": gates, "controls": controls,
            "study_verdict": pd.DataFrame(verdict_rows), "noise": noise}


def build_database(root: Path, monkeypatch, tier: str = "t", analyze=analysis) -> Path:
    """Job files, then ingest with the fabricated analysis in place of gdn.transfer.analyze."""
    from gdn import db, transfer

    files = write_tier(root, tier)
    monkeypatch.setattr(transfer, "analyze", analyze)
    database = root / "results" / f"{tier}.duckdb"
    db.build(database, files["metrics"], files["evals"], [], [], {"tier": tier, "transfer": {}})
    return database


def render_tier(root: Path, monkeypatch, tier: str = "t", analyze=analysis) -> Path:
    from gdn.report import render

    database = build_database(root, monkeypatch, tier, analyze)
    return render.render_report(database, root / "reports" / tier / "index.html")


def write_coord(root: Path, tier: str = "t") -> list[str]:
    """Coordinate-check files: mean |x| per module against width, flat for μP, growing for SP."""
    files = []
    for variant in VARIANTS:
        rows = []
        for width in WIDTHS:
            for step in (0, 10):
                for module in ("embedding", "mixer", "mlp"):
                    growth = 0.0 if not variant.endswith("_sp") or step == 0 else 0.5
                    rows.append({"variant": variant, "width": width, "seed": 0, "step": step, "log2_lr": -8.0,
                                 "module": module, "mean_abs": (width / BASE_WIDTH) ** growth})
        path = root / "results" / "coord" / tier / f"{variant}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rows": rows, "device": "cpu", "commit": COMMIT}))
        files.append(str(path))
    return files
