"""What a tier will train and what it will cost: `python -m gdn plan --configfile config/paper.yaml`.

The planned cells come from the functions the DAG expands (`gdn.config`): the sweep and the
confirmation runs, including confirmation runs whose learning rate is not known yet (their cost
does not depend on it). GPU-hours are estimates: tokens per cell divided by a per-GPU training
throughput, from

  measured   results/bench/*/throughput*.json rows (`snakemake results/bench/<tier>/throughput-<shape>.json ...`)
  given      --tokens-per-s: a throughput.json file, one number for every cell, or WIDTH=TOKENS_PER_S pairs

A cell whose model was not measured gets the achieved FLOP/s of the nearest measured model of
its family (6 N + mixer FLOPs per token, gdn.bench.throughput), which flatters small models.
Multi-GPU jobs scale linearly unless --scaling-efficiency says otherwise; evaluation,
coordinate checks and benchmarks are not counted.

`--transferred-lrs` prints, for a tier with `confirm.base: transfer`, the proxy sweep's optimal
learning rates (gdn.transfer) in the form `confirm.transferred_log2_lr` takes.
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gdn import config as gdn_config

GPT2_VOCAB = 50257


# ---------------------------------------------------------------- planned cells


def planned_cells(config: dict) -> pd.DataFrame:
    """One row per planned training cell: stage (sweep | confirm), variant, width, log2_lr
    (NaN while a confirmation LR is pending), seed, run_id (None while pending)."""
    rows = [{"stage": "sweep", "variant": c.variant, "width": c.width, "log2_lr": c.log2_lr, "seed": c.seed,
             "run_id": c.run_id} for c in gdn_config.grid_cells(config)]
    sweep_ids = {r["run_id"] for r in rows}
    for r in gdn_config.confirm_plan(config):
        cell = None if r["log2_lr"] is None else gdn_config.Cell(config["tier"], r["variant"], r["width"],
                                                                 r["log2_lr"], r["seed"])
        if cell is not None and cell.run_id in sweep_ids:
            continue  # already a sweep cell: trained once
        rows.append({"stage": "confirm", "variant": r["variant"], "width": r["width"],
                     "log2_lr": math.nan if cell is None else cell.log2_lr, "seed": r["seed"],
                     "run_id": None if cell is None else cell.run_id})
    return pd.DataFrame(rows, columns=["stage", "variant", "width", "log2_lr", "seed", "run_id"])


def completion(planned: pd.DataFrame, runs: pd.DataFrame | None) -> pd.DataFrame:
    """Planned vs finished cells per (stage, variant, width).

    runs: the runs table (run_id, status), None when there is none. A cell is finished when its
    run completed or diverged (a diverged run is a result); pending confirmation cells count as
    not started.
    """
    status = dict(zip(runs["run_id"], runs["status"])) if runs is not None and len(runs) else {}
    df = planned.copy()
    df["status"] = [status.get(r) if isinstance(r, str) else None for r in df["run_id"]]
    out = df.groupby(["stage", "variant", "width"], sort=False).agg(
        planned=("seed", "size"),
        completed=("status", lambda s: int((s == "completed").sum())),
        diverged=("status", lambda s: int((s == "diverged").sum())),
        lr_pending=("run_id", lambda s: int(s.isna().sum())),
    ).reset_index()
    out["missing"] = out["planned"] - out["completed"] - out["diverged"]
    return out


def tokens_per_cell(config: dict) -> int:
    train = config["train"]
    return train["steps"] * train["batch_size"] * train["seq_len"] * train.get("grad_accum", 1)


def vocab_size(config: dict) -> int:
    tok = config["tokenizer"]
    return tok.get("vocab_size", 4096) if tok["kind"] == "trained_bpe" else GPT2_VOCAB


# ---------------------------------------------------------------- model size and FLOPs


def _family(variant: str) -> str:
    from gdn.parametrization import VARIANTS

    return VARIANTS[variant].family


def model_cost(spec: dict, variant: str, width: int, vocab: int, seq_len: int) -> dict:
    """Parameters and training FLOPs per token of one model, built on the meta device."""
    import torch

    from gdn.bench.throughput import flops_per_token
    from gdn.build import model_config
    from gdn.models import FAMILIES

    config = model_config(spec, variant, width, vocab)
    with torch.device("meta"):
        model = FAMILIES[_family(variant)][1](config)
    return {**model.num_parameters_split(), "flops_per_token": flops_per_token(model, seq_len)}


# ---------------------------------------------------------------- throughput figures


@dataclass(frozen=True)
class Throughput:
    """Training tokens/s of one GPU for one model; flops_per_token None: a figure for every model."""

    tokens_per_s: float
    family: str | None
    params_total: int | None
    seq_len: int | None
    flops_per_token: float | None
    origin: str


def _rows_of(payload) -> tuple[list[dict], str | None]:
    """Measured rows of a throughput file. A suite cut short ("running") or assembled from
    several processes ("partial") still holds real measurements; a skipped one holds none."""
    if isinstance(payload, list):
        return payload, None
    if payload.get("status", "completed") == "skipped":
        return [], None
    return payload.get("rows") or [], payload.get("device")


def bench_figures(paths: list[str], compiled: bool | None = None) -> list[Throughput]:
    """Rows of throughput.json files (suite "throughput": shape, variant, seq_len, tokens_per_s, device).

    compiled: keep only rows timed with (True) or without (False) torch.compile, so that the
    estimate matches how the tier trains (train.compile); None keeps every row."""
    figures = []
    for path in sorted(paths):
        rows, device = _rows_of(json.loads(Path(path).read_text()))
        for row in rows:
            if row.get("suite", "throughput") != "throughput" or not row.get("tokens_per_s"):
                continue
            if row["variant"] not in gdn_config_variants():
                continue  # outside reference models (fla) say nothing about our cells' cost
            if compiled is not None and bool(row.get("compiled", False)) != compiled:
                continue
            how = " compiled" if row.get("compiled") else ""
            figures.append(Throughput(
                tokens_per_s=float(row["tokens_per_s"]), family=_family(row["variant"]),
                params_total=row.get("params_total"), seq_len=row.get("seq_len"),
                flops_per_token=row.get("flops_per_token"),
                origin=f"{path}: {row.get('shape')} {row['variant']} T={row.get('seq_len')}{how}"
                       f" on {row.get('device') or device or 'unknown device'}"))
    return figures


def gdn_config_variants() -> set[str]:
    from gdn.parametrization import VARIANTS

    return set(VARIANTS)


def given_figures(values: list[str], config: dict) -> list[Throughput]:
    """--tokens-per-s: a throughput.json path, a single number, or WIDTH=TOKENS_PER_S pairs."""
    if all(Path(v).is_file() for v in values):
        return bench_figures(values)
    if len(values) == 1 and "=" not in values[0]:
        return [Throughput(float(values[0]), None, None, None, None, f"--tokens-per-s {values[0]} (every cell)")]
    figures = []
    seq_len, vocab = config["train"]["seq_len"], vocab_size(config)
    for item in values:
        width_text, sep, value = item.partition("=")
        if not sep or not width_text.isdigit():
            raise ValueError(f"--tokens-per-s: expected a file, a number or WIDTH=TOKENS_PER_S, got {item!r}")
        for variant in ("transformer_mup", "gdn_mup"):  # one figure per family at that width
            cost = model_cost(config["model"], variant, int(width_text), vocab, seq_len)
            figures.append(Throughput(float(value), _family(variant), cost["total"], seq_len,
                                      cost["flops_per_token"], f"--tokens-per-s {item}"))
    return figures


def throughput_for(figures: list[Throughput], family: str, cost: dict, seq_len: int) -> tuple[float, str]:
    """(tokens/s per GPU, where it came from) for one model."""
    for f in figures:
        if f.flops_per_token is None:
            return f.tokens_per_s, f.origin
        if (f.family, f.params_total, f.seq_len) == (family, cost["total"], seq_len):
            return f.tokens_per_s, f"this model: {f.origin}"
    candidates = [f for f in figures if f.family == family] or figures
    nearest = min(candidates, key=lambda f: abs(math.log(f.flops_per_token / cost["flops_per_token"])))
    tokens_per_s = nearest.tokens_per_s * nearest.flops_per_token / cost["flops_per_token"]
    return tokens_per_s, f"scaled to this model's FLOPs/token from {nearest.origin}"


# ---------------------------------------------------------------- the estimate


def estimate(config: dict, figures: list[Throughput], scaling_efficiency: float = 1.0) -> pd.DataFrame:
    """GPU-hours per (stage, variant, width): one row per group of cells of equal cost.

    scaling_efficiency: per-GPU throughput of a multi-GPU job relative to one GPU (1.0: linear;
    scripts/scale_out_check.py measures it)."""
    if not 0 < scaling_efficiency <= 1:
        raise ValueError(f"--scaling-efficiency must be in (0, 1], got {scaling_efficiency}")
    planned = planned_cells(config)
    seq_len, vocab, tokens = config["train"]["seq_len"], vocab_size(config), tokens_per_cell(config)
    rows = []
    for (stage, variant, width), group in planned.groupby(["stage", "variant", "width"], sort=False):
        cost = model_cost(config["model"], variant, int(width), vocab, seq_len)
        tokens_per_s, origin = throughput_for(figures, _family(variant), cost, seq_len)
        parallel = gdn_config.parallel_settings(config["train"], int(width))
        gpus = parallel["gpus_per_job"] * parallel["nodes"]
        if gpus > 1:
            tokens_per_s *= scaling_efficiency
        gpu_hours = tokens / tokens_per_s / 3600
        rows.append({"stage": stage, "variant": variant, "width": int(width), "cells": len(group),
                     "lr_pending": int(group["run_id"].isna().sum()), "params_total": cost["total"],
                     "params_non_embedding": cost["non_embedding"], "gpus_per_job": gpus,
                     "tokens_per_cell": tokens, "tokens_per_s_per_gpu": tokens_per_s,
                     "gpu_hours_per_cell": gpu_hours, "wall_hours_per_cell": gpu_hours / gpus,
                     "gpu_hours": gpu_hours * len(group), "source": origin})
    return pd.DataFrame(rows)


def format_estimate(table: pd.DataFrame, figure_note: str, scaling_efficiency: float = 1.0) -> str:
    scaling = ("multi-GPU jobs assumed to scale linearly" if scaling_efficiency == 1.0 else
               f"multi-GPU jobs at {scaling_efficiency:.0%} of one GPU's tokens/s per GPU")
    lines = [
        "ESTIMATES, not measurements: GPU-hours = tokens per cell / training tokens/s per GPU;",
        f"{scaling}; training only. Throughput figures: {figure_note}",
        "",
        f"{'stage':<8} {'variant':<16} {'width':>5} {'cells':>5} {'params':>14} {'non-emb':>14} {'GPUs':>4} "
        f"{'tok/s/GPU':>10} {'GPU-h/cell':>10} {'wall-h/cell':>11} {'GPU-h':>9}",
    ]
    for r in table.itertuples():
        pending = f" ({r.lr_pending} LR pending)" if r.lr_pending else ""
        lines.append(f"{r.stage:<8} {r.variant:<16} {r.width:>5} {r.cells:>5} {r.params_total:>14,} "
                     f"{r.params_non_embedding:>14,} {r.gpus_per_job:>4} {r.tokens_per_s_per_gpu:>10,.0f} "
                     f"{r.gpu_hours_per_cell:>10,.1f} {r.wall_hours_per_cell:>11,.1f} {r.gpu_hours:>9,.0f}{pending}")
    lines.append("")
    for stage, group in table.groupby("stage", sort=False):
        cells, hours = int(group["cells"].sum()), group["gpu_hours"].sum()
        lines.append(f"total {stage:<8} {cells:>5} cells {hours:>12,.0f} GPU-hours")
    lines.append(f"total          {int(table['cells'].sum()):>5} cells {table['gpu_hours'].sum():>12,.0f} GPU-hours")
    lines += ["", "sources of the throughput figures:"]
    lines += [f"  {s}" for s in dict.fromkeys(table["source"])]
    return "\n".join(lines)


# ---------------------------------------------------------------- stage 2: the transferred learning rates


def read_runs(config: dict, runs_root: Path = Path(".")) -> pd.DataFrame:
    """The tier's finished runs (metrics.json files) as a runs table for gdn.transfer."""
    rows = []
    for cell in gdn_config.grid_cells(config):
        path = runs_root / cell.run_dir / "metrics.json"
        if path.exists():
            m = json.loads(path.read_text())
            rows.append({"variant": cell.variant, "width": cell.width, "log2_lr": cell.log2_lr, "seed": cell.seed,
                         "status": m["status"], "final_val_loss": m.get("final_val_loss")})
    return pd.DataFrame(rows, columns=["variant", "width", "log2_lr", "seed", "status", "final_val_loss"])


def transferred_lrs(config: dict, runs: pd.DataFrame) -> dict[str, float | None]:
    """Per confirmed variant: the optimal log2 LR at the proxy width (None until its sweep is complete)."""
    from gdn import transfer

    proxy = config["confirm"].get("proxy_width") or max(config["grid"]["widths"])
    result = {}
    for variant in gdn_config.confirm_variants(config):
        expected = len(gdn_config.grid_log2_lrs(config, variant)) * len(gdn_config.grid_seeds(config, proxy))
        mine = runs[(runs["variant"] == variant) & (runs["width"] == proxy)]
        finished = mine["status"].isin(["completed", "diverged"]).sum()
        if finished < expected:
            result[variant] = None
            continue
        optima = transfer.point_optima(mine, config.get("transfer"))
        value = float(optima["opt_log2_lr"].iloc[0]) if len(optima) else math.nan
        # an optimum beyond the grid's edge (±inf) cannot be transferred: the sweep must be widened
        result[variant] = round(value, 3) if math.isfinite(value) else None
    return result


# ---------------------------------------------------------------- CLI


def add_arguments(parser) -> None:
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--tokens-per-s", nargs="+", metavar="FILE_OR_VALUE",
                        help="used when results/bench/*/throughput*.json has no rows: a throughput.json file, "
                             "one tokens/s per GPU for every cell, or WIDTH=TOKENS_PER_S pairs")
    parser.add_argument("--bench", default="results/bench/*/throughput*.json",
                        help="glob of measured throughput files (default: %(default)s)")
    parser.add_argument("--scaling-efficiency", type=float, default=1.0,
                        help="per-GPU throughput of multi-GPU jobs relative to one GPU (default 1.0, linear; "
                             "scripts/scale_out_check.py measures it)")
    parser.add_argument("--transferred-lrs", action="store_true",
                        help="print the proxy sweep's optima for confirm.transferred_log2_lr instead of the estimate")


def run(args) -> int:
    config = gdn_config.load(args.configfile)
    if args.transferred_lrs:
        return _print_transferred(config)
    planned = planned_cells(config)
    pending = int(planned["run_id"].isna().sum())
    print(f"tier '{config['tier']}': {len(planned)} training cells planned "
          f"({(planned['stage'] == 'sweep').sum()} sweep, {(planned['stage'] == 'confirm').sum()} confirmation"
          + (f", {pending} waiting for their transferred learning rate" if pending else "") + f"); "
          f"{tokens_per_cell(config):,} tokens per cell")
    compiled = bool(config["train"].get("compile", False))
    measured = bench_figures(glob.glob(args.bench), compiled)
    if measured:
        figures, note = measured, (f"measured rows of {args.bench} "
                                   f"({'with' if compiled else 'without'} torch.compile, as train.compile says)")
        if args.tokens_per_s:
            note += " (--tokens-per-s not used: measurements take precedence)"
    elif args.tokens_per_s:
        figures, note = given_figures(args.tokens_per_s, config), "given on the command line (--tokens-per-s)"
    else:
        print(f"no throughput figures: {args.bench} has no rows and --tokens-per-s was not given.\n"
              "Measure them (the tier's bench throughput suite on the target GPU) or pass --tokens-per-s.")
        return 1
    efficiency = args.scaling_efficiency
    print(format_estimate(estimate(config, figures, efficiency), note, efficiency))
    return 0


def _print_transferred(config: dict) -> int:
    if not config.get("confirm") or config["confirm"]["base"] != "transfer":
        print("this tier has no confirmation runs centred on a transferred learning rate (confirm.base: transfer)")
        return 1
    lrs = transferred_lrs(config, read_runs(config))
    print("# proxy sweep optima (log2 LR, parabola vertex around the grid argmin; gdn.transfer); paste under confirm:")
    print("  transferred_log2_lr:")
    for variant, value in lrs.items():
        print(f"    {variant}: {'null   # sweep not finished' if value is None else value}")
    return 0
