# Reproduction pipeline: train every variant x width x LR x seed, evaluate, coordinate-check,
# benchmark, ingest into DuckDB, render HTML. A cell is a file path: `snakemake <path>` reruns it.
# Tiers: config/config.yaml (quick, default), config/study.yaml (one GPU), config/paper.yaml (cluster).
from snakemake.utils import min_version

min_version("8.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/functions.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/coordcheck.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        REPORT,


rule bench_all:
    # The tier's benchmark suites only (with config/bench-only.yaml they do not wait for training).
    input:
        ALL_BENCH,


rule data_all:
    # The tier's prepared data (text, tokenizer, token files, lm-eval task files): what tiers
    # run side by side share (`data_tier`), prepared once before they start.
    input:
        f"{DATA_DIR}/train.bin",
        f"{DATA_DIR}/valid.bin",
        rules.prepare.output.test_raw,
        rules.prepare_tasks.output if ALL_EVALS else [],


rule train_all:
    # Every training cell and nothing else (no evaluation, coordinate check or benchmark).
    input:
        ALL_METRICS,


rule evaluate_all:
    # The tier's evaluations (and the training cells they read), nothing else.
    input:
        ALL_EVALS,


rule coordcheck_all:
    # The tier's coordinate checks only.
    input:
        ALL_COORD,


rule compute:
    # Every job that needs the accelerator, without ingest/report: for running on a GPU machine
    # and ingesting elsewhere (results/ travels; the database is rebuilt from it).
    input:
        ALL_METRICS,
        ALL_EVALS,
        ALL_COORD,
