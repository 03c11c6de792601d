"""Width parametrizations (SP, μP, μP with gating normalization) in one table.

As in microsoft/mup, a dimension is *infinite* when it differs between the base-width
model and a wider one. A parameter's role follows from which of its dimensions are
infinite (and, for two Linear layers of the same shape class, from its module kind):

    embedding  nn.Embedding                            finite -> infinite
    hidden     Linear, fan-in and fan-out infinite      infinite -> infinite
    readout    the lm_head                              infinite -> finite
    gate       a_proj / b_proj when their output is finite (GDN widened by head dim)
    vector     everything else: norm gains, conv taps, A_log, dt_bias, finite->finite

Each (parametrization, role) row of `RULES` gives, as functions of the width ratio m
(fan-in now / fan-in at base width), the factor on the init std, the forward multiplier,
the factor on the AdamW learning rate and the factor on weight decay (decoupled AdamW
decays by lr*wd, so hidden weights get wd*m to keep lr*wd fixed). The derivation is in
docs/mup_gdn.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from gdn.variants import VARIANTS, Variant  # noqa: F401  (re-exported: the rules' users import them here)

ONE: Callable[[float], float] = lambda m: 1.0  # noqa: E731


@dataclass(frozen=True)
class Rule:
    init: Callable[[float], float] = ONE  # factor on the base init std (0 means zero init)
    multiplier: Callable[[float], float] = ONE  # forward multiplier on the layer's output
    lr: Callable[[float], float] = ONE  # factor on the base learning rate
    weight_decay: Callable[[float], float] = ONE  # factor on the base weight decay


_SP = Rule()
_HIDDEN_MUP = Rule(init=lambda m: m**-0.5, lr=lambda m: 1.0 / m, weight_decay=lambda m: m)

RULES: dict[str, dict[str, Rule]] = {
    "sp": {"embedding": _SP, "hidden": _SP, "readout": _SP, "gate": _SP, "vector": _SP},
    # μP, with the gates treated as microsoft/mup treats any width->finite map (MuReadout-style).
    "mup": {
        "embedding": _SP,
        "hidden": _HIDDEN_MUP,
        "readout": Rule(multiplier=lambda m: 1.0 / m),
        "gate": Rule(multiplier=lambda m: 1.0 / m),
        "vector": _SP,
    },
    # μP + gating normalization: gate logits x 1/sqrt(m), width-independent init, lr / sqrt(m),
    # so the gate pre-activation keeps its size at init and its update size during training.
    "mup_gn": {
        "embedding": _SP,
        "hidden": _HIDDEN_MUP,
        "readout": Rule(multiplier=lambda m: 1.0 / m),
        "gate": Rule(multiplier=lambda m: m**-0.5, lr=lambda m: m**-0.5, weight_decay=lambda m: m**0.5),
        "vector": _SP,
    },
}


GATE_MODULES = ("a_proj", "b_proj")
NO_WEIGHT_DECAY_ROLES = ("embedding", "vector")


@dataclass(frozen=True)
class ParamInfo:
    name: str
    role: str
    width_ratio: float  # m for this parameter: fan-in (or infinite dim) now / at base width
    rule: Rule


def _module_of(model: nn.Module, param_name: str) -> tuple[str, nn.Module]:
    module_name = param_name.rsplit(".", 1)[0] if "." in param_name else ""
    return module_name, model.get_submodule(module_name)


def classify(model: nn.Module, base_shapes: dict[str, tuple], wider_shapes: dict[str, tuple], parametrization: str):
    """Role and width ratio of every parameter of `model` (built at the target width).

    base_shapes / wider_shapes: parameter shapes of the same architecture at the base width
    and at a larger width; they decide which dimensions are infinite.
    """
    if parametrization not in RULES:
        raise ValueError(f"unknown parametrization {parametrization!r}; known: {sorted(RULES)}")
    table = RULES[parametrization]
    infos = {}
    for name, p in model.named_parameters():
        if name not in base_shapes or name not in wider_shapes:
            raise KeyError(f"parameter {name} is missing from the base/wider shape models")
        base, wider = base_shapes[name], wider_shapes[name]
        infinite = [b != w for b, w in zip(base, wider)]
        module_name, module = _module_of(model, name)
        kind = module_name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Embedding):
            role, ratio_dim = "embedding", 1
        elif isinstance(module, nn.Linear) and p.dim() == 2:
            fan_out_inf, fan_in_inf = infinite
            if fan_in_inf and fan_out_inf:
                role = "hidden"
            elif fan_in_inf and kind in GATE_MODULES:
                role = "gate"
            elif fan_in_inf and kind == "lm_head":
                role = "readout"
            elif fan_in_inf:
                raise ValueError(f"{name}: a width->finite Linear that is neither the readout nor a gate")
            else:
                role = "embedding" if fan_out_inf else "vector"  # finite->inf behaves like an input layer
            ratio_dim = 1 if fan_in_inf else 0
        else:
            role, ratio_dim = "vector", None
        if ratio_dim is None or not infinite[ratio_dim]:
            ratio = 1.0
        else:
            ratio = p.shape[ratio_dim] / base[ratio_dim]
        infos[name] = ParamInfo(name, role, ratio, table[role])
    return infos


def module_multipliers(infos: dict[str, ParamInfo], input_multiplier: float, output_multiplier: float) -> dict:
    """Forward multipliers keyed by module kind, as the model configs expect them."""
    mult = {}
    for info in infos.values():
        kind = info.name.rsplit(".", 2)[-2] if info.name.count(".") else info.name
        if info.role == "embedding" and kind == "embed":
            mult["embed"] = input_multiplier * info.rule.multiplier(info.width_ratio)
        elif info.role == "readout":
            mult["lm_head"] = output_multiplier * info.rule.multiplier(info.width_ratio)
        elif info.role == "gate":
            value = info.rule.multiplier(info.width_ratio)
            if mult.setdefault(kind, value) != value:
                raise ValueError(f"gate multiplier differs across layers for {kind}")
    return mult


def base_std(info: ParamInfo, init_std: float, gate_init_std: float | None) -> float:
    """The base-width init std of one parameter: the gate projections may have their own
    (`model.gate_init_std`), so that the gate logits' size at init is a knob the study can turn."""
    return gate_init_std if info.role == "gate" and gate_init_std is not None else init_std


@torch.no_grad()
def initialize(model: nn.Module, infos: dict[str, ParamInfo], init_std: float, readout_zero_init: bool, seed: int,
               gate_init_std: float | None = None):
    """Draws every matrix from N(0, (base std * rule.init(m))^2); vectors keep module defaults.

    Parameters are drawn in name order from one seeded generator, so a run is reproducible.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        info = infos[name]
        if info.role == "vector":
            continue
        if info.role == "readout" and readout_zero_init:
            p.zero_()
            continue
        std = base_std(info, init_std, gate_init_std) * info.rule.init(info.width_ratio)
        p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(std).to(p.dtype))
    for module in model.modules():
        if hasattr(module, "reset_gate_parameters"):
            module.reset_gate_parameters(gen)


@torch.no_grad()
def initialize_on_device(model: nn.Module, infos: dict[str, ParamInfo], init_std: float, readout_zero_init: bool,
                         gate_init_std: float | None = None):
    """The stds of `initialize`, drawn where the parameters live (unseeded): for benchmarks."""
    for name, p in model.named_parameters():
        info = infos[name]
        if info.role == "vector":
            continue
        if info.role == "readout" and readout_zero_init:
            p.zero_()
        else:
            p.normal_(0.0, base_std(info, init_std, gate_init_std) * info.rule.init(info.width_ratio))
    for module in model.modules():
        if hasattr(module, "reset_gate_parameters"):
            module.reset_gate_parameters()


def optimizer_groups(model: nn.Module, infos: dict[str, ParamInfo], lr: float, weight_decay: float,
                     role_lr_multipliers: dict[str, float] | None = None) -> list[dict]:
    """AdamW parameter groups with per-role learning rate and weight decay.

    role_lr_multipliers (`model.role_lr_multipliers`): width-independent constants on a role's
    learning rate, the per-layer constants μP leaves free. Being the same at every width, they
    keep μP equal to SP at the base width; they do not change any width scaling.
    """
    multipliers = role_lr_multipliers or {}
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        info = infos[name]
        group_lr = lr * info.rule.lr(info.width_ratio) * float(multipliers.get(info.role, 1.0))
        wd = 0.0 if info.role in NO_WEIGHT_DECAY_ROLES else weight_decay * info.rule.weight_decay(info.width_ratio)
        key = (info.role, round(group_lr, 15), round(wd, 15))
        group = groups.setdefault(
            key, {"params": [], "names": [], "lr": group_lr, "weight_decay": wd, "role": info.role})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def describe(infos: dict[str, ParamInfo], base_lr: float) -> list[dict]:
    """One row per parameter: role, width ratio, init factor, multiplier, lr — for logs and reports."""
    return [
        {
            "name": i.name,
            "role": i.role,
            "width_ratio": i.width_ratio,
            "init_factor": i.rule.init(i.width_ratio),
            "multiplier": i.rule.multiplier(i.width_ratio),
            "lr": base_lr * i.rule.lr(i.width_ratio),
        }
        for i in infos.values()
    ]


def attention_logit_scale(parametrization: str, head_dim: int, base_head_dim: int) -> float:
    """SP: 1/sqrt(d_head). μP: alpha/d_head with alpha = sqrt(base d_head), equal to SP at base width."""
    if parametrization == "sp":
        return head_dim**-0.5
    return math.sqrt(base_head_dim) / head_dim


def gdn_query_scale(parametrization: str, head_k_dim: int, base_head_k_dim: int) -> float:
    """q and k are L2-normalized, so q.k is O(1) at any head dim: μP keeps 1/sqrt(d_k at base)."""
    if parametrization == "sp":
        return head_k_dim**-0.5
    return base_head_k_dim**-0.5
