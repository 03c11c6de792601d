# Benchmarks. Each suite is its own cell (ask for its file to rerun it alone). They run after every
# training, evaluation and coordinate-check job of the tier, and one at a time (a lock file held by
# `gdn bench`), so no other job shares the GPU while they time it.

BENCH_CFG = config.get("bench") or {}
BENCH_DIR = f"results/bench/{TIER}"
BENCH_LOCK = "results/bench/.one-at-a-time.lock"
# Training throughput takes longest, so it is one cell per shape: throughput-<shape>.json.
ALL_BENCH = [f"{BENCH_DIR}/overhead.json"] if BENCH_CFG.get("overhead") else []
ALL_BENCH += [f"{BENCH_DIR}/throughput-{shape}.json" for shape in (BENCH_CFG.get("throughput") or {}).get("shapes", [])]
ALL_BENCH += [f"{BENCH_DIR}/inference.json"] if BENCH_CFG.get("inference") else []
# By default the benchmarks wait for every other job of the tier, so nothing shares the GPU while
# they time it. `bench: {after_all_jobs: false}` (config/bench-only.yaml) runs them on their own:
# `snakemake bench_all --configfile config/study.yaml config/bench-only.yaml`.
# ancient(): they wait for those files but are not rerun when one of them is (rerunning a cell
# must not redo the benchmarks, which do not depend on what any cell computed).
BENCH_AFTER = ancient([ALL_METRICS, ALL_EVALS, ALL_COORD]) if BENCH_CFG.get("after_all_jobs", True) else []
if BENCH_CFG.get("kernels"):
    ALL_BENCH.append(f"{BENCH_DIR}/kernels.json")


rule bench:
    # A cell is a suite (overhead, inference, kernels) or a suite and a shape (throughput-125M).
    input:
        BENCH_AFTER,
    output:
        f"{BENCH_DIR}/{{cell}}.json",
    log:
        f"results/logs/{TIER}/bench-{{cell}}.log",
    wildcard_constraints:
        cell=r"overhead|inference|kernels|throughput-[^/]+",
    params:
        python=PYTHON,
        device=config["device"],
        cfg=json_arg("bench"),
        lock=BENCH_LOCK,
        suite=lambda wildcards: wildcards.cell.split("-", 1)[0],
        shape_option=lambda wildcards: (
            f"--shape {shlex.quote(wildcards.cell.split('-', 1)[1])}" if "-" in wildcards.cell else ""
        ),
    resources:
        gpu=GPU_PER_JOB,
    conda:
        CONDA_ENV
    shell:
        "{params.python} -m gdn bench --suite {params.suite} {params.shape_option} --config-json {params.cfg}"
        " --device {params.device} --lock {params.lock} --out {output} > {log} 2>&1"
