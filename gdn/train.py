"""Train one cell (variant x width x learning rate x seed).

The loop is plain code over small parts: `build_model` + the parametrization's optimizer
groups, a warmup + cosine schedule, batches that are a pure function of (seed, step),
atomic checkpoints. A run killed at any moment resumes from its last checkpoint and ends
with the same numbers as an uninterrupted run (batches, model and optimizer state and RNG
are all restored; the per-step log is cut back to the checkpoint).

Under torchrun the same loop trains one cell on several processes: `gdn.distributed` wraps the
model (DDP or FSDP2), gives each rank its rows of the global batch, reduces the logged numbers
and writes sharded checkpoints; rank 0 alone writes the run directory's files.

Outputs in the run directory: `log.jsonl` (one line per logged step), `checkpoint/`,
`model/` (Hugging Face format + tokenizer, completed runs only) and, last, `metrics.json`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from gdn import checkpoint, devices, distributed, provenance
from gdn import parametrization as P
from gdn.build import build_model
from gdn.config import parallel_settings
from gdn.data.tokenizer import as_transformers
from gdn.data.tokens import eval_batches, load_meta, load_tokens, train_batch


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to `min_ratio` at the last step."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup - 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def validation_loss(model, tokens, cfg, device, autocast, world=None) -> float:
    model.eval()
    total, count = 0.0, 0
    for x, y in eval_batches(tokens, cfg["batch_size"], cfg["seq_len"], cfg.get("eval_batches", 4)):
        x, y, weight = _eval_rows(x, y, world)
        x, y = x.to(device), y.to(device)
        with autocast():
            logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                                 reduction="sum")
        total += weight * loss.item()
        count += weight * y.numel()
    total, count = distributed.global_sum([total, count], world)
    model.train()
    return total / count


def _eval_rows(x, y, world):
    """This rank's rows of a validation batch, and whether they count (weight 1) or not (0).

    The last batch may not split evenly; a rank left without rows still runs one (uncounted),
    because a sharded model needs every rank in every forward pass.
    """
    if world is None:
        return x, y, 1
    xs, ys = x.tensor_split(world.size)[world.rank], y.tensor_split(world.size)[world.rank]
    return (xs, ys, 1) if len(xs) else (x[:1], y[:1], 0)


def _truncate_log(log_path: Path, last_step: int) -> None:
    """Drops log lines written after the checkpoint being resumed from, and a line cut short by
    a kill (a process killed while writing leaves a partial last line)."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= last_step:
            kept.append(line)
    checkpoint.write_text_atomic(log_path, "".join(line + "\n" for line in kept))


def param_group_record(group: dict, infos: dict, readout_zero: bool) -> dict:
    """One optimizer group as metrics.json records it: role, learning rate and weight decay, and
    the μP rule's init factor, forward multiplier and width ratio (the group's first tensor: a
    group holds one role at one learning rate, so these agree within it)."""
    info = infos[group["names"][0]]
    return {"role": group["role"], "lr": group["base_lr"], "weight_decay": group["weight_decay"],
            "n_tensors": len(group["params"]),
            "init_factor": 0.0 if readout_zero and info.role == "readout" else info.rule.init(info.width_ratio),
            "multiplier": info.rule.multiplier(info.width_ratio), "width_ratio": info.width_ratio,
            "names": list(group["names"])}


def train(cell: dict, model_spec: dict, cfg: dict, train_bin: Path, valid_bin: Path, tokenizer_json: Path,
          out_dir: Path, device_pref: str = "auto", jobs_per_gpu: int = 1) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.get("threads", 1))
    world = distributed.init(device_pref)  # None unless started by torchrun
    is_main = world is None or world.is_main
    if world is None:
        device, _slot = devices.resolve(device_pref, jobs_per_gpu)  # the slot lock lives as long as this frame
    else:
        device = world.device  # torchrun (or the cluster) gave this job its GPUs
    precision = cfg.get("precision", "auto")
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")

    def autocast():
        if use_bf16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    meta = load_meta(train_bin)
    # Too little text for one window is named here, before any model is built.
    train_tokens = load_tokens(train_bin, cfg["seq_len"] + 2, f"train.seq_len + 2 = {cfg['seq_len'] + 2}")
    valid_tokens = load_tokens(valid_bin, cfg["seq_len"] + 1, f"train.seq_len + 1 = {cfg['seq_len'] + 1}")
    torch.manual_seed(cell["seed"])
    built = build_model(model_spec, cell["variant"], cell["width"], meta["vocab_size"], seed=cell["seed"])
    model = built.model.to(device)
    parallel_cfg = parallel_settings(cfg, cell["width"])
    if parallel_cfg["activation_checkpointing"]:
        distributed.checkpoint_activations(model)
    if world is not None:
        model = distributed.parallelize(model, parallel_cfg, world, use_bf16)
    if cfg.get("compile", False):
        distributed.unwrap(model).compile_blocks()
    lr = 2.0 ** cell["log2_lr"]
    groups = P.optimizer_groups(distributed.unwrap(model), built.infos, lr, cfg.get("weight_decay", 0.0),
                                model_spec.get("role_lr_multipliers"))
    for g in groups:
        g["base_lr"] = g["lr"]
    betas = tuple(cfg.get("betas", (0.9, 0.95)))
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, fused=device.type == "cuda")

    steps, accum = cfg["steps"], cfg.get("grad_accum", 1)
    B, T = cfg["batch_size"], cfg["seq_len"]
    tokens_per_step = B * T * accum
    ckpt_dir, log_path = out_dir / "checkpoint", out_dir / "log.jsonl"
    # A checkpoint belongs to this cell under this configuration (not to a later edit of it).
    config_fingerprint = checkpoint.fingerprint(cell, model_spec, cfg, meta.get("tokenizer_sha256"))
    set_aside: list[dict] = []  # checkpoints found damaged on resume (named on stderr, kept in metrics)
    resumed = distributed.resume(ckpt_dir, model, optimizer, world, config_fingerprint, set_aside)
    start_step, state = (0, {"initial_loss": None, "wall_s": 0.0, "status": "running"}) if resumed is None else resumed
    if is_main:
        for stale in out_dir.glob(".*.tmp"):  # half-written files of a process killed while writing them
            stale.unlink(missing_ok=True)
    if is_main and resumed is None:
        log_path.unlink(missing_ok=True)
    elif is_main:
        _truncate_log(log_path, start_step - 1)
    divergence_factor = cfg.get("divergence_factor", 1.5)
    log_every, eval_every = cfg.get("log_every", 10), cfg.get("eval_every", steps)
    ckpt_every = cfg.get("checkpoint_every", max(1, steps // 4))
    recent_losses: list[float] = state.get("recent_losses", [])
    state["set_aside"] = state.get("set_aside", []) + set_aside  # carried by later checkpoints into metrics.json
    wall_before = state["wall_s"]  # wall time spent before this process (when resuming)
    t_start = time.perf_counter() - wall_before
    val_loss = state.get("val_loss")
    status = "completed"

    bar = tqdm(range(start_step, steps), desc=f"{cell['variant']} w{cell['width']} lr2^{cell['log2_lr']:g}",
               disable=None if is_main else True, file=sys.stderr, mininterval=2.0, initial=start_step, total=steps)
    model.train()
    # Every rank runs the same loop; only rank 0's log lines reach the file.
    with open(log_path if is_main else os.devnull, "a") as log:
        for step in bar:
            t0 = time.perf_counter()
            factor = lr_factor(step, steps, cfg.get("warmup_steps", 0), cfg.get("min_lr_ratio", 0.1))
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor
            loss_sum = 0.0
            for micro in range(accum):
                x, y = train_batch(train_tokens, B, T, cell["seed"], step * accum + micro)
                x, y = distributed.local_rows((x, y), world)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with distributed.gradient_sync(model, micro == accum - 1):
                    with autocast():
                        logits = model(x).logits
                    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                                             y.reshape(-1))
                    (loss / accum).backward()
                loss_sum += loss.item()
            loss_value = distributed.global_mean(loss_sum / accum, world)
            grad_norm = distributed.clip_grad_norm(model, cfg.get("grad_clip"))
            if state["initial_loss"] is None:
                state["initial_loss"] = loss_value
            diverged = not math.isfinite(loss_value) or loss_value > divergence_factor * state["initial_loss"]
            if not diverged:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            recent_losses = (recent_losses + [loss_value])[-max(1, steps // 10):]
            dt = time.perf_counter() - t0
            entry = {"step": step, "loss": loss_value, "lr": lr * factor, "grad_norm": grad_norm,
                     "tokens": (step + 1) * tokens_per_step, "tok_s": tokens_per_step / dt}
            last = step == steps - 1
            if not diverged and ((step + 1) % eval_every == 0 or last):
                val_loss = validation_loss(model, valid_tokens, cfg, device, autocast, world)
                entry["val_loss"] = val_loss
            if step % log_every == 0 or last or "val_loss" in entry or diverged:
                log.write(json.dumps(checkpoint.json_safe(entry)) + "\n")  # a non-finite loss is logged as null
                log.flush()
                bar.set_postfix(loss=f"{loss_value:.3f}")
            if diverged:
                status = "diverged"
                break
            if (step + 1) % ckpt_every == 0 and not last:
                state.update(wall_s=time.perf_counter() - t_start, recent_losses=recent_losses, val_loss=val_loss)
                distributed.save_checkpoint(ckpt_dir, model, optimizer, step + 1, state, world, config_fingerprint)
    wall = time.perf_counter() - t_start
    steps_done = step + 1 if steps > start_step else start_step

    params = distributed.unwrap(model).num_parameters_split()
    if status == "completed":
        tmp_model = out_dir / "model.tmp"
        if is_main:
            shutil.rmtree(tmp_model, ignore_errors=True)
        distributed.save_pretrained(model, tmp_model, world)
        if is_main:
            as_transformers(tokenizer_json).save_pretrained(tmp_model)
            checkpoint.replace_dir_atomic(tmp_model, out_dir / "model")
    metrics = {
        "run_id": cell["run_id"],
        "cell": cell,
        "status": status,
        "steps_done": steps_done,
        "initial_loss": state["initial_loss"],
        "final_train_loss": sum(recent_losses) / len(recent_losses) if status == "completed" else None,
        "last_train_loss": loss_value,
        "final_val_loss": val_loss if status == "completed" else None,
        "params": params,
        "tokens": steps_done * tokens_per_step,
        "wall_s": wall,
        "tok_s": (steps_done - start_step) * tokens_per_step / max(wall - wall_before, 1e-9),
        "device": devices.describe(device),
        "precision": "bf16" if use_bf16 else "fp32",
        # what the scheduler's gpu_mem_mb declaration is checked against (allocator's peak)
        "peak_gpu_mem_mb": round(torch.cuda.max_memory_reserved(device) / 2**20) if device.type == "cuda" else None,
        "param_groups": [param_group_record(g, built.infos, model_spec.get("readout_zero_init", True)
                                            and built.variant.parametrization != "sp")
                         for g in optimizer.param_groups],
        "config": {"model": model_spec, "train": cfg, "vocab_size": meta["vocab_size"],
                   "tokenizer_sha256": meta["tokenizer_sha256"]},
        "checkpoints_set_aside": state["set_aside"],
        "versions": provenance.versions(),
        "commit": provenance.git_commit(),
    }
    if world is not None:
        metrics["parallel"] = {"world_size": world.size, "strategy": parallel_cfg["strategy"],
                               "activation_checkpointing": parallel_cfg["activation_checkpointing"]}
    distributed.barrier(world)  # every rank is done with the checkpoint before it goes
    if is_main:
        checkpoint.write_json_atomic(out_dir / "metrics.json", metrics)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the run is final; its checkpoint only costs disk
    return metrics


def add_arguments(parser) -> None:
    parser.add_argument("--config-json", required=True,
                        help='JSON with "model", "train", "cell" {tier, variant, width, log2_lr, seed, run_id}, '
                             '"device" and "jobs_per_gpu"')
    parser.add_argument("--train-bin", required=True, type=Path)
    parser.add_argument("--valid-bin", required=True, type=Path)
    parser.add_argument("--tokenizer", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="the run directory")


def run(args) -> int:
    payload = json.loads(args.config_json)
    try:
        metrics = train(payload["cell"], payload["model"], payload["train"], args.train_bin, args.valid_bin,
                        args.tokenizer, args.out, payload.get("device", "auto"), payload.get("jobs_per_gpu", 1))
    finally:
        distributed.teardown()
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(f"{metrics['run_id']}: {metrics['status']} after {metrics['steps_done']} steps, "
          f"val loss {metrics['final_val_loss']}, {metrics['tok_s']:.0f} tok/s on {metrics['device']}")
    return 0
