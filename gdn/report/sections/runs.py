"""Every cell: status, losses, throughput, and where its files are."""

from gdn.report.queries import frame
from gdn.report.templating import render


def build(con, ctx):
    runs = frame(con, "SELECT * FROM runs ORDER BY variant, width, log2_lr, seed")
    if runs.empty:
        return None
    return {"id": "runs", "title": "All runs", "nav": "Runs",
            "html": render("sections/runs.html.j2", runs=runs, ctx=ctx)}
