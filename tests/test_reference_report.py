"""The committed study reports' verdicts recompute from the runs shipped beside them.

Anyone can check the reference result without a GPU: the runs table (reports/study/data/) and
the tier's transfer settings (in the shipped meta table) are all the estimator needs. If this
fails, the code's estimator and the committed report disagree: rebuild the report.
"""

import json
from pathlib import Path

import pandas as pd
import pytest

from gdn import transfer

REPORTS = Path(__file__).resolve().parent.parent / "reports"
# The reference run and its replicate with other seeds.
TIERS = ["study", "study-replicate"]


@pytest.mark.parametrize("tier", TIERS)
def test_study_verdicts_recompute_from_the_shipped_runs(tier):
    DATA = REPORTS / tier / "data"
    if not (DATA / "runs.csv").exists():
        pytest.skip(f"no committed {tier} report data")
    runs = pd.read_csv(DATA / "runs.csv")
    meta = pd.read_csv(DATA / "meta.csv").set_index("key")["value"]
    settings = json.loads(meta["config"]).get("transfer") or {}
    recomputed = transfer.analyze(runs, settings)
    shipped = pd.read_csv(DATA / "study_verdict.csv").set_index("variant").sort_index()
    mine = recomputed["study_verdict"].set_index("variant").sort_index()
    assert list(mine.index) == list(shipped.index)
    assert (mine["verdict"] == shipped["verdict"]).all()
    for column in ("shift", "shift_ci_low", "shift_ci_high", "regret"):
        pd.testing.assert_series_equal(mine[column].astype(float), shipped[column].astype(float), check_names=False,
                                       rtol=1e-9)
    gates = pd.read_csv(DATA / "gates.csv")
    assert list(recomputed["gates"]["passed"]) == list(gates["passed"])


def test_replicate_reaches_the_reference_raw_verdicts():
    """The second run, with other seeds, gives each variant the same raw verdict (before the gates)."""
    frames = {}
    for tier in TIERS:
        path = REPORTS / tier / "data" / "transfer.csv"
        if not path.exists():
            pytest.skip(f"no committed {tier} report data")
        table = pd.read_csv(path)
        widest = table.groupby("variant")["target_width"].transform("max")
        frames[tier] = table[table["target_width"] == widest].set_index("variant")["raw_verdict"].sort_index()
    pd.testing.assert_series_equal(frames["study"], frames["study-replicate"], check_names=False)
