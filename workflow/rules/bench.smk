# Benchmarks. They run after every training, evaluation and coordinate-check job of the tier and
# one after another, so no other job shares the GPU while they time it.

BENCH_CFG = config.get("bench") or {}
BENCH_DIR = f"results/bench/{TIER}"
BENCH_SUITES = [s for s in ("overhead", "throughput", "inference") if BENCH_CFG.get(s)]
ALL_BENCH = [f"{BENCH_DIR}/{suite}.json" for suite in BENCH_SUITES]
if BENCH_CFG.get("kernels"):
    ALL_BENCH.append(f"{BENCH_DIR}/kernels.json")


rule bench:
    input:
        ALL_METRICS,
        ALL_EVALS,
        ALL_COORD,
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
        ALL_METRICS,
        ALL_EVALS,
        ALL_COORD,
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
