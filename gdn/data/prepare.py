"""Corpus preparation: WikiText-103 from the hub (pinned revision) or from local files.

Writes `resources/<tier>/text/{train,valid,test}.jsonl` (one {"text": document} per line),
`test.raw` (the test split in WikiText's original raw layout, for the evaluation step) and
`manifest.json` (sources, revision, sha256 of every file written). This is the only
training-data step that may touch the network.

Document boundaries: WikiText-format text (`.raw` files, hub rows, parquet) starts a new
document at each top-level heading line " = Title = "; plain text (`.txt`, `.xz`) separates
documents by blank lines.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from gdn.checkpoint import sha256_file  # noqa: F401  (re-exported: data and task modules import it here)
from gdn.config import ConfigError
from gdn.data import DataError

HEADING = re.compile(r"^ = [^=].* = $")
SPLITS = ("train", "valid", "test")
WIKITEXT_FILES = {"train": "wiki.train.raw", "valid": "wiki.valid.raw", "test": "wiki.test.raw"}
PARQUET_PREFIX = {"train": "train", "valid": "validation", "test": "test"}


def split_wikitext_pages(raw: str) -> list[str]:
    """WikiText raw text -> documents, cut before each top-level ' = Title = ' line."""
    docs, current = [], []
    for line in raw.splitlines(keepends=True):
        if HEADING.match(line.rstrip("\n")) and any(s.strip() for s in current):
            docs.append("".join(current))
            current = []
        current.append(line)
    if any(s.strip() for s in current):
        docs.append("".join(current))
    return docs


def split_paragraph_documents(text: str) -> list[str]:
    """Plain text -> documents separated by blank lines."""
    return [d.strip("\n") + "\n" for d in re.split(r"\n\s*\n", text) if d.strip()]


def read_text(path: Path) -> str:
    """A corpus file's text; a file that cannot be read raises DataError naming it and the problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            rows = pq.read_table(path, columns=["text"]).column("text").to_pylist()
        except Exception as e:  # pyarrow raises several kinds for a damaged or foreign file
            raise DataError(f"{path}: not a readable parquet file with a 'text' column ({e})") from e
        return join_hub_rows(rows)
    if path.suffix == ".xz":
        try:
            with lzma.open(path, "rb") as f:
                data = f.read()
        except (lzma.LZMAError, EOFError) as e:
            raise DataError(f"{path}: broken xz archive ({e}); replace the file (check it with `xz -t`)") from e
        where = "of the decompressed text"
    else:
        data = path.read_bytes()
        where = "of the file"
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start : e.start + 4].hex(" ")
        raise DataError(f"{path}: not valid UTF-8 at byte offset {e.start} {where} (bytes {bad}: {e.reason}); "
                        "convert it to UTF-8") from e


def join_hub_rows(rows: list[str]) -> str:
    """The raw file from WikiText's hub rows: each row is a line, except that the raw file's
    blank lines (" \n") are stored as empty rows, which must be put back for the byte layout."""
    return "".join(r if r else " \n" for r in rows)


def is_wikitext_layout(path: Path) -> bool:
    return path.suffix in (".raw", ".parquet")


def documents_from_files(paths: list[Path]) -> tuple[list[str], str]:
    docs, raw_parts = [], []
    for p in paths:
        text = read_text(p)
        raw_parts.append(text)
        docs.extend(split_wikitext_pages(text) if is_wikitext_layout(p) else split_paragraph_documents(text))
    return docs, "".join(raw_parts)


def local_split_files(local: dict, split: str) -> list[Path]:
    if local.get(split):
        return [Path(p) for p in local[split]]
    if not local.get("dir"):
        return []
    d = Path(local["dir"])
    raw = d / WIKITEXT_FILES[split]
    if raw.exists():
        return [raw]
    return sorted(d.glob(f"{PARQUET_PREFIX[split]}-*.parquet"))


def hub_reachable(timeout: float = 5.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


OFFLINE_HINT = (
    "run with the offline overlay (snakemake --cores all --configfile config/local-data.yaml, after copying "
    "the files it names under .data/; README, Offline data), or "
    "set data.source: local and data.local.dir (a directory with wiki.train.raw/wiki.valid.raw/wiki.test.raw "
    "or train-*.parquet/validation-*.parquet/test-*.parquet), or data.local.train/valid/test file lists"
)


def hub_splits(hub: dict) -> dict[str, str]:
    """Raw text per split from the hub: rows joined as they are (that is the raw file layout)."""
    if not hub_reachable():
        raise ConfigError(
            f"config key 'data.source' is 'hub' but the Hugging Face hub is not reachable: {OFFLINE_HINT}")
    import datasets

    try:
        ds = datasets.load_dataset(hub["path"], hub["name"], revision=hub["revision"])
    except Exception as e:  # the datasets library raises many kinds; all mean the same to the user
        raise ConfigError(f"config key 'data.hub': loading {hub['path']}/{hub['name']}@{hub['revision']} failed ({e}); "
                          f"{OFFLINE_HINT}") from e
    return {"train": join_hub_rows(ds["train"]["text"]), "valid": join_hub_rows(ds["validation"]["text"]),
            "test": join_hub_rows(ds["test"]["text"])}


def truncate_documents(docs: list[str], max_chars: int | None) -> list[str]:
    if max_chars is None:
        return docs
    out, total = [], 0
    for d in docs:
        if total >= max_chars:
            break
        out.append(d)
        total += len(d)
    return out


def hold_out(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split by a hash of each document (stable under truncation and reordering)."""
    keep, held = [], []
    for d in docs:
        bucket = int.from_bytes(hashlib.sha256(d.encode()).digest()[:4], "little") / 2**32
        (held if bucket < fraction else keep).append(d)
    return keep, held


def prepare(data: dict, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    sources: dict[str, object] = {"source": data["source"]}
    if data["source"] == "hub":
        raw = hub_splits(data["hub"])
        docs = {s: split_wikitext_pages(raw[s]) for s in SPLITS}
        test_raw = raw["test"]
        sources["hub"] = data["hub"]
    else:
        local = data.get("local") or {}
        docs, test_raw = {}, ""
        for split in SPLITS:
            files = local_split_files(local, split)
            if split == "train" and not files:
                raise ConfigError(f"config key 'data.local': no training files found; {OFFLINE_HINT}")
            if split == "test" and not files:
                raise ConfigError("config key 'data.local.test': no test split found (WikiText's wiki.test.raw "
                                  "is needed for the evaluation)")
            docs[split], raw_text = documents_from_files(files)
            if split == "test":
                test_raw = raw_text
            sources[split] = [{"path": str(p), "sha256": sha256_file(p)} for p in files]
    for split in ("train", "test"):
        if not docs[split]:
            raise DataError(f"the {split} split is empty: {_named_files(sources, split)} hold no text "
                            "(empty, or blank lines only)")
    docs["train"] = truncate_documents(docs["train"], data.get("max_train_chars"))
    if not docs["valid"]:
        fraction = data.get("valid_fraction", 0.0)
        if fraction <= 0:
            raise ConfigError("config key 'data.valid_fraction': there is no validation split, so set a "
                              "positive fraction of training documents to hold out")
        n_train = len(docs["train"])
        docs["train"], docs["valid"] = hold_out(docs["train"], fraction)
        if not docs["valid"] or not docs["train"]:
            empty = "validation" if not docs["valid"] else "training"
            raise DataError(f"the {empty} split is empty: holding out data.valid_fraction={fraction:g} of the "
                            f"{n_train} training documents in {_named_files(sources, 'train')} left none for it; "
                            "use more text (or a validation split: data.local.valid)")
        sources["valid"] = f"held out {fraction:.3g} of training documents (by document hash)"
    files = {}
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for d in docs[split]:
                f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        files[path.name] = {"sha256": sha256_file(path), "documents": len(docs[split]),
                            "chars": sum(len(d) for d in docs[split])}
    (out_dir / "test.raw").write_text(test_raw, encoding="utf-8")
    files["test.raw"] = {"sha256": sha256_file(out_dir / "test.raw"), "chars": len(test_raw)}
    manifest = {"sources": sources, "files": files, "max_train_chars": data.get("max_train_chars")}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def _named_files(sources: dict, split: str) -> str:
    files = sources.get(split)
    if isinstance(files, list) and files:
        return ", ".join(f["path"] for f in files)
    return f"the hub's {split} split"


def read_documents(jsonl_path: str | Path):
    """The documents of a prepared split (`{"text": ...}` per line); a bad line raises DataError."""
    with open(jsonl_path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                yield json.loads(line)["text"]
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{jsonl_path}, line {number}: not a {{\"text\": ...}} JSON line ({e}); "
                                "rerun the prepare step that writes it") from e


def add_arguments(parser) -> None:
    parser.add_argument("--config-json", required=True, help='JSON object with the tier config\'s "data" section')
    parser.add_argument("--out", required=True, type=Path, help="output directory (resources/<tier>/text)")


def run(args) -> int:
    data = json.loads(args.config_json)["data"]
    manifest = prepare(data, args.out)
    for name, info in manifest["files"].items():
        print(f"{args.out / name}: {info}")
    return 0
