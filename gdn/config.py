"""Tier configuration: loading, validation, and the grid of cells it defines.

Validation happens before any job runs (the Snakefile calls `validate`), in two layers:
the JSON schema (types, ranges, known variants) and semantic rules the schema cannot
express (widths divisible by the head count, local data files that exist, ...). Every
error names the offending key so the user knows what to edit.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(config).__name__}")
    validate(config)
    return config


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate(config: dict, base_dir: str | Path | None = None) -> dict:
    """Raises ConfigError naming the first bad key; returns the config unchanged."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), _key_path(e)))
    if errors:
        e = errors[0]
        raise ConfigError(f"config key '{_key_path(e)}': {e.message}")
    _check_semantics(config, Path(base_dir) if base_dir else Path.cwd())
    return config


def _check_semantics(config: dict, base_dir: Path) -> None:
    model, grid = config["model"], config["grid"]
    mode = model["width_mode"]
    divisor_key = "n_heads" if mode == "head_dim" else "head_dim"
    if divisor_key not in model:
        raise ConfigError(f"config key 'model.{divisor_key}' is required when model.width_mode is {mode!r}")
    divisor = model[divisor_key]
    for width in [model["base_width"], *grid["widths"]]:
        if width % divisor:
            which = "model.base_width" if width == model["base_width"] else "grid.widths"
            raise ConfigError(
                f"config key '{which}': width {width} is not divisible by model.{divisor_key}={divisor} "
                f"(width_mode {mode!r} splits the width into heads)"
            )
    data = config["data"]
    if data["source"] == "hub" and "hub" not in data:
        raise ConfigError("config key 'data.hub' is required when data.source is 'hub'")
    if data["source"] == "local":
        local = data.get("local") or {}
        if not local.get("dir") and not local.get("train"):
            raise ConfigError(
                "config key 'data.local': set data.local.dir or data.local.train when data.source is 'local'")
        for split in ("train", "valid", "test"):
            for f in local.get(split, []):
                if not (base_dir / f).exists():
                    raise ConfigError(f"config key 'data.local.{split}': file {f} does not exist")
        if local.get("dir") and not (base_dir / local["dir"]).is_dir():
            raise ConfigError(f"config key 'data.local.dir': directory {local['dir']} does not exist")
    tok = config["tokenizer"]
    if tok["kind"] == "gpt2":
        files = tok.get("gpt2") or {}
        if bool(files.get("vocab")) != bool(files.get("merges")):
            raise ConfigError("config key 'tokenizer.gpt2': give both vocab and merges files, or neither (hub)")
        for key in ("vocab", "merges"):
            if files.get(key) and not (base_dir / files[key]).exists():
                raise ConfigError(f"config key 'tokenizer.gpt2.{key}': file {files[key]} does not exist")
    train = config["train"]
    if train.get("warmup_steps", 0) >= train["steps"]:
        raise ConfigError("config key 'train.warmup_steps' must be smaller than train.steps")


# ---------------------------------------------------------------- the grid of cells


def lr_key(log2_lr: float) -> str:
    """Path component for a learning rate: 'lr-8', 'lr-7.5', 'lr-11.644'."""
    text = f"{log2_lr:.3f}".rstrip("0").rstrip(".")
    return f"lr{text}"


def grid_log2_lrs(config: dict) -> list[float]:
    grid = config["grid"]
    if "log2_lrs" in grid:
        return [float(x) for x in grid["log2_lrs"]]
    return [math.log2(x) for x in grid["lrs"]]


@dataclass(frozen=True)
class Cell:
    tier: str
    variant: str
    width: int
    log2_lr: float
    seed: int

    @property
    def lr(self) -> float:
        return 2.0**self.log2_lr

    @property
    def run_dir(self) -> str:
        return f"results/runs/{self.tier}/{self.variant}/w{self.width}/{lr_key(self.log2_lr)}/s{self.seed}"

    @property
    def run_id(self) -> str:
        return f"{self.tier}/{self.variant}/w{self.width}/{lr_key(self.log2_lr)}/s{self.seed}"


def cells(config: dict) -> list[Cell]:
    grid = config["grid"]
    return [
        Cell(config["tier"], variant, width, log2_lr, seed)
        for variant in config["variants"]
        for width in grid["widths"]
        for log2_lr in grid_log2_lrs(config)
        for seed in grid["seeds"]
    ]


def cell_from_keys(config: dict, variant: str, width: str | int, lr: str, seed: str | int) -> Cell:
    """The cell a path names; unknown values are an error (a typo must not train a new cell)."""
    for log2_lr in grid_log2_lrs(config):
        if lr_key(log2_lr) == lr:
            cell = Cell(config["tier"], variant, int(width), log2_lr, int(seed))
            if cell not in cells(config):
                raise ConfigError(f"{cell.run_dir} is not in this tier's grid (variants, grid.widths, grid.seeds)")
            return cell
    known = ", ".join(lr_key(x) for x in grid_log2_lrs(config))
    raise ConfigError(f"learning rate '{lr}' is not in grid.log2_lrs/grid.lrs (known: {known})")


def section_json(config: dict, *sections: str, **extra) -> str:
    """The named config sections (plus extras) as compact JSON for a job's command line.

    Jobs get only what they use, so that editing an unrelated key does not rerun them.
    """
    payload = {s: copy.deepcopy(config.get(s)) for s in sections}
    payload.update(extra)
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------- CLI: python -m gdn validate


def add_arguments(parser) -> None:
    parser.add_argument("--configfile", default="config/config.yaml", help="tier config to check")


def run(args) -> int:
    try:
        config = load(args.configfile)
    except ConfigError as e:
        print(f"{args.configfile}: {e}")
        return 1
    print(f"{args.configfile}: valid tier '{config['tier']}' with {len(cells(config))} training cells")
    return 0
