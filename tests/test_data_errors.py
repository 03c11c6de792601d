"""Bad corpora and token files: each error names the file and the problem, and the command line
prints it as one line with a non-zero exit status (no traceback)."""

import json
import lzma
import os
import subprocess
import sys

import numpy as np
import pytest

from gdn.data import DataError
from gdn.data.prepare import prepare
from gdn.data.tokens import load_tokens
from tests.synthetic import REPO, plain_corpus, wikitext_raw


def _local(tmp_path, train, valid=(), fraction=0.1):
    test = wikitext_raw(tmp_path / "wiki.test.raw", 3)
    return {"source": "local", "local": {"dir": None, "train": [str(p) for p in train],
                                         "valid": [str(p) for p in valid], "test": [str(test)]},
            "max_train_chars": None, "valid_fraction": fraction}


@pytest.mark.parametrize("content", [b"", b"\n\n  \n\n"])
def test_empty_corpus_is_named(tmp_path, content):
    corpus = tmp_path / "empty.txt"
    corpus.write_bytes(content)
    with pytest.raises(DataError, match="train split is empty") as err:
        prepare(_local(tmp_path, [corpus]), tmp_path / "out")
    assert str(corpus) in str(err.value)


def test_corpus_too_small_for_the_validation_share(tmp_path):
    corpus = tmp_path / "one.txt"
    corpus.write_text("A single short document .\n")
    with pytest.raises(DataError, match="valid_fraction") as err:
        prepare(_local(tmp_path, [corpus]), tmp_path / "out")
    assert str(corpus) in str(err.value) and "empty" in str(err.value)


def test_invalid_utf8_gives_the_byte_offset(tmp_path):
    corpus = plain_corpus(tmp_path / "bad.txt", 20)
    good = corpus.read_bytes()
    corpus.write_bytes(good[:1000] + b"\xff\xfe" + good[1000:])
    with pytest.raises(DataError, match="byte offset 1000") as err:
        prepare(_local(tmp_path, [corpus]), tmp_path / "out")
    assert str(corpus) in str(err.value) and "UTF-8" in str(err.value)


def test_invalid_utf8_inside_xz_gives_the_offset_in_the_decompressed_text(tmp_path):
    text = plain_corpus(tmp_path / "plain.txt", 20).read_bytes()
    corpus = tmp_path / "bad.txt.xz"
    corpus.write_bytes(lzma.compress(text[:500] + b"\xc3" + text[500:]))
    with pytest.raises(DataError, match="byte offset 500 of the decompressed text") as err:
        prepare(_local(tmp_path, [corpus]), tmp_path / "out")
    assert str(corpus) in str(err.value)


def test_truncated_xz_is_named(tmp_path):
    text = plain_corpus(tmp_path / "plain.txt", 50).read_bytes()
    corpus = tmp_path / "cut.txt.xz"
    corpus.write_bytes(lzma.compress(text)[:-200])
    with pytest.raises(DataError, match="broken xz archive") as err:
        prepare(_local(tmp_path, [corpus]), tmp_path / "out")
    assert str(corpus) in str(err.value)


def _token_file(path, n, dtype="uint16"):
    np.arange(n, dtype=dtype).tofile(path)
    path.with_name(path.stem + ".meta.json").write_text(json.dumps({"dtype": dtype, "n_tokens": n,
                                                                    "source": "x.jsonl"}))
    return path


def test_too_few_tokens_for_seq_len_names_the_file(tmp_path):
    path = _token_file(tmp_path / "train.bin", 100)
    assert len(load_tokens(path, 100)) == 100
    with pytest.raises(DataError, match="holds 100 tokens, fewer than the 130 needed") as err:
        load_tokens(path, 130, "train.seq_len + 2 = 130")
    assert str(path) in str(err.value)


def test_empty_and_damaged_token_files_are_named(tmp_path):
    empty = _token_file(tmp_path / "valid.bin", 0)
    with pytest.raises(DataError, match="holds 0 tokens"):
        load_tokens(empty)
    cut = _token_file(tmp_path / "train.bin", 50)
    cut.write_bytes(cut.read_bytes()[:-3])
    with pytest.raises(DataError, match="damaged"):
        load_tokens(cut)


def test_cli_prints_one_line_and_fails(tmp_path):
    """A data error and a config error, each through `python -m gdn`: one line, exit 1, no traceback."""
    corpus = tmp_path / "empty.txt"
    corpus.write_text("")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cfg = json.dumps({"data": _local(tmp_path, [corpus])})
    done = subprocess.run([sys.executable, "-m", "gdn", "prepare", "--config-json", cfg, "--out", str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert str(corpus) in done.stderr and "empty" in done.stderr

    hub = json.dumps({"data": {"source": "hub", "hub": {"path": "Salesforce/wikitext", "name": "wikitext-103-raw-v1",
                                                          "revision": "b08601e04326c79dfdd32d625aee71d232d685c3"}}})
    done = subprocess.run([sys.executable, "-m", "gdn", "prepare", "--config-json", hub, "--out", str(tmp_path / "h")],
                          cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "config/local-data.yaml" in done.stderr and "data.source" in done.stderr
