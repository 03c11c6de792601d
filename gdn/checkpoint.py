"""Atomic files and training checkpoints.

Every file a job leaves behind is written to a temporary name and renamed into place,
so a job killed at any moment leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

STATE_FILE = "state.pt"


def write_json_atomic(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def replace_dir_atomic(tmp_dir: Path, final_dir: Path) -> None:
    """Moves a finished directory into place (the old one, if any, is removed first)."""
    if final_dir.exists():
        old = final_dir.with_name(final_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def save(ckpt_dir: Path, model, optimizer, step: int, extra: dict) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "extra": extra,
    }
    tmp = ckpt_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, ckpt_dir / STATE_FILE)


def load(ckpt_dir: Path, model, optimizer) -> tuple[int, dict] | None:
    """Restores model and optimizer in place; returns (next step, extra) or None when absent."""
    path = ckpt_dir / STATE_FILE
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state["step"], state["extra"]
