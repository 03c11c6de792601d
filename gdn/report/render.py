"""Render reports/<tier>/index.html from the tier's DuckDB database, plus a landing page
reports/index.html that links every tier report found on disk."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from gdn import db
from gdn.report.sections import SECTION_MODULES
from gdn.report.templating import render


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
            "database": str(db_path), "corpus": corpus, "config": config}


def build_sections(con, ctx) -> list[dict]:
    sections = []
    for name in SECTION_MODULES:
        section = importlib.import_module(f"gdn.report.sections.{name}").build(con, ctx)
        if section is not None:
            sections.append(section)
    return sections


def render_report(db_path: Path, out_html: Path) -> Path:
    con = db.connect(db_path)
    try:
        ctx = context(con, db_path)
        sections = build_sections(con, ctx)
    finally:
        con.close()
    title = f"μP transfer in Gated DeltaNet — {ctx['tier']} tier"
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(render("base.html.j2", title=title, sections=sections, ctx=ctx), encoding="utf-8")
    write_landing_page(out_html.parent.parent)
    return out_html


def write_landing_page(reports_dir: Path) -> None:
    tiers = sorted(p.parent.name for p in reports_dir.glob("*/index.html"))
    (reports_dir / "index.html").write_text(render("landing.html.j2", tiers=tiers), encoding="utf-8")


def add_arguments(parser) -> None:
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="reports/<tier>/index.html")


def run(args) -> int:
    path = render_report(args.db, args.out)
    print(f"wrote {path}")
    return 0
