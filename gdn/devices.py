"""Which device a job runs on.

On a multi-GPU box Snakemake starts several jobs at once; each takes a GPU *slot* through
an exclusive file lock (released by the OS when the process ends, even when killed).
Slot i maps to GPU i mod n, so the first jobs spread over all GPUs and up to
`jobs_per_gpu` small jobs share one.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

import torch


def _slot_dir() -> Path:
    d = Path(os.environ.get("GDN_GPU_SLOT_DIR", Path(tempfile.gettempdir()) / f"gdn-gpu-slots-{os.getuid()}"))
    d.mkdir(parents=True, exist_ok=True)
    return d


class GpuSlot:
    def __init__(self, jobs_per_gpu: int, poll_s: float = 2.0):
        n = torch.cuda.device_count()
        if n == 0:
            raise RuntimeError("device 'cuda' was requested but no CUDA GPU is visible")
        self.handle = None
        while self.handle is None:
            for slot in range(n * jobs_per_gpu):
                f = open(_slot_dir() / f"slot{slot}.lock", "w")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    continue
                self.handle, self.gpu = f, slot % n
                break
            else:
                time.sleep(poll_s)

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.gpu)


def jobs_per_gpu_from_env() -> int:
    """Evaluation and coordinate-check jobs share the training jobs' slots; the rules pass the
    tier's jobs_per_gpu in GDN_JOBS_PER_GPU so every job counts the same slots."""
    return int(os.environ.get("GDN_JOBS_PER_GPU", "1"))


def resolve(preference: str, jobs_per_gpu: int = 1) -> tuple[torch.device, GpuSlot | None]:
    """'auto' means CUDA when a GPU is visible, else the CPU."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu"), None
    slot = GpuSlot(jobs_per_gpu)
    torch.cuda.set_device(slot.device)
    return slot.device, slot


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
