"""flash-linear-attention (fla) as the outside reference the benchmarks compare against.

fla 0.6.0 refuses its gated backward on Hopper with Triton >= 3.4 and < 3.7.1
(chunk_bwd_dqkwg raises, fla issue #640: those Tritons miscompile that kernel). To time
it anyway, `load` overrides the guard's flag (benchmarks only; nothing trains with fla) and
returns a note saying so, which every benchmark prints and records beside its figures.
"""

from __future__ import annotations


def load():
    """(fla module, note) with the Hopper guard bypassed where it applies; (None, reason) when
    fla is not importable."""
    try:
        import fla
        import fla.ops.common.chunk_o as fla_chunk_o
        import triton
    except ImportError as err:
        return None, f"fla not importable ({err})"
    note = None
    if getattr(fla_chunk_o, "IS_NVIDIA_HOPPER", False) and not fla_chunk_o.TRITON_ABOVE_3_7_1:
        fla_chunk_o.TRITON_ABOVE_3_7_1 = True
        note = f"fla's Hopper guard for Triton {triton.__version__} < 3.7.1 bypassed to time its backward (fla #640)"
    return fla, note
