"""The claimed table with our measured values beside each claimed one.

Each claimed row names a variant and a scale; our tier trains other scales, so the row
shows our measurement for that variant at each width of the tier (best learning rate),
and the transfer verdict from the smallest to the largest width.
"""

from gdn.claims import CLAIMED_TABLE, VARIANT_LABELS
from gdn.report.queries import best_runs, frame, table_exists
from gdn.report.templating import render


def build(con, ctx):
    best = best_runs(con)
    if best.empty:
        return None
    wiki = {}
    if table_exists(con, "evaluations"):
        for row in frame(con, "SELECT run_id, value FROM evaluations WHERE task = 'wikitext103' "
                              "AND metric = 'word_perplexity'").itertuples():
            wiki[row.run_id] = row.value
    verdicts = {}
    if table_exists(con, "transfer"):
        verdicts = {r.variant: r for r in frame(con, """
            SELECT * FROM transfer QUALIFY row_number() OVER (
                PARTITION BY variant ORDER BY target_width DESC, base_width ASC) = 1""").itertuples()}
    measured = []
    for row in best.itertuples():
        verdict = verdicts.get(row.variant)
        measured.append({
            "variant": row.variant, "label": VARIANT_LABELS.get(row.variant, row.variant), "width": row.width,
            "params": row.params_total, "params_non_embedding": row.params_non_embedding, "tokens": row.tokens,
            "best_log2_lr": row.log2_lr, "val_loss": row.loss, "wikitext_word_ppl": wiki.get(row.run_id),
            "run_id": row.run_id,
            "transfer": None if verdict is None else verdict.verdict,
            "transfer_span": None if verdict is None else f"{verdict.base_width}→{verdict.target_width}",
        })
    edges = []
    if table_exists(con, "lr_optima"):
        edges = frame(con, "SELECT variant, width, argmin_log2_lr FROM lr_optima WHERE at_grid_edge "
                           "ORDER BY variant, width").to_dict("records")
    return {"id": "claims", "title": "Claimed table vs this tier",
            "html": render("sections/claims.html.j2", claimed=CLAIMED_TABLE, measured=measured, ctx=ctx,
                           findings=transfer_findings(verdicts), edges=edges)}


def transfer_findings(verdicts: dict) -> list[dict]:
    """For each variant the claim names: its claimed transfer column against our verdict over the
    widest width span of this tier. Agreement is about success vs failure; the kind of failure
    ("required retuning" vs "diverged") is shown but not required to match."""
    findings = []
    for variant in dict.fromkeys(c["variant"] for c in CLAIMED_TABLE):
        claimed = sorted({c["transfer"] for c in CLAIMED_TABLE if c["variant"] == variant})
        measured = verdicts.get(variant)
        if measured is None:
            findings.append({"label": VARIANT_LABELS[variant], "claimed": claimed, "measured": None, "agrees": None})
            continue
        claimed_success = {c.startswith("yes") for c in claimed}
        agrees = claimed_success == {measured.verdict.startswith("yes")}
        findings.append({"label": VARIANT_LABELS[variant], "claimed": claimed, "measured": measured.verdict,
                         "span": f"{measured.base_width}→{measured.target_width}", "agrees": agrees})
    return findings
