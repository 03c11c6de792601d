"""Tokenizers: GPT-2 BPE (local vocab/merges or the hub at a pinned revision), or a
byte-level BPE trained here on the training split (small vocabularies keep the quick
tier's embedding and readout cheap). Either way the result is one `tokenizer.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from gdn.config import ConfigError

EOT = "<|endoftext|>"


def _train_bpe(train_jsonl: Path, vocab_size: int, train_chars: int):
    from tokenizers import ByteLevelBPETokenizer

    from gdn.data.prepare import read_documents

    def limited_docs():
        total = 0
        for doc in read_documents(train_jsonl):
            if total >= train_chars:
                return
            total += len(doc)
            yield doc

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(limited_docs(), vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
                            show_progress=False)
    return tok


def _gpt2(files: dict):
    from tokenizers import ByteLevelBPETokenizer

    vocab, merges = files.get("vocab"), files.get("merges")
    if not vocab:
        from huggingface_hub import hf_hub_download

        from gdn.data.prepare import hub_reachable

        if not hub_reachable():
            raise ConfigError("config key 'tokenizer.gpt2': the hub is not reachable; set tokenizer.gpt2.vocab and "
                              "tokenizer.gpt2.merges to local GPT-2 vocab.json / merges.txt files")
        repo, rev = files.get("hub_repo", "openai-community/gpt2"), files.get("hub_revision")
        vocab = hf_hub_download(repo, "vocab.json", revision=rev)
        merges = hf_hub_download(repo, "merges.txt", revision=rev)
    tok = ByteLevelBPETokenizer(str(vocab), str(merges))
    tok.add_special_tokens([EOT])
    return tok


def build(tokenizer_cfg: dict, train_jsonl: Path):
    if tokenizer_cfg["kind"] == "trained_bpe":
        return _train_bpe(train_jsonl, tokenizer_cfg.get("vocab_size", 4096), tokenizer_cfg.get("train_chars", 10**7))
    return _gpt2(tokenizer_cfg.get("gpt2") or {})


def load(path: str | Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def as_transformers(tokenizer_json: str | Path):
    """The same tokenizer wrapped for transformers / lm-eval (saved beside each model)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), eos_token=EOT, bos_token=EOT,
                                   unk_token=EOT, pad_token=EOT)


def add_arguments(parser) -> None:
    parser.add_argument("--config-json", required=True, help='JSON object with the "tokenizer" section')
    parser.add_argument("--train", required=True, type=Path, help="train.jsonl from the prepare step")
    parser.add_argument("--out", required=True, type=Path, help="path of tokenizer.json to write")


def run(args) -> int:
    cfg = json.loads(args.config_json)["tokenizer"]
    tok = build(cfg, args.train)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out))
    print(f"{args.out}: vocab {tok.get_vocab_size()}, eot id {tok.token_to_id(EOT)}")
    return 0
