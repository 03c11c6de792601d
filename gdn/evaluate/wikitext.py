"""WikiText-103 test perplexities from the raw test file (`wiki.test.raw`).

Two views of the same text:

* token perplexity: the whole file, in its original layout, as one token stream under the
  model's own tokenizer, scored in disjoint windows of the context length (or sliding
  windows with a stride). It depends on the tokenizer, so it compares runs that share one.
* word perplexity, byte perplexity and bits per byte: computed exactly as lm-eval's
  `wikitext` task does (pages split at top-level " = Title = " headings, lm-eval's
  wikitext detokenizer, rolling log-likelihood per page in disjoint windows, normalized
  by the words and UTF-8 bytes of the original page). These do not depend on the
  tokenizer, so they compare with published numbers.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

from gdn.evaluate.scoring import CausalScorer

# A top-level heading line: " = Title = " (section headings are " = = Title = = ").
_PAGE_HEADING = re.compile(r" = [^=].* = ")


def read_test_text(path: str | Path) -> str:
    """The raw test file's text: wiki.test.raw itself, or the hub's test parquet
    (Salesforce/wikitext, *-raw-v1), whose rows are the file's lines."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: pass the raw WikiText test file (wiki.test.raw, shared by "
            "WikiText-2 and -103, or the hub's raw test-*.parquet) with --wikitext-test"
        )
    if path.suffix == ".parquet":
        import pandas as pd

        rows = pd.read_parquet(path, columns=["text"])["text"].tolist()
        # A blank line of the file (" \n") is an empty row on the hub; restore the layout.
        return "".join(row if row else " \n" for row in rows)
    text = path.read_text(encoding="utf-8")
    if "\r\n" in text:
        raise ValueError(f"{path} has CRLF line endings; the raw test file uses LF (convert it with dos2unix)")
    if "\n \n" not in text:
        # Joining the hub's rows as they are drops the file's blank lines (empty rows);
        # bytes and log-likelihoods would then differ from lm-eval's wikitext figures.
        raise ValueError(
            f"{path} has no blank ' ' lines, so it is not in the raw file's original layout (hub rows joined "
            "without their blank lines?); write each empty hub row as ' \\n', or use wiki.test.raw itself"
        )
    return text


def split_pages(raw_text: str) -> list[str]:
    """Pages as in EleutherAI/wikitext_document_level: each starts at a top-level heading
    line and runs up to the next one (lines joined with "\\n"); text before the first
    heading is dropped. On wiki.test.raw this gives the 62 pages lm-eval scores."""
    lines = raw_text.split("\n")
    starts = [i for i, line in enumerate(lines) if _PAGE_HEADING.fullmatch(line)]
    if not starts:
        raise ValueError("no top-level ' = Title = ' heading lines found: is this the raw WikiText file?")
    ends = starts[1:] + [len(lines)]
    return ["\n".join(lines[a:b]) for a, b in zip(starts, ends, strict=True)]


def document_metrics(scorer: CausalScorer, pages: list[str]) -> dict:
    """lm-eval `wikitext` metrics: loglikelihood_rolling of the detokenized page, with word
    and byte counts taken from the page before detokenization (as lm-eval counts them)."""
    tokens = [scorer.encode(wikitext_detokenizer({"page": page})) for page in pages]
    loglikelihoods = scorer.rolling_loglikelihoods(tokens, stride=None)
    total_ll = sum(loglikelihoods)
    words = sum(len(re.split(r"\s+", page)) for page in pages)
    n_bytes = sum(len(page.encode("utf-8")) for page in pages)
    return {
        "word_perplexity": math.exp(-total_ll / words),
        "byte_perplexity": math.exp(-total_ll / n_bytes),
        "bits_per_byte": -total_ll / (n_bytes * math.log(2)),
        "documents": len(pages),
        "words": words,
        "bytes": n_bytes,
    }


def token_metrics(scorer: CausalScorer, raw_text: str, stride: int | None) -> dict:
    tokens = scorer.encode(raw_text)
    (total_ll,) = scorer.rolling_loglikelihoods([tokens], stride=stride)
    return {"token_perplexity": math.exp(-total_ll / len(tokens)), "tokens": len(tokens)}


def first_pages(raw_text: str, max_pages: int | None) -> str:
    """The raw text up to the heading of page `max_pages + 1` (None: all of it): a prefix of the
    file, so its first pages split and score exactly as they do in the whole file."""
    if max_pages is None:
        return raw_text
    offset, pages = 0, 0
    for line in raw_text.split("\n"):
        if _PAGE_HEADING.fullmatch(line):
            pages += 1
            if pages > max_pages:
                return raw_text[: offset - 1]  # without the newline before it, as split_pages sees the page
        offset += len(line) + 1
    return raw_text


def evaluate_wikitext(scorer: CausalScorer, test_path: str | Path, stride: int | None,
                      max_pages: int | None = None) -> list[dict]:
    """Result rows (task "wikitext103") for the evaluation JSON. `max_pages` scores only the
    first pages of the test file (a smoke test's budget; the rows' `documents` count says how many)."""
    raw_text = first_pages(read_test_text(test_path), max_pages)
    values = {**token_metrics(scorer, raw_text, stride), **document_metrics(scorer, split_pages(raw_text))}
    return [
        {"task": "wikitext103", "metric": name, "value": float(value), "stderr": None} for name, value in values.items()
    ]
