"""Does the best learning rate transfer across width? Pure functions over a runs table.

Input: one row per training run with columns variant, width, log2_lr, seed, status
('completed' | 'diverged'; anything else is ignored as unfinished) and final_val_loss.
A completed run whose loss is not finite counts as diverged; a grid point (variant, width,
log2_lr) counts as diverged when any of its seeds did, since an LR that sometimes blows up
is not one a practitioner can use.

`analyze` gives each (variant, width) its optimal log2 LR — the vertex of a parabola fitted
to the loss around the grid argmin, which resolves the optimum between grid points — and
for each larger width judges the transfer of the base-width optimum:

    "no (diverged with same LR)"   the grid LR nearest the base optimum diverged at the target width
    "no (required retuning)"       |shift| > max_shift_octaves or regret > max_regret_nats
    "yes"                          otherwise

`confirm` decides the same verdict from three runs at a large width placed at x0.5, x1 and
x2 of the transferred LR, for tiers that cannot sweep the largest width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

# Defaults; a tier overrides them in its `transfer` config section.
DEFAULTS = {
    # The grids step by one octave (or half): a shift within one octave is within a grid step
    # of the base optimum, which is as close as the sweep can tell two optima apart.
    "max_shift_octaves": 1.0,
    # ~3% perplexity. Well below the gaps the claim is about (SP vs μP GDN: ln(19.8/18.5) =
    # 0.068 nats) and above the seed-to-seed spread of final validation loss at equal
    # settings (reported beside it as seed_sd where there are several seeds).
    "max_regret_nats": 0.03,
    # Grid points on each side of the argmin used by the parabola fit (1: three points).
    "fit_neighbors": 1,
    # None: each variant's smallest width is the base.
    "base_width": None,
}

VERDICT_YES = "yes"
VERDICT_RETUNE = "no (required retuning)"
VERDICT_DIVERGED = "no (diverged with same LR)"
VERDICTS = (VERDICT_YES, VERDICT_RETUNE, VERDICT_DIVERGED)

LR_OPTIMA_COLUMNS = [
    "variant", "width", "opt_log2_lr", "argmin_log2_lr", "best_loss", "fit_loss", "n_points", "n_diverged",
    "fit_ok", "at_grid_edge", "seed_sd",
]
TRANSFER_COLUMNS = [
    "variant", "base_width", "target_width", "base_opt_log2_lr", "target_opt_log2_lr", "shift",
    "loss_at_base_lr", "target_best_loss", "regret", "diverged_at_base_lr", "verdict",
    "max_shift_octaves", "max_regret_nats",
]
CONFIRM_COLUMNS = [
    "variant", "width", "transferred_log2_lr", "loss_minus1", "loss_0", "loss_plus1", "diverged_minus1",
    "diverged_0", "diverged_plus1", "best_offset", "regret", "verdict", "max_regret_nats",
]


def _settings(settings: Mapping | None) -> dict:
    merged = dict(DEFAULTS)
    merged.update({k: v for k, v in (settings or {}).items() if v is not None})
    return merged


def grid_points(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, width, log2_lr): seed-mean loss, diverged flag, seed spread."""
    cols = ["variant", "width", "log2_lr", "loss", "diverged", "n_seeds", "seed_sd"]
    df = runs[runs["status"].isin(["completed", "diverged"])].copy()
    if df.empty:
        return pd.DataFrame(columns=cols)
    loss = pd.to_numeric(df["final_val_loss"], errors="coerce")
    df["failed"] = (df["status"] == "diverged") | ~np.isfinite(loss.to_numpy(float))
    df["loss"] = loss.where(~df["failed"])
    out = (
        df.groupby(["variant", "width", "log2_lr"], sort=True)
        .agg(loss=("loss", "mean"), diverged=("failed", "any"), n_seeds=("seed", "nunique"), seed_sd=("loss", "std"))
        .reset_index()
    )
    out.loc[out["diverged"], "loss"] = np.nan
    return out[cols]


def fit_optimum(x: np.ndarray, loss: np.ndarray, neighbors: int = 1) -> dict:
    """Optimal log2 LR of one loss-vs-log2(LR) curve.

    x: sorted grid of log2 LRs; loss: seed-mean losses with NaN where the run diverged.
    A parabola through the argmin and up to `neighbors` finite grid points on each side
    (contiguous, stopping at a diverged point); its vertex, clipped to that window, is the
    optimum. Without a convex fit (argmin at an edge of the finite points, too few points,
    non-positive curvature) the optimum is the argmin itself and fit_ok is False.
    """
    x, loss = np.asarray(x, float), np.asarray(loss, float)
    finite = np.isfinite(loss)
    if not finite.any():
        return {"opt_log2_lr": math.nan, "argmin_log2_lr": math.nan, "best_loss": math.nan,
                "fit_loss": math.nan, "fit_ok": False, "at_grid_edge": False}
    i = int(np.nanargmin(np.where(finite, loss, np.inf)))
    lo = i
    while lo > 0 and finite[lo - 1] and i - lo < neighbors:
        lo -= 1
    hi = i
    while hi < len(x) - 1 and finite[hi + 1] and hi - i < neighbors:
        hi += 1
    result = {"opt_log2_lr": float(x[i]), "argmin_log2_lr": float(x[i]), "best_loss": float(loss[i]),
              "fit_loss": float(loss[i]), "fit_ok": False, "at_grid_edge": i in (0, len(x) - 1)}
    if lo == i or hi == i:  # the minimum is not bracketed: the optimum may lie beyond it
        return result
    wx, wy = x[lo : hi + 1], loss[lo : hi + 1]
    c2, c1, c0 = np.polyfit(wx, wy, 2)
    if not c2 > 0:
        return result
    vertex = float(np.clip(-c1 / (2 * c2), wx[0], wx[-1]))
    result.update(opt_log2_lr=vertex, fit_loss=float(c2 * vertex**2 + c1 * vertex + c0), fit_ok=True)
    return result


def lr_optima(points: pd.DataFrame, neighbors: int = 1) -> pd.DataFrame:
    rows = []
    for (variant, width), g in points.groupby(["variant", "width"], sort=True):
        g = g.sort_values("log2_lr")
        fit = fit_optimum(g["log2_lr"].to_numpy(float), g["loss"].to_numpy(float), neighbors)
        best = g.loc[g["loss"].idxmin()] if g["loss"].notna().any() else None
        rows.append({
            "variant": variant, "width": int(width), **fit,
            "n_points": int(g["loss"].notna().sum()), "n_diverged": int(g["diverged"].sum()),
            "seed_sd": float(best["seed_sd"]) if best is not None and pd.notna(best["seed_sd"]) else math.nan,
        })
    return pd.DataFrame(rows, columns=LR_OPTIMA_COLUMNS)


def loss_at(x: np.ndarray, loss: np.ndarray, x_star: float) -> tuple[float, bool]:
    """(loss at log2 LR x_star, diverged there) on one width's grid.

    The grid point nearest x_star decides divergence (ties go to the larger LR, the riskier
    side). Otherwise the loss is interpolated linearly between the two grid points around
    x_star when both completed, else read at the nearest point; beyond the grid, the edge.
    """
    x, loss = np.asarray(x, float), np.asarray(loss, float)
    dist = np.abs(x - x_star)
    nearest = int(np.flatnonzero(dist == dist.min())[-1])
    if not np.isfinite(loss[nearest]):
        return math.nan, True
    j = int(np.searchsorted(x, x_star))
    if 0 < j < len(x) and np.isfinite(loss[j - 1]) and np.isfinite(loss[j]):
        t = (x_star - x[j - 1]) / (x[j] - x[j - 1])
        return float((1 - t) * loss[j - 1] + t * loss[j]), False
    return float(loss[nearest]), False


def judge(shift: float, regret: float, diverged: bool, max_shift: float, max_regret: float) -> str:
    if diverged:
        return VERDICT_DIVERGED
    if abs(shift) > max_shift or regret > max_regret:
        return VERDICT_RETUNE
    return VERDICT_YES


def transfer_table(points: pd.DataFrame, optima: pd.DataFrame, settings: dict) -> pd.DataFrame:
    rows = []
    max_shift, max_regret = float(settings["max_shift_octaves"]), float(settings["max_regret_nats"])
    for variant, opt in optima.groupby("variant", sort=True):
        opt = opt.set_index("width").sort_index()
        base_width = settings["base_width"] if settings["base_width"] is not None else int(opt.index.min())
        if base_width not in opt.index or not np.isfinite(opt.loc[base_width, "opt_log2_lr"]):
            continue  # nothing completed at the base width: there is no LR to transfer
        base_opt = float(opt.loc[base_width, "opt_log2_lr"])
        for target in opt.index[opt.index > base_width]:
            g = points[(points["variant"] == variant) & (points["width"] == target)].sort_values("log2_lr")
            loss, diverged = loss_at(g["log2_lr"].to_numpy(float), g["loss"].to_numpy(float), base_opt)
            target_opt = float(opt.loc[target, "opt_log2_lr"])
            best = float(opt.loc[target, "best_loss"])
            shift = target_opt - base_opt
            regret = loss - best if not diverged else math.nan
            rows.append({
                "variant": variant, "base_width": int(base_width), "target_width": int(target),
                "base_opt_log2_lr": base_opt, "target_opt_log2_lr": target_opt, "shift": shift,
                "loss_at_base_lr": loss, "target_best_loss": best, "regret": regret,
                "diverged_at_base_lr": diverged,
                "verdict": judge(shift, regret, diverged, max_shift, max_regret),
                "max_shift_octaves": max_shift, "max_regret_nats": max_regret,
            })
    return pd.DataFrame(rows, columns=TRANSFER_COLUMNS)


def analyze(runs: pd.DataFrame, settings: dict | None = None) -> dict[str, pd.DataFrame]:
    """Tables `lr_optima` and `transfer` (columns LR_OPTIMA_COLUMNS, TRANSFER_COLUMNS).

    settings keys (DEFAULTS): max_shift_octaves, max_regret_nats, fit_neighbors, base_width.
    """
    s = _settings(settings)
    points = grid_points(runs)
    optima = lr_optima(points, int(s["fit_neighbors"]))
    return {"lr_optima": optima, "transfer": transfer_table(points, optima, s)}


def confirm(runs: pd.DataFrame, transferred_log2_lr: Mapping[str, float], settings: dict | None = None) -> pd.DataFrame:
    """Verdict from runs at the target width placed at log2 offsets -1, 0, +1 of the transferred LR.

    runs: the runs table restricted to the confirmation cells (any width; one verdict per
    (variant, width)); transferred_log2_lr: variant -> the base-width optimum. Offsets other
    than -1, 0, +1 are ignored.
      diverged at offset 0                                   -> "no (diverged with same LR)"
      a neighbour beats offset 0 by more than max_regret_nats -> "no (required retuning)"
      otherwise                                              -> "yes"
    A neighbour that wins means the optimum moved by at least half an octave; whether by
    more than max_shift_octaves cannot be told from three points, so regret alone decides.
    """
    s = _settings(settings)
    max_regret = float(s["max_regret_nats"])
    points = grid_points(runs)
    rows = []
    for (variant, width), g in points.groupby(["variant", "width"], sort=True):
        if variant not in transferred_log2_lr:
            continue
        center = float(transferred_log2_lr[variant])
        cell = {}
        for offset in (-1, 0, 1):
            hit = g[np.isclose(g["log2_lr"].to_numpy(float) - center, offset, atol=1e-3)]
            cell[offset] = (float(hit["loss"].iloc[0]), bool(hit["diverged"].iloc[0])) if len(hit) else (math.nan, None)
        if cell[0][1] is None:
            continue  # the transferred LR itself was not run (yet)
        finite = {o: v[0] for o, v in cell.items() if v[1] is False and np.isfinite(v[0])}
        best_offset = min(finite, key=finite.get) if finite else None
        if cell[0][1]:
            regret, verdict = math.nan, VERDICT_DIVERGED
        else:
            regret = cell[0][0] - finite[best_offset]
            verdict = VERDICT_RETUNE if regret > max_regret else VERDICT_YES
        rows.append({
            "variant": variant, "width": int(width), "transferred_log2_lr": center,
            "loss_minus1": cell[-1][0], "loss_0": cell[0][0], "loss_plus1": cell[1][0],
            "diverged_minus1": cell[-1][1], "diverged_0": cell[0][1], "diverged_plus1": cell[1][1],
            "best_offset": best_offset, "regret": regret, "verdict": verdict, "max_regret_nats": max_regret,
        })
    return pd.DataFrame(rows, columns=CONFIRM_COLUMNS)
