# Config validation (before any job runs), the grid of cells, and the paths every rule shares.
import json
import os
import shlex
import shutil
import sys

from snakemake.exceptions import WorkflowError

from gdn import config as gdn_config
from gdn import launch as gdn_launch
from gdn.variants import VARIANTS

try:
    gdn_config.validate(config, base_dir=os.getcwd())
except gdn_config.ConfigError as error:
    raise WorkflowError(f"invalid configuration: {error}")

TIER = config["tier"]
CONDA_ENV = "../../environment.yml"  # with --software-deployment-method conda
PYTHON = shlex.quote(sys.executable)  # the interpreter that runs snakemake has the gdn package
CELLS = gdn_config.cells(config)
# An overlay tier may read its base tier's prepared data (`data_tier`) instead of preparing it again.
DATA_TIER = config.get("data_tier") or TIER
TEXT_DIR = f"resources/{DATA_TIER}/text"
TOKENIZER = f"resources/{DATA_TIER}/tokenizer/tokenizer.json"
DATA_DIR = f"results/data/{DATA_TIER}"
RUN_DIR = "results/runs/{tier}/{variant}/w{width}/{lr}/s{seed}"
DATABASE = f"results/{TIER}.duckdb"
REPORT = f"reports/{TIER}/index.html"
ON_GPU = config["device"] == "cuda" or (config["device"] == "auto" and shutil.which("nvidia-smi") is not None)
GPU_PER_JOB = 1 if ON_GPU else 0


def card_memory_mb():
    """What packed GPU jobs may declare together (`gpu_mem_mb`): config key gpu_memory_mb, else
    the visible cards' memory (CUDA_VISIBLE_DEVICES) as nvidia-smi reports it, less 5% for the driver's own use. None
    where this machine has no nvidia-smi (a cluster's login node: its scheduler places the jobs)."""
    if config.get("gpu_memory_mb"):
        return int(config["gpu_memory_mb"])
    if shutil.which("nvidia-smi") is None:
        return None
    import subprocess

    query = ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:  # nvidia-smi itself ignores CUDA_VISIBLE_DEVICES: count only the cards jobs can see
        query.append(f"--id={visible}")
    totals = [int(line) for line in subprocess.run(query, capture_output=True, text=True, check=True).stdout.split()]
    return int(0.95 * sum(totals))


# Every GPU job declares gpu_mem_mb; a limit given on the command line (--resources) wins.
if ON_GPU and "gpu_mem_mb" not in workflow.global_resources and card_memory_mb() is not None:
    workflow.register_resource("gpu_mem_mb", card_memory_mb())
    print(f"GPU jobs are packed against {card_memory_mb()} MiB of GPU memory (gpu_mem_mb)", file=sys.stderr)


wildcard_constraints:
    tier=TIER,
    variant="|".join(config["variants"]),
    width=r"\d+",
    lr=r"lr-?[0-9.]+",
    seed=r"\d+",


def cell_of(wildcards):
    return gdn_config.cell_from_keys(config, wildcards.variant, wildcards.width, wildcards.lr, wildcards.seed)


def json_arg(*sections, **extra):
    """Config sections as one shell-quoted JSON argument (jobs rerun only when these change)."""
    return shlex.quote(gdn_config.section_json(config, *sections, **extra))
