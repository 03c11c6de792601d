"""Power of the transfer estimator, by simulation (docs/mup_gdn.md §5 prints this table).

Each simulated study is one variant swept like the study tier (widths 128..1024, 7 octave-spaced
LRs, 3 seeds at the base width and 2 elsewhere); its loss is a parabola in log2 LR whose
optimum drifts linearly in log2 width, plus Gaussian run-to-run noise. The table gives, per
(noise SD, curvature, drift from base to largest width), how often the largest width's raw
verdict comes out "transfers" and "fails".

    python scripts/transfer_power.py --studies 100 > power.md
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from gdn import transfer

GRID = np.arange(-10.0, -3.0)
WIDTHS = (128, 256, 512, 1024)


def simulated_runs(rng, drift, noise, curvature, base_opt=-7.0):
    rows = []
    for k, width in enumerate(WIDTHS):
        opt = base_opt + drift * k / (len(WIDTHS) - 1)
        for x in GRID:
            for seed in range(3 if k == 0 else 2):
                loss = 3.0 - 0.1 * k + curvature * (x - opt) ** 2 + rng.normal(0.0, noise)
                rows.append({"variant": "transformer_mup", "width": width, "log2_lr": float(x), "seed": seed,
                             "status": "completed", "final_val_loss": loss})
    return pd.DataFrame(rows)


def rates(drift, noise, curvature, studies, draws, seed):
    rng = np.random.default_rng(seed)
    verdicts = []
    for rep in range(studies):
        table = transfer.analyze(simulated_runs(rng, drift, noise, curvature),
                                 {"bootstrap_draws": draws, "bootstrap_seed": rep})["transfer"]
        verdicts.append(table[table["target_width"] == WIDTHS[-1]]["raw_verdict"].iloc[0])
    counts = pd.Series(verdicts).value_counts()
    return {v: counts.get(v, 0) / studies for v in transfer.VERDICTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.03, 0.07])
    parser.add_argument("--curvature", type=float, nargs="+", default=[0.03, 0.05, 0.1])
    parser.add_argument("--drift", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    args = parser.parse_args()
    print("| noise SD | curvature (nats/oct²) | drift (oct) | transfers | fails | inconclusive |")
    print("|---|---|---|---|---|---|")
    for noise in args.noise:
        for curvature in args.curvature:
            for i, drift in enumerate(args.drift):
                r = rates(drift, noise, curvature, args.studies, args.draws, seed=int(1000 * noise + 10 * i))
                print(f"| {noise:g} | {curvature:g} | {drift:+g} | {r['transfers']:.0%} | {r['fails']:.0%} "
                      f"| {r['inconclusive']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
