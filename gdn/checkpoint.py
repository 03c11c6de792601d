"""Atomic files and self-verifying training checkpoints.

Every file a job leaves behind is written to a temporary name and renamed into place,
so a job killed at any moment leaves either the old file or the new one, never half.

A checkpoint is `step-<N>.pt` (torch.save of model, optimizer, RNG and loop state) plus
`step-<N>.pt.sha256.json` (its sha256, size and step), written after the checkpoint itself:
a checkpoint without that file was interrupted, one whose bytes do not match it was damaged
on disk. The newest two are kept. On resume the newest checkpoint that verifies is loaded;
each one that does not is named, with the reason, and moved to `<run>/checkpoint-set-aside/`,
and the run resumes from the one before (or starts over when none is left). Because batches,
RNG and optimizer state are restored exactly, the run ends with the same numbers either way.

A checkpoint also records a fingerprint of the configuration that wrote it; one written under
a different configuration is set aside too, rather than silently continued.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

CHECKPOINT_NAME = "step-{step:08d}.pt"
CHECKSUM_SUFFIX = ".sha256.json"
LEGACY_STATE_FILE = "state.pt"  # the unverified single-file format of earlier versions
SET_ASIDE_DIR = "checkpoint-set-aside"  # beside checkpoint/, so it outlives the finished run's checkpoints
KEEP = 2  # the newest checkpoint and the one to fall back to
_CHECKPOINT_RE = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that verifies but cannot be used; the message names the file."""


# ---------------------------------------------------------------- atomic files


def json_safe(value):
    """`value` with every non-finite float replaced by None, so the JSON is standard (no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _tmp_name(path: Path) -> Path:
    """A temporary name beside `path`, unique per process (two writers never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_json_atomic(path: str | Path, payload: dict) -> None:
    """Writes `payload` as standard JSON (non-finite numbers become null) under a temporary name,
    then renames it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.write_text(json.dumps(json_safe(payload), indent=2, default=str, allow_nan=False))
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def replace_dir_atomic(tmp_dir: Path, final_dir: Path) -> None:
    """Moves a finished directory into place. The old one, if any, is moved aside first and removed
    after (a process killed in between leaves `<name>.old`, removed by the next call)."""
    old = final_dir.with_name(final_dir.name + ".old")
    if final_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- checkpoints


def fingerprint(*parts) -> str:
    """A short hash of the configuration a checkpoint belongs to (JSON-serializable parts)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / CHECKPOINT_NAME.format(step=step)


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def candidates(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file present, newest first (verified or not)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _CHECKPOINT_RE.match(p.name))]
    return sorted(found, reverse=True)


def newest_step(ckpt_dir: Path) -> int | None:
    """Step of the newest checkpoint whose write completed (it has its checksum file); not hashed."""
    for step, path in candidates(ckpt_dir):
        if checksum_path(path).exists():
            return step
    return None


def save(ckpt_dir: Path, model, optimizer, step: int, extra: dict, config_fingerprint: str | None = None) -> Path:
    """Writes checkpoint `step` and its checksum file, then drops all but the newest KEEP."""
    import torch

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "extra": extra,
        "config_fingerprint": config_fingerprint,
    }
    path = checkpoint_path(ckpt_dir, step)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # the checkpoint to fall back to must really be on disk
    record = {"file": path.name, "step": step, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
    os.replace(tmp, path)
    write_json_atomic(checksum_path(path), record)
    _prune(ckpt_dir)
    return path


def _prune(ckpt_dir: Path) -> None:
    for _, path in candidates(ckpt_dir)[KEEP:]:
        path.unlink(missing_ok=True)
        checksum_path(path).unlink(missing_ok=True)
    for stale in ckpt_dir.glob(".step-*.tmp"):  # left by a process killed while writing
        if not stale.name.endswith(f".{os.getpid()}.tmp"):
            stale.unlink(missing_ok=True)


def verify(path: Path) -> str | None:
    """None when the checkpoint's bytes match its checksum file; otherwise what is wrong."""
    record_path = checksum_path(path)
    if not record_path.exists():
        return f"has no checksum file {record_path.name} (its write was interrupted)"
    try:
        record = json.loads(record_path.read_text())
        expected_bytes, expected_sha = int(record["bytes"]), str(record["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        return f"its checksum file {record_path.name} is unreadable ({e})"
    size = path.stat().st_size
    if size != expected_bytes:
        return f"is {size} bytes, its checksum file says {expected_bytes} (truncated or overwritten)"
    if sha256_file(path) != expected_sha:
        return "does not match its sha256 checksum (the file was damaged after it was written)"
    return None


def set_aside(path: Path, problem: str, log=None) -> Path:
    """Moves a bad checkpoint (and its checksum file) out of the way, keeping it for inspection."""
    path = Path(path)
    dest_dir = path.parent.parent / SET_ASIDE_DIR
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / path.name
    n = 1
    while dest.exists():
        dest, n = dest_dir / f"{path.name}.{n}", n + 1
    os.replace(path, dest)
    record = checksum_path(path)
    if record.exists():
        os.replace(record, dest.with_name(dest.name + CHECKSUM_SUFFIX))
    (log or _stderr)(f"checkpoint {path}: {problem}; moved to {dest}")
    return dest


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load(ckpt_dir: Path, model, optimizer, config_fingerprint: str | None = None, log=None,
         rejected: list | None = None) -> tuple[int, dict] | None:
    """Restores the newest good checkpoint into model and optimizer; returns (next step, extra)
    or None when there is none (the run starts over). Bad checkpoints are set aside, reported
    through `log` (stderr by default) and appended to `rejected` as {file, problem, moved_to}."""
    import torch

    ckpt_dir = Path(ckpt_dir)
    report = log or _stderr
    set_aside_now = rejected if rejected is not None else []

    def reject(path: Path, problem: str) -> None:
        dest = set_aside(path, problem, report)
        set_aside_now.append({"file": str(path), "problem": problem, "moved_to": str(dest)})

    legacy = ckpt_dir / LEGACY_STATE_FILE
    if legacy.exists():
        reject(legacy, "is in the earlier format without a checksum, so it cannot be trusted")
    for _, path in candidates(ckpt_dir):
        problem = verify(path)
        if problem is None:
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as e:  # the bytes verified, so this is a format problem; still unusable
                problem = f"cannot be read ({type(e).__name__}: {e})"
        if problem is None and state.get("config_fingerprint") != config_fingerprint:
            problem = "was written under a different configuration of this run"
        if problem is not None:
            reject(path, problem)
            continue
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path} verifies but does not fit this model ({e}); "
                                  f"remove {ckpt_dir} to start the run over") from e
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        report(f"resuming from checkpoint {path} (step {state['step']})")
        return state["step"], state["extra"]
    if set_aside_now:
        report(f"no usable checkpoint left in {ckpt_dir}: starting the run over")
    return None
