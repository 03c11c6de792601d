"""Reading packed token files and drawing batches from them.

A split is `<split>.bin` (a flat array of token ids, documents joined by the end-of-text
token) plus `<split>.meta.json` (dtype, counts, tokenizer hash). Batches are a pure
function of (seed, step): a resumed run draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gdn.data import DataError


def meta_path(bin_path: str | Path) -> Path:
    bin_path = Path(bin_path)
    return bin_path.with_name(bin_path.stem + ".meta.json")


def load_tokens(bin_path: str | Path, min_tokens: int = 1, purpose: str = "") -> np.ndarray:
    """The split's tokens (memory-mapped). Fewer than `min_tokens` raises DataError naming the
    file; `purpose` says what needs them (e.g. "train.seq_len + 2 = 130")."""
    bin_path = Path(bin_path)
    meta = load_meta(bin_path)
    dtype = np.dtype(meta["dtype"])
    if not bin_path.is_file():
        raise DataError(f"{bin_path} is missing: rerun the tokenize step that writes it")
    size = bin_path.stat().st_size
    if size % dtype.itemsize or size // dtype.itemsize != meta["n_tokens"]:
        raise DataError(f"{bin_path} is {size} bytes, but its meta file says {meta['n_tokens']} {dtype.name} tokens: "
                        "the file is damaged; rerun the tokenize step that writes it")
    n = size // dtype.itemsize
    if n < min_tokens:
        need = f" ({purpose})" if purpose else ""
        raise DataError(f"{bin_path} holds {n} tokens, fewer than the {min_tokens} needed{need}: the split "
                        f"({meta.get('source', 'its text')}) is too small; give it more text or shorten the sequences")
    return np.memmap(bin_path, dtype=dtype, mode="r")


def load_meta(bin_path: str | Path) -> dict:
    meta_file = meta_path(bin_path)
    if not meta_file.exists():
        raise DataError(f"{meta_file} is missing: rerun the tokenize step that writes {bin_path}")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as e:
        raise DataError(f"{meta_file} is not valid JSON ({e}): rerun the tokenize step that writes {bin_path}") from e
    if not isinstance(meta, dict) or not {"dtype", "n_tokens"} <= set(meta):
        raise DataError(f"{meta_file} lacks dtype or n_tokens: rerun the tokenize step that writes {bin_path}")
    return meta


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([np.asarray(tokens[s : s + seq_len + 1], dtype=np.int64) for s in starts])
    t = torch.from_numpy(rows)
    return t[:, :-1], t[:, 1:]


def train_batch(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int):
    """Random windows for optimizer step `step` (inputs and next-token targets, [B, T] each)."""
    if len(tokens) <= seq_len + 1:
        raise ValueError(f"the training split has {len(tokens)} tokens, fewer than seq_len+1={seq_len + 1}")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size)
    return _windows(tokens, starts, seq_len)


def eval_batches(tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int):
    """Disjoint consecutive windows from the start of a split (the same every time)."""
    n_windows = min((len(tokens) - 1) // seq_len, batch_size * max_batches)
    if n_windows == 0:
        raise ValueError(f"the split has {len(tokens)} tokens, too few for one window of {seq_len}")
    starts = np.arange(n_windows) * seq_len
    for i in range(0, n_windows, batch_size):
        yield _windows(tokens, starts[i : i + batch_size], seq_len)
