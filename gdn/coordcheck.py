"""Coordinate check: how activation sizes scale with width over the first optimizer steps.

For one variant, every width and seed: build the model, train `steps` AdamW steps on real
batches at the variant's learning rate (`log2_lr`: one number, or a mapping variant -> log2
LR so that each variant runs at its own optimum; an optional linear warmup over
`warmup_steps`), and at a few recorded steps (0 = init, 1, 2, 5, 10, 20, 50, 100, ... and the
last) run a fixed probe batch through the model and record the mean |x| of each module
family, averaged over layers, plus the update size mean |x_t - x_0| on that same probe batch.
`analyze` fits the log-log slope of those sizes against width, with a confidence interval,
and judges each module by the rule that fits its shape (docs/mup_gdn.md §4):

    size     width-sized activations (embedding, mixer and MLP outputs, the GDN state) and the
             Transformer's attention logits (pre-softmax q.k * scale): their size must not grow
             or shrink with width. The attention logits are judged from step 1 on: at init μP's
             1/d_head scale makes them shrink like 1/sqrt(m) in width_mode head_dim (random
             q, k), which is the parametrization's choice; what μP fixes is their size once
             training has aligned q with k.
    update   width -> finite maps (the logits, and the update part of the GDN gate logits,
             see below): their size at init is a choice of the parametrization (zero readout,
             1/m gates); what μP fixes is that training moves them by an amount independent of
             width.
    bounded  a term of a decomposition that must not grow with width (it may vanish): the
             c * W0 * (x_t - x_0) term of the gate logits.

GDN gate logits a = c * W * x (and b likewise; x the mixer's input, c the gate multiplier) are
split at step t, on the probe batch, into

    gate_a_init    c * W0 * x_t             what the initial weights make of today's input
    gate_a_update  c * (W_t - W0) * x_t     what training's change of W contributes (rule: update)
    gate_a_w0dx    c * W0 * (x_t - x_0)     how the initial weights pass on the input's change
                                            (rule: bounded)

so that a_t - a_0 = gate_a_update + gate_a_w0dx exactly (`delta_gate_a`, shown, not judged: it is
the sum of two judged parts). Under gating normalization (multiplier 1/sqrt(m), width-independent
init) docs/mup_gdn.md predicts that the w0dx term grows like sqrt(m); with the readout-style
multiplier 1/m it stays flat.

Judging. Every (variant, module, step) slope gets a 90% confidence interval (CI_LEVEL): with
two or more seeds, slope ± t(0.95, n_seeds - 1) * se, se the standard deviation of the per-seed
slopes / sqrt(n_seeds); with one seed, the regression's own standard error with n_widths - 2
degrees of freedom. The half-width is never less than `noise_factor` (default 3) standard errors
of the regression of the seed-averaged sizes on width, so that two seeds that happen to agree do
not make a fit that is not a power law look certain. The tolerance band is ±`slope_tolerance`
(default 0.25: half the smallest exponent error a wrong rule produces, since a missing or extra
1/sqrt(m) gives ±0.5, so a slope outside it is closer to a rule violation than to zero).

    ok       the CI lies inside the band (bounded: the CI's upper end is at most +tolerance)
    flagged  the CI lies entirely outside the band (bounded: entirely above +tolerance)
    unclear  the CI straddles an edge of the band: more seeds or widths are needed to say
    (without a CI, one seed and two widths, the point estimate decides between ok and flagged)

A variant's verdict at its last step: "scales with width" when a judged module is flagged,
"unclear" when none is flagged but one is unclear, else "width-stable". Everything else
recorded (gate sizes and their init part, decay g, beta, updates of width-sized activations,
probe loss) is shown with its CI but not judged.

Importing this module does not import torch (the analysis runs in the torch-free ingest and
report); the measuring functions import it when they run.

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
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import torch

# Defaults of the config's `coordcheck` section (the config schema lists the same keys).
DEFAULTS = {
    "widths": [32, 64, 128, 256, 512],
    "steps": 50,  # optimizer steps; sizes are recorded at 0, 1, 2, 5, 10, 20, 50, ... and the last
    "seeds": [0, 1],
    "log2_lr": -7.0,  # base LR 2**x at the base width, or {variant: x} (each variant at its optimum)
    "warmup_steps": 0,  # linear warmup over the first steps (0: none)
    "batch_size": 4,
    "seq_len": 64,
    "probe_seed": 9_999,  # the probe batch is the same for every width, seed and step
    "n_layers": None,  # None: the model spec's depth
    "width_mode": None,  # None: the model spec's width_mode
    "kernel_backend": None,  # None: the model spec's kernel_backend
    "readout_zero_init": None,  # None: the model spec's readout_zero_init
    "adam_eps": 1e-8,
    "threads": None,  # CPU threads (None: train.threads, else torch's default)
    "slope_tolerance": 0.25,  # the band a judged slope must lie in; see the module docstring
    "noise_factor": 3.0,  # the CI's half-width is at least this many regression standard errors
}

CI_LEVEL = 0.90  # two-sided level of the slopes' confidence intervals

# module -> (quantity, judging rule). "info" rows are recorded and plotted, never judged.
MODULES = {
    "embedding": ("size", "size"),
    "mixer": ("size", "size"),
    "mlp": ("size", "size"),
    "state": ("size", "size"),
    "attn_logits": ("size", "size"),
    "gate_a": ("size", "info"),
    "gate_b": ("size", "info"),
    "gate_a_init": ("size", "info"),
    "gate_b_init": ("size", "info"),
    "gate_a_update": ("update", "update"),
    "gate_b_update": ("update", "update"),
    "gate_a_w0dx": ("update", "bounded"),
    "gate_b_w0dx": ("update", "bounded"),
    "decay_g": ("size", "info"),
    "beta": ("size", "info"),
    "logits": ("size", "info"),
    "delta_embedding": ("update", "info"),
    "delta_mixer": ("update", "info"),
    "delta_mlp": ("update", "info"),
    "delta_state": ("update", "info"),
    "delta_gate_a": ("update", "info"),
    "delta_gate_b": ("update", "info"),
    "delta_decay_g": ("update", "info"),
    "delta_beta": ("update", "info"),
    "delta_logits": ("update", "update"),
    "loss": ("loss", "info"),
}

# Modules judged only from this step on (see the module docstring); the others from step 0.
JUDGED_FROM_STEP = {"attn_logits": 1}

# Recorded module -> the name of its change since step 0 on the probe batch. The update part of
# the gates has none (it is zero at init: it is its own change).
DELTA_OF = {
    "embedding": "delta_embedding", "mixer": "delta_mixer", "mlp": "delta_mlp", "state": "delta_state",
    "gate_a": "delta_gate_a", "gate_b": "delta_gate_b",
    "gate_a_init": "gate_a_w0dx", "gate_b_init": "gate_b_w0dx", "decay_g": "delta_decay_g",
    "beta": "delta_beta", "logits": "delta_logits",
}

# The gate decompositions: total, init part, update part, W0 dx term.
GATE_PARTS = {gate: (gate, f"{gate}_init", f"{gate}_update", f"{gate}_w0dx") for gate in ("gate_a", "gate_b")}


def settings_from_config(config: dict) -> dict:
    """The `coordcheck` section over DEFAULTS; a null value keeps the default."""
    settings = dict(DEFAULTS)
    settings.update({k: v for k, v in (config.get("coordcheck") or {}).items() if v is not None})
    seeds = settings["seeds"]
    settings["seeds"] = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    settings["widths"] = sorted(int(w) for w in settings["widths"])
    if len(settings["widths"]) < 2:
        raise ValueError("coordcheck.widths needs at least two widths to fit a slope")
    settings["steps"] = int(settings["steps"])
    if settings["steps"] < 1:
        raise ValueError(f"coordcheck.steps must be at least 1, got {settings['steps']}")
    settings["warmup_steps"] = int(settings["warmup_steps"])
    if settings["warmup_steps"] < 0:
        raise ValueError(f"coordcheck.warmup_steps must be >= 0, got {settings['warmup_steps']}")
    return settings


def log2_lr_for(settings: dict, variant: str) -> float:
    """The variant's base log2 LR: `log2_lr` itself, or its entry in a {variant: log2 LR} mapping
    (which must name every variant that is checked)."""
    value = settings["log2_lr"]
    if isinstance(value, dict):
        if variant in value:
            return float(value[variant])
        raise ValueError(f"coordcheck.log2_lr names no learning rate for {variant!r}; it names {sorted(value)}")
    return float(value)


def record_steps(steps: int) -> list[int]:
    """Steps at which the probe batch is measured: 0, 1, 2, 5, 10, 20, 50, 100, ... up to `steps`, and `steps`."""
    marks = {0, steps}
    decade = 1
    while decade <= steps:
        marks.update(f * decade for f in (1, 2, 5) if f * decade <= steps)
        decade *= 10
    return sorted(marks)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """LR factor of optimizer step `step` (1-based): linear from 1/warmup to 1 over the warmup, then 1."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def model_spec_for_check(spec: dict, settings: dict) -> dict:
    """The tier's model spec with the coordinate check's depth / width-mode / backend / readout overrides."""
    spec = dict(spec)
    for key in ("n_layers", "width_mode", "kernel_backend", "readout_zero_init"):
        if settings.get(key) is not None:
            spec[key] = settings[key]
    return spec


# ---------------------------------------------------------------------------------------------
# Measuring one model (torch is imported inside these functions)


@dataclass
class ProbeResult:
    # module -> one value per layer (one in all for embedding and logits): a tensor, or a 0-d
    # tensor already reduced to its mean |x| (attention logits: [B, H, T, T] would be large)
    tensors: dict[str, list[Any]]
    loss: float


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _causal_mean_abs(logits: torch.Tensor) -> torch.Tensor:
    """Mean |logit| over the causal (key <= query) entries of [B, H, T, T] attention logits."""
    import torch

    T = logits.shape[-1]
    keep = torch.ones(T, T, dtype=torch.bool, device=logits.device).tril()
    return logits.abs().masked_fill(~keep, 0.0).sum() / (keep.sum() * logits.shape[0] * logits.shape[1])


def attention_logits(module, x, rope=None):
    """The pre-softmax logits q.k * scale [B, H, T, T] (float32) of a Transformer Attention on its
    input x, with the rotary embedding `rope` (cos, sin) the forward used (None: positions 0..T-1)."""
    import torch

    from gdn.models.layers import apply_rotary, rotary_tables

    B, T, _ = x.shape
    H, D = module.n_heads, module.head_dim
    q = module.q_proj(x).float().view(B, T, H, D).transpose(1, 2)
    k = module.k_proj(x).float().view(B, T, H, D).transpose(1, 2)
    if rope is None:
        rope = rotary_tables(T, D, module.rope_theta, x.device)
    cos, sin = rope[0].float(), rope[1].float()
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    return torch.matmul(q, k.transpose(-1, -2)) * module.scale


def _attention_logits_hook(store: dict):
    """Forward hook (with kwargs) on a Transformer Attention: records the mean |q.k * scale| over
    the causal entries, recomputed from the attention's input."""

    def hook(module, args, kwargs, _output):
        x = (args[0] if args else kwargs["x"]).detach()
        logits = attention_logits(module, x, kwargs.get("rope"))
        store.setdefault("attn_logits", []).append(_causal_mean_abs(logits).float())

    return hook


def _gate_parts_hook(store: dict, w0: dict | None):
    """Forward hook on a GDN mixer: from its input x_t, the gate logits' init part c*W0*x_t and,
    given the initial weights w0 {"a": W0_a, "b": W0_b}, the update part c*(W_t - W0)*x_t."""
    import torch.nn.functional as F

    def hook(module, args, _output):
        x = args[0].detach().float()
        for gate, proj in (("a", module.a_proj), ("b", module.b_proj)):
            c = proj.multiplier
            weight = proj.weight.detach().float()
            initial = weight if w0 is None else w0[id(module)][gate]
            store.setdefault(f"gate_{gate}_init", []).append(F.linear(x, initial) * c)
            if w0 is not None:
                store.setdefault(f"gate_{gate}_update", []).append(F.linear(x, weight - initial) * c)

    return hook


@contextmanager
def _recording(model, gate_w0: dict | None = None):
    """Forward hooks that collect each module family's output inside the `with` block.

    gate_w0: the GDN mixers' initial gate weights (`initial_gate_weights`); None at step 0,
    where W_t = W0 and the update part is zero."""
    import torch

    store: dict[str, list] = {}
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
            handles.append(mixer.register_forward_hook(_gate_parts_hook(store, gate_w0)))
            mixer.record_state = True
        elif hasattr(mixer, "q_proj") and hasattr(mixer, "scale"):
            handles.append(mixer.register_forward_hook(_attention_logits_hook(store), with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
        for mixer in mixers:
            mixer.record_state = False


def _decay_from(mixer):
    """g = -exp(A_log) * softplus(a + dt_bias) from the scaled gate logit the tap sees."""
    import torch.nn.functional as F

    def decay(a_scaled):
        return -mixer.A_log.detach().float().exp() * F.softplus(a_scaled.float() + mixer.dt_bias.detach().float())

    return decay


def initial_gate_weights(model) -> dict:
    """{id(mixer): {"a": W0_a, "b": W0_b}} float32 copies of every GDN mixer's gate weights."""
    return {id(block.mixer): {"a": block.mixer.a_proj.weight.detach().float().clone(),
                              "b": block.mixer.b_proj.weight.detach().float().clone()}
            for block in model.blocks if hasattr(block.mixer, "a_proj")}


def probe(model, inputs, targets, gate_w0: dict | None = None) -> ProbeResult:
    import torch
    import torch.nn.functional as F

    with torch.no_grad(), _recording(model, gate_w0) as store:
        logits = model(inputs).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1)).item()
    return ProbeResult(tensors=store, loss=loss)


def sizes(result: ProbeResult, baseline: ProbeResult | None) -> dict[str, float]:
    """Mean |x| per module family (layer-averaged) and, given a baseline, mean |x - x_0| (the
    change's name from DELTA_OF: for the gates' init part that is the W0 dx term)."""
    out = {}
    for name, per_layer in result.tensors.items():
        out[name] = float(np.mean([t.abs().mean().item() for t in per_layer]))
        if baseline is not None and name in DELTA_OF:
            base = baseline.tensors[name]
            changes = [(t - b).abs().mean().item() for t, b in zip(per_layer, base, strict=True)]
            out[DELTA_OF[name]] = float(np.mean(changes))
    out["loss"] = result.loss
    return out


def check_one(spec, variant, width, seed, settings, train, vocab_size, tokens, probe_batch, device) -> list[dict]:
    """Rows for one (width, seed): every module's size at the recorded steps."""
    import torch
    import torch.nn.functional as F

    from gdn.build import build_model
    from gdn.data.tokens import train_batch
    from gdn.parametrization import optimizer_groups

    torch.manual_seed(seed)
    with torch.no_grad():  # initialization writes into the parameters
        built = build_model(spec, variant, width, vocab_size, seed)
    model = built.model.to(device)
    model.train()
    log2_lr = log2_lr_for(settings, variant)
    lr = 2.0**log2_lr
    groups = optimizer_groups(model, built.infos, lr, float(train.get("weight_decay", 0.0)),
                              spec.get("role_lr_multipliers"))
    # No decay schedule or clipping (a global-norm clip couples the parameters and would hide the
    # per-role width scaling the check is there to see); an optional linear warmup.
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(train.get("betas", (0.9, 0.95))), eps=settings["adam_eps"])
    peak = [g["lr"] for g in opt.param_groups]
    inputs, targets = (t.to(device) for t in probe_batch)
    recorded = set(record_steps(settings["steps"]))
    baseline = probe(model, inputs, targets)
    w0 = initial_gate_weights(model)
    rows = [_row(variant, width, seed, 0, log2_lr, name, value) for name, value in sizes(baseline, None).items()]
    for step in range(1, settings["steps"] + 1):
        factor = warmup_factor(step, settings["warmup_steps"])
        for group, peak_lr in zip(opt.param_groups, peak, strict=True):
            group["lr"] = peak_lr * factor
        x, y = (t.to(device) for t in train_batch(tokens, settings["batch_size"], settings["seq_len"], seed, step - 1))
        logits = model(x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in recorded:
            measured = sizes(probe(model, inputs, targets, w0), baseline)
            rows += [_row(variant, width, seed, step, log2_lr, name, value) for name, value in measured.items()]
    return rows


def _row(variant, width, seed, step, log2_lr, module, value) -> dict:
    quantity, rule = MODULES[module]
    return {
        "variant": variant,
        "width": width,
        "seed": seed,
        "step": step,
        "log2_lr": log2_lr,
        "module": module,
        "quantity": quantity,
        "rule": rule,
        "mean_abs": value,
    }


def run_check(variant: str, config: dict, tokens: np.ndarray, device) -> tuple[list[dict], dict]:
    from gdn.data.tokens import train_batch
    from gdn.variants import VARIANTS

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    settings = settings_from_config(config)
    log2_lr_for(settings, variant)  # a mapping without this variant fails before any training
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
# Judging (numpy and pandas only)

# Upper 0.95 quantiles of Student's t for 1..30 degrees of freedom (two-sided 90% intervals).
_T95 = (6.3138, 2.9200, 2.3534, 2.1318, 2.0150, 1.9432, 1.8946, 1.8595, 1.8331, 1.8125, 1.7959, 1.7823,
        1.7709, 1.7613, 1.7531, 1.7459, 1.7396, 1.7341, 1.7291, 1.7247, 1.7207, 1.7171, 1.7139, 1.7109,
        1.7081, 1.7056, 1.7033, 1.7011, 1.6991, 1.6973)


def t_quantile_95(dof: int) -> float:
    """Upper 0.95 quantile of Student's t (table to 30 degrees of freedom, Cornish-Fisher beyond)."""
    if dof < 1:
        return math.nan
    if dof <= len(_T95):
        return _T95[dof - 1]
    z = 1.6448536269514722
    return (z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3))


def _fit_slope(log_w: np.ndarray, log_y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of log2 y on log2 width and its standard error (nan with 2 points)."""
    slope, intercept = np.polyfit(log_w, log_y, 1)
    dof = len(log_w) - 2
    if dof <= 0:
        return float(slope), math.nan
    resid = log_y - (slope * log_w + intercept)
    se = math.sqrt(float(resid @ resid) / dof / float(((log_w - log_w.mean()) ** 2).sum()))
    return float(slope), se


def slope_status(rule: str, low: float, high: float, slope: float, tolerance: float) -> str:
    """ok / unclear / flagged for a slope with CI [low, high] against the band ±tolerance."""
    if not (np.isfinite(low) and np.isfinite(high)):
        # no CI (one seed, two widths): the point estimate decides
        outside = slope > tolerance if rule == "bounded" else abs(slope) > tolerance
        return "flagged" if outside else "ok"
    if rule == "bounded":
        return "flagged" if low > tolerance else ("ok" if high <= tolerance else "unclear")
    if low > tolerance or high < -tolerance:
        return "flagged"
    return "ok" if -tolerance <= low and high <= tolerance else "unclear"


SLOPE_COLUMNS = ["variant", "module", "quantity", "rule", "judged", "step", "slope", "slope_se", "slope_ci_low",
                 "slope_ci_high", "n_widths", "n_seeds", "width_min", "width_max", "tolerance", "status", "flagged"]


def analyze(coord: pd.DataFrame, settings: dict) -> dict[str, pd.DataFrame]:
    """Slopes of log2 mean |x| vs log2 width per (variant, module, step), with CIs and status.

    settings: `slope_tolerance` (default 0.25) and `noise_factor` (default 3); the rule is in
    the module docstring. Pure pandas/numpy: imports nothing heavy.

    Returns:
      coord_slopes  SLOPE_COLUMNS: slope (of the seed-averaged sizes), slope_se, slope_ci_low/high
                    (CI_LEVEL), tolerance (the band's half-width), status (ok | unclear | flagged,
                    computed for every row), flagged (status == flagged), judged (the row counts
                    towards the verdict)
      coord_verdict variant, step (the last one), n_judged, n_flagged, n_unclear, flagged_modules,
                    unclear_modules, verdict
    """
    floor = float(settings.get("slope_tolerance", DEFAULTS["slope_tolerance"]))
    factor = float(settings.get("noise_factor", DEFAULTS["noise_factor"]))
    if coord.empty:
        empty = pd.DataFrame(columns=SLOPE_COLUMNS)
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
        if len(slopes) >= 2:
            se = float(slopes.std(ddof=1) / math.sqrt(len(slopes)))
            t = t_quantile_95(len(slopes) - 1)
        else:
            se, t = reg_se, t_quantile_95(len(widths) - 2)
        half = t * se if np.isfinite(se) else math.nan
        if np.isfinite(reg_se):
            half = max(half, factor * reg_se) if np.isfinite(half) else factor * reg_se
        rule = g["rule"].iloc[0]
        judged = rule in ("size", "update", "bounded") and int(step) >= JUDGED_FROM_STEP.get(module, 0)
        status = slope_status(rule, slope - half, slope + half, slope, floor)
        out.append({
            "variant": variant, "module": module, "quantity": g["quantity"].iloc[0], "rule": rule,
            "judged": judged, "step": int(step), "slope": slope, "slope_se": se,
            "slope_ci_low": slope - half, "slope_ci_high": slope + half, "n_widths": len(widths),
            "n_seeds": len(slopes), "width_min": int(widths[0]), "width_max": int(widths[-1]),
            "tolerance": floor, "status": status, "flagged": status == "flagged",
        })
    slopes_df = pd.DataFrame(out, columns=SLOPE_COLUMNS)
    return {"coord_slopes": slopes_df, "coord_verdict": _verdicts(slopes_df)}


def _verdicts(slopes: pd.DataFrame) -> pd.DataFrame:
    """Per variant at its last step: which judged modules scale with width, which are unclear."""
    cols = ["variant", "step", "n_judged", "n_flagged", "n_unclear", "flagged_modules", "unclear_modules", "verdict"]
    rows = []
    for variant, g in slopes.groupby("variant", sort=True):
        last = g[g["step"] == g["step"].max()]
        judged = last[last["judged"].astype(bool)]
        bad = judged[judged["status"] == "flagged"]
        unclear = judged[judged["status"] == "unclear"]

        def names(frame):
            return ", ".join(f"{r.module} ({r.slope:+.2f} [{r.slope_ci_low:+.2f}, {r.slope_ci_high:+.2f}])"
                             for r in frame.itertuples())

        verdict = "scales with width" if len(bad) else ("unclear" if len(unclear) else "width-stable")
        rows.append({
            "variant": variant, "step": int(last["step"].iloc[0]), "n_judged": len(judged), "n_flagged": len(bad),
            "n_unclear": len(unclear), "flagged_modules": names(bad), "unclear_modules": names(unclear),
            "verdict": verdict,
        })
    return pd.DataFrame(rows, columns=cols)


def judgement_lines(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Human-readable judgement after the last step: one line per judged module, then the verdict."""
    slopes = tables["coord_slopes"]
    lines = []
    marks = {"flagged": "FLAG", "unclear": "??  ", "ok": "ok  "}
    for variant, g in slopes.groupby("variant", sort=True):
        last = g[(g["step"] == g["step"].max()) & g["judged"].astype(bool)]
        widths = f"{int(g['width_min'].min())}..{int(g['width_max'].max())}"
        lines.append(f"{variant}: step {int(g['step'].max())}, widths {widths}, {CI_LEVEL:.0%} CIs")
        for r in last.itertuples():
            lines.append(f"  {marks.get(r.status, r.status)} {r.module:<14} rule={r.rule:<7} slope={r.slope:+.3f} "
                         f"[{r.slope_ci_low:+.3f}, {r.slope_ci_high:+.3f}]  band=±{r.tolerance:.2f}")
        verdict = tables["coord_verdict"]
        v = verdict[verdict["variant"] == variant]
        if not v.empty:
            v = v.iloc[0]
            detail = v["flagged_modules"] if v["n_flagged"] else (v["unclear_modules"] if v["n_unclear"] else "")
            lines.append(f"  => {v['verdict']}{': ' + detail if detail else ''}")
    return lines


def print_judgement(tables: dict[str, pd.DataFrame]) -> None:
    print("\n".join(judgement_lines(tables)))


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gdn.variants import VARIANTS

    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    parser.add_argument("--config-json", required=True,
                        help='JSON object: {"model": spec, "coordcheck": {...}, "train": {...}, "vocab_size": int}; '
                             "vocab_size defaults to the one in the token file's meta.json")
    parser.add_argument("--train-bin", required=True, help="packed training tokens (<split>.bin with .meta.json)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def _describe(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def run(args: argparse.Namespace) -> int:
    import torch

    from gdn import devices
    from gdn.checkpoint import write_json_atomic
    from gdn.data.tokens import load_meta, load_tokens

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
        "log2_lr": log2_lr_for(settings, args.variant),
        "recorded_steps": record_steps(settings["steps"]),
        "device": _describe(device),
        "torch": torch.__version__,
        "wall_s": round(time.time() - start, 2),
        "rows": rows,
    }
    write_json_atomic(args.out, result)
    print_judgement(analyze(pd.DataFrame(rows), settings))
    return 0
