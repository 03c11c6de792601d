"""Benchmark suites on the CPU: the overhead suite measures, GPU-only suites say they were skipped."""

import json
import subprocess
import sys

import pytest
import torch

from gdn.bench import overhead, throughput
from gdn.bench.shapes import build
from tests.synthetic import REPO

SHAPE = {"name": "tiny", "width": 32, "base_width": 8, "n_layers": 1, "width_mode": "head_dim", "n_heads": 2,
         "mlp_ratio": {"transformer": 2.0, "gdn": 1.5}, "batch": 2, "seq_len": 16}


def test_overhead_rows_compare_the_three_gdn_variants():
    rows = overhead.measure(SHAPE, torch.device("cpu"), torch.float32, iters=3, vocab_size=64)
    by_variant = {r["variant"]: r for r in rows}
    assert set(by_variant) == {"gdn_sp", "gdn_mup", "gdn_mup_nogn"}
    assert by_variant["gdn_sp"]["ratio_vs_gdn_sp"] == 1.0
    assert by_variant["gdn_mup"]["a_multiplier"] == pytest.approx(0.5)  # m = 4: 1/sqrt(m)
    assert by_variant["gdn_mup_nogn"]["a_multiplier"] == pytest.approx(0.25)  # 1/m
    assert all(r["median_ms"] > 0 and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] for r in rows)


def test_flop_count_grows_with_context_only_for_attention():
    t = build(SHAPE, "transformer_mup", 64, torch.device("cpu"), torch.float32)
    g = build(SHAPE, "gdn_mup", 64, torch.device("cpu"), torch.float32)
    assert throughput.flops_per_token(t, 4096) > throughput.flops_per_token(t, 1024)
    assert throughput.flops_per_token(g, 4096) == throughput.flops_per_token(g, 1024)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_gpu_suites_are_skipped_visibly_on_cpu(tmp_path):
    settings = {"bench": {"shapes": {"tiny": SHAPE}, "inference": {"shapes": ["tiny"]}}}
    out = tmp_path / "inference.json"
    subprocess.run([sys.executable, "-m", "gdn", "bench", "--suite", "inference", "--config-json",
                    json.dumps(settings), "--out", str(out)], check=True, cwd=REPO, capture_output=True)
    payload = json.loads(out.read_text())
    assert payload["status"] == "skipped" and "CUDA" in payload["reason"] and payload["rows"] == []
