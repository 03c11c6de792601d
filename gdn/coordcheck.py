"""Coordinate check: how activation sizes scale with width over the first optimizer steps.

For one variant, every width and seed: build the model, train a few AdamW steps on real
batches, and after each step (step 0 = init) run a fixed probe batch through the model and
record the mean |x| of each module family, averaged over layers, plus the update size
mean |x_t - x_0| on that same probe batch. `analyze` fits the log-log slope of those sizes
against width and judges each module by the rule that fits its shape (docs/mup_gdn.md):

    size    width-sized activations (embedding, mixer and MLP outputs, the GDN state):
            their size must not grow or shrink with width, at init and after updates.
    update  width -> finite maps (gate logits a and b, the logits): their size at init is a
            choice of the parametrization (zero readout, 1/m gates); what μP fixes is that
            one step moves them by an amount independent of width.

Everything else recorded (gate sizes, decay g, beta, updates of width-sized activations,
probe loss) is shown but not judged.

CLI (see `add_arguments`):

    python -m gdn coordcheck --variant V --config-json '<JSON>' \
        --train-bin results/data/<tier>/train.bin --out results/coord/<tier>/<V>.json [--device auto]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from gdn import devices
from gdn.build import build_model
from gdn.checkpoint import write_json_atomic
from gdn.data.tokens import load_meta, load_tokens, train_batch
from gdn.parametrization import VARIANTS, optimizer_groups

# Defaults of the config's `coordcheck` section; the quick tier's CPU budget sets them.
DEFAULTS = {
    "widths": [32, 64, 128, 256, 512],
    "steps": 3,
    "seeds": [0, 1],
    "log2_lr": -7.0,  # base learning rate 2**x at the base width (μP scales it per role)
    "batch_size": 4,
    "seq_len": 64,
    "probe_seed": 9_999,  # the probe batch is the same for every width, seed and step
    "n_layers": None,  # None: the model spec's depth
    "width_mode": None,  # None: the model spec's width_mode
    "kernel_backend": None,  # None: the model spec's kernel_backend
    "adam_eps": 1e-8,
    "threads": None,  # CPU threads (None: train.threads, else torch's default)
    "slope_tolerance": 0.25,  # see analyze()
    "noise_factor": 3.0,
}

# module -> (quantity, judging rule). "info" rows are recorded and plotted, never judged.
MODULES = {
    "embedding": ("size", "size"),
    "mixer": ("size", "size"),
    "mlp": ("size", "size"),
    "state": ("size", "size"),
    "gate_a": ("size", "info"),
    "gate_b": ("size", "info"),
    "decay_g": ("size", "info"),
    "beta": ("size", "info"),
    "logits": ("size", "info"),
    "delta_embedding": ("update", "info"),
    "delta_mixer": ("update", "info"),
    "delta_mlp": ("update", "info"),
    "delta_state": ("update", "info"),
    "delta_gate_a": ("update", "update"),
    "delta_gate_b": ("update", "update"),
    "delta_decay_g": ("update", "info"),
    "delta_beta": ("update", "info"),
    "delta_logits": ("update", "update"),
    "loss": ("loss", "info"),
}


def settings_from_config(config: dict) -> dict:
    """The `coordcheck` section over DEFAULTS; a null value keeps the default."""
    settings = dict(DEFAULTS)
    settings.update({k: v for k, v in (config.get("coordcheck") or {}).items() if v is not None})
    seeds = settings["seeds"]
    settings["seeds"] = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    settings["widths"] = sorted(int(w) for w in settings["widths"])
    if len(settings["widths"]) < 2:
        raise ValueError("coordcheck.widths needs at least two widths to fit a slope")
    return settings


def model_spec_for_check(spec: dict, settings: dict) -> dict:
    """The tier's model spec with the coordinate check's depth / width-mode / backend overrides."""
    spec = dict(spec)
    for key in ("n_layers", "width_mode", "kernel_backend"):
        if settings.get(key) is not None:
            spec[key] = settings[key]
    return spec


# ---------------------------------------------------------------------------------------------
# Measuring one model


@dataclass
class ProbeResult:
    tensors: dict[str, list[torch.Tensor]]  # module -> one tensor per layer (one in all for embedding, logits)
    loss: float


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def _recording(model: torch.nn.Module):
    """Forward hooks that collect each module family's output inside the `with` block."""
    store: dict[str, list[torch.Tensor]] = {}
    handles = []

    def keep(name, transform=None):
        def hook(_module, _inputs, output):
            x = _first(output).detach()
            store.setdefault(name, []).append((transform(x) if transform else x).float())

        return hook

    handles.append(model.embed.register_forward_hook(keep("embedding")))
    vocab = model.config.vocab_size
    handles.append(model.lm_head.register_forward_hook(keep("logits", lambda x: x[..., :vocab])))
    mixers = []
    for block in model.blocks:
        handles.append(block.mixer.register_forward_hook(keep("mixer")))
        handles.append(block.mlp.register_forward_hook(keep("mlp")))
        mixer = block.mixer
        if hasattr(mixer, "tap_a"):
            mixers.append(mixer)
            handles.append(mixer.tap_a.register_forward_hook(keep("gate_a")))
            handles.append(mixer.tap_a.register_forward_hook(keep("decay_g", _decay_from(mixer))))
            handles.append(mixer.tap_b.register_forward_hook(keep("gate_b")))
            handles.append(mixer.tap_b.register_forward_hook(keep("beta", torch.sigmoid)))
            # The state's size that matters is what the readout o = S^T q sees with a unit q:
            # the L2 norm over the key index, per (batch, head, value channel).
            handles.append(mixer.tap_state.register_forward_hook(keep("state", lambda s: s.float().norm(dim=-2))))
            mixer.record_state = True
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
        for mixer in mixers:
            mixer.record_state = False


def _decay_from(mixer):
    """g = -exp(A_log) * softplus(a + dt_bias) from the scaled gate logit the tap sees."""

    def decay(a_scaled: torch.Tensor) -> torch.Tensor:
        return -mixer.A_log.detach().float().exp() * F.softplus(a_scaled.float() + mixer.dt_bias.detach().float())

    return decay


@torch.no_grad()
def probe(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> ProbeResult:
    with _recording(model) as store:
        logits = model(inputs).logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1)).item()
    return ProbeResult(tensors=store, loss=loss)


def sizes(result: ProbeResult, baseline: ProbeResult | None) -> dict[str, float]:
    """Mean |x| per module family (layer-averaged) and, given a baseline, mean |x - x_0|."""
    out = {}
    for name, per_layer in result.tensors.items():
        out[name] = float(np.mean([t.abs().mean().item() for t in per_layer]))
        if baseline is not None:
            base = baseline.tensors[name]
            changes = [(t - b).abs().mean().item() for t, b in zip(per_layer, base, strict=True)]
            out["delta_" + name] = float(np.mean(changes))
    out["loss"] = result.loss
    return out


def check_one(spec, variant, width, seed, settings, train, vocab_size, tokens, probe_batch, device) -> list[dict]:
    """Rows for one (width, seed): every module's size at steps 0..steps."""
    torch.manual_seed(seed)
    built = build_model(spec, variant, width, vocab_size, seed)
    model = built.model.to(device)
    model.train()
    lr = 2.0 ** settings["log2_lr"]
    groups = optimizer_groups(model, built.infos, lr, float(train.get("weight_decay", 0.0)))
    # No warmup, schedule or clipping: a global-norm clip couples the parameters and would
    # hide the per-role width scaling the check is there to see.
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(train.get("betas", (0.9, 0.95))), eps=settings["adam_eps"])
    inputs, targets = (t.to(device) for t in probe_batch)
    baseline = probe(model, inputs, targets)
    rows = [_row(variant, width, seed, 0, name, value) for name, value in sizes(baseline, None).items()]
    for step in range(1, settings["steps"] + 1):
        x, y = (t.to(device) for t in train_batch(tokens, settings["batch_size"], settings["seq_len"], seed, step - 1))
        logits = model(x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        measured = sizes(probe(model, inputs, targets), baseline)
        rows += [_row(variant, width, seed, step, name, value) for name, value in measured.items()]
    return rows


def _row(variant, width, seed, step, module, value) -> dict:
    quantity, rule = MODULES[module]
    return {
        "variant": variant,
        "width": width,
        "seed": seed,
        "step": step,
        "module": module,
        "quantity": quantity,
        "rule": rule,
        "mean_abs": value,
    }


def run_check(variant: str, config: dict, tokens: np.ndarray, device: torch.device) -> tuple[list[dict], dict]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    settings = settings_from_config(config)
    spec = model_spec_for_check(config["model"], settings)
    train = config.get("train") or {}
    vocab_size = int(config["vocab_size"])
    if int(tokens.max()) >= vocab_size:
        raise ValueError(f"token id {int(tokens.max())} is outside vocab_size={vocab_size}")
    probe_batch = train_batch(tokens, settings["batch_size"], settings["seq_len"], settings["probe_seed"], 0)
    rows = []
    for width in settings["widths"]:
        for seed in settings["seeds"]:
            rows += check_one(spec, variant, width, seed, settings, train, vocab_size, tokens, probe_batch, device)
    return rows, {"settings": settings, "model": spec}


# ---------------------------------------------------------------------------------------------
# Judging


def _fit_slope(log_w: np.ndarray, log_y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of log2 y on log2 width and its standard error (nan with 2 points)."""
    slope, intercept = np.polyfit(log_w, log_y, 1)
    dof = len(log_w) - 2
    if dof <= 0:
        return float(slope), math.nan
    resid = log_y - (slope * log_w + intercept)
    se = math.sqrt(float(resid @ resid) / dof / float(((log_w - log_w.mean()) ** 2).sum()))
    return float(slope), se


def analyze(coord: pd.DataFrame, settings: dict) -> dict[str, pd.DataFrame]:
    """Slopes of log2 mean |x| vs log2 width per (variant, module, step), with flags.

    settings: `slope_tolerance` (default 0.25) and `noise_factor` (default 3). A slope is
    flagged when |slope| > tolerance = max(slope_tolerance, noise_factor * se), where se is
    the standard error of the seed-averaged slope (seed-to-seed spread / sqrt(n_seeds); the
    regression's own standard error when there is one seed). 0.25 is half the smallest
    exponent error a wrong rule produces (a missing 1/sqrt(m) gives slope +-0.5), so a
    flag means the measured exponent is closer to a rule violation than to zero.

    Returns:
      coord_slopes  variant, module, quantity, rule, judged, step, slope, slope_se, n_widths,
                    n_seeds, width_min, width_max, tolerance, flagged
      coord_verdict variant, step (the last one), n_judged, n_flagged, flagged_modules, verdict
    """
    floor = float(settings.get("slope_tolerance", DEFAULTS["slope_tolerance"]))
    factor = float(settings.get("noise_factor", DEFAULTS["noise_factor"]))
    slope_cols = ["variant", "module", "quantity", "rule", "judged", "step", "slope", "slope_se", "n_widths",
                  "n_seeds", "width_min", "width_max", "tolerance", "flagged"]
    if coord.empty:
        empty = pd.DataFrame(columns=slope_cols)
        return {"coord_slopes": empty, "coord_verdict": _verdicts(empty)}
    df = coord.copy()
    if "rule" not in df:
        df["rule"] = df["module"].map(lambda m: MODULES.get(m, ("size", "info"))[1])
    if "quantity" not in df:
        df["quantity"] = df["module"].map(lambda m: MODULES.get(m, ("size", "info"))[0])
    # Zero (the μP readout at init) or non-finite sizes have no logarithm: such points drop out.
    df = df[np.isfinite(df["mean_abs"]) & (df["mean_abs"] > 0)]
    out = []
    for (variant, module, step), g in df.groupby(["variant", "module", "step"], sort=True):
        per_seed = []
        for _, s in g.groupby("seed"):
            if s["width"].nunique() >= 2:
                per_seed.append(_fit_slope(np.log2(s["width"].to_numpy(float)), np.log2(s["mean_abs"].to_numpy(float))))
        widths = np.sort(g["width"].unique())
        if len(widths) < 2 or not per_seed:
            continue
        mean_log = g.assign(log_y=np.log2(g["mean_abs"])).groupby("width")["log_y"].mean()
        slope, reg_se = _fit_slope(np.log2(mean_log.index.to_numpy(float)), mean_log.to_numpy())
        slopes = np.array([s for s, _ in per_seed])
        se = float(slopes.std(ddof=1) / math.sqrt(len(slopes))) if len(slopes) >= 2 else reg_se
        tolerance = max(floor, factor * se) if np.isfinite(se) else floor
        rule = g["rule"].iloc[0]
        out.append({
            "variant": variant, "module": module, "quantity": g["quantity"].iloc[0], "rule": rule,
            "judged": rule in ("size", "update"), "step": int(step), "slope": slope, "slope_se": se,
            "n_widths": len(widths), "n_seeds": len(slopes), "width_min": int(widths[0]),
            "width_max": int(widths[-1]), "tolerance": tolerance, "flagged": bool(abs(slope) > tolerance),
        })
    slopes_df = pd.DataFrame(out, columns=slope_cols)
    return {"coord_slopes": slopes_df, "coord_verdict": _verdicts(slopes_df)}


def _verdicts(slopes: pd.DataFrame) -> pd.DataFrame:
    """Per variant at its last step: which judged modules scale with width."""
    cols = ["variant", "step", "n_judged", "n_flagged", "flagged_modules", "verdict"]
    rows = []
    for variant, g in slopes.groupby("variant", sort=True):
        last = g[g["step"] == g["step"].max()]
        judged = last[last["judged"]]
        bad = judged[judged["flagged"]]
        names = ", ".join(f"{m} ({s:+.2f})" for m, s in zip(bad["module"], bad["slope"], strict=True))
        rows.append({
            "variant": variant, "step": int(last["step"].iloc[0]), "n_judged": len(judged), "n_flagged": len(bad),
            "flagged_modules": names,
            "verdict": "width-stable" if bad.empty else "scales with width",
        })
    return pd.DataFrame(rows, columns=cols)


def judgement_lines(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Human-readable judgement after the last step: one line per judged module, then the verdict."""
    slopes = tables["coord_slopes"]
    lines = []
    for variant, g in slopes.groupby("variant", sort=True):
        last = g[(g["step"] == g["step"].max()) & g["judged"]]
        widths = f"{int(g['width_min'].min())}..{int(g['width_max'].max())}"
        lines.append(f"{variant}: step {int(g['step'].max())}, widths {widths}")
        for r in last.itertuples():
            mark = "FLAG" if r.flagged else "ok  "
            lines.append(f"  {mark} {r.module:<14} rule={r.rule:<6} slope={r.slope:+.3f}  tol={r.tolerance:.3f}")
        verdict = tables["coord_verdict"]
        v = verdict[verdict["variant"] == variant]
        if not v.empty:
            flagged = f": {v['flagged_modules'].iloc[0]}" if v["n_flagged"].iloc[0] else ""
            lines.append(f"  => {v['verdict'].iloc[0]}{flagged}")
    return lines


def print_judgement(tables: dict[str, pd.DataFrame]) -> None:
    print("\n".join(judgement_lines(tables)))


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    parser.add_argument("--config-json", required=True,
                        help='JSON object: {"model": spec, "coordcheck": {...}, "train": {...}, "vocab_size": int}; '
                             "vocab_size defaults to the one in the token file's meta.json")
    parser.add_argument("--train-bin", required=True, help="packed training tokens (<split>.bin with .meta.json)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def run(args: argparse.Namespace) -> int:
    config = json.loads(args.config_json)
    if config.get("vocab_size") is None:
        # The tokenize step records the vocabulary beside the tokens; the config may omit it.
        config["vocab_size"] = load_meta(args.train_bin).get("vocab_size")
        if config["vocab_size"] is None:
            raise ValueError(f"no vocab_size in --config-json nor in the meta file of {args.train_bin}")
    settings = settings_from_config(config)
    threads = settings["threads"] or (config.get("train") or {}).get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    device, _slot = devices.resolve(args.device, devices.jobs_per_gpu_from_env())  # slot held until return
    tokens = load_tokens(args.train_bin)
    start = time.time()
    rows, used = run_check(args.variant, config, tokens, device)
    result = {
        "kind": "coordcheck",
        "variant": args.variant,
        "config": {"coordcheck": used["settings"], "model": used["model"], "train": config.get("train") or {},
                   "vocab_size": int(config["vocab_size"])},
        "device": _describe(device),
        "torch": torch.__version__,
        "wall_s": round(time.time() - start, 2),
        "rows": rows,
    }
    write_json_atomic(args.out, result)
    print_judgement(analyze(pd.DataFrame(rows), settings))
    return 0
