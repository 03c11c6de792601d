"""Benchmark suites on the CPU: the overhead suite measures, GPU-only suites say they were skipped."""

import json
import re
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
@pytest.mark.parametrize("suite", ["inference", "kernels"])
def test_gpu_suites_are_skipped_visibly_on_cpu(tmp_path, suite):
    settings = {"bench": {"shapes": {"tiny": SHAPE}, "inference": {"shapes": ["tiny"]}}}
    out = tmp_path / f"{suite}.json"
    subprocess.run([sys.executable, "-m", "gdn", "bench", "--suite", suite, "--config-json", json.dumps(settings),
                    "--lock", str(tmp_path / "bench.lock"), "--out", str(out)],
                   check=True, cwd=REPO, capture_output=True)
    payload = json.loads(out.read_text())
    assert payload["status"] == "skipped" and "CUDA" in payload["reason"] and payload["rows"] == []


def test_a_second_benchmark_waits_until_the_first_releases_the_lock(tmp_path):
    import threading
    import time

    from gdn.bench.exclusive import one_at_a_time

    lock = tmp_path / "bench.lock"
    first_holds, events = threading.Event(), []

    def first():
        with one_at_a_time(lock):
            first_holds.set()
            time.sleep(0.3)
            events.append("first done")

    def second():
        first_holds.wait()
        with one_at_a_time(lock):
            events.append("second runs")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert events == ["first done", "second runs"]


def test_each_suite_is_a_cell_of_its_own(tmp_path):
    # Asking for one suite's file plans that suite alone (no chain through the other suites).
    # An empty working directory, so that no suite's file exists yet.
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(tmp_path), "results/bench/quick/kernels.json", "--configfile",
                           str(REPO / "config/config.yaml"), str(REPO / "config/bench-only.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    stats = done.stdout[done.stdout.rindex("Job stats:"):]
    assert re.search(r"^bench\s+1$", stats, re.M) and re.search(r"^total\s+1$", stats, re.M), stats
    # Throughput is one cell per shape; the job names its shape.
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(tmp_path), "bench_all", "--configfile", str(REPO / "config/config.yaml"),
                           str(REPO / "config/bench-only.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for cell in ("overhead", "throughput-quick", "inference", "kernels"):
        assert f"results/bench/quick/{cell}.json" in done.stdout, cell
    assert "--suite throughput --shape quick " in done.stdout


def test_throughput_ratios_pair_rows_of_one_shape_length_and_compile_setting():
    import pandas as pd

    from gdn.report.sections.performance import throughput_ratios

    def row(variant, compiled, tok, status="measured"):
        return {"shape": "125M", "seq_len": 8192, "compiled": compiled, "variant": variant,
                "tokens_per_s": tok, "status": status}

    frame = pd.DataFrame([row("transformer_mup", False, 200.0), row("gdn_mup", False, 150.0),
                          row("fla_gdn", False, 100.0), row("transformer_mup", True, 300.0),
                          row("gdn_mup", True, 330.0), row("fla_gdn", True, None, "skipped")])
    eager, compiled = throughput_ratios(frame)
    assert (eager["compiled"], eager["gdn_over_transformer"], eager["gdn_over_fla"]) == (False, 0.75, 1.5)
    # fla's model is only timed eager; a compiled GDN is compared with that eager figure.
    assert compiled["gdn_over_transformer"] == pytest.approx(1.1) and compiled["gdn_over_fla"] == pytest.approx(3.3)
    assert eager["target_vs_transformer"] == 1.2 and eager["target_vs_fla"] == 1.3


def test_each_gdn_option_row_gets_its_own_ratios():
    import pandas as pd

    from gdn.report.sections.performance import throughput_ratios

    frame = pd.DataFrame([{"shape": "125M", "seq_len": 2048, "compiled": False, "variant": v, "tokens_per_s": tok,
                           "status": "measured"}
                          for v, tok in (("transformer_mup", 200.0), ("gdn_mup", 100.0),
                                         ("gdn_mup+recompute", 90.0), ("fla_gdn", 50.0))])
    rows = {r["gdn_variant"]: r for r in throughput_ratios(frame)}
    assert set(rows) == {"gdn_mup", "gdn_mup+recompute"}
    assert rows["gdn_mup+recompute"]["gdn_over_transformer"] == pytest.approx(0.45)
    assert rows["gdn_mup+recompute"]["gdn_over_fla"] == pytest.approx(1.8)


def test_gdn_options_time_our_gdn_again_under_each_named_change():
    # (On the CPU the recurrence takes the PyTorch path, where both changes are no-ops; the
    # fused convolution would need the Triton interpreter, so it is only built below.)
    options = {"recompute": {"recompute_states": True}, "split": {"bwd_split": True}}
    rows = throughput.measure(SHAPE, ["transformer_mup", "gdn_mup", "fla_gdn"], 16, 32, torch.device("cpu"),
                              iters=1, vocab_size=64, gdn_options=options)
    labels = [r["variant"] for r in rows]
    assert labels == ["transformer_mup", "gdn_mup", "gdn_mup+recompute", "gdn_mup+split", "fla_gdn"]
    by = {r["variant"]: r for r in rows}
    assert json.loads(by["gdn_mup+split"]["options"]) == {"bwd_split": True}
    assert "options" not in by["gdn_mup"]
    assert all(by[v]["status"] == "measured" for v in labels[:4])
    model, _ = throughput.build_for_timing(SHAPE, "gdn_mup", 64, torch.device("cpu"), False,
                                           {"recompute_states": True, "conv_backend": "triton"})
    mixer = model.blocks[0].mixer
    assert mixer.recompute_states and mixer.q_conv.backend == "triton"


def test_a_launch_option_applies_only_while_its_row_is_timed():
    from gdn_kernels import triton_ops

    before = triton_ops.LAUNCH
    with throughput.kernel_launch({"bwd_split": True, "recompute_states": True}):
        assert triton_ops.LAUNCH.bwd_split and triton_ops.LAUNCH.bwd_block_v == before.bwd_block_v
    assert triton_ops.LAUNCH is before


def test_outside_reference_model_is_recorded_as_skipped_with_the_reason():
    # fla is not installed here (and its kernels need CUDA): the row says so instead of vanishing.
    rows = throughput.measure(SHAPE, ["fla_gdn"], 16, 32, torch.device("cpu"), iters=1, vocab_size=64)
    assert rows[0]["variant"] == "fla_gdn" and rows[0]["status"] == "skipped" and rows[0]["note"]
    model, note = throughput.build_for_timing(SHAPE, "fla_gdn", 64, torch.device("cpu"), compiled=True)
    assert model is None and note


def test_kernel_ratios_are_theirs_over_ours_per_shape():
    import pandas as pd

    from gdn.report.sections.performance import kernel_ratios

    def row(impl, T, fwd, fb):
        return {"impl": impl, "B": 8, "T": T, "H": 16, "K": 128, "V": 128, "fwd_ms": fwd, "fwdbwd_ms": fb}

    frame = pd.DataFrame([row("ours", 2048, 1.0, 4.0), row("fla", 2048, 1.5, 3.0), row("sdpa", 2048, 0.5, 2.0),
                          row("ours", 16384, 2.0, 8.0), row("sdpa", 16384, 4.0, 20.0)])
    short, long = kernel_ratios(frame)
    assert (short["fla_fwd"], short["fla_fwdbwd"], short["sdpa_fwdbwd"]) == (1.5, 0.75, 0.5)
    assert short["shape"] == "(8, 2048, 16, 128, 128)" and not short["longest"]
    assert long["longest"] and long["fla_fwd"] is None and long["sdpa_fwdbwd"] == 2.5


def test_decode_ratios_pair_models_at_one_prompt_and_batch_and_skip_failed_rows():
    import pandas as pd

    from gdn.report.sections.performance import decode_ratios

    def row(variant, prompt, tok_s, kernel_ms, status="ok"):
        return {"shape": "1B", "variant": variant, "prompt_len": prompt, "batch": 1, "decode_tokens_per_s": tok_s,
                "decode_kernel_ms_per_token": kernel_ms, "status": status}

    frame = pd.DataFrame([row("transformer_mup", 2048, 20.0, 3.0), row("gdn_mup", 2048, 30.0, 2.0),
                          row("transformer_mup", 16384, 10.0, float("nan")), row("gdn_mup", 16384, 25.0, 2.0),
                          row("gdn_mup", 65536, None, None, "out of memory")])
    short, long = decode_ratios(frame)
    assert (short["prompt"], short["wall"], short["kernel"]) == (2048, 1.5, 1.5)
    assert (long["prompt"], long["wall"], long["kernel"]) == (16384, 2.5, None)
    # with decode paths, each model is compared on its fastest one
    frame = pd.DataFrame([{**row("transformer_mup", 2048, 20.0, 3.0), "path": "eager"},
                          {**row("transformer_mup", 2048, 40.0, 3.0), "path": "graph"},
                          {**row("gdn_mup", 2048, 100.0, 2.0), "path": "graph"},
                          {**row("gdn_mup", 2048, 30.0, 2.0), "path": "eager"}])
    [both] = decode_ratios(frame)
    assert (both["paths"], both["wall"]) == ("graph / graph", 2.5)


def test_a_bench_files_note_reaches_the_suite_table(tmp_path):
    from gdn.db import bench_tables

    path = tmp_path / "kernels.json"
    path.write_text(json.dumps({"kind": "kernel_bench", "suite": "kernels", "device": "GPU", "status": "completed",
                                "note": "assembled from two processes", "rows": [{"impl": "ours", "fwd_ms": 1.0}]}))
    tables = bench_tables([str(path)])
    assert tables["bench_suites"]["reason"].tolist() == ["assembled from two processes"]
    assert tables["kernel_bench"]["fwd_ms"].tolist() == [1.0]


def test_inference_retries_in_segments_when_the_whole_prompt_runs_out_of_memory(monkeypatch):
    from gdn.bench import inference

    calls, real = [], inference._prefill_and_decode

    def whole_prompt_runs_out(model, ids, segment, *args):
        calls.append(segment)
        if segment is None:
            raise torch.OutOfMemoryError("the whole prompt does not fit")
        return real(model, ids, segment, *args)

    monkeypatch.setattr(inference, "_prefill_and_decode", whole_prompt_runs_out)
    cpu = torch.device("cpu")
    [row] = inference.measure(SHAPE, "gdn_mup", 32, 2, 4, cpu, iters=1, vocab_size=64, segment_on_oom=8,
                              paths=("eager",))
    assert calls == [None, 8] and row["status"] == "ok" and row["prefill_segment_len"] == 8
    assert "segments of 8" in row["note"] and row["decode_tokens_per_s"] > 0
    calls.clear()
    # The Transformer cannot prefill in segments: its row records the out-of-memory.
    [row] = inference.measure(SHAPE, "transformer_mup", 32, 2, 4, cpu, iters=1, vocab_size=64, segment_on_oom=8,
                              paths=("eager",))
    assert calls == [None] and row["status"] == "out of memory" and "prefill_segment_len" not in row


@pytest.mark.parametrize("variant", ["transformer_mup", "gdn_mup"])
def test_inference_rows_name_their_path_and_fraction_of_the_bandwidth_floor(variant):
    from gdn.bench import inference

    rows = inference.measure(SHAPE, variant, 16, 2, 3, torch.device("cpu"), iters=1, vocab_size=64,
                             hbm_override=1e9)
    assert [r["path"] for r in rows] == ["eager", "graph"]
    for row in rows:
        assert row["status"] == "ok" and row["decode_tokens_per_s"] > 0
        # the floor is the bytes of one step (weights once, cache once, recurrent state twice) at 1 GB/s
        assert row["floor_bytes_per_step"] > row["weights_gb"] * 2**30
        # one step decodes a token of each of the 2 sequences: the floor is per step, not per token
        assert row["decode_tokens_per_s"] == pytest.approx(2 * 1e3 / row["decode_ms_per_token"])
        floor_ms = row["floor_bytes_per_step"] / 1e9 * 1e3
        assert row["floor_fraction"] == pytest.approx(floor_ms / row["decode_ms_per_token"])
    assert "CUDA graphs need a CUDA device" in rows[1]["note"]  # the CPU runs the same step eagerly
    [unknown] = inference.measure(SHAPE, variant, 16, 1, 2, torch.device("cpu"), iters=1, vocab_size=64,
                                  paths=("eager",))
    assert "floor_fraction" not in unknown and "set bench.inference.hbm_gb_s" in unknown["note"]


def test_profiling_scripts_find_a_named_shape_or_name_the_ones_there_are(tmp_path):
    from gdn.bench.shapes import named_shape

    config = tmp_path / "tier.yaml"
    config.write_text("bench:\n  vocab_size: 64\n  shapes:\n    tiny: {width: 32, n_layers: 1}\n")
    shape, bench = named_shape(config, "tiny")
    assert shape == {"name": "tiny", "width": 32, "n_layers": 1} and bench["vocab_size"] == 64
    with pytest.raises(SystemExit, match=r"no '1B' \(it has \['tiny'\]\)"):
        named_shape(config, "1B")
    for script in ("profile_decode.py", "profile_train_step.py"):
        done = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"],
                              capture_output=True, text=True)
        assert done.returncode == 0 and "--shape" in done.stdout, done.stderr


def test_one_shape_of_a_suite(tmp_path):
    settings = {"bench": {"shapes": {"tiny": SHAPE, "other": {**SHAPE, "name": "other"}},
                          "overhead": {"shapes": ["tiny", "other"], "iters": 1}}}
    out = tmp_path / "overhead.json"
    base = [sys.executable, "-m", "gdn", "bench", "--suite", "overhead", "--config-json", json.dumps(settings),
            "--device", "cpu", "--out", str(out)]
    subprocess.run(base + ["--shape", "other"], check=True, cwd=REPO, capture_output=True)
    payload = json.loads(out.read_text())
    assert {r["shape"] for r in payload["rows"]} == {"other"} and payload["settings"]["shapes"] == ["other"]
    done = subprocess.run(base + ["--shape", "1B"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0 and "'1B' is not one of the overhead suite's shapes" in done.stderr


def test_kernels_suite_refuses_a_shape_and_honours_device_cpu(tmp_path):
    out = tmp_path / "kernels.json"
    base = [sys.executable, "-m", "gdn", "bench", "--suite", "kernels", "--config-json", "{}", "--out", str(out)]
    done = subprocess.run(base + ["--shape", "1B"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0 and "--shape does not apply to the kernels suite" in done.stderr
    subprocess.run(base + ["--device", "cpu"], check=True, cwd=REPO, capture_output=True)
    payload = json.loads(out.read_text())
    assert payload["suite"] == "kernels" and payload["status"] == "skipped" and payload["rows"] == []


def test_bench_parameter_counts_leave_out_the_readout_padding():
    from gdn.bench.shapes import parameter_counts

    model = build(SHAPE, "gdn_mup", 100, torch.device("cpu"), torch.float32)  # 100 rows padded to 128
    assert model.lm_head.out_features == 128
    counts = parameter_counts(model)
    assert counts == model.num_parameters_split()
    assert counts["total"] == sum(p.numel() for p in model.parameters()) - 28 * model.config.d_model
