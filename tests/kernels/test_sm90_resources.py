"""kernels/benchmarks/sm90_resources.py compiles kernels for an H100/H200 target on a machine
without a GPU and reads ptxas's resource report: registers within the hardware's 255, shared
memory, and the spill stack a kernel with too many live values gets. It runs in a process of its
own, without the interpreter the other kernel tests use (interpreted kernels cannot be compiled)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "kernels" / "benchmarks" / "sm90_resources.py"


def _rows(tmp_path, *args, interpret="0"):
    out = tmp_path / "rows.json"
    env = dict(os.environ, TRITON_INTERPRET=interpret)
    done = subprocess.run([sys.executable, str(SCRIPT), *args, "--json", str(out)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return {(r["kernel"], r["warps"]): r for r in json.loads(out.read_text())["rows"]}


def test_every_split_kernel_compiles_for_sm90_at_a_small_head(tmp_path):
    rows = _rows(tmp_path, "--K", "16", "--V", "32", "--dtype", "fp16", "--only", "split")
    assert len(rows) == 10
    for key, row in rows.items():
        assert "error" not in row, (key, row["error"])
        assert 0 < row["registers"] <= 255 and row["shared_kib"] > 0, key


def test_the_fused_backward_spills_at_k_128_where_its_v_loop_alone_does_not(tmp_path):
    fused = _rows(tmp_path, "--only", "chunk_bwd BV=32")[("chunk_bwd BV=32", 8)]
    v_loop = _rows(tmp_path, "--only", "split.v_loop BV=16")[("split.v_loop BV=16", 8)]
    assert fused["registers"] == 255 and fused["stack_bytes_per_thread"] > 500
    assert v_loop["stack_bytes_per_thread"] < fused["stack_bytes_per_thread"] / 10


def test_the_interpreter_is_refused_with_what_to_do():
    done = subprocess.run([sys.executable, str(SCRIPT), "--only", "split.output"], capture_output=True, text=True,
                          env=dict(os.environ, TRITON_INTERPRET="1"), timeout=120)
    assert done.returncode != 0 and "unset it" in done.stderr
