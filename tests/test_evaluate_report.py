"""The report: the evaluation section from a small DuckDB database, then the whole page rendered
from a synthetic tier (verdict first, data beside it, valid ids, the list of tier reports)."""

import json
import os
import re

import duckdb
import pandas as pd
import pytest

from gdn.report import plots
from gdn.report.sections import claims, evaluation
from tests import report_data

TASK_METRICS = [
    ("wikitext103", "word_perplexity", 41.5),
    ("lambada_openai", "perplexity", 900.0),
    ("lambada_openai", "acc", 0.05),
    ("piqa", "acc", 0.55),
    ("hellaswag", "acc_norm", 0.26),
    ("winogrande", "acc", 0.5),
    ("arc_easy", "acc", 0.3),
    ("arc_challenge", "acc_norm", 0.2),
]


def database(runs, evaluations):
    con = duckdb.connect()
    con.register("runs_view", pd.DataFrame(runs))
    con.execute("CREATE TABLE runs AS SELECT * FROM runs_view")
    con.register("eval_view", pd.DataFrame(evaluations, columns=["run_id", "task", "metric", "value", "stderr"]))
    con.execute("CREATE TABLE evaluations AS SELECT * FROM eval_view")
    return con


def run(run_id, variant, lr, loss, status="completed"):
    return {
        "run_id": run_id,
        "variant": variant,
        "width": 64,
        "log2_lr": lr,
        "seed": 0,
        "status": status,
        "final_val_loss": loss,
        "params_total": 123456,
    }


def test_best_run_per_variant_and_width_with_published_rows():
    runs = [
        run("a", "gdn_mup", -8, 3.0),
        run("b", "gdn_mup", -6, 2.5),
        run("c", "gdn_mup", -4, 2.0, "diverged"),
        run("d", "<b>transformer_sp</b>", -8, 3.1),
    ]
    evaluations = [(rid, t, m, v + (0.1 if rid == "b" else 0.0), None) for rid in "abd" for t, m, v in TASK_METRICS]
    section = evaluation.build(database(runs, evaluations), {"config": {"evaluate": {"lm_eval": {"limit": 50}}}})
    html = section["html"]
    rows = {name: next(tr for tr in html.split("<tr") if name in tr) for name in ("gdn_mup", "transformer_sp")}
    assert section["id"] == "evaluation"
    assert "41.6" in rows["gdn_mup"] and "65" in rows["gdn_mup"]  # run b: the lowest loss that completed
    assert "41.5" in rows["transformer_sp"] and "55" in rows["transformer_sp"]  # accuracies in percent
    assert "&lt;b&gt;transformer_sp&lt;/b&gt;" in html  # autoescaped
    assert "Gated DeltaNet (published)" in html and "18.53" in html and "16.42" in html
    assert "first 50 examples" in html


def test_no_evaluations_means_no_section():
    con = database([run("a", "gdn_mup", -8, 3.0)], [])
    assert evaluation.build(con, {"config": {}}) is None


# The whole report, rendered from a synthetic tier (tests/report_data.py): verdict first, data beside it.


def _analysis_with(**changes):
    def analyze(runs, settings=None):
        tables = report_data.analysis(runs, settings)
        for name, change in changes.items():
            tables[name] = change(tables[name])
        return tables
    return analyze


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as monkeypatch:
        page = report_data.render_tier(root, monkeypatch)
    return page


def test_report_opens_on_the_verdict_table(rendered):
    html = rendered.read_text()
    sections = re.findall(r'<section id="([^"]+)"', html)
    assert sections[:2] == ["claims", "transfer"] and sections[-1] == "overview"
    verdict = html[html.index('id="verdict-table"'):html.index("</table>", html.index('id="verdict-table"'))]
    for text in ("125M / 1.5B · 10B · 18.2 / 15.1", "transfers", "fails", "inconclusive", "agrees", "3 passed",
                 "+0.06", "−2.09"):
        assert text in verdict, text
    assert "Controls passed" in html and "study cannot judge GDN" not in html
    assert "&lt;shift" in html and "<shift" not in html  # reasons are escaped
    assert f"<code title=\"{report_data.COMMIT}\">{report_data.COMMIT}</code> (245 runs)" in html


def test_every_table_is_beside_the_page_and_linked(rendered):
    html = rendered.read_text()
    data = rendered.parent / "data"
    con = duckdb.connect(str(rendered.parent.parent.parent / "results" / "t.duckdb"), read_only=True)
    tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
    con.close()
    for name in tables + ["verdict_table"]:
        assert (data / f"{name}.parquet").is_file(), name
        assert f'href="data/{name}.parquet"' in html, name
    assert (data / "runs.csv").is_file() and (data / "param_groups.parquet").is_file()
    for href in re.findall(r'href="(data/[^"]+)"', html):
        assert (rendered.parent / href).is_file(), href


def test_the_verdict_table_is_recomputed_from_the_parquet_files(rendered):
    cwd = os.getcwd()
    os.chdir(rendered.parent)
    try:
        rows = duckdb.sql(claims.RECOMPUTE_SQL.split("\n", 1)[1]).df()
    finally:
        os.chdir(cwd)
    assert dict(zip(rows["variant"], rows["verdict"])) == report_data.VERDICTS
    shown = pd.read_csv(rendered.parent / "data" / "verdict_table.csv")
    assert dict(zip(shown["variant"], shown["verdict"])) == report_data.VERDICTS


def test_ids_are_unique_and_svg_references_follow_them(rendered):
    html = rendered.read_text()
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)) and len(ids) > 50
    for ref in set(re.findall(r'(?:href="|url\()#([^")]+)', html)):
        assert ref in ids, ref


def test_prefix_ids_keeps_two_copies_of_one_figure_apart():
    import matplotlib.pyplot as plt

    def figure():
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([1, 2], [1, 2], "o-")
        return fig

    a, b = str(plots.svg(figure(), "a")), str(plots.svg(figure(), "b"))
    ids_a, ids_b = set(re.findall(r'id="([^"]+)"', a)), set(re.findall(r'id="([^"]+)"', b))
    assert ids_a and not ids_a & ids_b
    assert all(ref in ids_a for ref in re.findall(r'(?:href="|url\()#([^")]+)', a))


def test_width_colours_are_one_per_width_whatever_the_figure():
    assert plots.width_colors([256, 64, 128]) == plots.width_colors([64, 128, 256, 128])
    assert len(set(plots.width_colors([64, 128, 256, 512]).values())) == 4


def test_reports_index_lists_each_tier_with_date_commit_and_verdicts(rendered):
    index = (rendered.parent.parent / "index.html").read_text()
    summary = json.loads((rendered.parent / "data" / "summary.json").read_text())
    assert summary["tier"] == "t" and summary["run_commits"] == [{"commit": report_data.COMMIT, "runs": 245}]
    assert 'href="t/index.html"' in index and summary["built_at"] in index and report_data.COMMIT in index
    assert "gdn_mup: <span class=\"good\">transfers</span>" in index and "controls passed" in index


def test_a_failed_control_or_gate_is_said_above_the_table(tmp_path, monkeypatch):
    def fail_control(controls):
        controls.loc[controls["role"] == "negative", ["observed", "passed"]] = ["transfers", False]
        return controls

    def fail_gate(gates):
        gates.loc[(gates["gate"] == "c_optimum_inside_convex") & (gates["variant"] == "gdn_mup"), "passed"] = False
        return gates

    page = report_data.render_tier(tmp_path, monkeypatch, analyze=_analysis_with(controls=fail_control,
                                                                                  gates=fail_gate))
    html = page.read_text()
    alert = html.index('class="alert"')
    assert alert < html.index('id="verdict-table"')
    assert "The study cannot judge GDN" in html[alert:alert + 600]
    assert "(c) optimum inside the grid, convex curve for gdn_mup" in html
    assert "failed c" in html
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "control failed: transformer_sp (negative)" in index and "gates failed" in index


def test_a_database_without_the_new_tables_still_renders(tmp_path, monkeypatch):
    def old_analysis(runs, settings=None):
        optima = report_data.analysis(runs)["lr_optima"][["variant", "width", "opt_log2_lr", "argmin_log2_lr",
                                                          "fit_loss", "n_points", "n_diverged"]]
        return {"lr_optima": optima.assign(fit_ok=True, at_grid_edge=False, best_loss=optima["fit_loss"])}

    html = report_data.render_tier(tmp_path, monkeypatch, analyze=old_analysis).read_text()
    assert 'id="verdict-table"' in html and "has no study verdicts" in html
    assert 'id="transfer"' in html and "<svg" in html
