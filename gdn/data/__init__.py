"""Corpus preparation, tokenizers and packed token files."""


class DataError(ValueError):
    """An input data file is unusable; the message names the file and what is wrong with it."""
