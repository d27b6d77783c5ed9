"""Finance's journal beside the liability series it must agree with, in the same run.

    python tests/benchmark/bench_accounting.py [--rows 10000000] [--repeat 3]

The transactions come from ``bench_frames.synthetic_transactions`` over 730 days (24 months,
10 stores, about ten transactions a card), held in memory. ``accounting.journal`` (monthly,
with each breakage method) is timed against ``analytics.liability(txs, "1mo")`` on the same
data; each runs ``--repeat`` times and its best time counts (the machine may be shared).
The proportional journal estimates its rate itself (``breakage_rate``, 12-month horizon, 6
matured cohorts being enough here): that is part of its time. Aim: under 2x the liability.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_frames import synthetic_transactions  # noqa: E402


def best_of(repeat: int, work: Callable[[], pl.DataFrame]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    from giftcard_toolkit import accounting, analytics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    txs = synthetic_transactions(args.rows, days=730, seed=25)
    print(
        f"{args.rows:,} transactions over 24 months made in {time.perf_counter() - started:.0f} s"
    )

    baseline = best_of(args.repeat, lambda: analytics.liability(txs, "1mo", by="store"))
    print(f"\n{'analysis':44} {'time':>9} {'ratio':>7}")
    print(f"{'analytics.liability (1mo, by store): baseline':44} {baseline:7.2f} s {1:6.2f}x")
    journals: dict[str, Callable[[], pl.DataFrame]] = {
        "journal (breakage=None)": lambda: accounting.journal(txs, breakage=None),
        "journal (breakage='remote')": lambda: accounting.journal(txs, breakage="remote"),
        "journal (breakage='proportional')": lambda: accounting.journal(
            txs, breakage="proportional", horizon_months=12, min_cohorts=6
        ),
    }
    worst = 0.0
    for name, work in journals.items():
        seconds = best_of(args.repeat, work)
        worst = max(worst, seconds / baseline)
        print(f"{name:44} {seconds:7.2f} s {seconds / baseline:6.2f}x")
    print(f"\naim: every journal under 2x analytics.liability; worst here {worst:.2f}x")


if __name__ == "__main__":
    main()
