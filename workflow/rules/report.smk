# The only database writer, then the HTML report.
#
# The ingest rule's declared output is a manifest, not the database: Snakemake deletes a failed
# or interrupted job's outputs, and the database must survive that. `gdn ingest` builds the new
# database under a unique temporary name, renames it over the old one only when it is complete,
# then writes the manifest.
#
# Snakemake does not rebuild a missing intermediate file (the manifest) while the file it feeds
# (the page) is present, so the report also takes the ingest's log as input: every ingest attempt
# rewrites it (failed or killed ones too: Snakemake keeps logs), so after a failed attempt it is
# newer than the page and differs from the log the page was built after, and the next `snakemake`
# ingests again and renders again. A manifest whose database is gone describes nothing: it is
# dropped here and the log says so, with the same effect.
import os
import time

INGEST_MANIFEST = f"results/{TIER}.ingest.json"
INGEST_LOG = f"results/logs/{TIER}/ingest.log"
REPORT_DATA = f"reports/{TIER}/data"
REPORTS_INDEX = "reports/index.html"

if os.path.exists(INGEST_MANIFEST) and not os.path.exists(DATABASE):
    os.remove(INGEST_MANIFEST)
    os.makedirs(os.path.dirname(INGEST_LOG), exist_ok=True)
    with open(INGEST_LOG, "a") as ingest_log:
        ingest_log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {DATABASE} is missing; {INGEST_MANIFEST} removed "
                         "so that the next run ingests again\n")


rule ingest:
    input:
        metrics=ALL_METRICS,
        evals=ALL_EVALS,
        coord=ALL_COORD,
        bench=ALL_BENCH,
    output:
        INGEST_MANIFEST,
    log:
        INGEST_LOG,
    params:
        python=PYTHON,
        db=DATABASE,
        cfg=json_arg("tier", "data", "model", "variants", "grid", "confirm", "evaluate", "transfer", "coordcheck"),
    conda:
        CONDA_ENV
    shell:
        "{params.python} -m gdn ingest --db {params.db} --manifest {output} --metrics {input.metrics}"
        " --evals {input.evals} --coord {input.coord} --bench {input.bench} --config-json {params.cfg} > {log} 2>&1"


rule database:
    # `snakemake database` (or the manifest's path): ingest what is there, without the report.
    input:
        INGEST_MANIFEST,


rule report:
    # The tier's page, its tables as Parquet/CSV beside it, and the list of every tier's report.
    input:
        manifest=INGEST_MANIFEST,
        ingest_attempt=INGEST_LOG,
    output:
        html=REPORT,
        data=directory(REPORT_DATA),
        index=REPORTS_INDEX,
    log:
        f"results/logs/{TIER}/report.log",
    params:
        python=PYTHON,
        db=DATABASE,
    conda:
        CONDA_ENV
    shell:
        "{params.python} -m gdn report --db {params.db} --out {output.html} --data-dir {output.data}"
        " --index {output.index} > {log} 2>&1"
