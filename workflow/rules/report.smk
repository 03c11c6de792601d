# The only database writer, then the HTML report.


rule ingest:
    input:
        metrics=ALL_METRICS,
        evals=ALL_EVALS,
        coord=ALL_COORD,
    output:
        DATABASE,
    log:
        f"results/logs/{TIER}/ingest.log",
    params:
        cfg=json_arg("tier", "data", "grid", "transfer", "coordcheck"),
    shell:
        "{PYTHON} -m gdn ingest --db {output} --metrics {input.metrics} --evals {input.evals}"
        " --coord {input.coord} --config-json {params.cfg} > {log} 2>&1"


rule report:
    input:
        DATABASE,
    output:
        REPORT,
    log:
        f"results/logs/{TIER}/report.log",
    shell:
        "{PYTHON} -m gdn report --db {input} --out {output} > {log} 2>&1"
