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
    _check_confirm(config, divisor_key, divisor)
    _check_parallel(config)


def _check_parallel(config: dict) -> None:
    """Every rank takes an equal share of each micro-batch, so the processes must divide it."""
    train = config["train"]
    widths = set(config["grid"]["widths"]) | set((config.get("confirm") or {}).get("widths", []))
    for width in sorted(widths):
        settings = parallel_settings(train, width)
        processes = settings["gpus_per_job"] * settings["nodes"]
        if train["batch_size"] % processes:
            raise ConfigError(f"config key 'train.batch_size': {train['batch_size']} sequences per micro-batch do not "
                              f"split over the {processes} processes train.distributed gives width {width}")


def _check_confirm(config: dict, divisor_key: str, divisor: int) -> None:
    confirm = config.get("confirm")
    if not confirm:
        return
    for width in confirm["widths"]:
        if width % divisor:
            raise ConfigError(f"config key 'confirm.widths': width {width} is not divisible by "
                              f"model.{divisor_key}={divisor}")
    unknown = set(confirm.get("variants", [])) - set(config["variants"])
    if unknown:
        raise ConfigError(f"config key 'confirm.variants': {sorted(unknown)} not in the tier's variants")
    base = confirm["base"]
    if base == "transfer":
        proxy = confirm.get("proxy_width")
        if proxy is not None and proxy not in config["grid"]["widths"]:
            raise ConfigError(f"config key 'confirm.proxy_width': {proxy} is not one of grid.widths")
        stray = set(confirm.get("transferred_log2_lr") or {}) - set(confirm_variants(config))
        if stray:
            raise ConfigError(f"config key 'confirm.transferred_log2_lr': {sorted(stray)} are not confirmed variants")
    elif confirm.get("transferred_log2_lr"):
        raise ConfigError("config key 'confirm.transferred_log2_lr' is only read when confirm.base is 'transfer'")


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


def grid_cells(config: dict) -> list[Cell]:
    """The sweep: every variant x grid width x grid learning rate x seed."""
    grid = config["grid"]
    return [
        Cell(config["tier"], variant, width, log2_lr, seed)
        for variant in config["variants"]
        for width in grid["widths"]
        for log2_lr in grid_log2_lrs(config)
        for seed in grid["seeds"]
    ]


# ---------------------------------------------------------------- confirmation cells
#
# A tier may also list confirmation runs at target widths it cannot sweep (`confirm`): each
# confirmed variant trained at 2**offset times a centre learning rate. With `base: transfer`
# the centre is the proxy sweep's optimum, which only exists once the sweep has run, so such
# a tier runs in two stages: (1) the sweep; (2) `python -m gdn plan --transferred-lrs` reads
# its results, the optima go into `confirm.transferred_log2_lr`, and the confirmation cells
# join the DAG. Keeping the centre in the config (not discovered inside the DAG) keeps the
# DAG static, the expensive runs deliberate, and every path in the workflow known at parse time.


def confirm_variants(config: dict) -> list[str]:
    confirm = config.get("confirm") or {}
    return list(confirm.get("variants") or config["variants"])


def confirm_center(config: dict, variant: str) -> float | None:
    """log2 of the centre learning rate of `variant`'s confirmation runs; None while not yet known."""
    base = config["confirm"]["base"]
    if base != "transfer":
        return float(base)
    value = (config["confirm"].get("transferred_log2_lr") or {}).get(variant)
    return None if value is None else float(value)


def confirm_plan(config: dict) -> list[dict]:
    """Every planned confirmation run: {variant, width, log2_lr_offset, seed, log2_lr (None: pending)}."""
    confirm = config.get("confirm")
    if not confirm:
        return []
    seeds = confirm.get("seeds") or config["grid"]["seeds"]
    rows = []
    for variant in confirm_variants(config):
        center = confirm_center(config, variant)
        for width in confirm["widths"]:
            for offset in confirm["log2_lr_offsets"]:
                for seed in seeds:
                    rows.append({"variant": variant, "width": width, "log2_lr_offset": float(offset), "seed": seed,
                                 "log2_lr": None if center is None else round(center + offset, 3)})
    return rows


def confirm_cells(config: dict) -> list[Cell]:
    """The confirmation runs whose learning rate is known (pending ones are left out)."""
    return [Cell(config["tier"], row["variant"], row["width"], row["log2_lr"], row["seed"])
            for row in confirm_plan(config) if row["log2_lr"] is not None]


def cells(config: dict) -> list[Cell]:
    """Every training cell of the tier: the sweep, then the confirmation runs (each cell once)."""
    return list(dict.fromkeys(grid_cells(config) + confirm_cells(config)))


def cell_from_keys(config: dict, variant: str, width: str | int, lr: str, seed: str | int) -> Cell:
    """The cell a path names; unknown values are an error (a typo must not train a new cell)."""
    planned = cells(config)
    for log2_lr in dict.fromkeys(c.log2_lr for c in planned):
        if lr_key(log2_lr) == lr:
            cell = Cell(config["tier"], variant, int(width), log2_lr, int(seed))
            if cell not in planned:
                raise ConfigError(f"{cell.run_dir} is not in this tier's grid "
                                  "(variants, grid.widths, grid.seeds, confirm)")
            return cell
    known = ", ".join(dict.fromkeys(lr_key(c.log2_lr) for c in planned))
    raise ConfigError(f"learning rate '{lr}' is not in grid.log2_lrs/grid.lrs or the confirmation runs "
                      f"(known: {known})")


def parallel_settings(train: dict, width: int) -> dict:
    """train.distributed as it applies to a cell of `width`: {gpus_per_job, nodes, strategy,
    activation_checkpointing}. One process and no recomputation unless the tier asks."""
    section = train.get("distributed") or {}
    settings = {"gpus_per_job": 1, "nodes": 1, "strategy": "ddp", "activation_checkpointing": False}
    settings.update({k: v for k, v in section.items() if k != "from_width"})
    for override in sorted(section.get("from_width") or [], key=lambda o: o["width"]):
        if width >= override["width"]:
            settings.update({k: v for k, v in override.items() if k != "width"})
    return settings


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
