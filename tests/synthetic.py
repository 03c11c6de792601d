"""Small generated corpora and configs for tests (no network, no shared data)."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

WORDS = ("the of and to in is was for on that with as by at from his her an it which were are this be had "
         "river city king army year music song band album team game season film star light water church "
         "school station road war battle ship island bridge house book line park north south east west").split()


def sentence(rng: random.Random) -> str:
    n = rng.randint(5, 14)
    words = [rng.choice(WORDS[:12]) if rng.random() < 0.4 else rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + " ."


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(2, 5)))


def plain_corpus(path: Path, n_docs: int, seed: int = 0) -> Path:
    """Documents separated by blank lines, one paragraph per line (the stand-in corpus layout)."""
    rng = random.Random(seed)
    docs = ["\n".join(paragraph(rng) for _ in range(rng.randint(2, 4))) for _ in range(n_docs)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def wikitext_raw(path: Path, n_pages: int, seed: int = 1) -> Path:
    """WikiText raw layout: ' = Title = ' headings, ' = = Section = = ', blank lines ' '."""
    rng = random.Random(seed)
    lines = []
    for p in range(n_pages):
        lines += [" \n", f" = {rng.choice(WORDS).capitalize()} {p} = \n", " \n"]
        for s in range(rng.randint(1, 3)):
            lines += [f" {paragraph(rng)} \n", " \n"]
            if s == 0:
                lines += [f" = = {rng.choice(WORDS).capitalize()} = = \n", " \n"]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def tiny_config(tmp: Path, **overrides) -> dict:
    """The quick tier shrunk to seconds: local generated data, 2 widths, 2 LRs."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    data_dir = tmp / "data"
    data_dir.mkdir(exist_ok=True)
    plain_corpus(data_dir / "train.txt", 120)
    wikitext_raw(data_dir / "wiki.test.raw", 6)
    config["tier"] = "tiny"
    config["device"] = "cpu"
    config["data"] = {"source": "local", "local": {"dir": None, "train": [str(data_dir / "train.txt")], "valid": [],
                                                   "test": [str(data_dir / "wiki.test.raw")]},
                      "max_train_chars": None, "valid_fraction": 0.1}
    config["tokenizer"] = {"kind": "trained_bpe", "vocab_size": 300, "train_chars": 100000}
    config["model"].update(n_layers=1, base_width=16, n_heads=2)
    config["variants"] = ["transformer_mup", "gdn_mup"]
    config["grid"] = {"widths": [16, 32], "log2_lrs": [-8, -6], "seeds": [0]}
    config["train"].update(seq_len=32, batch_size=4, steps=12, warmup_steps=2, eval_every=6, eval_batches=2,
                           log_every=2, checkpoint_every=4)
    for key, value in overrides.items():
        config[key] = value
    return copy.deepcopy(config)


def write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
