"""Ingest and render whatever part of a tier has finished, without running anything else.

`snakemake` builds the database only once every cell of the tier is done. When a tier was run in
slices and some cells are still missing (or a GPU budget ran out), this builds the same database
and report from the per-job files that exist, through the same `gdn ingest` and `gdn report`
commands the workflow uses. The report's plan section shows which cells are missing.

    python scripts/report_finished.py --configfile config/study.yaml
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
from pathlib import Path

from gdn import config as gdn_config

SECTIONS = ("tier", "data", "model", "variants", "grid", "confirm", "evaluate", "transfer", "coordcheck")


def finished_files(config: dict) -> dict[str, list[str]]:
    tier = config["tier"]
    metrics = [f"{c.run_dir}/metrics.json" for c in gdn_config.cells(config)]
    return {
        "metrics": [p for p in metrics if Path(p).exists()],
        "evals": sorted(p for m in metrics for p in glob.glob(str(Path(m).parent / "eval" / "*.json"))),
        "coord": sorted(glob.glob(f"results/coord/{tier}/*.json")),
        "bench": sorted(glob.glob(f"results/bench/{tier}/*.json")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", nargs="+", default=["config/config.yaml"])
    args = parser.parse_args()
    config = gdn_config.load(*args.configfile)
    tier = config["tier"]
    files = finished_files(config)
    planned = len(gdn_config.cells(config))
    print(f"{tier}: {len(files['metrics'])} of {planned} cells finished, {len(files['evals'])} evaluation files, "
          f"{len(files['coord'])} coordinate checks, {len(files['bench'])} benchmark files")
    cfg = gdn_config.section_json(config, *SECTIONS)
    ingest = [sys.executable, "-m", "gdn", "ingest", "--db", f"results/{tier}.duckdb",
              "--manifest", f"results/{tier}.ingest.json", "--config-json", cfg]
    for key, paths in files.items():
        ingest += [f"--{key}", *paths]
    subprocess.run(ingest, check=True)
    subprocess.run([sys.executable, "-m", "gdn", "report", "--db", f"results/{tier}.duckdb",
                    "--out", f"reports/{tier}/index.html"], check=True)
    print(json.dumps({key: len(paths) for key, paths in files.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
