"""Bytes that autograd saves for backward, per module, for one training forward (+ loss).

What a forward saves for backward has the same shapes and dtypes on every device, so the
activation part of a training step's memory can be measured on the CPU. This runs one
forward with labels under `torch.autograd.graph.saved_tensors_hooks`, records every saved
tensor (bytes, dtype, shape, the innermost module that was running, the op that saved it)
and prints the totals per module kind, scaled linearly to a target number of tokens per step.

It does not measure weights, gradients, optimizer state, transient buffers that are freed
within the forward or the backward, nor allocator fragmentation: a GPU's peak includes those.

    python scripts/saved_activations.py --config config/study.yaml --shape 125M \\
        --variants transformer_mup gdn_mup --seq-len 2048 --batch 1 --tokens-per-step 16384

The Triton kernels run on the CPU only under the interpreter: pass --kernel-backend triton or
--conv-backend triton and this sets TRITON_INTERPRET=1 before anything imports triton.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import weakref
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

MIB = 2**20
DTYPES = ("bfloat16", "float32")


@dataclass
class SavedRecord:
    module: str  # qualified name of the innermost module running ("" is the model's own forward)
    op: str  # the torch function (or autograd.Function) that saved it
    producer: str  # grad_fn of the saved tensor ("none" for a tensor autograd does not track)
    dtype: str
    shape: tuple
    nbytes: int  # numel x element size of this saved tensor (a view counts its own elements)
    storage: int  # data pointer of its storage: the key for counting shared storages once
    storage_nbytes: int  # what the storage holds (a view can keep a larger storage alive)


# ---------------------------------------------------------------- recording


def _custom_function_name() -> str | None:
    """Name of the autograd.Function whose save_for_backward is running, if any.

    A custom Function packs its saved tensors after its forward has returned, from inside
    `Function.apply`, so no torch function is on our op stack then; its class is `cls` there.
    """
    import torch

    frame = sys._getframe(2)
    while frame is not None:
        cls = frame.f_locals.get("cls") if frame.f_code.co_name == "apply" else None
        if isinstance(cls, type) and issubclass(cls, torch.autograd.Function):
            return cls.__name__
        frame = frame.f_back
    return None


class SavedTensorLog:
    """Context manager that records every tensor saved for backward while it is active.

    Module attribution: forward pre/post hooks keep a stack of module names, and a saved tensor
    goes to the innermost. Op attribution: a TorchFunctionMode keeps the outermost torch function
    being called (the mode is off inside its own handler, so composite functions such as
    cross_entropy are named as the model calls them, not as their decompositions).
    Parameters are excluded by storage: a saved weight, or a view of one, is not an activation.
    """

    def __init__(self, model):
        self.model = model
        self.records: list[SavedRecord] = []
        self._modules: list[str] = []
        self._ops: list[str] = []
        self._param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self._handles = []
        self._contexts = []
        # Storages of everything packed, held until the log closes: a tensor that a discarded
        # branch of the graph saved is freed during the forward, and its address could then be
        # reused by a later saved tensor, which deduplication by address would take for the same.
        self._storages = []
        self._tensors: list[weakref.ref] = []

    def _push(self, name):
        def hook(module, args):
            self._modules.append(name)
        return hook

    def _pop(self, name):
        def hook(module, args, output):
            # Pop back to (and including) this module: a module whose forward raised would
            # otherwise leave its name on the stack.
            while self._modules and self._modules.pop() != name:
                pass
        return hook

    def _op_mode(self):
        from torch.overrides import TorchFunctionMode

        ops = self._ops

        class _OpNames(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                ops.append(getattr(func, "__name__", str(func)))
                try:
                    return func(*args, **(kwargs or {}))
                finally:
                    ops.pop()

        return _OpNames()

    def _pack(self, t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._param_storages:
            op = self._ops[-1] if self._ops else (_custom_function_name() or "unknown")
            producer = type(t.grad_fn).__name__ if t.grad_fn is not None else "none"
            self.records.append(SavedRecord(
                module=self._modules[-1] if self._modules else "", op=op, producer=producer,
                dtype=str(t.dtype).removeprefix("torch."), shape=tuple(t.shape),
                nbytes=t.numel() * t.element_size(), storage=storage.data_ptr(), storage_nbytes=storage.nbytes(),
            ))
            self._storages.append(storage)
            self._tensors.append(weakref.ref(t))
        return t

    def held(self) -> list[SavedRecord]:
        """The records whose tensor the graph still holds (call while the forward's output lives).

        The graph keeps what pack returned (the tensor itself) until backward or until the
        graph is dropped; a saved tensor already gone belonged to a branch nothing depends on."""
        return [r for r, ref in zip(self.records, self._tensors, strict=True) if ref() is not None]

    def __enter__(self):
        import torch

        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._push(name)))
            self._handles.append(module.register_forward_hook(self._pop(name)))
        self._contexts = [torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t), self._op_mode()]
        for c in self._contexts:
            c.__enter__()
        return self

    def __exit__(self, *exc):
        for c in reversed(self._contexts):
            c.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles, self._contexts, self._storages = [], [], []
        return False


def record_training_forward(model, input_ids) -> list[SavedRecord]:
    """Records what one forward with labels (the training loss) saves for backward.

    The graph is dropped afterwards without a backward: only the saved set is wanted."""
    with SavedTensorLog(model) as log:
        out = model(input_ids=input_ids, labels=input_ids)
        records = log.held()
    del out
    return records


# ---------------------------------------------------------------- accounting

_LAYER = re.compile(r"^(?:blocks|layers)\.(\d+)\.(.*)$")


def module_kind(name: str) -> tuple[str, int | None]:
    """(kind, layer index or None): `blocks.3.mixer.q_conv` -> (`mixer.q_conv`, 3).

    The model's own forward (slicing the readout and the float32 cross-entropy) is `loss`."""
    m = _LAYER.match(name)
    if m:
        return m.group(2), int(m.group(1))
    return (name or "loss"), None


def dedup_bytes(records: list[SavedRecord]) -> int:
    """Each distinct storage once, at its full size (a saved view keeps its whole storage alive)."""
    return sum({r.storage: r.storage_nbytes for r in records}.values())


def by_kind(records: list[SavedRecord], n_layers: int, scale: float = 1.0, layer_scale: float = 1.0) -> dict:
    """Per module kind: naive and deduplicated bytes in total and per layer, times `scale`.

    `layer_scale` (target depth / measured depth) multiplies the kinds inside the blocks: every
    block has the same shapes, so a shallower model measures the same per-layer bytes faster.

    A storage saved under two kinds is counted once overall, under the kind that saved it first
    (the forward's order), so the kinds' deduplicated bytes add up to the deduplicated total."""
    owner: dict[int, str] = {}
    for r in records:
        owner.setdefault(r.storage, module_kind(r.module)[0])
    rows: dict[str, dict] = defaultdict(lambda: {"naive": 0.0, "dedup": 0.0, "tensors": 0, "ops": defaultdict(float)})
    seen: set[int] = set()
    for r in records:
        kind, layer = module_kind(r.module)
        factor = scale * (layer_scale if layer is not None else 1.0)
        row = rows[kind]
        row["naive"] += r.nbytes * factor
        row["tensors"] += 1
        row["ops"][f"{r.op}<-{r.producer} {r.dtype}"] += r.nbytes * factor
        row["per_layer"] = layer is not None
        if r.storage not in seen and owner[r.storage] == kind:
            seen.add(r.storage)
            row["dedup"] += r.storage_nbytes * factor
    for row in rows.values():
        divisor = n_layers if row["per_layer"] else 1  # n_layers: the depth reported (the shape's)
        row["naive_per_layer"] = row["naive"] / divisor
        row["dedup_per_layer"] = row["dedup"] / divisor
        row["ops"] = dict(sorted(row["ops"].items(), key=lambda kv: -kv[1]))
    return dict(rows)


def summary(records: list[SavedRecord], n_layers: int, scale: float, layer_scale: float = 1.0) -> dict:
    """Totals (the sums over the kinds, so that depth scaling applies to both) and the kinds."""
    kinds = by_kind(records, n_layers, scale, layer_scale)
    return {
        "naive_bytes": sum(k["naive"] for k in kinds.values()),
        "dedup_bytes": sum(k["dedup"] for k in kinds.values()),
        "kinds": kinds,
    }


def format_table(title: str, result: dict, top_ops: int = 3) -> str:
    kinds = sorted(result["kinds"].items(), key=lambda kv: -kv[1]["dedup"])
    lines = [title, f"{'module kind':<22} {'MiB/layer':>10} {'MiB total':>10} {'naive MiB':>10} {'n':>5}  top ops"]
    for kind, row in kinds:
        per_layer = f"{row['dedup_per_layer'] / MIB:10.1f}" if row["per_layer"] else f"{'-':>10}"
        ops = ", ".join(f"{op} {b / MIB:.0f}" for op, b in list(row["ops"].items())[:top_ops])
        lines.append(f"{kind:<22} {per_layer} {row['dedup'] / MIB:10.1f} {row['naive'] / MIB:10.1f} "
                     f"{row['tensors']:5d}  {ops}")
    lines.append(f"{'TOTAL':<22} {'':>10} {result['dedup_bytes'] / MIB:10.1f} {result['naive_bytes'] / MIB:10.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=Path("config/study.yaml"))
    p.add_argument("--shape", default="125M")
    p.add_argument("--variants", nargs="+", default=["transformer_mup", "gdn_mup"])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens-per-step", type=int, default=16384,
                   help="bytes are scaled by this / (batch x seq-len): saved bytes are linear in tokens")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    p.add_argument("--kernel-backend", choices=("torch", "triton"), default="torch",
                   help="GDN recurrence: the PyTorch chunked form, or the Triton autograd function")
    p.add_argument("--conv-backend", choices=("torch", "triton"), default="torch",
                   help="GDN short convolution: the PyTorch taps, or the fused Triton kernels")
    p.add_argument("--recompute-states", action="store_true",
                   help="GDN's Triton recurrence keeps only its inputs and recomputes the states in backward")
    p.add_argument("--layers", type=int, default=None,
                   help="build this many blocks and scale the per-block bytes to the shape's depth "
                        "(the blocks are identical; for the slow Triton interpreter)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def measure_variant(args, shape: dict, vocab_size: int, variant: str) -> dict:
    import torch

    from gdn.bench.shapes import build

    spec = dict(shape, kernel_backend=args.kernel_backend, conv_backend=args.conv_backend,
                recompute_states=args.recompute_states)
    if args.layers:
        spec["n_layers"] = args.layers
    dtype = getattr(torch, args.dtype)
    model = build(spec, variant, vocab_size, torch.device("cpu"), dtype).train()
    ids = torch.randint(0, vocab_size, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    records = record_training_forward(model, ids)
    seconds = time.perf_counter() - start
    scale = args.tokens_per_step / (args.batch * args.seq_len)
    n_layers = shape["n_layers"]
    layer_scale = n_layers / model.config.n_layers
    backends = ("" if variant.startswith("transformer")
                else f" kernel={args.kernel_backend} conv={args.conv_backend}"
                + (" recompute_states" if args.recompute_states else ""))
    return {
        "variant": variant, "shape": shape["name"], "dtype": args.dtype, "batch": args.batch,
        "seq_len": args.seq_len, "tokens_per_step": args.tokens_per_step, "scale": scale,
        "kernel_backend": None if variant.startswith("transformer") else args.kernel_backend,
        "conv_backend": None if variant.startswith("transformer") else args.conv_backend,
        "recompute_states": None if variant.startswith("transformer") else args.recompute_states,
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1", "n_layers": n_layers,
        "measured_layers": model.config.n_layers, "forward_seconds": round(seconds, 1),
        "title": (f"{variant} {shape['name']} {args.dtype}{backends}: measured "
                  f"B={args.batch} T={args.seq_len} with {model.config.n_layers} of {n_layers} layers; "
                  f"MiB scaled x{scale:g} to {args.tokens_per_step} tokens/step"),
        **summary(records, n_layers, scale, layer_scale),
        "records": [asdict(r) for r in records],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if "triton" in (args.kernel_backend, args.conv_backend):
        # No GPU here: the kernels run under the interpreter, which must be chosen before import.
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from gdn.bench.shapes import named_shape

    if args.threads:
        torch.set_num_threads(args.threads)
    shape, bench = named_shape(args.config, args.shape)
    vocab_size = bench.get("vocab_size", 50257)
    results = []
    for variant in args.variants:
        result = measure_variant(args, shape, vocab_size, variant)
        print(format_table(result["title"], result), flush=True)
        print(f"(forward under the hooks: {result['forward_seconds']} s)\n", flush=True)
        results.append(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
