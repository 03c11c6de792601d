"""The paper tier: its config, its DAG (offline dry runs of both stages), matched parameter
counts at both scales, per-width parallelism, the launch command, the cost estimate and the
report's planned-vs-finished section."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml

from gdn import config as C
from gdn import launch, plan
from gdn.build import parameter_table
from tests.synthetic import REPO

PAPER = REPO / "config" / "paper.yaml"
SCALES = {"125M": 512, "1.5B": 2048}
FAMILIES = {"transformer": ["transformer_sp", "transformer_mup"], "gdn": ["gdn_sp", "gdn_mup", "gdn_mup_nogn"]}
MAX_HEAD_DIM = 256  # kernels/gdn_kernels/triton_ops.py: the Triton kernels' largest head dim


@pytest.fixture(scope="module")
def paper():
    return C.load(PAPER)


def with_transferred_lrs(config):
    config = copy.deepcopy(config)
    config["confirm"]["transferred_log2_lr"] = {"transformer_sp": -10.0, "transformer_mup": -8.5, "gdn_sp": -10.0,
                                                "gdn_mup": -8.0, "gdn_mup_nogn": -8.0}
    return config


# ---------------------------------------------------------------- the config


def test_paper_config_validates_with_stage_two_pending(paper):
    assert paper["tokenizer"]["kind"] == "gpt2" and paper["data"]["source"] == "hub"
    assert paper["evaluate"]["lm_eval"]["limit"] is None
    assert len(C.grid_log2_lrs(paper)) >= 7 and paper["grid"]["widths"] == [128, 256]
    assert len(C.cells(paper)) == 5 * 2 * 8  # the sweep; confirmation LRs are not known yet
    pending = C.confirm_plan(paper)
    assert len(pending) == 5 * 2 * 3 and all(r["log2_lr"] is None for r in pending)
    tokens = plan.tokens_per_cell(paper)
    assert 10e9 <= tokens < 10.01e9


def test_both_scales_match_between_families_within_5_percent(paper):
    vocab = plan.vocab_size(paper)
    for scale, width in SCALES.items():
        rows = parameter_table(paper["model"], paper["variants"], [width], vocab)
        by_variant = {r["variant"]: r for r in rows}
        for key in ("total", "non_embedding"):
            t = [by_variant[v][key] for v in FAMILIES["transformer"]]
            g = [by_variant[v][key] for v in FAMILIES["gdn"]]
            assert len(set(t)) == 1 and len(set(g)) == 1, "variants of a family differ only in parametrization"
            assert abs(g[0] / t[0] - 1) <= 0.05, (scale, key, t[0], g[0])
    sizes = {s: parameter_table(paper["model"], ["transformer_mup"], [w], vocab)[0]["total"] for s, w in SCALES.items()}
    assert 110e6 <= sizes["125M"] <= 140e6 and 1.35e9 <= sizes["1.5B"] <= 1.6e9


def test_parameter_counts_stated_in_the_config_are_the_computed_ones(paper):
    stated = re.findall(r"^#\s+(\d+)\s+(Transformer|GDN)\s+([\d,]+)\s+([\d,]+)", PAPER.read_text(), re.M)
    widths = sorted({c.width for c in C.grid_cells(paper)} | set(paper["confirm"]["widths"]))
    assert len(stated) == 2 * len(widths)
    for width, family, total, non_embedding in stated:
        row = parameter_table(paper["model"], [FAMILIES[family.lower()][0]], [int(width)], plan.vocab_size(paper))[0]
        assert (row["total"], row["non_embedding"]) == (int(total.replace(",", "")),
                                                        int(non_embedding.replace(",", "")))


def test_every_width_splits_into_heads_the_kernels_take(paper):
    heads = paper["model"]["n_heads"]
    for width in [*paper["grid"]["widths"], *paper["confirm"]["widths"], paper["model"]["base_width"]]:
        assert width % heads == 0 and 16 <= width // heads <= MAX_HEAD_DIM


def test_parallelism_per_width(paper):
    small, mid, large = (C.parallel_settings(paper["train"], w) for w in (256, 512, 2048))
    assert (small["gpus_per_job"], small["activation_checkpointing"]) == (1, False)
    assert (mid["gpus_per_job"], mid["strategy"]) == (8, "ddp")
    assert (large["gpus_per_job"], large["strategy"], large["activation_checkpointing"]) == (8, "fsdp", True)
    bad = copy.deepcopy(paper)
    bad["train"]["batch_size"] = 12  # 12 sequences do not split over 8 processes
    with pytest.raises(C.ConfigError, match="train.batch_size"):
        C.validate(bad, base_dir=REPO)
    assert C.parallel_settings({}, 64) == {"gpus_per_job": 1, "nodes": 1, "strategy": "ddp",
                                           "activation_checkpointing": False}


# ---------------------------------------------------------------- confirmation cells


def test_confirmation_cells_join_once_their_learning_rate_is_known(paper):
    config = with_transferred_lrs(paper)
    C.validate(config, base_dir=REPO)
    cells = C.cells(config)
    assert len(cells) == 80 + 30
    cell = C.cell_from_keys(config, "transformer_mup", "2048", "lr-9.5", "0")
    assert cell.run_dir == "results/runs/paper/transformer_mup/w2048/lr-9.5/s0"
    assert {c.log2_lr for c in cells if c.variant == "gdn_mup" and c.width == 512} == {-9.0, -8.0, -7.0}
    with pytest.raises(C.ConfigError, match="not in this tier's grid"):
        C.cell_from_keys(config, "gdn_mup", "2048", "lr-12", "0")  # a sweep LR, not a confirmation LR


def test_confirm_section_errors_name_the_key(paper):
    bad = with_transferred_lrs(paper)
    bad["confirm"]["transferred_log2_lr"]["nonexistent"] = -8
    with pytest.raises(C.ConfigError, match="confirm.transferred_log2_lr"):
        C.validate(bad, base_dir=REPO)
    bad = copy.deepcopy(paper)
    bad["confirm"]["widths"] = [500]
    with pytest.raises(C.ConfigError, match="confirm.widths"):
        C.validate(bad, base_dir=REPO)
    fixed = copy.deepcopy(paper)
    fixed["confirm"]["base"] = -8
    del fixed["confirm"]["transferred_log2_lr"]
    assert len(C.cells(C.validate(fixed, base_dir=REPO))) == 110  # a fixed centre needs no second stage


def test_a_tier_without_confirm_plans_exactly_its_grid():
    quick = C.load(REPO / "config" / "config.yaml")
    assert C.cells(quick) == C.grid_cells(quick)


# ---------------------------------------------------------------- the DAG, offline

NO_NETWORK = '''
import socket
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
LOCAL = ("127.0.0.1", "::1", "localhost")
def _connect_guard(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
        raise OSError(f"network access blocked in this test: {address}")
    return _connect(self, address)
def _resolve_guard(host, *args, **kwargs):
    if host not in LOCAL and host is not None:
        raise OSError(f"network access blocked in this test: {host}")
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect, socket.getaddrinfo = _connect_guard, _resolve_guard
'''


def _dry_run(configfile: Path, tmp_path: Path) -> str:
    guard = tmp_path / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(guard), str(REPO / "kernels"), str(REPO)]),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--nolock", "--configfile", str(configfile)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _job_counts(output: str) -> dict:
    table = output[output.rindex("Job stats:"):]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def _train_commands(output: str) -> dict[str, str]:
    """run directory -> the shell command of its train job."""
    pattern = r"^(?:Shell command: )?HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 (.*?) -m gdn train .*--out (\S+)"
    return {m[2]: m[1] for m in re.finditer(pattern, output, re.M)}


def test_stage_one_dry_run_resolves_offline(tmp_path):
    counts = _job_counts(_dry_run(PAPER, tmp_path))
    assert counts["train"] == 80 and "evaluate" not in counts  # the targets are evaluated in stage 2
    assert counts["prepare"] == 1 and counts["ingest"] == 1


def test_stage_two_dry_run_launches_multi_gpu_jobs(paper, tmp_path):
    stage_two = tmp_path / "paper-stage2.yaml"
    stage_two.write_text(yaml.safe_dump(with_transferred_lrs(paper)))
    output = _dry_run(stage_two, tmp_path)
    counts = _job_counts(output)
    assert counts["train"] == 110 and counts["evaluate"] == 30
    commands = _train_commands(output)
    one_gpu = commands["results/runs/paper/gdn_mup/w256/lr-8/s0"]
    assert "torch.distributed.run" not in one_gpu
    for run in ("results/runs/paper/gdn_mup/w512/lr-8/s0", "results/runs/paper/gdn_mup/w2048/lr-7/s0"):
        assert commands[run].endswith("-m torch.distributed.run --nproc-per-node 8 --standalone")


def test_launch_commands():
    assert launch.launch_command("python", 1) == "python"
    assert launch.launch_command("python", 4) == "python -m torch.distributed.run --nproc-per-node 4 --standalone"
    multi = launch.launch_command("python", 8, nodes=2)
    assert multi.startswith("srun --nodes 2 --ntasks-per-node 1 python -m torch.distributed.run --nproc-per-node 8")
    assert "--nnodes 2" in multi and "--rdzv-backend c10d" in multi
    with pytest.raises(C.ConfigError, match="train.distributed"):
        launch.launch_command("python", 0)


def test_job_resources_per_width(paper):
    assert launch.job_resources(paper, 256, 1) == {"gpu": 1, "gpus": 1, "nodes": 1}
    assert launch.job_resources(paper, 2048, 1) == {"gpu": 8, "gpus": 8, "nodes": 1}
    assert launch.job_resources(paper, 2048, 0) == {"gpu": 0, "gpus": 0, "nodes": 1}  # no GPU: one process
    packed = dict(paper, jobs_per_gpu=4)  # a local machine packing 4 small jobs per GPU
    assert launch.job_resources(packed, 256, 1)["gpu"] == 1
    assert launch.job_resources(packed, 512, 1)["gpu"] == 32  # all slots of its 8 GPUs


def test_profiles_name_what_an_admin_edits():
    slurm = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert slurm["executor"] == "slurm"
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb", "cpus_per_task"} <= set(slurm["default-resources"])
    assert {"train", "evaluate", "bench"} <= set(slurm["set-resources"])
    assert slurm["set-resources"]["train"]["tasks_per_gpu"] == 0  # torchrun, not SLURM, starts the ranks
    local = yaml.safe_load((REPO / "profiles" / "local-gpu" / "config.yaml").read_text())
    assert local["cores"] >= 1 and local["resources"]["gpu"] >= 1


# ---------------------------------------------------------------- the cost estimate


def test_estimate_from_measured_rows_and_from_given_figures(paper, tmp_path):
    bench = tmp_path / "throughput.json"
    seq_len, vocab = paper["train"]["seq_len"], plan.vocab_size(paper)
    rows = []
    for variant, tok_s in (("transformer_mup", 200_000.0), ("gdn_mup", 250_000.0)):
        cost = plan.model_cost(paper["model"], variant, 512, vocab, seq_len)
        rows.append({"suite": "throughput", "shape": "paper_125m", "variant": variant, "seq_len": seq_len,
                     "tokens_per_s": tok_s, "flops_per_token": cost["flops_per_token"], "params_total": cost["total"]})
    bench.write_text(json.dumps({"status": "completed", "device": "NVIDIA H100 80GB HBM3", "rows": rows}))
    table = plan.estimate(paper, plan.bench_figures([str(bench)]))
    assert table["cells"].sum() == 110 and table["lr_pending"].sum() == 30
    at_125m = table[(table["width"] == 512) & (table["variant"] == "gdn_sp")].iloc[0]
    assert at_125m["tokens_per_s_per_gpu"] == 250_000.0 and at_125m["source"].startswith("this model:")
    assert at_125m["gpu_hours_per_cell"] == pytest.approx(plan.tokens_per_cell(paper) / 250_000 / 3600)
    assert at_125m["wall_hours_per_cell"] == pytest.approx(at_125m["gpu_hours_per_cell"] / 8)
    at_1p5b = table[(table["width"] == 2048) & (table["variant"] == "transformer_mup")].iloc[0]
    assert at_1p5b["source"].startswith("scaled") and at_1p5b["tokens_per_s_per_gpu"] < 200_000 / 8
    text = plan.format_estimate(table, "test")
    assert text.startswith("ESTIMATES") and "H100" in text and f"{table['gpu_hours'].sum():,.0f}" in text

    given = plan.estimate(paper, plan.given_figures(["512=100000", "2048=10000"], paper))
    row = given[(given["width"] == 2048) & (given["variant"] == "gdn_mup")].iloc[0]
    assert row["tokens_per_s_per_gpu"] == 10_000 and "--tokens-per-s 2048=10000" in row["source"]
    flat = plan.estimate(paper, plan.given_figures(["50000"], paper))
    assert set(flat["tokens_per_s_per_gpu"]) == {50_000.0}


def test_transferred_lrs_come_from_the_proxy_sweep(paper, tmp_path):
    for cell in C.grid_cells(paper):
        if cell.width != 256 or cell.variant not in ("gdn_mup", "gdn_sp"):
            continue
        best = -8.25 if cell.variant == "gdn_mup" else -10.0
        loss = 3.0 + 0.05 * (cell.log2_lr - best) ** 2
        status = "diverged" if cell.variant == "gdn_sp" and cell.log2_lr >= -6 else "completed"
        path = tmp_path / cell.run_dir / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"status": status, "final_val_loss": loss if status == "completed" else None}))
    lrs = plan.transferred_lrs(paper, plan.read_runs(paper, tmp_path))
    assert lrs["gdn_mup"] == pytest.approx(-8.25, abs=1e-3)
    assert lrs["gdn_sp"] == pytest.approx(-10.0, abs=1e-3)
    assert lrs["transformer_mup"] is None  # its sweep has not run


def test_report_section_counts_planned_and_finished_cells(paper):
    from gdn.report.sections import plan as section

    con = duckdb.connect()
    runs = pd.DataFrame([
        {"run_id": "paper/gdn_mup/w128/lr-8/s0", "variant": "gdn_mup", "width": 128, "log2_lr": -8.0, "seed": 0,
         "status": "completed"},
        {"run_id": "paper/gdn_sp/w256/lr-5/s0", "variant": "gdn_sp", "width": 256, "log2_lr": -5.0, "seed": 0,
         "status": "diverged"},
        {"run_id": "paper/gdn_mup/w64/lr-8/s0", "variant": "gdn_mup", "width": 64, "log2_lr": -8.0, "seed": 0,
         "status": "completed"},
    ])
    con.register("runs_frame", runs)
    con.execute("CREATE TABLE runs AS SELECT * FROM runs_frame")
    ingested = {k: paper[k] for k in ("tier", "data", "grid", "transfer", "coordcheck")}  # no variant list
    result = section.build(con, {"config": ingested})
    assert result["id"] == "plan"
    assert "1 completed and 1 diverged of 32 planned" in result["html"]  # 2 variants seen x 2 widths x 8 LRs
    assert "paper/gdn_mup/w64/lr-8/s0" in result["html"]  # a run the config does not plan is named
    full = section.build(con, {"config": paper})
    assert "of 110 planned" in full["html"] and "30 confirmation cells wait" in full["html"]
    assert section.build(con, {"config": {}}) is None


def test_estimate_takes_rows_of_cut_short_files_matching_train_compile_and_ignores_outside_models(paper, tmp_path):
    seq_len, vocab = paper["train"]["seq_len"], plan.vocab_size(paper)
    cost = plan.model_cost(paper["model"], "gdn_mup", 512, vocab, seq_len)
    common = {"suite": "throughput", "seq_len": seq_len, "flops_per_token": cost["flops_per_token"],
              "params_total": cost["total"]}
    rows = [{**common, "variant": "gdn_mup", "compiled": False, "tokens_per_s": 100_000.0},
            {**common, "variant": "gdn_mup", "compiled": True, "tokens_per_s": 300_000.0},
            {**common, "variant": "fla_gdn", "compiled": False, "tokens_per_s": 900_000.0}]
    bench = tmp_path / "throughput.json"
    bench.write_text(json.dumps({"status": "running", "device": "NVIDIA H200", "rows": rows}))
    eager = plan.bench_figures([str(bench)], compiled=False)
    assert [f.tokens_per_s for f in eager] == [100_000.0]  # the fla row says nothing about our cells
    assert [f.tokens_per_s for f in plan.bench_figures([str(bench)], compiled=True)] == [300_000.0]
    bench.write_text(json.dumps({"status": "skipped", "reason": "no GPU", "rows": []}))
    assert plan.bench_figures([str(bench)]) == []


def test_scale_out_check_compares_every_gpu_count_with_one_gpu():
    import importlib.util

    spec = importlib.util.spec_from_file_location("scale_out_check", REPO / "scripts/scale_out_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = [{"gpus": 1, "tokens_per_s": 100.0, "losses": [5.0, 4.0, 3.5, 3.0]},
               {"gpus": 2, "tokens_per_s": 180.0, "losses": [5.0, 4.01, 3.49, 3.0]},
               {"gpus": 4, "exit_code": 1}]
    module.compare_to_one_gpu(results, skip=1)
    assert results[1]["tokens_per_s_per_gpu"] == 90.0 and results[1]["scaling_efficiency"] == 0.9
    assert results[1]["max_abs_loss_diff_vs_1gpu"] == pytest.approx(0.01)
    assert "scaling_efficiency" not in results[2]  # a run that failed gets no figures
    assert results[0]["loss_step_to_step_sd"] == pytest.approx(0.0)  # -0.5, -0.5


def test_scaling_efficiency_charges_multi_gpu_jobs_only(paper):
    figures = plan.given_figures(["50000"], paper)
    linear, measured = plan.estimate(paper, figures), plan.estimate(paper, figures, scaling_efficiency=0.8)
    single = linear["gpus_per_job"] == 1
    assert (measured[single]["gpu_hours"] == linear[single]["gpu_hours"]).all()
    ratio = measured[~single]["gpu_hours"] / linear[~single]["gpu_hours"]
    assert ratio.round(9).eq(1.25).all() and (~single).any()
    assert "80% of one GPU" in plan.format_estimate(measured, "test", 0.8)
    with pytest.raises(ValueError, match="scaling-efficiency"):
        plan.estimate(paper, figures, scaling_efficiency=1.5)
