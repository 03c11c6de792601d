"""Training runs: completion, divergence handling, and resume after a real kill."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tokenizers import ByteLevelBPETokenizer

from gdn.train import lr_factor
from tests.synthetic import REPO, paragraph

MODEL = {"n_layers": 1, "base_width": 16, "width_mode": "head_dim", "n_heads": 2, "mlp_ratio": {"transformer": 2.0,
         "gdn": 1.5}, "init_std": 0.02}
TRAIN = {"seq_len": 16, "batch_size": 4, "steps": 30, "warmup_steps": 3, "min_lr_ratio": 0.1, "weight_decay": 0.1,
         "betas": [0.9, 0.95], "grad_clip": 1.0, "eval_every": 10, "eval_batches": 2, "log_every": 1,
         "checkpoint_every": 4, "divergence_factor": 1.5, "threads": 1}


@pytest.fixture(scope="module")
def token_files(tmp_path_factory):
    import random

    d = tmp_path_factory.mktemp("tokens")
    rng = random.Random(0)
    text = [paragraph(rng) for _ in range(400)]
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(text, vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.save(str(d / "tokenizer.json"))
    for split, docs in (("train", text[:350]), ("valid", text[350:])):
        ids = np.concatenate([np.array(e.ids + [0], dtype=np.uint16) for e in tok.encode_batch(docs)])
        ids.tofile(d / f"{split}.bin")
        (d / f"{split}.meta.json").write_text(json.dumps({"dtype": "uint16", "n_tokens": len(ids), "vocab_size": 300,
                                                          "eot_id": 0, "tokenizer_sha256": "test"}))
    return d


def _command(token_files, out, variant="gdn_mup", log2_lr=-6.0, train=None):
    cell = {"tier": "t", "variant": variant, "width": 32, "log2_lr": log2_lr, "seed": 0,
            "run_id": f"t/{variant}/w32/lr{log2_lr}/s0"}
    payload = {"model": MODEL, "train": train or TRAIN, "device": "cpu", "jobs_per_gpu": 1, "cell": cell}
    return [sys.executable, "-m", "gdn", "train", "--config-json", json.dumps(payload),
            "--train-bin", str(token_files / "train.bin"), "--valid-bin", str(token_files / "valid.bin"),
            "--tokenizer", str(token_files / "tokenizer.json"), "--out", str(out)]


def _run(cmd):
    env = dict(os.environ, GDN_COMMIT="test")
    subprocess.run(cmd, check=True, cwd=REPO, env=env, capture_output=True, text=True)


def test_schedule_warms_up_then_decays_to_min_ratio():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, 0.1) == pytest.approx(0.1)
    assert 0.1 < lr_factor(50, 100, 10, 0.1) < 1.0


def test_completed_run_writes_metrics_log_and_model(token_files, tmp_path):
    _run(_command(token_files, tmp_path / "run"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps_done"] == 30
    assert metrics["final_val_loss"] < metrics["initial_loss"]
    assert metrics["commit"] == "test" and metrics["versions"]["torch"]
    assert metrics["params"]["total"] > metrics["params"]["non_embedding"] > 0
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert (tmp_path / "run" / "model" / "tokenizer.json").exists()
    assert not (tmp_path / "run" / "checkpoint").exists()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(30))
    assert {"loss", "lr", "grad_norm", "tokens", "tok_s"} <= set(log[0])
    groups = {g["role"]: g for g in metrics["param_groups"]}
    assert {"embedding", "hidden", "readout", "vector"} <= set(groups)
    for group in groups.values():
        assert {"init_factor", "multiplier", "width_ratio", "names"} <= set(group) and group["names"]
    m = groups["hidden"]["width_ratio"]
    if metrics["cell"]["variant"].endswith("mup") and m != 1:  # the μP rules as recorded
        assert groups["hidden"]["init_factor"] == pytest.approx(m**-0.5)
        assert groups["readout"]["multiplier"] == pytest.approx(1 / m)


def test_divergence_ends_the_run_but_the_job_succeeds(token_files, tmp_path):
    _run(_command(token_files, tmp_path / "run", variant="transformer_sp", log2_lr=3.0))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "diverged"
    assert metrics["steps_done"] < 30
    assert metrics["final_val_loss"] is None
    assert not (tmp_path / "run" / "model").exists()


def test_killed_run_resumes_to_identical_metrics(token_files, tmp_path):
    train = dict(TRAIN, steps=60, checkpoint_every=5)
    _run(_command(token_files, tmp_path / "straight", train=train))
    reference = json.loads((tmp_path / "straight" / "metrics.json").read_text())

    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(token_files, out, train=train), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, GDN_COMMIT="test"))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        log = out / "log.jsonl"
        if list((out / "checkpoint").glob("step-*.pt.sha256.json")) and log.exists() \
                and len(log.read_text().splitlines()) > 22:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()

    _run(_command(token_files, out, train=train))
    resumed = json.loads((out / "metrics.json").read_text())
    assert (resumed["status"], resumed["steps_done"]) == (reference["status"], reference["steps_done"])
    for key in ("final_train_loss", "final_val_loss", "last_train_loss", "initial_loss"):
        assert resumed[key] == pytest.approx(reference[key], rel=1e-6), key
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(60)), "the log must hold each step once after a resume"


def test_json_files_are_standard_json_even_for_non_finite_numbers(tmp_path):
    """A diverged run's loss may be NaN or infinite; the files say null (strict parsers reject NaN)."""
    from gdn.checkpoint import write_json_atomic

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    write_json_atomic(tmp_path / "m.json", {"last_train_loss": float("nan"), "curve": [1.0, float("inf")]})
    parsed = json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse)
    assert parsed == {"last_train_loss": None, "curve": [1.0, None]}
    assert not list(tmp_path.glob("*.tmp"))
