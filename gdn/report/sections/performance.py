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
                           inference=parts.get("inference"), kernels=kernels,
                           claimed_overhead=CLAIMED_OVERHEAD["gating_normalization_forward_overhead"],
                           claimed_inference=CLAIMED_INFERENCE_1B)}
