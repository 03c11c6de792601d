"""Does the best learning rate transfer across width? Pure functions over a runs table.

Input: one row per training run with columns variant, width, log2_lr, seed, status
('completed' | 'diverged'; anything else is unfinished and ignored) and final_val_loss. A
completed run whose loss is not finite counts as diverged; a grid point (variant, width,
log2_lr) is *failed* when any of its seeds diverged (an LR that sometimes blows up is not one
a practitioner can use), and its other seeds are left out of every fit.

The estimator (docs/mup_gdn.md §5 justifies each choice):

* **Optimum per (variant, width).** The seed-mean argmin over the finite grid points picks a
  window of `fit_window_octaves` on each side (contiguous, stopping at a failed point); a
  quadratic in log2 LR is fitted by least squares to every *seed-level* loss in the window; its
  vertex is the optimum when the curvature is positive and the argmin is not at an end of the
  finite grid. At an end, the optimum lies beyond the grid: it is reported as ±inf (so a shift
  is bounded on one side only), never as the edge value.
* **Noise.** One pooled run-to-run SD: the seed-to-seed spread at every grid point with
  several finished seeds (pure error, pooled over the whole study).
* **Confidence intervals.** Parametric bootstrap: the fitted curves (observed seed means
  outside the fit windows) plus Gaussian noise of the pooled SD at every seed-level point, the
  whole estimator rerun per draw — argmin, window and all — so its selection steps are inside
  the interval. Percentile intervals of each optimum, of each shift (target − base optimum)
  and of the regret.
* **Regret** is read from the target width's fitted quadratic (fit at the base optimum minus
  fit at the vertex), not from the noisy grid minimum, which biases it upward.

Verdict of one (variant, target width):

    fails          the grid LR nearest the base optimum failed (diverged) at the target width,
                   or the shift's CI lies entirely outside ±ci_bound_octaves
    transfers      the shift's CI lies inside ±ci_bound_octaves and |shift| <= transfer_max_abs_shift
    inconclusive   otherwise (the data cannot tell)

Sanity gates (`gates` table), each computed for every μP variant:

    a  its best (fitted) loss improves with width: from the base to the largest width by more
       than gate_improve_sd run-to-run SDs, and no width is worse than the one before by more
       than one SD
    b  at the base width it equals its family's SP variant within noise: every common LR's
       seed-mean difference within gate_equal_sd x SD x sqrt(2 / n_seeds)
    c  its optimum lies inside the LR grid, on a convex fit, at every width

A failed gate makes every verdict "inconclusive" (the reason names the gate). The controls
(`controls` setting) must come out as expected at the largest width — the negative control
"fails", the positive "transfers" — or the GDN verdicts become "inconclusive": a study whose
controls do not behave cannot judge GDN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from gdn.config import defaults as config_defaults
from gdn.variants import VARIANTS

# The defaults live in the config schema (their one home); a tier overrides them in its
# `transfer` section. `controls` names the variants that must come out "fails" (negative) and
# "transfers" (positive); `confirm_max_regret_nats` is read by confirm() only.
DEFAULTS = config_defaults("transfer")

TRANSFERS, FAILS, INCONCLUSIVE = "transfers", "fails", "inconclusive"
VERDICTS = (TRANSFERS, FAILS, INCONCLUSIVE)
# The claim's wording for the same outcomes, for the side-by-side table.
CLAIM_WORDS = {TRANSFERS: "yes", FAILS: "no"}

LR_OPTIMA_COLUMNS = [
    "variant", "width", "n_seeds", "n_points", "n_fit_points", "n_diverged", "grid_min", "grid_max",
    "argmin_log2_lr", "best_grid_loss", "opt_log2_lr", "opt_ci_low", "opt_ci_high", "fit_loss", "curvature",
    "convex", "inside_grid", "seed_sd",
]
TRANSFER_COLUMNS = [
    "variant", "base_width", "target_width", "base_opt_log2_lr", "target_opt_log2_lr", "shift", "shift_ci_low",
    "shift_ci_high", "ci_level", "regret", "regret_ci_low", "regret_ci_high", "diverged_at_base_lr",
    "raw_verdict", "verdict", "reason",
]
GATE_COLUMNS = ["gate", "variant", "passed", "value", "threshold", "detail"]
CONTROL_COLUMNS = ["role", "variant", "expected", "observed", "passed"]
STUDY_COLUMNS = [
    "variant", "family", "parametrization", "base_width", "target_width", "shift", "shift_ci_low", "shift_ci_high",
    "ci_level", "regret", "verdict", "reason", "claimed_transfer",
]
NOISE_COLUMNS = ["seed_sd", "seed_sd_dof", "residual_sd", "residual_dof", "noise_sd", "n_runs"]
CONFIRM_COLUMNS = [
    "variant", "width", "transferred_log2_lr", "loss_minus1", "loss_0", "loss_plus1", "diverged_minus1",
    "diverged_0", "diverged_plus1", "best_offset", "regret", "verdict", "max_regret_nats",
]
GATES = {
    "a_mup_improves_with_width": "μP's best loss improves with width",
    "b_mup_equals_sp_at_base": "μP equals SP at the base width",
    "c_optimum_inside_convex": "μP's optimum inside the grid on a convex curve",
}


def settings_with_defaults(settings: Mapping | None) -> dict:
    merged = dict(DEFAULTS)
    merged.update({k: v for k, v in (settings or {}).items() if v is not None and k in DEFAULTS})
    return merged


# ---------------------------------------------------------------- data


def seed_points(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs as seed-level points: loss (NaN where failed) and `failed` per grid point."""
    cols = ["variant", "width", "log2_lr", "seed", "loss", "failed"]
    df = runs[runs["status"].isin(["completed", "diverged"])].copy()
    if df.empty:
        return pd.DataFrame(columns=cols)
    loss = pd.to_numeric(df["final_val_loss"], errors="coerce").to_numpy(float)
    df["failed"] = (df["status"] == "diverged").to_numpy() | ~np.isfinite(loss)
    df["loss"] = np.where(df["failed"], np.nan, loss)
    df["width"] = df["width"].astype(int)
    df["log2_lr"] = df["log2_lr"].astype(float)
    # a grid point fails when any seed did: its other seeds leave the fits too
    df["failed"] = df.groupby(["variant", "width", "log2_lr"])["failed"].transform("any")
    df.loc[df["failed"], "loss"] = np.nan
    return df[cols].sort_values(["variant", "width", "log2_lr", "seed"]).reset_index(drop=True)


def noise_estimate(points: pd.DataFrame) -> dict:
    """Pooled run-to-run SD from grid points with several finished seeds (pure error)."""
    ok = points[~points["failed"]]
    groups = ok.groupby(["variant", "width", "log2_lr"])["loss"]
    n, var = groups.count(), groups.var(ddof=1)
    keep = n > 1
    dof = int((n[keep] - 1).sum())
    ss = float(((n[keep] - 1) * var[keep]).sum())
    return {"seed_sd": math.sqrt(ss / dof) if dof else math.nan, "seed_sd_dof": dof, "n_runs": int(len(points))}


# ---------------------------------------------------------------- one curve


class Curve:
    """One (variant, width): the grid, seed-level losses and the estimator over them."""

    def __init__(self, g: pd.DataFrame, window: float):
        self.x = np.sort(g["log2_lr"].unique())
        self.failed = np.array([bool(g.loc[g["log2_lr"] == x, "failed"].any()) for x in self.x])
        ok = g[~g["failed"]]
        self.px = ok["log2_lr"].to_numpy(float)  # seed-level points (finite losses only)
        self.py = ok["loss"].to_numpy(float)
        self.pidx = np.searchsorted(self.x, self.px)  # grid index of each point
        self.window = window
        self.seeds = int(g["seed"].nunique())

    def means(self, y: np.ndarray) -> np.ndarray:
        """Seed-mean loss per grid point for a (..., n_points) array of losses; NaN where failed."""
        y = np.atleast_2d(y)
        sums = np.zeros((y.shape[0], len(self.x)))
        counts = np.bincount(self.pidx, minlength=len(self.x)).astype(float)
        np.add.at(sums.T, self.pidx, y.T)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = sums / counts
        out[:, counts == 0] = np.nan
        return out

    def window_for(self, i: int) -> tuple[int, int]:
        """Grid indices [lo, hi] of the fit window around argmin index i."""
        lo = hi = i
        while lo > 0 and not self.failed[lo - 1] and self.x[i] - self.x[lo - 1] <= self.window + 1e-9:
            lo -= 1
        while hi < len(self.x) - 1 and not self.failed[hi + 1] and self.x[hi + 1] - self.x[i] <= self.window + 1e-9:
            hi += 1
        return lo, hi

    def finite_ends(self) -> tuple[int, int]:
        finite = np.flatnonzero(~self.failed & (np.bincount(self.pidx, minlength=len(self.x)) > 0))
        return int(finite[0]), int(finite[-1])

    def estimate(self, y: np.ndarray) -> dict:
        """Optimum of B draws of the seed-level losses y (B, n_points): arrays of length B.

        opt: the vertex, or -inf / +inf when the argmin is at the lower / upper end of the
        finite grid (the optimum lies beyond it), or the argmin itself when the window's fit
        is not convex (a flat, noisy curve: no better location is known).
        """
        y = np.atleast_2d(y)
        B = y.shape[0]
        means = self.means(y)
        arg = np.nanargmin(np.where(np.isfinite(means), means, np.inf), axis=1)
        first, last = self.finite_ends()
        opt = np.full(B, np.nan)
        c2 = np.full(B, np.nan)
        fit_min = np.full(B, np.nan)
        coefs = np.full((B, 3), np.nan)
        convex = np.zeros(B, bool)
        for i in np.unique(arg):
            rows = np.flatnonzero(arg == i)
            lo, hi = self.window_for(int(i))
            sel = (self.pidx >= lo) & (self.pidx <= hi)
            xs = self.px[sel]
            if len(np.unique(xs)) < 3:
                opt[rows] = self.x[i]
                fit_min[rows] = means[rows, i]
                continue
            center = self.x[i]
            design = np.stack([np.ones_like(xs), xs - center, (xs - center) ** 2], axis=1)
            beta = np.linalg.lstsq(design, y[rows][:, sel].T, rcond=None)[0].T  # (rows, 3)
            coefs[rows] = beta
            a0, a1, a2 = beta[:, 0], beta[:, 1], beta[:, 2]
            ok = a2 > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                vertex = np.clip(center - a1 / (2 * a2), self.x[lo], self.x[hi])
            u = vertex - center
            opt[rows] = np.where(ok, vertex, center)
            c2[rows] = a2
            fit_min[rows] = np.where(ok, a0 + a1 * u + a2 * u**2, means[rows, i])
            convex[rows] = ok
        at_low, at_high = arg == first, arg == last
        opt = np.where(at_low, -np.inf, np.where(at_high, np.inf, opt))
        return {"opt": opt, "curvature": c2, "fit_min": fit_min, "convex": convex, "argmin": self.x[arg],
                "inside": ~(at_low | at_high), "coefs": coefs}

    def fitted_truth(self, est: dict) -> np.ndarray:
        """Noise-free losses to bootstrap from: the fitted quadratic inside the fit window, the
        observed seed means outside it (there, no model is assumed)."""
        truth = self.means(self.py[None, :])[0][self.pidx]
        if est["convex"][0]:
            i = int(np.flatnonzero(self.x == est["argmin"][0])[0])
            lo, hi = self.window_for(i)
            sel = (self.pidx >= lo) & (self.pidx <= hi)
            u = self.px[sel] - self.x[i]
            a0, a1, a2 = est["coefs"][0]
            truth[sel] = a0 + a1 * u + a2 * u**2
        return truth

    def fit_value(self, est: dict, x: float) -> float:
        """The observed fit's loss at log2 LR x (NaN without a convex fit)."""
        if not est["convex"][0]:
            return math.nan
        a0, a1, a2 = est["coefs"][0]
        u = x - float(est["argmin"][0])
        return float(a0 + a1 * u + a2 * u**2)

    def nearest_failed(self, x: float) -> bool:
        """Whether the grid point nearest x (ties: the larger LR, the riskier side) failed."""
        if not np.isfinite(x):
            return False
        dist = np.abs(self.x - x)
        return bool(self.failed[int(np.flatnonzero(dist == dist.min())[-1])])


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval; infinities allowed (a one-sided bound), NaN draws ignored."""
    d = draws[~np.isnan(draws)]
    if d.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    return (float(np.quantile(d, tail, method="inverted_cdf")),
            float(np.quantile(d, 1 - tail, method="inverted_cdf")))


# ---------------------------------------------------------------- the analysis


def _curves(points: pd.DataFrame, window: float) -> dict[tuple[str, int], Curve]:
    return {(v, int(w)): Curve(g, window) for (v, w), g in points.groupby(["variant", "width"], sort=True)
            if (~g["failed"]).any()}


def _bootstrap(curves: dict, estimates: dict, noise_sd: float, draws: int, seed: int) -> dict:
    """Per curve, the estimator's output over `draws` simulated studies."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, curve in curves.items():
        truth = curve.fitted_truth(estimates[key])
        y = truth[None, :] + rng.normal(0.0, noise_sd, size=(draws, len(truth)))
        out[key] = curve.estimate(y)
    return out


def optimum_table(curves: dict, estimates: dict, boot: dict, level: float, points: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (variant, width), curve in curves.items():
        est = estimates[(variant, width)]
        g = points[(points["variant"] == variant) & (points["width"] == width)]
        grid_means = curve.means(curve.py[None, :])[0]
        i = int(np.flatnonzero(curve.x == est["argmin"][0])[0])
        sd_at_best = g[g["log2_lr"] == curve.x[i]]["loss"].std(ddof=1)
        lo, hi = curve.window_for(i)
        low, high = _interval(boot[(variant, width)]["opt"], level) if boot else (math.nan, math.nan)
        rows.append({
            "variant": variant, "width": width, "n_seeds": curve.seeds, "n_points": int(len(curve.px)),
            "n_fit_points": int(((curve.pidx >= lo) & (curve.pidx <= hi)).sum()),
            "n_diverged": int(curve.failed.sum()), "grid_min": float(curve.x[0]), "grid_max": float(curve.x[-1]),
            "argmin_log2_lr": float(curve.x[i]), "best_grid_loss": float(grid_means[i]),
            "opt_log2_lr": float(est["opt"][0]), "opt_ci_low": low, "opt_ci_high": high,
            "fit_loss": float(est["fit_min"][0]), "curvature": float(est["curvature"][0]),
            "convex": bool(est["convex"][0]), "inside_grid": bool(est["inside"][0]),
            "seed_sd": float(sd_at_best) if pd.notna(sd_at_best) else math.nan,
        })
    return pd.DataFrame(rows, columns=LR_OPTIMA_COLUMNS)


def judge(shift: float, ci: tuple[float, float], diverged: bool, settings: dict) -> tuple[str, str]:
    bound, max_abs = float(settings["ci_bound_octaves"]), float(settings["transfer_max_abs_shift"])
    low, high = ci
    if diverged:
        return FAILS, "the base width's optimal LR diverges at this width"
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE, "no confidence interval: no noise estimate (one seed and no quadratic fit)"
    if low > bound or high < -bound:
        return FAILS, f"the shift's {settings['ci_level']:.0%} CI lies outside ±{bound:g} octave"
    if -bound <= low and high <= bound and abs(shift) <= max_abs:
        return TRANSFERS, f"CI inside ±{bound:g} octave and |shift| ≤ {max_abs:g}"
    if -bound <= low and high <= bound:
        return INCONCLUSIVE, f"CI inside ±{bound:g} octave but |shift| > {max_abs:g}"
    return INCONCLUSIVE, f"the CI straddles ±{bound:g} octave"


def transfer_rows(curves: dict, estimates: dict, boot: dict, settings: dict) -> list[dict]:
    level = float(settings["ci_level"])
    rows = []
    for variant in sorted({v for v, _ in curves}):
        widths = sorted(w for v, w in curves if v == variant)
        base = settings["base_width"] if settings["base_width"] is not None else widths[0]
        if base not in widths:
            continue
        base_opt = float(estimates[(variant, base)]["opt"][0])
        for target in (w for w in widths if w > base):
            curve, est = curves[(variant, target)], estimates[(variant, target)]
            target_opt = float(est["opt"][0])
            shift = target_opt - base_opt if np.isfinite(base_opt) or np.isfinite(target_opt) else math.nan
            diverged = curve.nearest_failed(base_opt)
            regret = curve.fit_value(est, base_opt) - float(est["fit_min"][0]) if np.isfinite(base_opt) else math.nan
            ci = r_ci = (math.nan, math.nan)  # without a noise estimate (one seed, no fit) there is no CI
            if boot:
                b, t = boot[(variant, base)], boot[(variant, target)]
                with np.errstate(invalid="ignore"):  # both beyond the same edge: inf - inf, no shift known
                    ci = _interval(t["opt"] - b["opt"], level)
                    u = b["opt"] - t["opt"]  # distance of the base optimum from the target vertex
                    r_ci = _interval(np.where(t["convex"] & np.isfinite(u), t["curvature"] * u**2, np.nan), level)
            r_low, r_high = r_ci
            verdict, reason = judge(shift, ci, diverged, settings)
            rows.append({
                "variant": variant, "base_width": int(base), "target_width": int(target),
                "base_opt_log2_lr": base_opt, "target_opt_log2_lr": target_opt, "shift": shift,
                "shift_ci_low": ci[0], "shift_ci_high": ci[1], "ci_level": level, "regret": regret,
                "regret_ci_low": r_low, "regret_ci_high": r_high, "diverged_at_base_lr": diverged,
                "raw_verdict": verdict, "verdict": verdict, "reason": reason,
            })
    return rows


def _mup_variants(optima: pd.DataFrame) -> list[str]:
    return [v for v in sorted(optima["variant"].unique()) if v in VARIANTS and VARIANTS[v].parametrization != "sp"]


def gate_rows(optima: pd.DataFrame, points: pd.DataFrame, noise_sd: float, settings: dict) -> list[dict]:
    rows = []
    k_improve, k_equal = float(settings["gate_improve_sd"]), float(settings["gate_equal_sd"])
    for variant in _mup_variants(optima):
        mine = optima[optima["variant"] == variant].sort_values("width")
        # (a) best loss improves with width (the fit's minimum where convex, else the grid's best mean)
        best = np.where(mine["convex"] & mine["inside_grid"], mine["fit_loss"], mine["best_grid_loss"])
        gain = float(best[0] - best[-1]) if len(best) > 1 else math.nan
        worse_steps = [f"{a}→{b}" for a, b, la, lb in zip(mine["width"], mine["width"][1:], best, best[1:])
                       if lb - la > noise_sd]
        passed_a = len(best) > 1 and gain > k_improve * noise_sd and not worse_steps
        detail = ", ".join(f"w{w}: {loss:.3f}" for w, loss in zip(mine["width"], best))
        if worse_steps:
            detail += f"; worse by more than 1 SD at {', '.join(worse_steps)}"
        rows.append({"gate": "a_mup_improves_with_width", "variant": variant, "passed": bool(passed_a),
                     "value": gain, "threshold": k_improve * noise_sd, "detail": detail})
        # (b) equal to SP at the base width
        family = VARIANTS[variant].family
        sp = next((v for v, meta in VARIANTS.items() if meta.family == family and meta.parametrization == "sp"), None)
        base = int(mine["width"].min())
        a = points[(points["variant"] == variant) & (points["width"] == base)]
        b = points[(points["variant"] == sp) & (points["width"] == base)]
        if sp is None or b.empty:
            rows.append({"gate": "b_mup_equals_sp_at_base", "variant": variant, "passed": False, "value": math.nan,
                         "threshold": math.nan, "detail": f"no {family} SP runs at width {base} to compare with"})
        else:
            ma = a.groupby("log2_lr")["loss"].agg(["mean", "count"])
            mb = b.groupby("log2_lr")["loss"].agg(["mean", "count"])
            common = ma.merge(mb, left_index=True, right_index=True, suffixes=("_mup", "_sp")).dropna()
            diff = (common["mean_mup"] - common["mean_sp"]).abs()
            n = float(common[["count_mup", "count_sp"]].min().min()) if len(common) else math.nan
            threshold = k_equal * noise_sd * math.sqrt(2.0 / n) if len(common) else math.nan
            value = float(diff.max()) if len(common) else math.nan
            rows.append({"gate": "b_mup_equals_sp_at_base", "variant": variant,
                         "passed": bool(len(common) and value <= threshold), "value": value, "threshold": threshold,
                         "detail": f"largest |μP − SP| seed-mean difference over {len(common)} LRs at width {base}"})
        # (c) optimum inside the grid on a convex fit, at every width
        bad = mine[~(mine["convex"] & mine["inside_grid"])]
        detail = "all widths" if bad.empty else "; ".join(
            f"w{r.width}: {'at the grid edge' if not r.inside_grid else 'not convex'}" for r in bad.itertuples())
        rows.append({"gate": "c_optimum_inside_convex", "variant": variant, "passed": bool(bad.empty),
                     "value": float(len(bad)), "threshold": 0.0, "detail": detail})
    return rows


def control_rows(transfer: pd.DataFrame, settings: dict) -> list[dict]:
    rows = []
    controls = settings.get("controls") or {}
    for role, expected in (("negative", FAILS), ("positive", TRANSFERS)):
        variant = controls.get(role)
        if not variant:
            continue
        mine = transfer[transfer["variant"] == variant].sort_values("target_width")
        observed = str(mine["raw_verdict"].iloc[-1]) if len(mine) else "not run"
        rows.append({"role": role, "variant": variant, "expected": expected, "observed": observed,
                     "passed": observed == expected})
    return rows


def apply_gates_and_controls(transfer: pd.DataFrame, gates: pd.DataFrame, controls: pd.DataFrame) -> pd.DataFrame:
    """Final verdicts: every one inconclusive when a gate failed; GDN's when a control failed."""
    out = transfer.copy()
    raw = " — raw verdict: " + out["raw_verdict"] + " (" + out["reason"] + ")"
    failed_gates = gates[~gates["passed"].astype(bool)]
    if len(failed_gates):
        names = sorted({f"{g.gate} ({g.variant})" for g in failed_gates.itertuples()})
        out["verdict"] = INCONCLUSIVE
        out["reason"] = "sanity gate failed: " + "; ".join(names) + raw
        return out
    failed_controls = controls[~controls["passed"].astype(bool)]
    if len(failed_controls):
        control_variants = set(controls["variant"])
        note = "; ".join(f"{c.variant} came out {c.observed}, expected {c.expected}"
                         for c in failed_controls.itertuples())
        judged = ~out["variant"].isin(control_variants)
        out.loc[judged, "verdict"] = INCONCLUSIVE
        out.loc[judged, "reason"] = "control failed, the study cannot judge GDN: " + note + raw[judged]
    return out


def study_rows(transfer: pd.DataFrame) -> list[dict]:
    from gdn.claims import CLAIMED_TABLE

    claimed = {}
    for row in CLAIMED_TABLE:
        claimed.setdefault(row["variant"], row["transfer"])
    rows = []
    for variant, mine in transfer.groupby("variant", sort=True):
        last = mine.sort_values("target_width").iloc[-1]
        meta = VARIANTS.get(variant)
        rows.append({
            "variant": variant, "family": meta.family if meta else None,
            "parametrization": meta.parametrization if meta else None, "base_width": int(last.base_width),
            "target_width": int(last.target_width), "shift": last["shift"], "shift_ci_low": last.shift_ci_low,
            "shift_ci_high": last.shift_ci_high, "ci_level": last.ci_level, "regret": last.regret,
            "verdict": last.verdict, "reason": last.reason, "claimed_transfer": claimed.get(variant),
        })
    return rows


def analyze(runs: pd.DataFrame, settings: dict | None = None) -> dict[str, pd.DataFrame]:
    """Tables lr_optima, transfer, gates, controls, study_verdict and noise (columns above)."""
    s = settings_with_defaults(settings)
    points = seed_points(runs)
    curves = _curves(points, float(s["fit_window_octaves"]))
    estimates = {key: curve.estimate(curve.py[None, :]) for key, curve in curves.items()}
    noise = noise_estimate(points)
    residual_sd, residual_dof = _residual_sd(curves, estimates)
    noise_sd = noise["seed_sd"] if np.isfinite(noise["seed_sd"]) else residual_sd
    boot = _bootstrap(curves, estimates, noise_sd, int(s["bootstrap_draws"]), int(s["bootstrap_seed"])) \
        if np.isfinite(noise_sd) and curves else {}
    level = float(s["ci_level"])
    optima = optimum_table(curves, estimates, boot, level, points)
    transfer = pd.DataFrame(transfer_rows(curves, estimates, boot, s), columns=TRANSFER_COLUMNS)
    gates = pd.DataFrame(gate_rows(optima, points, noise_sd, s), columns=GATE_COLUMNS)
    controls = pd.DataFrame(control_rows(transfer, s), columns=CONTROL_COLUMNS)
    transfer = apply_gates_and_controls(transfer, gates, controls)
    return {
        "lr_optima": optima, "transfer": transfer, "gates": gates, "controls": controls,
        "study_verdict": pd.DataFrame(study_rows(transfer), columns=STUDY_COLUMNS),
        "noise": pd.DataFrame([{**noise, "residual_sd": residual_sd, "residual_dof": residual_dof,
                                "noise_sd": noise_sd}], columns=NOISE_COLUMNS),
    }


def _residual_sd(curves: dict, estimates: dict) -> tuple[float, int]:
    """RMS residual of the convex window fits (includes lack of fit): the noise fallback with one seed."""
    ss, dof = 0.0, 0
    for key, curve in curves.items():
        est = estimates[key]
        if not est["convex"][0]:
            continue
        i = int(np.flatnonzero(curve.x == est["argmin"][0])[0])
        lo, hi = curve.window_for(i)
        sel = (curve.pidx >= lo) & (curve.pidx <= hi)
        u = curve.px[sel] - curve.x[i]
        a0, a1, a2 = est["coefs"][0]
        ss += float(((curve.py[sel] - (a0 + a1 * u + a2 * u**2)) ** 2).sum())
        dof += int(sel.sum()) - 3
    return (math.sqrt(ss / dof) if dof > 0 else math.nan), dof


def point_optima(runs: pd.DataFrame, settings: dict | None = None) -> pd.DataFrame:
    """The optimum of every (variant, width) without the bootstrap (for planning the next stage)."""
    s = settings_with_defaults(settings)
    points = seed_points(runs)
    curves = _curves(points, float(s["fit_window_octaves"]))
    estimates = {key: curve.estimate(curve.py[None, :]) for key, curve in curves.items()}
    return optimum_table(curves, estimates, {}, float(s["ci_level"]), points)


# ---------------------------------------------------------------- confirmation runs


def confirm(runs: pd.DataFrame, transferred_log2_lr: Mapping[str, float], settings: dict | None = None) -> pd.DataFrame:
    """Verdict from runs at the target width placed at log2 offsets -1, 0, +1 of the transferred LR.

    runs: the runs table restricted to the confirmation cells (one verdict per (variant, width));
    transferred_log2_lr: variant -> the base-width optimum. Offsets other than -1, 0, +1 are ignored.
      diverged at offset 0                                          -> fails
      a neighbour beats offset 0 by more than confirm_max_regret_nats -> fails (the optimum moved)
      otherwise                                                     -> transfers
    Three points cannot bound a shift; this is a cheap check for tiers that cannot sweep.
    """
    s = settings_with_defaults(settings)
    max_regret = float(s["confirm_max_regret_nats"])
    points = seed_points(runs)
    means = points.groupby(["variant", "width", "log2_lr"]).agg(loss=("loss", "mean"), failed=("failed", "any"))
    rows = []
    for (variant, width), g in means.reset_index().groupby(["variant", "width"], sort=True):
        if variant not in transferred_log2_lr:
            continue
        center = float(transferred_log2_lr[variant])
        cell = {}
        for offset in (-1, 0, 1):
            hit = g[np.isclose(g["log2_lr"].to_numpy(float) - center, offset, atol=1e-3)]
            cell[offset] = (float(hit["loss"].iloc[0]), bool(hit["failed"].iloc[0])) if len(hit) else (math.nan, None)
        if cell[0][1] is None:
            continue  # the transferred LR itself was not run (yet)
        finite = {o: v[0] for o, v in cell.items() if v[1] is False and np.isfinite(v[0])}
        best_offset = min(finite, key=finite.get) if finite else None
        if cell[0][1]:
            regret, verdict = math.nan, FAILS
        else:
            regret = cell[0][0] - finite[best_offset]
            verdict = FAILS if regret > max_regret else TRANSFERS
        rows.append({
            "variant": variant, "width": int(width), "transferred_log2_lr": center,
            "loss_minus1": cell[-1][0], "loss_0": cell[0][0], "loss_plus1": cell[1][0],
            "diverged_minus1": cell[-1][1], "diverged_0": cell[0][1], "diverged_plus1": cell[1][1],
            "best_offset": best_offset, "regret": regret, "verdict": verdict, "max_regret_nats": max_regret,
        })
    return pd.DataFrame(rows, columns=CONFIRM_COLUMNS)
