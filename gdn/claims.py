"""The circulating claim, verbatim, so the report can set our measurements beside it.

These are claimed values, never measurements; the report labels them as claims.
"""

CLAIMED_TABLE = [
    {"variant": "transformer_mup", "label": "Transformer + μP", "params": "125M", "tokens": "10B", "wikitext_ppl": 18.2,
     "transfer": "yes"},
    {"variant": "gdn_sp", "label": "GDN (standard parametrization)", "params": "125M", "tokens": "10B",
     "wikitext_ppl": 19.8, "transfer": "no (required retuning)"},
    {"variant": "gdn_mup", "label": "GDN + μP (gating normalization)", "params": "125M", "tokens": "10B",
     "wikitext_ppl": 18.5, "transfer": "yes"},
    {"variant": "transformer_mup", "label": "Transformer + μP", "params": "1.5B", "tokens": "10B", "wikitext_ppl": 15.1,
     "transfer": "yes"},
    {"variant": "gdn_sp", "label": "GDN (standard parametrization)", "params": "1.5B", "tokens": "10B",
     "wikitext_ppl": 17.2, "transfer": "no (diverged with same LR)"},
    {"variant": "gdn_mup", "label": "GDN + μP (gating normalization)", "params": "1.5B", "tokens": "10B",
     "wikitext_ppl": 15.4, "transfer": "yes"},
]

CLAIMED_OVERHEAD = {"gating_normalization_forward_overhead": 0.03}

CLAIMED_INFERENCE_1B = [
    {"family": "transformer", "tokens_per_s": 1200, "memory_gb": 4.0},
    {"family": "gdn", "tokens_per_s": 2500, "memory_gb": 1.8},
]

VARIANT_LABELS = {
    "transformer_sp": "Transformer (SP)",
    "transformer_mup": "Transformer + μP",
    "gdn_sp": "GDN (standard parametrization)",
    "gdn_mup": "GDN + μP (gating normalization)",
    "gdn_mup_nogn": "GDN + μP (no gating normalization)",
}
