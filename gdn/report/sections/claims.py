"""Verdict first: the claimed table and ours side by side, one row per variant.

Each claimed variant gets its claimed parameters, tokens, WikiText-103 perplexity and transfer
column (both claimed scales in one cell) beside our measurement at the tier's target width, the
optimum's shift from the base width with its confidence interval, the verdict, and the sanity
gates' outcome; variants the claim does not name (the negative control, μP without gating
normalization) follow. A failed control or gate is said above the table, where it cannot be missed.

Reads `study_verdict`, `gates`, `controls` and `noise` (the transfer analysis' tables); a database
without them (an older ingest) gets the claimed values and our best runs, without verdicts.
"""

from __future__ import annotations

import pandas as pd

from gdn.claims import CLAIMED_TABLE, VARIANT_LABELS
from gdn.report.queries import add_table, frame, table_exists
from gdn.report.templating import render

GATE_LABELS = {
    "a_mup_improves_with_width": ("a", "μP improves with width"),
    "b_mup_equals_sp_at_base": ("b", "μP equals SP at the base width"),
    "c_optimum_inside_convex": ("c", "optimum inside the grid, convex curve"),
}
VERDICT_CLASS = {"transfers": "good", "fails": "bad", "inconclusive": "unsure"}
# The SQL that gives the verdict table from the Parquet files beside the page (shown on the page).
RECOMPUTE_SQL = """-- from reports/<tier>/, with the duckdb command-line tool or Python's duckdb
SELECT v.variant, v.base_width, v.target_width, round(v.shift, 2) AS shift,
       round(v.shift_ci_low, 2) AS ci_low, round(v.shift_ci_high, 2) AS ci_high, v.ci_level,
       round(v.regret, 3) AS regret, v.verdict, v.claimed_transfer,
       (SELECT string_agg(g.gate || CASE WHEN g.passed THEN ' passed' ELSE ' FAILED' END, ', ' ORDER BY g.gate)
          FROM 'data/gates.parquet' g WHERE g.variant = v.variant) AS gates
FROM 'data/study_verdict.parquet' v ORDER BY v.variant;"""


def claimed_by_variant() -> dict[str, dict]:
    """The claimed table folded to one entry per variant: scales joined with ' / '."""
    out: dict[str, dict] = {}
    for c in CLAIMED_TABLE:
        entry = out.setdefault(c["variant"], {"label": c["label"], "params": [], "tokens": [], "ppl": [],
                                              "transfer": []})
        for key, value in (("params", c["params"]), ("tokens", c["tokens"]), ("ppl", c["wikitext_ppl"]),
                           ("transfer", c["transfer"])):
            if value not in entry[key]:
                entry[key].append(value)
    return {v: {**e, **{k: " / ".join(str(x) for x in e[k]) for k in ("params", "tokens", "ppl", "transfer")}}
            for v, e in out.items()}


def agreement(claimed_transfer: str | None, verdict: str | None) -> tuple[str, str]:
    """(text, css class): does our verdict agree with the claimed transfer column?"""
    if not isinstance(claimed_transfer, str) or not claimed_transfer:
        return "not claimed", "note"
    if verdict is None:
        return "not judged", "note"
    if verdict == "inconclusive":
        return "cannot tell", "unsure"
    claimed_success = claimed_transfer.startswith("yes")
    return ("agrees", "good") if claimed_success == (verdict == "transfers") else ("disagrees", "bad")


def _measured(con, variant: str, width) -> dict:
    """Our best completed run of `variant` at `width` (seed-mean loss per LR): params, tokens,
    validation perplexity and, where evaluated, WikiText-103 word perplexity."""
    best = frame(con, """
        SELECT log2_lr, avg(final_val_loss) AS loss, max(params_total) AS params, max(tokens) AS tokens,
               list(run_id ORDER BY seed) AS run_ids
        FROM runs WHERE status = 'completed' AND variant = ? AND width = ? GROUP BY log2_lr
        ORDER BY loss LIMIT 1""", [variant, int(width)])
    if best.empty:
        return {}
    row = best.iloc[0]
    out = {"params": row["params"], "tokens": row["tokens"], "val_loss": row["loss"], "log2_lr": row["log2_lr"],
           "wiki_ppl": None}
    if table_exists(con, "evaluations"):
        wiki = frame(con, """
            SELECT avg(e.value) AS ppl FROM evaluations e JOIN runs r USING (run_id)
            WHERE e.task = 'wikitext103' AND e.metric = 'word_perplexity' AND r.variant = ? AND r.width = ?
              AND r.log2_lr = ? AND r.status = 'completed'""", [variant, int(width), float(row["log2_lr"])])
        if not wiki.empty and pd.notna(wiki["ppl"].iloc[0]):
            out["wiki_ppl"] = float(wiki["ppl"].iloc[0])
    return out


def _gates(con) -> pd.DataFrame | None:
    if not table_exists(con, "gates"):
        return None
    gates = frame(con, "SELECT * FROM gates ORDER BY gate, variant")
    gates["letter"] = [GATE_LABELS.get(g, (g, g))[0] for g in gates["gate"]]
    gates["label"] = [GATE_LABELS.get(g, (g, g))[1] for g in gates["gate"]]
    return gates


def _role(variant: str, controls: pd.DataFrame | None, claimed: dict) -> str:
    roles = []
    if variant in claimed:
        roles.append("claim")
    if controls is not None:
        roles += [f"{r} control" for r in controls.loc[controls["variant"] == variant, "role"]]
    return ", ".join(roles) or "not in the claim"


def verdict_rows(con, verdicts: pd.DataFrame, gates: pd.DataFrame | None, controls: pd.DataFrame | None) -> list[dict]:
    claimed = claimed_by_variant()
    order = list(claimed) + sorted(set(verdicts["variant"]) - set(claimed))
    rows = []
    by_variant = {r["variant"]: r for r in verdicts.to_dict("records")}
    for variant in order:
        v = by_variant.get(variant)
        c = claimed.get(variant)
        target = v["target_width"] if v is not None else None
        measured = _measured(con, variant, target) if target is not None and target == target else {}
        variant_gates = gates[gates["variant"] == variant] if gates is not None else None
        failed = [] if variant_gates is None else variant_gates[~variant_gates["passed"].astype(bool)]
        verdict = v["verdict"] if v is not None else None
        text, css = agreement(c["transfer"] if c else (v or {}).get("claimed_transfer"), verdict)
        rows.append({
            "variant": variant, "label": VARIANT_LABELS.get(variant, variant),
            "role": _role(variant, controls, claimed),
            "claimed": c, "measured": measured, "verdict": v,
            "gates": None if variant_gates is None or variant_gates.empty else {
                "n": len(variant_gates), "failed": list(failed["letter"]) if len(failed) else []},
            "agreement": text, "agreement_class": css,
        })
    return rows


def _headline_table(rows: list[dict]) -> pd.DataFrame:
    """The verdict table as shown, for data/verdict_table.csv."""
    out = []
    for r in rows:
        v, c, m = r["verdict"] or {}, r["claimed"] or {}, r["measured"]
        out.append({"variant": r["variant"], "role": r["role"], "claimed_params": c.get("params"),
                    "claimed_tokens": c.get("tokens"), "claimed_wikitext_ppl": c.get("ppl"),
                    "claimed_transfer": c.get("transfer"), "params": m.get("params"), "tokens": m.get("tokens"),
                    "val_loss": m.get("val_loss"), "wikitext_word_ppl": m.get("wiki_ppl"),
                    "base_width": v.get("base_width"), "target_width": v.get("target_width"),
                    "shift": v.get("shift"), "shift_ci_low": v.get("shift_ci_low"),
                    "shift_ci_high": v.get("shift_ci_high"), "ci_level": v.get("ci_level"),
                    "regret": v.get("regret"), "verdict": v.get("verdict"),
                    "gates_failed": ",".join(r["gates"]["failed"]) if r["gates"] else None,
                    "vs_claim": r["agreement"]})
    return pd.DataFrame(out)


def _fallback_rows(con) -> list[dict]:
    """Without study verdicts: claimed values beside our best run at the widest width."""
    claimed = claimed_by_variant()
    widest = frame(con, "SELECT variant, max(width) AS width FROM runs WHERE status = 'completed' GROUP BY variant")
    widths = dict(zip(widest["variant"], widest["width"]))
    rows = []
    for variant in list(claimed) + sorted(set(widths) - set(claimed)):
        rows.append({"variant": variant, "label": VARIANT_LABELS.get(variant, variant),
                     "role": "claim" if variant in claimed else "not in the claim", "claimed": claimed.get(variant),
                     "measured": _measured(con, variant, widths[variant]) if variant in widths else {},
                     "width": widths.get(variant), "verdict": None, "gates": None,
                     "agreement": "not judged", "agreement_class": "note"})
    return rows


def build(con, ctx):
    if not table_exists(con, "runs") or con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0:
        return None
    gates = _gates(con)
    controls = frame(con, "SELECT * FROM controls ORDER BY role DESC, variant") if table_exists(con, "controls") \
        else None
    noise = frame(con, "SELECT * FROM noise") if table_exists(con, "noise") else None
    if table_exists(con, "study_verdict"):
        verdicts = frame(con, "SELECT * FROM study_verdict ORDER BY variant")
        rows = verdict_rows(con, verdicts, gates, controls)
        add_table(ctx, "verdict_table", _headline_table(rows))
    else:
        verdicts, rows = None, _fallback_rows(con)
    failed_controls = [] if controls is None else controls[~controls["passed"].astype(bool)].to_dict("records")
    failed_gates = [] if gates is None else gates[~gates["passed"].astype(bool)].to_dict("records")
    ci_level = None
    if verdicts is not None and not verdicts.empty and "ci_level" in verdicts:
        ci_level = verdicts["ci_level"].dropna().iloc[0] if verdicts["ci_level"].notna().any() else None
    html = render("sections/claims.html.j2", rows=rows, judged=verdicts is not None, ctx=ctx,
                  failed_controls=failed_controls, failed_gates=failed_gates, gates=gates, controls=controls,
                  noise=None if noise is None or noise.empty else noise.iloc[0].to_dict(), ci_level=ci_level,
                  verdict_class=VERDICT_CLASS, recompute_sql=RECOMPUTE_SQL, labels=VARIANT_LABELS)
    return {"id": "claims", "title": "Verdict: the claim against this tier", "nav": "Verdict", "html": html}
