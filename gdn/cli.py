"""`python -m gdn <command>`: the entry point every Snakemake rule calls.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args)`;
modules are imported only when their command runs, so `--help` stays fast. A configuration
or input-data error ends the command with one line naming the key or file and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "validate": ("gdn.config", "check a tier config against the schema and the semantic rules"),
    "prepare": ("gdn.data.prepare", "fetch or copy the corpus and tokenizer files into resources/"),
    "tokenizer": ("gdn.data.tokenizer", "train or load the tokenizer and save it"),
    "tokenize": ("gdn.data.pack", "tokenize a split into a packed token memmap + meta.json"),
    "train": ("gdn.train", "train one cell (variant x width x lr x seed)"),
    "prepare-tasks": ("gdn.evaluate.prepare_tasks", "fetch or copy lm-eval task data into resources/<tier>/lmeval"),
    "evaluate": ("gdn.evaluate.run", "evaluate one trained model (WikiText-103 ppl, lm-eval tasks)"),
    "coordcheck": ("gdn.coordcheck", "activation sizes vs width over the first steps, for one variant"),
    "bench": ("gdn.bench.run", "overhead, throughput and inference benchmarks"),
    "ingest": ("gdn.db", "rebuild the DuckDB database from the per-job files"),
    "report": ("gdn.report.render", "render the HTML report from the DuckDB database"),
    "plan": ("gdn.plan", "planned cells and estimated GPU-hours of a tier, from measured throughput"),
    "params": ("gdn.build", "print parameter counts of every variant at the tier's widths"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gdn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module_name, help_text = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    cmd_parser = argparse.ArgumentParser(prog=f"python -m gdn {argv[0]}", description=help_text)
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except Exception as e:
        if not _is_input_error(e):
            raise
        # A bad config value or input file is the user's to fix: one line that names it, no traceback.
        print(f"python -m gdn {argv[0]}: error: {e}", file=sys.stderr)
        return 1


def _is_input_error(error: Exception) -> bool:
    """Errors whose message names the bad config key or input file (and says what to do)."""
    from gdn.checkpoint import CheckpointError
    from gdn.config import ConfigError
    from gdn.data import DataError

    return isinstance(error, (ConfigError, DataError, CheckpointError))
