"""Where a number came from: git commit and library versions, recorded in every output file."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "triton", "transformers", "tokenizers", "lm-eval", "numpy")


@lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD of the checkout, '+dirty' when tracked files differ; GDN_COMMIT overrides (copies without .git)."""
    if os.environ.get("GDN_COMMIT"):
        return os.environ["GDN_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out
