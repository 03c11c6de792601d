"""Registers, spills and shared memory of the chunk backward kernels compiled for sm_90, on
any machine (no GPU needed): `triton.compile` to a cubin for an H100/H200 target, then ptxas's
own resource report (`cuobjdump --dump-resource-usage`).

    python kernels/benchmarks/sm90_resources.py [--K 128] [--V 128] [--dtype bf16] [--json OUT]

It imports only triton (the kernel modules need no torch), so it runs in a bare environment
holding the GPU image's Triton version: `python -m venv /tmp/t36 && /tmp/t36/bin/pip install
triton==3.6.0`. These are compile-time figures, not timings: a kernel that spills runs its
spilled values through local memory, and one that needs most of the 227 KiB of shared memory
gets one CTA per SM, but how much either costs is only measured on the card.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

KERNELS_DIR = Path(__file__).resolve().parents[1]
CHUNK = 64


def _kernel_module(name: str):
    """gdn_kernels.<name> without running the package's __init__ (which imports torch)."""
    if "gdn_kernels" not in sys.modules:
        package = types.ModuleType("gdn_kernels")
        package.__path__ = [str(KERNELS_DIR / "gdn_kernels")]
        sys.modules["gdn_kernels"] = package
    return importlib.import_module(f"gdn_kernels.{name}")


def _signature(fn, pointer_types: dict, scalars: dict, constexprs: dict):
    """Triton signature and constexpr maps for `fn`, by argument name."""
    names = fn.arg_names
    signature, values = {}, {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
            values[(names.index(name),)] = constexprs[name]
        elif name in scalars:
            signature[name] = scalars[name]
        else:
            signature[name] = pointer_types.get(name, pointer_types["*"])
    # Every pointer 16-byte aligned, as torch's allocations are.
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in signature.items() if t.startswith("*")}
    return signature, values, attrs


def _cuobjdump() -> str:
    """Triton's own copy (its NVIDIA backend ships one), else the one on PATH."""
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else "cuobjdump"


def resources(fn, pointer_types, scalars, constexprs, num_warps, num_stages) -> dict:
    signature, values, attrs = _signature(fn, pointer_types, scalars, constexprs)
    compiled = triton.compile(ASTSource(fn, signature, values, attrs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", cubin.name], capture_output=True,
                               text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    # STACK is the per-thread stack frame in local memory, which is where ptxas puts spills
    # (these kernels have no local arrays or calls of their own).
    return {"registers": int(fields["REG"]), "stack_bytes_per_thread": int(fields.get("STACK", 0)),
            "shared_kib": round(compiled.metadata.shared / 1024, 1)}


def backward_variants(K: int, V: int, dtype: str):
    """(name, kernel, pointer types, scalars, constexprs, launch candidates) of the backward."""
    fused = _kernel_module("triton_chunk_bwd")
    # Arguments stored in float32 whatever the input dtype (gdn_kernels.triton_ops).
    float32_args = ("A_log", "dt_bias", "g_cum", "beta_in", "t_inv", "dv_new", "dx_tok", "dalog_tok",
                    "d_qh", "dw_acc", "d_kend", "d_scores", "dT_v", "dbeta_v", "h_dh", "dkn_out", "dG_out")
    pointers = {"*": f"*{dtype}", **{n: "*fp32" for n in float32_args}, "chunk_index": "*i32", "cu_seqlens": "*i32"}
    scalars = {"scale": "fp32", "a_scale": "fp32", "b_scale": "fp32", "H": "i32"}
    BK = max(16, triton.next_power_of_2(K))
    prec = "ieee" if dtype == "fp32" else "tf32"
    common = {"K": K, "V": V, "BK": BK, "C": CHUNK, "USE_L2": True, "DOT_PREC": prec}
    for bv in (16, 32, 64):
        for warps in (4, 8):
            yield (f"chunk_bwd BV={bv}", fused.chunk_bwd_kernel, pointers, scalars, {**common, "BV": bv}, warps)
    split = _kernel_module("triton_chunk_bwd_split")
    for bv in (16, 32, 64):
        for warps in (4, 8):
            yield (f"split.v_loop BV={bv}", split.chunk_bwd_v_kernel, pointers, scalars, {**common, "BV": bv}, warps)
    for warps in (4, 8):
        yield ("split.output", split.chunk_bwd_output_kernel, pointers, scalars, common, warps)
        yield ("split.wy", split.chunk_bwd_wy_kernel, pointers, scalars, common, warps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--K", type=int, default=128)
    parser.add_argument("--V", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--only", default=None, help="only the variants whose name starts with this")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("TRITON_INTERPRET is set: interpreted kernels cannot be compiled; unset it")
    rows = []
    print(f"triton {triton.__version__}, sm_90, K={args.K} V={args.V} {args.dtype}, {args.stages} stages")
    print(f"{'kernel':<24}{'warps':>6}{'regs':>6}{'stack B/thread':>16}{'shared KiB':>12}")
    for name, fn, pointers, scalars, constexprs, warps in backward_variants(args.K, args.V, args.dtype):
        if args.only and not name.startswith(args.only):
            continue
        try:
            row = resources(fn, pointers, scalars, constexprs, warps, args.stages)
        except Exception as error:  # noqa: BLE001  (a variant that does not compile is a row too)
            row = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"}
        rows.append({"kernel": name, "warps": warps, **row})
        if "error" in row:
            print(f"{name:<24}{warps:>6}  {row['error']}")
        else:
            print(f"{name:<24}{warps:>6}{row['registers']:>6}{row['stack_bytes_per_thread']:>16}{row['shared_kib']:>12}")
    if args.json:
        args.json.write_text(json.dumps({"triton": triton.__version__, "target": "sm_90", "K": args.K, "V": args.V,
                                         "dtype": args.dtype, "stages": args.stages, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
