"""Performance: gating-normalization overhead, training throughput, inference speed and memory,
and the kernel micro-benchmarks — measured on the machine named in each table, claims beside."""

from gdn.claims import CLAIMED_INFERENCE_1B, CLAIMED_OVERHEAD
from gdn.report.queries import frame, table_exists
from gdn.report.templating import render


def _rows(con, table, where=""):
    if not table_exists(con, table):
        return None
    df = frame(con, f'SELECT * FROM "{table}" {where}')
    return None if df.empty else df


# Targets set for this project (not claims of the original result), from the training-throughput
# issue: GDN's training tokens/s relative to the Transformer's, by sequence length, and ours
# relative to fla's GDN model.
THROUGHPUT_TARGETS = {2048: 0.9, 8192: 1.2}
FLA_TARGET = 1.3


def throughput_ratios(throughput) -> list[dict]:
    """Per (shape, sequence length, compiled) and GDN+μP row (the plain one and each
    `gdn_mup+<option>`): its tokens/s over Transformer+μP's and, where fla's model was timed
    (always eager, as shipped), over fla's GDN."""
    measured = throughput[throughput.get("status", "measured").fillna("measured") == "measured"] \
        if "status" in throughput else throughput
    if "compiled" not in measured:
        measured = measured.assign(compiled=False)
    out = []
    for (shape, seq_len, compiled), group in measured.groupby(["shape", "seq_len", "compiled"], sort=True):
        tok = dict(zip(group["variant"], group["tokens_per_s"]))
        fla_group = measured[(measured["shape"] == shape) & (measured["seq_len"] == seq_len)
                             & (measured["variant"] == "fla_gdn")]
        fla = fla_group["tokens_per_s"].iloc[0] if len(fla_group) else None
        transformer = tok.get("transformer_mup")
        for label in sorted(v for v in tok if v == "gdn_mup" or v.startswith("gdn_mup+")) or ["gdn_mup"]:
            gdn = tok.get(label)
            out.append({"shape": shape, "seq_len": int(seq_len), "compiled": bool(compiled), "gdn_variant": label,
                        "gdn_over_transformer": gdn / transformer if gdn and transformer else None,
                        "target_vs_transformer": THROUGHPUT_TARGETS.get(int(seq_len)),
                        "gdn_over_fla": gdn / fla if gdn and fla else None, "target_vs_fla": FLA_TARGET})
    return out


# The kernel issue's targets: our chunked gated delta rule against fla's chunk_gated_delta_rule,
# and against causal SDPA at the longest sequence. Inference: GDN decode against the Transformer's
# at the longest prompt.
KERNEL_TARGETS = {"fla_fwd": 1.5, "fla_fwdbwd": 1.2, "sdpa_fwdbwd_longest": 1.0}
DECODE_TARGET = 1.8


def kernel_ratios(kernels) -> list[dict]:
    """Per kernel-benchmark shape: fla / ours and SDPA / ours times (above 1: ours faster)."""
    out = []
    keys = ["B", "T", "H", "K", "V"]
    longest = int(kernels["T"].max())
    for shape, group in kernels.groupby(keys, sort=False):
        by = {r["impl"]: r for r in group.to_dict("records")}
        out.append({"shape": "(" + ", ".join(str(int(v)) for v in shape) + ")", "longest": int(shape[1]) == longest,
                    **{f"{impl}_{name}": _time_ratio(by, impl, column)
                       for impl in ("fla", "sdpa") for name, column in (("fwd", "fwd_ms"), ("fwdbwd", "fwdbwd_ms"))}})
    return out


def _time_ratio(rows_by_impl: dict, impl: str, column: str):
    """rows_by_impl[impl][column] / rows_by_impl["ours"][column], None where either is missing."""
    theirs, ours = rows_by_impl.get(impl, {}).get(column), rows_by_impl.get("ours", {}).get(column)
    ok = theirs is not None and ours is not None and theirs == theirs and ours == ours and ours > 0
    return theirs / ours if ok else None


def decode_ratios(inference) -> list[dict]:
    """Per (shape, prompt, batch): GDN+μP / Transformer+μP decode tokens/s, each on its fastest path
    (rows from before decode paths existed are eager), from the wall time and from the kernels' GPU
    time per token (where recorded)."""
    ok = inference[inference["status"] == "ok"]
    if "path" not in ok.columns:
        ok = ok.assign(path="eager")
    out = []
    for (shape, prompt, batch), group in ok.groupby(["shape", "prompt_len", "batch"], sort=True):
        fastest = group.sort_values("decode_tokens_per_s").groupby("variant").tail(1)
        by = {r["variant"]: r for r in fastest.to_dict("records")}
        gdn, transformer = by.get("gdn_mup"), by.get("transformer_mup")
        if not gdn or not transformer:
            continue
        kernel = None
        g_ms, t_ms = gdn.get("decode_kernel_ms_per_token"), transformer.get("decode_kernel_ms_per_token")
        if g_ms and t_ms and g_ms == g_ms and t_ms == t_ms:
            kernel = t_ms / g_ms
        out.append({"shape": shape, "prompt": int(prompt), "batch": int(batch),
                    "paths": f"{gdn.get('path') or 'eager'} / {transformer.get('path') or 'eager'}",
                    "wall": gdn["decode_tokens_per_s"] / transformer["decode_tokens_per_s"], "kernel": kernel})
    return out


def build(con, ctx):
    suites = _rows(con, "bench_suites")
    if suites is None:
        return None
    bench = _rows(con, "bench")
    parts = {}
    if bench is not None:
        for suite in ("overhead", "throughput", "inference"):
            part = bench[bench["suite"] == suite].dropna(axis=1, how="all")
            parts[suite] = None if part.empty else part
    kernels = _rows(con, "kernel_bench")
    if kernels is not None:
        kernels = kernels.drop(columns=["source_file"], errors="ignore")
    return {"id": "performance", "title": "Performance", "nav": "Performance",
            "html": render("sections/performance.html.j2", suites=suites, overhead=parts.get("overhead"),
                           throughput=parts.get("throughput"),
                           throughput_ratios=(throughput_ratios(parts["throughput"])
                                              if parts.get("throughput") is not None else None),
                           inference=parts.get("inference"), kernels=kernels,
                           kernel_ratios=kernel_ratios(kernels) if kernels is not None else None,
                           kernel_targets=KERNEL_TARGETS,
                           decode_ratios=(decode_ratios(parts["inference"])
                                          if parts.get("inference") is not None else None),
                           decode_target=DECODE_TARGET,
                           claimed_overhead=CLAIMED_OVERHEAD["gating_normalization_forward_overhead"],
                           claimed_inference=CLAIMED_INFERENCE_1B, ctx=ctx)}
