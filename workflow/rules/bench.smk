# Benchmarks. They run after every training, evaluation and coordinate-check job of the tier and
# one after another, so no other job shares the GPU while they time it.

BENCH_CFG = config.get("bench") or {}
BENCH_DIR = f"results/bench/{TIER}"
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
        previous_bench,
    output:
        f"{BENCH_DIR}/{{suite}}.json",
    log:
        f"results/logs/{TIER}/bench-{{suite}}.log",
    wildcard_constraints:
        suite="overhead|throughput|inference",
    params:
        python=PYTHON,
        device=config["device"],
        cfg=json_arg("bench"),
    resources:
        gpu=GPU_PER_JOB,
    conda:
        CONDA_ENV
    shell:
        "{params.python} -m gdn bench --suite {wildcards.suite} --config-json {params.cfg} --device {params.device}"
        " --out {output} > {log} 2>&1"


rule bench_kernels:
    input:
        BENCH_AFTER,
        lambda wildcards: ALL_BENCH[:-1][-1:],
    output:
        f"{BENCH_DIR}/kernels.json",
    log:
        f"results/logs/{TIER}/bench-kernels.log",
    resources:
        gpu=GPU_PER_JOB,
    params:
        python=PYTHON,
    conda:
        CONDA_ENV
    shell:
        "{params.python} kernels/benchmarks/bench_chunk.py --out {output} > {log} 2>&1"
