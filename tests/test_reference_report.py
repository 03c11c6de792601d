"""The committed study report's verdicts recompute from the runs shipped beside it.

Anyone can check the reference result without a GPU: the runs table (reports/study/data/) and
the tier's transfer settings (in the shipped meta table) are all the estimator needs. If this
fails, the code's estimator and the committed report disagree: rebuild the report.
"""

import json
from pathlib import Path

import pandas as pd
import pytest

from gdn import transfer

DATA = Path(__file__).resolve().parent.parent / "reports" / "study" / "data"


@pytest.mark.skipif(not (DATA / "runs.csv").exists(), reason="no committed study report data")
def test_study_verdicts_recompute_from_the_shipped_runs():
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
