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


# Targets set for this project (not claims of the original result): GDN's training tokens/s
# relative to the Transformer's, by sequence length, and ours relative to fla's GDN model.
THROUGHPUT_TARGETS = {2048: 0.9, 8192: 1.5}
FLA_TARGET = 1.2


def throughput_ratios(throughput) -> list[dict]:
    """Per (shape, sequence length, compiled): GDN+μP / Transformer+μP tokens/s and, where fla's
    model was timed (always eager, as shipped), our GDN / fla's GDN."""
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
        gdn, transformer = tok.get("gdn_mup"), tok.get("transformer_mup")
        out.append({"shape": shape, "seq_len": int(seq_len), "compiled": bool(compiled),
                    "gdn_over_transformer": gdn / transformer if gdn and transformer else None,
                    "target_vs_transformer": THROUGHPUT_TARGETS.get(int(seq_len)),
                    "gdn_over_fla": gdn / fla if gdn and fla else None, "target_vs_fla": FLA_TARGET})
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
    return {"id": "performance", "title": "Performance",
            "html": render("sections/performance.html.j2", suites=suites, overhead=parts.get("overhead"),
                           throughput=parts.get("throughput"),
                           throughput_ratios=(throughput_ratios(parts["throughput"])
                                              if parts.get("throughput") is not None else None),
                           inference=parts.get("inference"), kernels=kernels,
                           claimed_overhead=CLAIMED_OVERHEAD["gating_normalization_forward_overhead"],
                           claimed_inference=CLAIMED_INFERENCE_1B)}
