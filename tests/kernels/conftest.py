"""Kernel tests run on the GPU when there is one, else on the CPU under the Triton interpreter.

TRITON_INTERPRET must be set before any @triton.jit function is defined, so it is set
here, before the test modules import gdn_kernels. `kernels/` goes on sys.path so the
tests also run from a plain checkout (the package installs as gdn_kernels from there).
"""

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_KERNELS_DIR = Path(__file__).resolve().parents[2] / "kernels"
if str(_KERNELS_DIR) not in sys.path:
    sys.path.insert(0, str(_KERNELS_DIR))
