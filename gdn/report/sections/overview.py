"""What this report is: tier, commit, corpus, device, and how many cells ran."""

from gdn.report.queries import frame
from gdn.report.templating import render


def build(con, ctx):
    counts = frame(con, """
        SELECT variant, count(*) AS cells, sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS completed,
               sum(CASE WHEN status = 'diverged' THEN 1 ELSE 0 END) AS diverged,
               sum(wall_s) AS wall_s, string_agg(DISTINCT device, '; ') AS devices,
               string_agg(DISTINCT commit, '; ') AS commits
        FROM runs GROUP BY variant ORDER BY variant""")
    return {"id": "overview", "title": "Overview", "html": render("sections/overview.html.j2", counts=counts, ctx=ctx)}
