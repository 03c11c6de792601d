"""GPU jobs declare their memory, and the declarations cover what the runs used.

The scheduler can only keep packed jobs inside the card if each job asks for at least what it
uses: the declared figures are checked against the allocator peaks the study's runs recorded
on an H200 (docs/gpu-runs.md, 2026-11-29), and a dry run shows every GPU job declaring one.
"""

import os
import re
import subprocess
import sys

import pytest
import yaml

from gdn import launch
from tests.synthetic import REPO, tiny_config, write_config

CUDA_CONTEXT_MB = 600  # not in the allocator's peak: the context and cuBLAS/Triton workspaces

# (family, width) -> largest max_memory_reserved in MiB over the study's runs on the H200
MEASURED_PEAK_MB = {
    ("transformer", 128): 1336, ("transformer", 256): 1600, ("transformer", 512): 2146, ("transformer", 1024): 2946,
    ("gdn", 128): 1452, ("gdn", 256): 1776, ("gdn", 512): 2278, ("gdn", 1024): 3404,
}


def study_config():
    return yaml.safe_load((REPO / "config" / "study.yaml").read_text())


@pytest.mark.parametrize("family, width", sorted(MEASURED_PEAK_MB))
def test_training_declaration_covers_the_measured_peak(family, width):
    declared = launch.train_memory_mb(study_config(), family, width)
    assert declared >= MEASURED_PEAK_MB[(family, width)] + CUDA_CONTEXT_MB
    # and not so much larger that the card is left idle: 16 study jobs at width 1024 must fit an H200
    assert declared < 139 * 1024 / 16


def test_declarations_grow_with_width_and_batch():
    config = study_config()
    for family in ("transformer", "gdn"):
        sizes = [launch.train_memory_mb(config, family, w) for w in (128, 256, 512, 1024, 2048)]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    bigger = dict(config, train=dict(config["train"], batch_size=4 * config["train"]["batch_size"]))
    assert launch.train_memory_mb(bigger, "gdn", 512) > launch.train_memory_mb(config, "gdn", 512)
    assert launch.eval_memory_mb(config, "gdn", 1024) > 0
    assert launch.coord_memory_mb(config, "gdn") > launch.coord_memory_mb(config, "transformer") * 0.5


def test_every_gpu_job_declares_memory_and_the_card_is_the_limit(tmp_path):
    config = tiny_config(tmp_path, device="cuda", gpu_memory_mb=5000)
    config["evaluate"] = dict(config["evaluate"], widths=[32])
    (tmp_path / "config").mkdir()
    write_config(config, tmp_path / "config" / "config.yaml")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "kernels"), str(REPO)]))
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--nolock", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(tmp_path), "--cores", "4", "compute"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "packed against 5000 MiB of GPU memory" in out
    blocks = re.split(r"\n(?=(?:local)?rule )", out)
    gpu_jobs = [b for b in blocks if re.match(r"(?:local)?rule (train|evaluate|coordcheck):", b)]
    assert gpu_jobs, out[-2000:]
    for block in gpu_jobs:
        declared = re.search(r"gpu_mem_mb=(\d+)", block)
        assert declared and 0 < int(declared.group(1)) <= 5000, block
