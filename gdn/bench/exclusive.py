"""One benchmark at a time per machine, without making the suites depend on each other.

The suites are independent cells of the DAG (asking for one file runs one suite), so
Snakemake may schedule two at once; a timing taken while another benchmark shares the GPU
would be wrong. Each suite therefore holds an exclusive advisory lock on one file for the
duration of its measurements; a second suite waits for it. The lock is per host (its name
carries the host name): on a cluster, jobs on different nodes do not share a GPU and need
not wait for each other even when results/ is on a shared file system.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import time
from pathlib import Path


@contextlib.contextmanager
def one_at_a_time(lock_path: Path | None):
    """Hold an exclusive lock on `lock_path`, suffixed with this host's name (created if
    missing), while the block runs; None runs the block unlocked."""
    if lock_path is None:
        yield
        return
    lock_path = lock_path.with_name(f"{lock_path.name}.{socket.gethostname()}")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another benchmark holds {lock_path}; waiting for it to finish", flush=True)
            start = time.monotonic()
            fcntl.flock(handle, fcntl.LOCK_EX)
            print(f"waited {time.monotonic() - start:.0f} s for {lock_path}", flush=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
