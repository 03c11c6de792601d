"""Planned vs finished training cells: what the tier asked for and how much of it has run."""

from gdn import config as gdn_config
from gdn.plan import completion, planned_cells
from gdn.report.queries import frame, table_exists
from gdn.report.templating import render


def build(con, ctx):
    config = dict(ctx.get("config") or {})
    if not config.get("grid") or not config.get("tier"):
        return None
    runs = (frame(con, "SELECT run_id, variant, width, log2_lr, seed, status FROM runs")
            if table_exists(con, "runs") else None)
    if not config.get("variants"):  # an older ingest kept no variant list: the variants that ran
        if runs is None or runs.empty:
            return None
        config["variants"] = sorted(runs["variant"].unique())
    planned = planned_cells(config)
    table = completion(planned, runs)
    pending_confirm = config.get("confirm") and any(r["log2_lr"] is None for r in gdn_config.confirm_plan(config))
    totals = {k: int(table[k].sum()) for k in ("planned", "completed", "diverged", "missing", "lr_pending")}
    extra = sorted(set(runs["run_id"]) - set(planned["run_id"].dropna())) if runs is not None else []
    html = render("sections/plan.html.j2", table=table, totals=totals, pending_confirm=bool(pending_confirm),
                  extra_runs=extra)
    return {"id": "plan", "title": "Planned and finished cells", "html": html}
