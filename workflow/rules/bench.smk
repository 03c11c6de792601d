# Benchmarks. Each suite is its own cell (ask for its file to rerun it alone). They run after every
# training, evaluation and coordinate-check job of the tier, and one at a time (a lock file held by
# `gdn bench`), so no other job shares the GPU while they time it.

BENCH_CFG = config.get("bench") or {}
BENCH_DIR = f"results/bench/{TIER}"
BENCH_LOCK = "results/bench/.one-at-a-time.lock"
BENCH_SUITES = [s for s in ("overhead", "throughput", "inference") if BENCH_CFG.get(s)]
ALL_BENCH = [f"{BENCH_DIR}/{suite}.json" for suite in BENCH_SUITES]
# By default the benchmarks wait for every other job of the tier, so nothing shares the GPU while
# they time it. `bench: {after_all_jobs: false}` (config/bench-only.yaml) runs them on their own:
# `snakemake bench_all --configfile config/study.yaml config/bench-only.yaml`.
BENCH_AFTER = [ALL_METRICS, ALL_EVALS, ALL_COORD] if BENCH_CFG.get("after_all_jobs", True) else []
if BENCH_CFG.get("kernels"):
    ALL_BENCH.append(f"{BENCH_DIR}/kernels.json")


rule bench:
    input:
        BENCH_AFTER,
    output:
        f"{BENCH_DIR}/{{suite}}.json",
    log:
        f"results/logs/{TIER}/bench-{{suite}}.log",
    wildcard_constraints:
        suite="overhead|throughput|inference|kernels",
    params:
        python=PYTHON,
        device=config["device"],
        cfg=json_arg("bench"),
        lock=BENCH_LOCK,
    resources:
        gpu=GPU_PER_JOB,
    conda:
        CONDA_ENV
    shell:
        "{params.python} -m gdn bench --suite {wildcards.suite} --config-json {params.cfg} --device {params.device}"
        " --lock {params.lock} --out {output} > {log} 2>&1"

