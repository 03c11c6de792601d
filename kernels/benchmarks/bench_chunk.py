"""Time the chunked gated delta rule against flash-linear-attention, the PyTorch chunked
path and causal SDPA, on one GPU, in one process; check our gradients against float64.

    python kernels/benchmarks/bench_chunk.py --out results.json [--profile] [--sweep]

Every gated delta rule implementation gets the same work: raw gate logits a, b with the
gate formed inside, q/k L2-normalized inside (fla: use_gate_in_kernel,
use_beta_sigmoid_in_kernel, use_qk_l2norm_in_kernel), an initial state in and the final
state out (prefill-with-cache shape; the backward takes gradients of both o and the
final state). Times are CUDA-event medians from triton.testing.do_bench. The JSON is
rewritten after every row, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdn_kernels import fla_reference, reference, triton_ops  # noqa: E402

# Ordered so that an interrupted run has the two most telling shapes first: the one
# with published reference figures and the long sequence where SDPA's T^2 should lose.
SHAPES = [(8, 2048, 16, 128, 128), (1, 16384, 16, 128, 256), (8, 2048, 16, 128, 256), (4, 4096, 16, 128, 256)]
# The PyTorch chunked path walks the chunks in a Python loop and keeps every
# intermediate for autograd; past this many tokens x heads it is only run forward.
TORCH_CHUNKED_FWDBWD_MAX = 8 * 2048 * 16


def load_fla():
    """fla's chunk_gated_delta_rule, its version and the guard note (`fla_reference.load`),
    or (None, None, None). The gradient check below reports whether fla's gradients are right
    on this machine."""
    fla, note = fla_reference.load()
    if fla is None:
        print(f"{note}; its rows are skipped")
        return None, None, None
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    if note:
        print(note)
    return chunk_gated_delta_rule, fla.__version__, note


@dataclasses.dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    A_log: torch.Tensor
    dt_bias: torch.Tensor
    h0: torch.Tensor

    def leaves(self):
        return [self.q, self.k, self.v, self.a, self.b, self.A_log, self.dt_bias, self.h0]


def make_inputs(B, T, H, K, V, requires_grad, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape, **kw):
        return torch.randn(*shape, generator=gen, device="cuda", dtype=kw.get("dtype", torch.bfloat16))

    x = Inputs(
        q=rand(B, T, H, K), k=rand(B, T, H, K), v=rand(B, T, H, V),
        a=rand(B, T, H), b=rand(B, T, H),
        A_log=torch.empty(H, device="cuda").uniform_(0, math.log(16), generator=gen),
        dt_bias=rand(H, dtype=torch.float32) * 0.5,
        h0=rand(B, H, K, V, dtype=torch.float32) * 0.1,
    )
    for t in x.leaves():
        t.requires_grad_(requires_grad)
    return x


def run_ours(x: Inputs):
    return triton_ops.gated_delta_rule(
        x.q, x.k, x.v, x.a, x.b, x.A_log, x.dt_bias, initial_state=x.h0, output_final_state=True,
        use_qk_l2norm=True,
    )


def make_run_fla(fla_fn):
    def run(x: Inputs):
        return fla_fn(
            x.q, x.k, x.v, x.a, x.b, initial_state=x.h0, output_final_state=True, use_qk_l2norm_in_kernel=True,
            use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True, A_log=x.A_log, dt_bias=x.dt_bias,
        )

    return run


def run_torch_chunked(x: Inputs):
    q, k = reference.l2_normalize(x.q), reference.l2_normalize(x.k)
    g, beta = reference.gate_from_logits(x.a, x.b, x.A_log, x.dt_bias)
    return reference.chunked(q, k, x.v, g, beta, initial_state=x.h0, output_final_state=True)


def run_sdpa(x):
    return (F.scaled_dot_product_attention(*x, is_causal=True),)


def make_sdpa_inputs(B, T, H, K, V, requires_grad):
    q, k, v = (torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16) for d in (K, K, V))
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v


def time_pair(run, make, shape, fwdbwd=True):
    """(forward ms, forward+backward ms or None): medians over CUDA-event timings."""
    x = make(*shape, requires_grad=False)
    with torch.no_grad():
        fwd = do_bench(lambda: run(x), warmup=25, rep=100, return_mode="median")
    if not fwdbwd:
        return fwd, None
    x = make(*shape, requires_grad=True)
    outs = run(x)
    grads = [torch.randn_like(o) for o in outs]
    leaves = x.leaves() if isinstance(x, Inputs) else list(x)
    fb = do_bench(lambda: torch.autograd.backward(run(x), grads), warmup=25, rep=100, grad_to_none=leaves,
                  return_mode="median")
    return fwd, fb


LEAF_NAMES = ["q", "k", "v", "a", "b", "A_log", "dt_bias", "h0"]


def fp64_gradient_check(run, name, shape=(1, 1000, 16, 128, 128)):
    """Relative errors of o, the final state and every gradient against float64
    (reference.chunked in float64 on the bf16-rounded inputs, gate and norms in float64).
    The H, K, V of the first benchmark shape let both libraries reuse its compiled kernels."""
    x = make_inputs(*shape, requires_grad=True, seed=3)
    o, ht = run(x)
    gen = torch.Generator(device="cuda").manual_seed(4)
    do = torch.randn(o.shape, generator=gen, device="cuda", dtype=torch.float64)
    dht = torch.randn(ht.shape, generator=gen, device="cuda", dtype=torch.float64)
    ((o.double() * do).sum() + (ht.double() * dht).sum()).backward()
    r = [t.detach().double().requires_grad_() for t in x.leaves()]
    rq, rk, rv, ra, rb, rA, rdt, rh0 = r
    l2 = lambda t: t * torch.rsqrt((t * t).sum(-1, keepdim=True) + 1e-6)  # noqa: E731
    g = -rA.exp() * F.softplus(ra + rdt)
    beta = torch.sigmoid(rb)
    ro, rht = reference.chunked(l2(rq), l2(rk), rv, g, beta, initial_state=rh0, output_final_state=True)
    ((ro * do).sum() + (rht * dht).sum()).backward()
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    errs = {"o": rel(o, ro), "ht": rel(ht, rht)}
    for label, t, rt in zip(LEAF_NAMES, x.leaves(), r, strict=True):
        errs["d" + label] = rel(t.grad, rt.grad)
    print(f"fp64 check {name} at (B,T,H,K,V)={shape}, bf16: " + ", ".join(f"{n} {e:.2e}" for n, e in errs.items()))
    return errs


def profile_ours(shape):
    """Per-kernel CUDA time of one forward+backward (to see where the time goes)."""
    x = make_inputs(*shape, requires_grad=True)
    grads = [torch.randn_like(o) for o in run_ours(x)]
    for _ in range(3):
        torch.autograd.backward(run_ours(x), grads)
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            torch.autograd.backward(run_ours(x), grads)
        torch.cuda.synchronize()
    print(f"per-kernel CUDA time at {shape} (5 fwd+bwd):")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))


SWEEP_VARIANTS = {
    "state_bv32": {"state_block_v": 32},
    "state_bv128": {"state_block_v": 128},
    "state_warps8": {"state_warps": 8},
    "state_stages1": {"state_stages": 1},
    "state_stages3": {"state_stages": 3},
    "output_bv128": {"output_block_v": 128},
    "output_warps8": {"output_warps": 8},
    "prep_warps8": {"prep_warps_small_k": 8},
    "bwd_bv16": {"bwd_block_v": 16},
    "bwd_bv64": {"bwd_block_v": 64},
    "bwd_warps4": {"bwd_warps": 4},
    "bwd_stages1": {"bwd_stages": 1},
    "bwd_stages3": {"bwd_stages": 3},
    # The chunk-parallel backward as three kernels instead of chunk_bwd_kernel.
    "bwd_split": {"bwd_split": True},
    "bwd_split_bv32": {"bwd_split": True, "bwd_split_block_v": 32},
    "bwd_split_warps4": {"bwd_split": True, "bwd_split_warps": 4},
}


def time_variant(change: dict, shape) -> dict:
    """One launch variant in this process: its float64 check (largest relative error over o,
    the final state and every gradient) and its times at `shape`."""
    triton_ops.LAUNCH = dataclasses.replace(triton_ops.LAUNCH, **change)
    errors = fp64_gradient_check(run_ours, "variant")
    fwd, fb = time_pair(run_ours, make_inputs, shape)
    return {"max_rel_err": max(errors.values()), "fwd_ms": fwd, "fwdbwd_ms": fb}


def sweep_launch(shape, gain=0.02, timeout_s=240):
    """Forward and forward+backward time of single launch changes at one shape, then of the
    changes that each gained more than `gain` of the default's forward+backward time, combined
    (the best value per field). Each variant runs in a process of its own, float64-checked
    first: a launch that faults (Triton 3.6 on Hopper did, kernels/NOTES.md) leaves its CUDA
    context unusable, and would otherwise end the sweep. Returns the rows for the JSON."""
    rows = []

    def measure(name, change):
        cmd = [sys.executable, __file__, "--out", os.devnull, "--variant", json.dumps(change),
               "--variant-shape", *map(str, shape)]
        row = {"variant": name, "change": change, "shape": list(shape), "fwd_ms": None, "fwdbwd_ms": None}
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            lines = done.stdout.strip().splitlines()
            if done.returncode != 0 or not lines:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                row["error"] = f"exit {done.returncode}: {tail[:200]}"
            else:
                row.update(json.loads(lines[-1]))
        except subprocess.TimeoutExpired:
            row["error"] = f"no result within {timeout_s} s"
        except json.JSONDecodeError:
            row["error"] = f"unexpected output: {lines[-1][:200]}"
        rows.append(row)
        if row["fwdbwd_ms"] is not None:
            print(f"  {name:14s} fwd {row['fwd_ms']:.3f} ms  fwd+bwd {row['fwdbwd_ms']:.3f} ms"
                  f"  (float64 check: max rel. error {row['max_rel_err']:.1e})")
        else:
            print(f"  {name:14s} failed: {row['error']}")
        return row["fwdbwd_ms"]

    print(f"launch sweep at {shape} (default {dataclasses.asdict(triton_ops.LAUNCH)}):")
    default = measure("default", {})
    if default is not None:
        best: dict[str, tuple[float, object]] = {}
        for name, change in SWEEP_VARIANTS.items():
            fb = measure(name, change)
            if fb is not None and fb < default * (1 - gain):
                for field, value in change.items():
                    if field not in best or fb < best[field][0]:
                        best[field] = (fb, value)
        if len(best) > 1:
            measure("combined", {field: value for field, (_, value) in best.items()})
    return rows


def git_commit():
    # A copy without .git (a GPU box) names its commit in GDN_COMMIT, as the pipeline's jobs do.
    if os.environ.get("GDN_COMMIT"):
        return os.environ["GDN_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def fmt(x):
    return "-" if x is None else f"{x:.3f}"


def ratio(num, den):
    return "-" if num is None or den is None else f"{num / den:.2f}x"


def print_table(rows):
    head = ["B,T,H,K,V", "ours fwd", "fla fwd", "sdpa fwd", "torch fwd", "ours f+b", "fla f+b", "sdpa f+b",
            "torch f+b", "fla/ours fwd", "fla/ours f+b", "sdpa/ours fwd", "sdpa/ours f+b"]
    print(" | ".join(f"{h:>13s}" for h in head) + "   (times in ms)")
    for shape in SHAPES:
        by = {r["impl"]: r for r in rows if (r["B"], r["T"], r["H"], r["K"], r["V"]) == shape}
        fwd = {impl: by.get(impl, {}).get("fwd_ms") for impl in ("ours", "fla", "sdpa", "torch_chunked")}
        fb = {impl: by.get(impl, {}).get("fwdbwd_ms") for impl in ("ours", "fla", "sdpa", "torch_chunked")}
        cells = [",".join(map(str, shape))]
        cells += [fmt(fwd[i]) for i in ("ours", "fla", "sdpa", "torch_chunked")]
        cells += [fmt(fb[i]) for i in ("ours", "fla", "sdpa", "torch_chunked")]
        cells += [ratio(fwd["fla"], fwd["ours"]), ratio(fb["fla"], fb["ours"])]
        cells += [ratio(fwd["sdpa"], fwd["ours"]), ratio(fb["sdpa"], fb["ours"])]
        print(" | ".join(f"{c:>13s}" for c in cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON rows")
    parser.add_argument("--profile", action="store_true", help="per-kernel breakdown at the first shape")
    parser.add_argument("--sweep", action="store_true",
                        help="try launch variants at the two (8, 2048) shapes before the table")
    parser.add_argument("--shapes", type=int, nargs="+", default=None, metavar="I",
                        help="indices into the shape list to time (default: all)")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # one sweep variant (JSON), internal
    parser.add_argument("--variant-shape", type=int, nargs=5, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        # The pipeline's bench rule runs this on every machine: say why there are no rows.
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"kind": "kernel_bench", "suite": "kernels", "status": "skipped",
                                        "reason": "the kernel benchmark needs a CUDA GPU; this machine has none",
                                        "device": "cpu", "rows": []}, indent=1))
        print(f"{args.out}: skipped (no CUDA GPU)")
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.variant is not None:
        print(json.dumps(time_variant(json.loads(args.variant), tuple(args.variant_shape))))
        return

    fla_fn, fla_version, fla_note = load_fla()
    device = torch.cuda.get_device_name()
    print(f"device {device}, torch {torch.__version__}, triton {triton.__version__}, fla {fla_version}")

    fp64_gradient_check(run_ours, "ours")
    if fla_fn is not None:
        try:
            fp64_gradient_check(make_run_fla(fla_fn), "fla")
        except Exception as err:
            print(f"fp64 check fla failed to run: {type(err).__name__}: {err}")
    if args.profile:
        profile_ours(SHAPES[0])
    sweep_rows = []
    if args.sweep:
        for shape in (SHAPES[0], SHAPES[2]):
            sweep_rows += sweep_launch(shape)

    impls = [("ours", run_ours, make_inputs, None)]
    if fla_fn is not None:
        impls.append(("fla", make_run_fla(fla_fn), make_inputs, fla_note))
    impls.append(("sdpa", run_sdpa, make_sdpa_inputs,
                  "causal softmax attention, [B,H,T,D], D=K for q,k and V for v; backend chosen by torch"))
    impls.append(("torch_chunked", run_torch_chunked, make_inputs, None))

    rows = []
    result = {"kind": "kernel_bench", "device": device, "torch": torch.__version__, "triton": triton.__version__,
              "fla": fla_version, "commit": git_commit(), "status": "running", "rows": rows}
    if sweep_rows:
        result["launch_sweep"] = sweep_rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for shape in [SHAPES[i] for i in args.shapes] if args.shapes else SHAPES:
        B, T, H, K, V = shape
        for name, run, make, note in impls:
            fwdbwd = not (name == "torch_chunked" and B * T * H > TORCH_CHUNKED_FWDBWD_MAX)
            row_note = note
            try:
                fwd, fb = time_pair(run, make, shape, fwdbwd=fwdbwd)
                if not fwdbwd:
                    row_note = f"forward only: fwd+bwd above {TORCH_CHUNKED_FWDBWD_MAX} tokens x heads not run"
            except torch.cuda.OutOfMemoryError:
                fwd, fb, row_note = None, None, "out of memory"
            torch.cuda.empty_cache()
            rows.append({"impl": name, "B": B, "T": T, "H": H, "K": K, "V": V, "dtype": "bf16",
                         "fwd_ms": fwd, "fwdbwd_ms": fb, "note": row_note})
            args.out.write_text(json.dumps(result, indent=1))
            suffix = f"  [{row_note}]" if row_note else ""
            print(f"{name:14s} {shape}: fwd {fmt(fwd)} ms, fwd+bwd {fmt(fb)} ms{suffix}")

    result["status"] = "completed"  # a run cut short leaves "running"
    args.out.write_text(json.dumps(result, indent=1))
    print()
    print_table(rows)

    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
