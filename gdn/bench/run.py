"""`python -m gdn bench --suite overhead|throughput|inference|kernels`: one benchmark suite, one JSON file.

Suites that need a GPU write a file with status "skipped" and the reason on a CPU-only
machine, so the report can say so instead of leaving a silent gap. The overhead suite also
runs on the CPU at the shapes the tier names. The kernels suite is the kernel package's own
benchmark script (kernels/benchmarks/bench_chunk.py), which writes its JSON itself.
`--lock FILE` makes suites that share the file run one after another (gdn.bench.exclusive).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from gdn import provenance
from gdn.bench import inference, overhead, peers, throughput
from gdn.bench.exclusive import one_at_a_time
from gdn.checkpoint import write_json_atomic

SUITES = ("overhead", "throughput", "inference", "kernels")
KERNEL_BENCH = Path(__file__).resolve().parents[2] / "kernels" / "benchmarks" / "bench_chunk.py"
GPU_ONLY = ("throughput", "inference", "kernels")


def _shape(settings: dict, name: str) -> dict:
    shapes = settings.get("shapes") or {}
    if name not in shapes:
        raise ValueError(f"bench shape {name!r} is not defined under bench.shapes (known: {sorted(shapes)})")
    return {"name": name, **shapes[name]}


def run_suite(suite: str, settings: dict, device: torch.device):
    """Yields the suite's rows in groups, as each measurement finishes."""
    section = settings.get(suite) or {}
    vocab = settings.get("vocab_size", 50257)
    if suite == "overhead":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        for name in section.get("shapes", []):
            yield overhead.measure(_shape(settings, name), device, dtype, section.get("iters", 30), vocab)
    elif suite == "throughput":
        # `compile: [false, true]` times every variant eager and under torch.compile (our models only).
        for name in section.get("shapes", []):
            for seq_len in section.get("seq_lens", [2048]):
                for compiled in section.get("compile", [False]):
                    variants = section.get("variants", ["transformer_mup", "gdn_mup"])
                    yield throughput.measure(_shape(settings, name), variants, seq_len,
                                             section.get("tokens_per_step", 16384), device,
                                             section.get("iters", 10), vocab, compiled=compiled,
                                             gdn_options=section.get("gdn_options"))
    elif suite == "inference":
        for name in section.get("shapes", []):
            for variant in section.get("variants", ["transformer_mup", "gdn_mup"]):
                for prompt in section.get("prompts", [2048]):
                    for batch in section.get("batches", [1]):
                        yield inference.measure(_shape(settings, name), variant, prompt, batch,
                                                section.get("decode_tokens", 32), device,
                                                section.get("iters", 3), vocab,
                                                segment_on_oom=section.get("prefill_segment_on_oom", 2048),
                                                paths=section.get("paths", inference.PATHS),
                                                hbm_override=section.get("hbm_gb_s") and section["hbm_gb_s"] * 1e9)
            for peer in section.get("peers", []):
                for prompt in section.get("prompts", [2048]):
                    for batch in section.get("batches", [1]):
                        yield peers.measure(peer, _shape(settings, name), prompt, batch,
                                            section.get("decode_tokens", 32), device, section.get("iters", 3),
                                            vocab, hbm_override=section.get("hbm_gb_s") and section["hbm_gb_s"] * 1e9)
    else:
        raise ValueError(f"unknown bench suite {suite!r}; choose one of {SUITES}")


def add_arguments(parser) -> None:
    parser.add_argument("--suite", required=True, choices=SUITES)
    parser.add_argument("--config-json", required=True, help='JSON with the tier config\'s "bench" section')
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--shape", default=None,
                        help="measure only this one of the suite's shapes (the pipeline's per-shape cells)")
    parser.add_argument("--lock", type=Path, default=None,
                        help="lock file shared by benchmarks that must not run at the same time")


def run(args) -> int:
    if args.suite == "kernels" and args.shape is not None:
        raise SystemExit("--shape does not apply to the kernels suite: its shapes are the kernel issue's "
                         "four, fixed in kernels/benchmarks/bench_chunk.py (its --shapes picks among them)")
    with one_at_a_time(args.lock):
        if args.suite == "kernels" and args.device != "cpu":
            return subprocess.run([sys.executable, str(KERNEL_BENCH), "--out", str(args.out)]).returncode
        return _run_model_suite(args)


def _run_model_suite(args) -> int:
    settings = json.loads(args.config_json).get("bench") or {}
    if args.shape is not None:
        section = dict(settings.get(args.suite) or {})
        if args.shape not in section.get("shapes", []):
            raise SystemExit(f"--shape {args.shape!r} is not one of the {args.suite} suite's shapes "
                             f"{section.get('shapes', [])}")
        settings = {**settings, args.suite: {**section, "shapes": [args.shape]}}
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    payload = {"kind": "bench", "suite": args.suite, "commit": provenance.git_commit(),
               "versions": provenance.versions(), "settings": settings.get(args.suite) or {},
               "device": torch.cuda.get_device_name(device) if cuda else "cpu"}
    if args.suite in GPU_ONLY and not cuda:
        reason = ("the tier sets device: cpu" if args.device == "cpu" and torch.cuda.is_available()
                  else "this machine has none")
        payload.update(status="skipped", reason=f"the {args.suite} suite needs a CUDA GPU; {reason}", rows=[])
    else:
        torch.manual_seed(0)
        payload.update(status="running", rows=[])
        for rows in run_suite(args.suite, settings, device):
            # Rewritten after every measurement: a run cut short keeps what it measured
            # (status "running"; the pipeline only ingests "completed" files).
            payload["rows"] += rows
            write_json_atomic(args.out, payload)
        payload["status"] = "completed"
    write_json_atomic(args.out, payload)
    print(f"{args.out}: {payload['status']}, {len(payload['rows'])} rows")
    return 0
