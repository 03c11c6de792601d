"""The files beside the page: every table of the database (and the tables the report computed)
as Parquet, and as CSV where small, with how to query them."""

from gdn.report.templating import render


def build(con, ctx):
    files = ctx.get("data") or {}
    if not files:
        return None
    rows = [{"name": name, "computed": False, **info} for name, info in sorted(files.items())]
    return {"id": "data", "title": "Data beside this page", "nav": "Data",
            "html": render("sections/data.html.j2", rows=rows, ctx=ctx)}
