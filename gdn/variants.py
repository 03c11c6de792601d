"""The variants the study compares, as plain data: name -> model family and parametrization.

Kept free of torch so that ingest, the transfer analysis and the report run on a machine
that only has the data; `gdn.parametrization` re-exports these names and holds the rules
(`RULES`) each parametrization key selects.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    family: str  # "transformer" | "gdn"
    parametrization: str  # key of gdn.parametrization.RULES


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("transformer_sp", "transformer", "sp"),
        Variant("transformer_mup", "transformer", "mup"),
        Variant("gdn_sp", "gdn", "sp"),
        Variant("gdn_mup", "gdn", "mup_gn"),
        Variant("gdn_mup_nogn", "gdn", "mup"),
    )
}
