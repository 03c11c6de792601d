"""Corpus preparation, tokenizers and packed token files."""
