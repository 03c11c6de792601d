"""Render reports/<tier>/index.html from the tier's DuckDB database, with every table of the
database beside it in reports/<tier>/data/ (Parquet, and CSV for the small ones), and the list
of tier reports, reports/index.html (each tier with its date, commits and headline verdicts).

Nothing here imports torch or transformers: a report can be rebuilt from the database alone.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from gdn import db
from gdn.report import export
from gdn.report.queries import frame, table_exists
from gdn.report.sections import SECTION_MODULES
from gdn.report.templating import render

SUMMARY_FILE = "summary.json"


def context(con, db_path: Path) -> dict:
    meta = {k: v for k, v in con.execute("SELECT key, value FROM meta").fetchall()}
    config = json.loads(meta.get("config", "{}"))
    data = config.get("data") or {}
    if data.get("source") == "hub":
        corpus = f"{data['hub']['path']} / {data['hub']['name']} @ {data['hub']['revision']}"
    elif data:
        local = data.get("local") or {}
        corpus = "local files: " + ", ".join(local.get("train") or [str(local.get("dir"))])
    else:
        corpus = "unknown"
    if data.get("max_train_chars"):
        corpus += f" (first {data['max_train_chars']:,} characters of the training split)"
    return {"tier": meta.get("tier"), "commit": meta.get("commit"), "built_at": meta.get("built_at"),
            "database": str(db_path), "corpus": corpus, "config": config, "run_commits": run_commits(con),
            "data": {}, "data_dir": None}


def run_commits(con) -> list[dict]:
    """The commits the runs were trained at, most runs first (a report names what produced its numbers)."""
    if not table_exists(con, "runs"):
        return []
    rows = frame(con, "SELECT coalesce(commit, 'unknown') AS commit, count(*) AS runs FROM runs "
                      "GROUP BY ALL ORDER BY runs DESC, commit")
    return rows.to_dict("records")


def build_sections(con, ctx) -> list[dict]:
    sections = []
    for name in SECTION_MODULES:
        section = importlib.import_module(f"gdn.report.sections.{name}").build(con, ctx)
        if section is not None:
            sections.append(section)
    return sections


def summary(con, ctx) -> dict:
    """What the list of tier reports shows for this tier: date, commits, headline verdicts."""
    out = {"tier": ctx["tier"], "built_at": ctx["built_at"], "build_commit": ctx["commit"],
           "run_commits": ctx["run_commits"], "verdicts": [], "failed_gates": [], "failed_controls": []}
    if table_exists(con, "study_verdict"):
        out["verdicts"] = frame(con, "SELECT variant, verdict, shift, shift_ci_low, shift_ci_high FROM study_verdict "
                                     "ORDER BY variant").to_dict("records")
    if table_exists(con, "gates"):
        out["failed_gates"] = frame(con, "SELECT gate, variant FROM gates WHERE NOT passed ORDER BY gate, variant"
                                    ).to_dict("records")
    if table_exists(con, "controls"):
        out["failed_controls"] = frame(con, "SELECT role, variant, expected, observed FROM controls "
                                            "WHERE NOT passed ORDER BY role").to_dict("records")
    return _plain(out)


def _plain(value):
    """JSON-ready: NaN (pandas' missing) becomes null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def render_report(db_path: Path, out_html: Path, data_dir: Path | None = None, index: Path | None = None) -> Path:
    data_dir = data_dir or out_html.parent / "data"
    con = db.connect(db_path)
    try:
        ctx = context(con, db_path)
        ctx["data"] = export.export_database(con, data_dir)
        ctx["data_dir"] = data_dir
        sections = build_sections(con, ctx)
        tier_summary = summary(con, ctx)
    finally:
        con.close()
    (data_dir / SUMMARY_FILE).write_text(json.dumps(tier_summary, indent=2) + "\n")
    title = f"μP transfer in Gated DeltaNet — {ctx['tier']} tier"
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(render("base.html.j2", title=title, sections=sections, ctx=ctx), encoding="utf-8")
    write_index(index or out_html.parent.parent / "index.html")
    return out_html


def write_index(index: Path) -> None:
    """reports/index.html: every tier report found beside it, with its summary where it has one."""
    tiers = []
    for page in sorted(index.parent.glob("*/index.html")):
        summary_file = page.parent / "data" / SUMMARY_FILE
        info = json.loads(summary_file.read_text()) if summary_file.exists() else None
        tiers.append({"tier": page.parent.name, "href": f"{page.parent.name}/index.html", "summary": info})
    index.write_text(render("landing.html.j2", tiers=tiers), encoding="utf-8")


def add_arguments(parser) -> None:
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="reports/<tier>/index.html")
    parser.add_argument("--data-dir", type=Path, default=None, help="where the tables go (default: data/ beside --out)")
    parser.add_argument("--index", type=Path, default=None,
                        help="the list of tier reports (default: index.html one directory above --out's)")


def run(args) -> int:
    path = render_report(args.db, args.out, args.data_dir, args.index)
    print(f"wrote {path}")
    return 0
