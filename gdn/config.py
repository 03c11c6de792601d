"""Tier configuration: loading, validation, defaults, and the grid of cells it defines.

Validation happens before any job runs (the Snakefile calls `validate`), in two layers:
the JSON schema (types, ranges, known variants and keys) and semantic rules the schema cannot
express (widths divisible by the head count, finite learning rates, files that exist, ...).
Every error names the offending key so the user knows what to edit.

The schema is the one home of the defaults (each optional key's `default`); `defaults()` and
`settings()` read them from there.

Config files combine as snakemake combines them: the workflow's `config/config.yaml` first,
then each `--configfile` merged over it in order, mappings key by key and everything else
(lists, numbers, null) replaced whole. So an overlay that sets `grid.lrs` must also set
`grid.log2_lrs: null`, or the default file's `log2_lrs` stays in.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
WORKFLOW_CONFIG = Path("config") / "config.yaml"  # the Snakefile's `configfile:`


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


@cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def load_schema() -> dict:
    return copy.deepcopy(_schema())


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = {**schema["definitions"][name], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _defaults_of(schema: dict, node: dict) -> dict:
    out = {}
    for key, sub in (node.get("properties") or {}).items():
        sub = _resolve(schema, sub)
        if "default" in sub:
            value = copy.deepcopy(sub["default"])
            if isinstance(value, dict) and sub.get("properties"):
                value = merge(_defaults_of(schema, sub), value)
            out[key] = value
    return out  # a mapping without a default of its own stays absent (e.g. a bench suite not asked for)


def defaults(section: str | None = None) -> dict:
    """The schema's defaults: of one top-level section, or of the whole config (nested dicts)."""
    schema = _schema()
    if section is None:
        return _defaults_of(schema, schema)
    node = _resolve(schema, schema["properties"][section])
    return _defaults_of(schema, node)


def settings(config: dict, section: str) -> dict:
    """A config section over its defaults (mappings merged key by key; an explicit null is kept)."""
    return merge(defaults(section), config.get(section) or {})


def merge(base: dict, overlay: dict) -> dict:
    """`overlay` merged over a copy of `base` the way snakemake merges config files."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(config).__name__}")
    return config


def combine(*paths: str | Path, workflow_config: str | Path | None = WORKFLOW_CONFIG) -> dict:
    """The config snakemake sees for `--configfile PATHS...`: the workflow's config file (when
    present; None leaves it out, as --replace-workflow-config does) with each path merged over it."""
    config: dict = {}
    if workflow_config is not None and Path(workflow_config).exists():
        config = read_file(workflow_config)
    for path in paths:
        config = merge(config, read_file(path))
    return config


def load(*paths: str | Path, workflow_config: str | Path | None = WORKFLOW_CONFIG,
         base_dir: str | Path | None = None) -> dict:
    """Reads, combines (as snakemake does) and validates config files."""
    return validate(combine(*paths, workflow_config=workflow_config), base_dir=base_dir)


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate(config: dict, base_dir: str | Path | None = None) -> dict:
    """Raises ConfigError naming the first bad key; returns the config unchanged."""
    import jsonschema

    _check_finite(config)
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), _key_path(e)))
    if errors:
        e = errors[0]
        raise ConfigError(f"config key '{_key_path(e)}': {e.message}")
    _check_semantics(config, Path(base_dir) if base_dir else Path.cwd())
    return config


def _check_finite(value, where: str = "") -> None:
    """NaN and infinities pass a JSON schema's ranges (YAML writes them .nan, .inf); no key takes one."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{where or '<top level>'}': {value} is not a finite number")
    if isinstance(value, dict):
        for key, sub in value.items():
            _check_finite(sub, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            _check_finite(sub, f"{where}.{i}" if where else str(i))


def _check_semantics(config: dict, base_dir: Path) -> None:
    model, grid = config["model"], config["grid"]
    _check_lr_grid(grid)
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
    _check_value_heads(config)
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
    _check_evaluation_data(config, base_dir)


def _check_lr_grid(grid: dict) -> None:
    given = [key for key in ("log2_lrs", "lrs") if grid.get(key) is not None]
    if len(given) != 1:
        what = "both are set" if given else "neither is set"
        raise ConfigError(
            f"config key 'grid': give exactly one of grid.log2_lrs and grid.lrs ({what}); an overlay that sets "
            "grid.lrs must also set grid.log2_lrs: null, because snakemake merges it over config/config.yaml")


def _check_value_heads(config: dict) -> None:
    """GDN value heads are gdn_expand_v x the key head dim wide (rounded down): at least 1 at every
    width a model is built at (the sweep, the confirmation runs, the base width and twice it,
    which the μP bookkeeping builds)."""
    if not any(v.startswith("gdn") for v in config["variants"]):
        return
    model = config["model"]
    expand = model.get("gdn_expand_v", defaults("model")["gdn_expand_v"])
    widths = {model["base_width"], 2 * model["base_width"], *config["grid"]["widths"],
              *((config.get("confirm") or {}).get("widths") or [])}
    for width in sorted(widths):
        head_dim = width // model["n_heads"] if model["width_mode"] == "head_dim" else model["head_dim"]
        if int(expand * head_dim) < 1:
            raise ConfigError(
                f"config key 'model.gdn_expand_v': {expand} x head dim {head_dim} (width {width}) leaves GDN value "
                "heads of width 0; raise gdn_expand_v or the head dim")


def _check_evaluation_data(config: dict, base_dir: Path) -> None:
    """The lm-eval task files a tier will copy (lmeval_data.local_dir), checked before any job runs."""
    lmeval = config.get("lmeval_data") or {}
    evaluate = settings(config, "evaluate")
    tasks = evaluate["lm_eval"]["tasks"] if evaluated_cells(config) else []
    if lmeval.get("manifest") and not (base_dir / lmeval["manifest"]).is_file():
        raise ConfigError(f"config key 'lmeval_data.manifest': file {lmeval['manifest']} does not exist")
    if not lmeval.get("local_dir") or not tasks:
        return
    local = base_dir / lmeval["local_dir"]
    if not local.is_dir():
        raise ConfigError(f"config key 'lmeval_data.local_dir': directory {lmeval['local_dir']} does not exist "
                          "(it must hold the lm-eval task files named in docs/evaluation.md)")
    from gdn.evaluate.tasks import TaskDataError, task_data

    for task in tasks:
        try:
            spec = task_data(task)
        except TaskDataError as e:
            raise ConfigError(f"config key 'evaluate.lm_eval.tasks': {e}") from e
        if spec.hub is not None and not (local / spec.file).is_file():
            raise ConfigError(f"config key 'lmeval_data.local_dir': {lmeval['local_dir']} has no {spec.file}, "
                              f"the data of lm-eval task {task} (evaluate.lm_eval.tasks); see docs/evaluation.md")


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


def grid_log2_lrs(config: dict, variant: str | None = None) -> list[float]:
    """The sweep's log2 learning rates; `grid.family_log2_lrs` gives a model family its own grid."""
    grid = config["grid"]
    if variant is not None:
        from gdn.variants import VARIANTS

        family_grid = (grid.get("family_log2_lrs") or {}).get(VARIANTS[variant].family)
        if family_grid:
            return [float(x) for x in family_grid]
    if grid.get("log2_lrs") is not None:
        return [float(x) for x in grid["log2_lrs"]]
    return [math.log2(x) for x in grid["lrs"]]


def grid_seeds(config: dict, width: int) -> list[int]:
    """Seeds of the sweep at `width`: `grid.base_width_seeds` at the μP base width (the transfer
    estimate's anchor, so it gets more replicates), `grid.seeds` elsewhere."""
    grid = config["grid"]
    if grid.get("base_width_seeds") and width == (config.get("model") or {}).get("base_width"):
        return list(grid["base_width_seeds"])
    return list(grid["seeds"])


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


EVALUATE_SELECTION = ("widths", "seeds", "log2_lrs")  # which cells the workflow evaluates, not how


def evaluated_cells(config: dict) -> list[Cell]:
    """The cells the workflow evaluates (evaluate.widths, evaluate.seeds and evaluate.log2_lrs)."""
    evaluate = settings(config, "evaluate")

    def chosen(key: str, value) -> bool:
        allowed = evaluate[key]
        if allowed == "all":
            return True
        return any(math.isclose(value, a) for a in allowed) if key == "log2_lrs" else value in allowed

    return [c for c in cells(config)
            if chosen("widths", c.width) and chosen("seeds", c.seed) and chosen("log2_lrs", c.log2_lr)]


def grid_cells(config: dict) -> list[Cell]:
    """The sweep: every variant x grid width x its family's learning rates x that width's seeds."""
    grid = config["grid"]
    return [
        Cell(config["tier"], variant, width, log2_lr, seed)
        for variant in config["variants"]
        for width in grid["widths"]
        for log2_lr in grid_log2_lrs(config, variant)
        for seed in grid_seeds(config, width)
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


def _not_overlaid(config: dict, overlays: list[dict], prefix: str = "") -> list[str]:
    """Shallowest key paths of `config` that no overlay sets (or sets anything under)."""
    out = []
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        below = [o[key] for o in overlays if isinstance(o, dict) and key in o]
        if not below:
            out.append(path)
        elif isinstance(value, dict) and all(isinstance(b, dict) for b in below):
            out += _not_overlaid(value, below, path)
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--configfile", nargs="+", default=[], metavar="FILE",
                        help="config files as snakemake takes them: merged in order over config/config.yaml "
                             "(e.g. --configfile config/study.yaml config/local-data.yaml)")
    parser.add_argument("--replace-workflow-config", action="store_true",
                        help="leave config/config.yaml out, as snakemake's option of the same name does")


def run(args) -> int:
    workflow_config = None if args.replace_workflow_config or not WORKFLOW_CONFIG.exists() else WORKFLOW_CONFIG
    files = ([str(workflow_config)] if workflow_config else []) + [str(f) for f in args.configfile]
    if not files:
        raise ConfigError(f"no config file: {WORKFLOW_CONFIG} is not here; give --configfile")
    names = " + ".join(dict.fromkeys(files))
    try:
        config = load(*args.configfile, workflow_config=workflow_config)
    except ConfigError as e:
        raise ConfigError(f"{names}: {e}") from e
    print(f"{names}: valid tier '{config['tier']}' with {len(cells(config))} training cells")
    overlays = [f for f in args.configfile if Path(f).resolve() != WORKFLOW_CONFIG.resolve()]
    if workflow_config and overlays:
        inherited = _not_overlaid(read_file(workflow_config), [read_file(f) for f in overlays])
        if inherited:
            print(f"  from {workflow_config} (not set by {' + '.join(overlays)}): {', '.join(inherited)}")
    return 0
