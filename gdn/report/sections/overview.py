"""Provenance: where the numbers come from — tier, commits, corpus, devices, how many cells ran, the config."""

from gdn.report.queries import frame
from gdn.report.templating import render


def build(con, ctx):
    counts = frame(con, """
        SELECT variant, count(*) AS cells,
               CAST(sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS INTEGER) AS completed,
               CAST(sum(CASE WHEN status = 'diverged' THEN 1 ELSE 0 END) AS INTEGER) AS diverged,
               sum(wall_s) AS wall_s, string_agg(DISTINCT device, '; ') AS devices,
               string_agg(DISTINCT commit, '; ') AS commits
        FROM runs GROUP BY variant ORDER BY variant""")
    return {"id": "overview", "title": "Provenance", "nav": "Provenance",
            "html": render("sections/overview.html.j2", counts=counts, ctx=ctx,
                           evaluated=evaluation_coverage(con, ctx))}


def evaluation_coverage(con, ctx) -> dict | None:
    """How many of the runs the tier asks to evaluate have evaluation rows (a partial run says so)."""
    widths = (ctx["config"].get("evaluate") or {}).get("widths", "all")
    if not (ctx["config"].get("evaluate") or {}):
        return None
    where = "" if widths == "all" else f"WHERE width IN ({', '.join(str(int(w)) for w in widths)})"
    planned = con.execute(f"SELECT count(*) FROM runs {where}").fetchone()[0]
    done = con.execute("SELECT count(DISTINCT run_id) FROM evaluations "
                       f"WHERE run_id IN (SELECT run_id FROM runs {where})").fetchone()[0]
    return {"planned": planned, "done": done, "widths": widths}
