"""Scale-out check for the paper tier: the same short training run of one paper-tier cell on
1, 2 and 4 GPUs of one node, through the pipeline's own entry point (`python -m gdn train`,
started by torchrun exactly as the workflow starts it), then loss agreement and scaling
efficiency from the runs' logs.

    python scripts/scale_out_check.py --config config/paper.yaml --width 2048 \
        --train-bin results/data/study/train.bin --valid-bin results/data/study/valid.bin \
        --tokenizer resources/study/tokenizer/tokenizer.json --gpus 1 2 4 --steps 30 --out OUT

The global batch (batch x seq tokens per step) is the same for every GPU count; FSDP2 shards
the model when there is more than one process. Throughput leaves out the first `--skip`
steps (warm-up, autotuning). Writes OUT/scale_out.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]

from gdn import launch  # noqa: E402


def run_config(config: dict, width: int, variant: str, log2_lr: float, gpus: int, args) -> dict:
    train = dict(config["train"])
    if args.seq_len:
        train["seq_len"] = args.seq_len
    train.update(steps=args.steps, batch_size=args.batch, grad_accum=1, warmup_steps=min(5, args.steps - 1),
                 log_every=1, eval_every=10**9, eval_batches=1, checkpoint_every=10**9, compile=args.compile,
                 distributed={"gpus_per_job": gpus, "nodes": 1, "strategy": "fsdp" if gpus > 1 else "ddp",
                              "activation_checkpointing": args.activation_checkpointing})
    cell = {"tier": "scale-out", "variant": variant, "width": width, "log2_lr": log2_lr, "seed": 0,
            "run_id": f"scale-out/{variant}/w{width}/gpus{gpus}"}
    return {"model": config["model"], "train": train, "cell": cell, "device": args.device, "jobs_per_gpu": 1}


def summarize(log_path: Path, skip: int) -> dict:
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    timed = [e["tok_s"] for e in entries if e["step"] >= skip]
    return {"losses": [e["loss"] for e in entries], "tokens_per_s": statistics.median(timed) if timed else None,
            "steps_timed": len(timed)}


def compare_to_one_gpu(results: list[dict], skip: int) -> None:
    """Adds per-GPU tokens/s, scaling efficiency and loss differences against the 1-GPU run (in place)."""
    single = next((r for r in results if r["gpus"] == 1 and r.get("tokens_per_s")), None)
    if single is None:
        return
    for row in results:
        if row.get("tokens_per_s"):
            per_gpu = row["tokens_per_s"] / row["gpus"]
            row["tokens_per_s_per_gpu"] = per_gpu
            row["scaling_efficiency"] = per_gpu / single["tokens_per_s"]
            pairs = list(zip(single["losses"], row["losses"]))
            row["max_abs_loss_diff_vs_1gpu"] = max(abs(a - b) for a, b in pairs) if pairs else None
            row["mean_abs_loss_diff_vs_1gpu"] = statistics.mean(abs(a - b) for a, b in pairs) if pairs else None
    steps = single["losses"][skip:]
    if len(steps) > 2:
        # Noise scale: step-to-step change of the single-GPU loss over the timed part.
        single["loss_step_to_step_sd"] = statistics.pstdev([b - a for a, b in zip(steps, steps[1:])])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config/paper.yaml")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--variant", default="gdn_mup")
    parser.add_argument("--log2-lr", type=float, default=-9)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step, split over the processes")
    parser.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--seq-len", type=int, default=None, help="override the tier's train.seq_len")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test with the gloo backend")
    parser.add_argument("--train-bin", type=Path, required=True)
    parser.add_argument("--valid-bin", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    results = []
    for gpus in args.gpus:
        run_dir = args.out / f"gpus{gpus}"
        payload = run_config(config, args.width, args.variant, args.log2_lr, gpus, args)
        files = " ".join(shlex.quote(str(p)) for p in ("--train-bin", args.train_bin, "--valid-bin", args.valid_bin,
                                                          "--tokenizer", args.tokenizer, "--out", run_dir))
        command = (f"{launch.launch_command(shlex.quote(sys.executable), gpus)} -m gdn train"
                   f" --config-json {shlex.quote(json.dumps(payload))} {files}")
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'kernels'}:{os.environ.get('PYTHONPATH', '')}"}
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "stdout.log", "w") as log:
            code = subprocess.call(command, shell=True, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        row = {"gpus": gpus, "exit_code": code}
        if (run_dir / "log.jsonl").exists():
            row.update(summarize(run_dir / "log.jsonl", args.skip))
        results.append(row)
        print(f"{gpus} GPU(s): exit {code}, tokens/s {row.get('tokens_per_s')}", flush=True)
    compare_to_one_gpu(results, args.skip)
    summary = {"config": str(args.config), "width": args.width, "variant": args.variant,
               "seq_len": args.seq_len or config["train"]["seq_len"], "batch": args.batch, "steps": args.steps,
               "activation_checkpointing": args.activation_checkpointing, "compile": args.compile,
               "runs": results}
    (args.out / "scale_out.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps([{k: v for k, v in r.items() if k != "losses"} for r in results], indent=2))
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
