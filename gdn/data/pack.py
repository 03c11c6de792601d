"""Tokenize a split into one flat token file (documents joined by end-of-text) + meta.json."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gdn.checkpoint import write_json_atomic
from gdn.data import DataError
from gdn.data.prepare import read_documents, sha256_file
from gdn.data.tokenizer import EOT, load
from gdn.data.tokens import meta_path

BATCH_DOCS = 512


def pack(jsonl: Path, tokenizer_json: Path, out_bin: Path) -> dict:
    tok = load(tokenizer_json)
    eot = tok.token_to_id(EOT)
    if eot is None:
        raise ValueError(f"{tokenizer_json} has no {EOT} token")
    vocab = tok.get_vocab_size()
    dtype = np.uint16 if vocab <= 2**16 else np.uint32
    out_bin.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_bin.with_name(f".{out_bin.name}.{os.getpid()}.tmp")
    n_tokens = n_docs = n_chars = 0
    with open(tmp, "wb") as f:
        batch: list[str] = []

        def flush():
            nonlocal n_tokens
            for enc in tok.encode_batch(batch):
                ids = np.asarray(enc.ids + [eot], dtype=dtype)
                f.write(ids.tobytes())
                n_tokens += len(ids)
            batch.clear()

        for doc in read_documents(jsonl):
            batch.append(doc)
            n_docs += 1
            n_chars += len(doc)
            if len(batch) >= BATCH_DOCS:
                flush()
        flush()
    if n_docs == 0:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{jsonl}: the split holds no documents, so there is nothing to tokenize "
                        "(its source files are empty or blank lines only)")
    os.replace(tmp, out_bin)
    meta = {
        "dtype": np.dtype(dtype).name,
        "n_tokens": n_tokens,
        "n_documents": n_docs,
        "n_chars": n_chars,
        "vocab_size": vocab,
        "eot_id": eot,
        "tokenizer_sha256": sha256_file(tokenizer_json),
        "source": str(jsonl),
        "source_sha256": sha256_file(jsonl),
    }
    write_json_atomic(meta_path(out_bin), meta)
    return meta


def add_arguments(parser) -> None:
    parser.add_argument("--text", required=True, type=Path, help="<split>.jsonl from the prepare step")
    parser.add_argument("--tokenizer", required=True, type=Path, help="tokenizer.json")
    parser.add_argument("--out", required=True, type=Path, help="<split>.bin to write (meta beside it)")


def run(args) -> int:
    meta = pack(args.text, args.tokenizer, args.out)
    print(f"{args.out}: {meta['n_tokens']:,} tokens from {meta['n_documents']:,} documents")
    return 0
