"""Fault injection on the CPU: training killed with SIGKILL at chosen and at random points, checkpoints
and per-job files corrupted or truncated on disk. Nothing may be lost and nothing silently
changed: every run ends with exactly the numbers of an uninterrupted run, and every damaged
checkpoint is named and set aside.

The kill points are drawn from a seeded generator (GDN_FAULT_SEED, default 0), so a failure
reproduces; set another seed to explore other points.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tokenizers import ByteLevelBPETokenizer

from gdn import checkpoint
from gdn.train import train
from tests.synthetic import REPO, paragraph

MODEL = {"n_layers": 1, "base_width": 16, "width_mode": "head_dim", "n_heads": 2,
         "mlp_ratio": {"transformer": 2.0, "gdn": 1.5}, "init_std": 0.02}
TRAIN = {"seq_len": 16, "batch_size": 4, "steps": 24, "warmup_steps": 2, "min_lr_ratio": 0.1, "weight_decay": 0.1,
         "betas": [0.9, 0.95], "grad_clip": 1.0, "eval_every": 8, "eval_batches": 2, "log_every": 1,
         "checkpoint_every": 3, "divergence_factor": 1.5, "threads": 1}
CELL = {"tier": "t", "variant": "gdn_mup", "width": 32, "log2_lr": -6.0, "seed": 0, "run_id": "t/gdn_mup/w32/lr-6/s0"}
RNG = random.Random(int(os.environ.get("GDN_FAULT_SEED", "0")))
# What must match an uninterrupted run exactly (timings aside).
COMPARED = ("status", "steps_done", "initial_loss", "final_train_loss", "last_train_loss", "final_val_loss",
            "tokens", "params")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    rng = random.Random(0)
    text = [paragraph(rng) for _ in range(300)]
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(text, vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.save(str(d / "tokenizer.json"))
    for split, docs in (("train", text[:260]), ("valid", text[260:])):
        ids = np.concatenate([np.array(e.ids + [0], dtype=np.uint16) for e in tok.encode_batch(docs)])
        ids.tofile(d / f"{split}.bin")
        (d / f"{split}.meta.json").write_text(json.dumps({"dtype": "uint16", "n_tokens": len(ids), "vocab_size": 300,
                                                          "eot_id": 0, "tokenizer_sha256": "test"}))
    return d


def _train(tokens, out, train_cfg=None):
    return train(CELL, MODEL, train_cfg or TRAIN, tokens / "train.bin", tokens / "valid.bin",
                 tokens / "tokenizer.json", out, "cpu", 1)


@pytest.fixture(scope="module")
def reference(tokens, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    metrics = _train(tokens, out)
    return metrics, _log(out)


def _log(out):
    """The per-step log without its timing column."""
    entries = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if k != "tok_s"} for e in entries]


def _assert_same_as(reference, out, metrics=None):
    ref_metrics, ref_log = reference
    metrics = metrics or json.loads((out / "metrics.json").read_text())
    for key in COMPARED:
        assert metrics[key] == ref_metrics[key], key
    assert _log(out) == ref_log, "the per-step log must be the uninterrupted run's, each step once"
    assert (out / "model" / "model.safetensors").exists()
    assert not (out / "checkpoint").exists()
    assert not list(out.glob(".*.tmp")) and not (out / "model.tmp").exists() and not (out / "model.old").exists()


class Crash(Exception):
    pass


def _crash_after_saves(monkeypatch, tokens, out, saves):
    """Trains until the `saves`-th checkpoint is on disk, then fails (as a crash or kill would)."""
    real, count = checkpoint.save, {"n": 0}

    def save(*args, **kwargs):
        path = real(*args, **kwargs)
        count["n"] += 1
        if count["n"] == saves:
            raise Crash
        return path

    monkeypatch.setattr(checkpoint, "save", save)
    with pytest.raises(Crash):
        _train(tokens, out)
    monkeypatch.setattr(checkpoint, "save", real)
    assert not (out / "metrics.json").exists()
    return [path for _, path in checkpoint.candidates(out / "checkpoint")]


def _overwrite_middle(path, n_bytes=4096):
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start : start + n_bytes] = os.urandom(min(n_bytes, len(data) - start))
    path.write_bytes(bytes(data))


def test_a_checkpoint_carries_its_checksum(tokens, monkeypatch, tmp_path):
    out = tmp_path / "run"
    newest, older = _crash_after_saves(monkeypatch, tokens, out, 3)
    assert newest.name == "step-00000009.pt" and older.name == "step-00000006.pt"  # the newest two are kept
    assert checkpoint.verify(newest) is None
    record = json.loads(checkpoint.checksum_path(newest).read_text())
    assert record["sha256"] == checkpoint.sha256_file(newest) and record["step"] == 9


@pytest.mark.parametrize("damage", ["overwrite", "truncate"])
def test_damaged_latest_checkpoint_is_set_aside_and_the_run_matches(tokens, reference, monkeypatch, tmp_path,
                                                                      damage):
    out = tmp_path / "run"
    newest, older = _crash_after_saves(monkeypatch, tokens, out, 3)
    if damage == "overwrite":
        _overwrite_middle(newest)  # the silent case: torch.load would read it without complaint
    else:
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    messages = []
    monkeypatch.setattr(checkpoint, "_stderr", messages.append)
    metrics = _train(tokens, out)
    _assert_same_as(reference, out, metrics)
    assert any(str(newest) in m and ("sha256" in m or "truncated" in m) for m in messages), messages
    assert any(f"resuming from checkpoint {older}" in m for m in messages), messages
    assert [entry["file"] for entry in metrics["checkpoints_set_aside"]] == [str(newest)]
    assert (out / checkpoint.SET_ASIDE_DIR / newest.name).exists()


def test_every_checkpoint_damaged_restarts_the_run(tokens, reference, monkeypatch, tmp_path):
    out = tmp_path / "run"
    paths = _crash_after_saves(monkeypatch, tokens, out, 4)
    for path in paths:
        path.write_bytes(b"")
    metrics = _train(tokens, out)
    _assert_same_as(reference, out, metrics)
    assert len(metrics["checkpoints_set_aside"]) == len(paths) == 2


def test_checkpoint_of_another_configuration_is_not_continued(tokens, monkeypatch, tmp_path):
    """A run killed, its config edited, rerun: the old checkpoint is set aside, not silently resumed."""
    out = tmp_path / "run"
    _crash_after_saves(monkeypatch, tokens, out, 2)
    edited = dict(TRAIN, weight_decay=0.0)
    metrics = _train(tokens, out, edited)
    straight = _train(tokens, tmp_path / "straight", edited)
    assert metrics["final_val_loss"] == straight["final_val_loss"]
    assert all("different configuration" in e["problem"] for e in metrics["checkpoints_set_aside"])


def test_unverified_checkpoint_of_the_earlier_format_is_set_aside(tokens, reference, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / checkpoint.LEGACY_STATE_FILE).write_bytes(b"PK\x03\x04 not a checkpoint")
    metrics = _train(tokens, out)
    _assert_same_as(reference, out, metrics)
    assert "without a checksum" in metrics["checkpoints_set_aside"][0]["problem"]


# ---------------------------------------------------------------- kill -9, in a real process

# Runs `python -m gdn train` with one fault armed (GDN_TEST_FAULT): SIGKILL at the n-th occurrence
# of a point in the code, the way a power cut, an OOM kill or a cluster preemption would stop it.
KILLER = r"""
import io, json, os, signal, sys
import torch
import gdn.checkpoint as ck

fault = json.loads(os.environ["GDN_TEST_FAULT"])
seen = {"n": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def hit():
    seen["n"] += 1
    return seen["n"] == fault["at"]

kind = fault["kind"]
if kind == "mid-checkpoint-write":  # half of the checkpoint's bytes reach the file
    real_save = torch.save
    def save(obj, f, *a, **k):
        if not hit():
            return real_save(obj, f, *a, **k)
        buf = io.BytesIO(); real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush(); die()
    torch.save = save
elif kind in ("before-checksum", "after-metrics"):
    real_write = ck.write_json_atomic
    def write(path, payload):
        is_point = str(path).endswith(ck.CHECKSUM_SUFFIX) if kind == "before-checksum" \
            else str(path).endswith("metrics.json")
        if is_point and kind == "before-checksum" and hit():
            die()
        real_write(path, payload)
        if is_point and kind == "after-metrics" and hit():
            die()
    ck.write_json_atomic = write
elif kind == "optimizer-step":  # anywhere in the loop: before the n-th optimizer step
    real_step = torch.optim.AdamW.step
    def step(self, *a, **k):
        if hit():
            die()
        return real_step(self, *a, **k)
    torch.optim.AdamW.step = step
elif kind == "model-swap":  # between moving the old model/ away and the new one in
    def replace_dir(tmp_dir, final_dir):
        if final_dir.exists():
            os.replace(final_dir, final_dir.with_name(final_dir.name + ".old"))
        die()
    ck.replace_dir_atomic = replace_dir

from gdn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _train_command(tokens, out):
    payload = {"model": MODEL, "train": TRAIN, "device": "cpu", "jobs_per_gpu": 1, "cell": CELL}
    return ["train", "--config-json", json.dumps(payload), "--train-bin", str(tokens / "train.bin"),
            "--valid-bin", str(tokens / "valid.bin"), "--tokenizer", str(tokens / "tokenizer.json"), "--out", str(out)]


def _run_with_fault(tokens, out, kind, at):
    env = dict(os.environ, GDN_COMMIT="test", GDN_TEST_FAULT=json.dumps({"kind": kind, "at": at}))
    done = subprocess.run([sys.executable, "-c", KILLER, *_train_command(tokens, out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, f"{kind} at {at} did not kill the run: {done.stderr[-2000:]}"
    return done


def test_a_sequence_of_kills_loses_nothing(tokens, reference, tmp_path):
    """One run directory through six processes: killed mid-checkpoint-write, before a checkpoint's
    checksum, at a random optimizer step, with its newest checkpoint and log damaged on disk,
    right after metrics.json, and between the model directory swaps; the last finishes."""
    out = tmp_path / "run"
    steps, every = TRAIN["steps"], TRAIN["checkpoint_every"]
    saves = (steps - 1) // every  # checkpoints a whole run writes (none at the last step)

    _run_with_fault(tokens, out, "mid-checkpoint-write", RNG.randint(2, saves - 2))
    assert not list((out / "checkpoint").glob("step-*.pt")) or all(
        checkpoint.verify(p) is None for _, p in checkpoint.candidates(out / "checkpoint"))

    _run_with_fault(tokens, out, "before-checksum", RNG.randint(1, 2))
    unverified = [p for _, p in checkpoint.candidates(out / "checkpoint") if checkpoint.verify(p) is not None]
    assert len(unverified) == 1

    resumed_at = max(s for s, p in checkpoint.candidates(out / "checkpoint") if checkpoint.verify(p) is None)
    _run_with_fault(tokens, out, "optimizer-step", RNG.randint(1, steps - resumed_at - 1))

    newest = checkpoint.candidates(out / "checkpoint")[0][1]
    _overwrite_middle(newest)
    with open(out / "log.jsonl", "a") as log:
        log.write('{"step": 99, "loss": 1.2')  # a line cut short by the kill
    (out / ".metrics.json.12345.tmp").write_text('{"run_id": ')  # a write cut short in an earlier process
    done = _run_with_fault(tokens, out, "after-metrics", 1)
    assert str(newest) in done.stderr  # named on the job's log
    assert (out / "metrics.json").exists() and (out / "checkpoint").exists()

    _run_with_fault(tokens, out, "model-swap", 1)
    assert not (out / "model").exists() and (out / "model.old").exists()

    env = dict(os.environ, GDN_COMMIT="test")
    done = subprocess.run([sys.executable, "-m", "gdn", *_train_command(tokens, out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_as(reference, out)
    set_aside = sorted(p.name for p in (out / checkpoint.SET_ASIDE_DIR).glob("step-*.pt"))
    assert unverified[0].name in set_aside and newest.name in set_aside


def test_kill_at_random_times_then_resume(tokens, reference, tmp_path):
    """SIGKILL at random moments after training has started (not at a chosen point), twice; then finish."""
    out = tmp_path / "run"
    env = dict(os.environ, GDN_COMMIT="test")
    cmd = [sys.executable, "-m", "gdn", *_train_command(tokens, out)]
    for _ in range(2):
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            log = out / "log.jsonl"
            start = len(log.read_text().splitlines()) if log.exists() else 0
            target = start + RNG.randint(1, 6)  # a random number of further steps, at an unknown moment within one
            while proc.poll() is None and not (log.exists() and len(log.read_text().splitlines()) >= target):
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_as(reference, out)
