"""The evaluation report section, from a small DuckDB database."""

import duckdb
import pandas as pd

from gdn.report.sections import evaluation

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
