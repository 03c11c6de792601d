"""`python -m gdn <command>`: the entry point every Snakemake rule calls.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args)`;
modules are imported only when their command runs, so `--help` stays fast.
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
    "prepare-tasks": ("gdn.evaluate.prepare_tasks", "fetch or copy lm-eval task data into resources/lmeval"),
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
    return int(module.run(args) or 0)
