# The only database writer, then the HTML report.


rule ingest:
    input:
        metrics=ALL_METRICS,
        evals=ALL_EVALS,
        coord=ALL_COORD,
        bench=ALL_BENCH,
    output:
        DATABASE,
    log:
        f"results/logs/{TIER}/ingest.log",
    params:
        python=PYTHON,
        cfg=json_arg("tier", "data", "variants", "grid", "confirm", "evaluate", "transfer", "coordcheck"),
    conda:
        CONDA_ENV
    shell:
        "{params.python} -m gdn ingest --db {output} --metrics {input.metrics} --evals {input.evals}"
        " --coord {input.coord} --bench {input.bench} --config-json {params.cfg} > {log} 2>&1"


rule report:
    input:
        DATABASE,
    output:
        REPORT,
    log:
        f"results/logs/{TIER}/report.log",
    params:
        python=PYTHON,
    conda:
        CONDA_ENV
    shell:
        "{params.python} -m gdn report --db {input} --out {output} > {log} 2>&1"
