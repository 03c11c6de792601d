"""Downstream evaluation in the layout of the GDN paper's Table 3, with its published rows.

Per (variant, width): the evaluated, completed run with the lowest final validation loss.
Accuracies are shown in percent like the paper; the average is over the six accuracies
(LAMBADA, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c) and only shown when all six exist.
"""

from __future__ import annotations

from gdn.evaluate.published import COLUMNS, SETTING, SOURCE, TABLE3_1P3B
from gdn.report.queries import frame, table_exists
from gdn.report.templating import render

ACCURACY_COLUMNS = ["lmb_acc", "piqa", "hella", "wino", "arc_e", "arc_c"]


def six_task_average(row: dict) -> float | None:
    values = [row.get(c) for c in ACCURACY_COLUMNS]
    return None if any(v is None for v in values) else sum(values) / len(values)


def measured_rows(con) -> list[dict]:
    best = frame(
        con,
        """
        SELECT r.run_id, r.variant, r.width, r.log2_lr, r.seed, r.final_val_loss, r.params_total
        FROM runs r
        WHERE r.status = 'completed' AND r.run_id IN (SELECT DISTINCT run_id FROM evaluations)
        QUALIFY row_number() OVER (PARTITION BY r.variant, r.width ORDER BY r.final_val_loss, r.run_id) = 1
        ORDER BY r.variant, r.width""",
    )
    values = frame(con, "SELECT run_id, task, metric, value FROM evaluations")
    by_run: dict[str, dict] = {}
    for v in values.itertuples():
        by_run.setdefault(v.run_id, {})[(v.task, v.metric)] = float(v.value)
    rows = []
    for run in best.itertuples():
        measured = by_run.get(run.run_id, {})
        row = {
            "model": run.variant,
            "width": int(run.width),
            "log2_lr": run.log2_lr,
            "seed": run.seed,
            "params": run.params_total,
            "run_id": run.run_id,
        }
        for column, key in COLUMNS.items():
            value = measured.get(key)
            row[column] = None if value is None else (value * 100 if column in ACCURACY_COLUMNS else value)
        row["avg"] = six_task_average(row)
        rows.append(row)
    return rows


def build(con, ctx):
    if not table_exists(con, "evaluations") or not table_exists(con, "runs"):
        return None
    rows = measured_rows(con)
    if not rows:
        return None
    published = [{**r, "avg": six_task_average(r)} for r in TABLE3_1P3B]
    lm_eval_config = ((ctx.get("config") or {}).get("evaluate") or {}).get("lm_eval") or {}
    html = render(
        "sections/evaluation.html.j2",
        rows=rows,
        published=published,
        source=SOURCE,
        setting=SETTING,
        limit=lm_eval_config.get("limit"),
        ctx=ctx,
    )
    return {"id": "evaluation", "title": "Zero-shot evaluation (GDN paper, Table 3 layout)",
            "nav": "Evaluation", "html": html}
