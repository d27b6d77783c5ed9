"""Per-store splits beside the chain-wide analyses, and ``analytics.cards``, in the same run.

    python tests/benchmark/bench_analytics_split.py [--rows 10000000] [--repeat 3]

The transactions come from ``bench_frames.synthetic_transactions`` (10 stores, about ten
transactions a card, a tenth of them away from the card's home store), held in memory.
Each analysis runs ``--repeat`` times and its best time counts (the machine may be shared);
the split (``by="store"``: every store's rows and the total) is printed as a ratio of the
chain-wide time of the same analysis. Aim: every ratio under 1.5x.
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


def best_of(repeat: int, work: Callable[[], pl.DataFrame]) -> tuple[float, int]:
    """The best wall time of ``repeat`` runs of ``work``, and its result's height."""
    times, height = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        height = work().height
        times.append(time.perf_counter() - started)
    return min(times), height


def main() -> None:
    from giftcard_toolkit import analytics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    txs = synthetic_transactions(args.rows, seed=2)
    as_of = txs["at"].max().date()
    print(f"{args.rows:,} transactions made in {time.perf_counter() - started:.0f} s")

    analyses: dict[str, Callable[..., pl.DataFrame]] = {
        "summary (1w)": lambda **kw: analytics.summary(txs, "1w", **kw),
        "liability (1d)": lambda **kw: analytics.liability(txs, "1d", **kw),
        "liability (1mo)": lambda **kw: analytics.liability(txs, "1mo", **kw),
        "breakage": lambda **kw: analytics.breakage(txs, as_of, **kw),
        "redemption curve (1w)": lambda **kw: analytics.redemption_curve(txs, **kw),
    }
    print(f"\n{'analysis':24} {'chain-wide':>11} {'by store':>11} {'ratio':>7}")
    worst = 0.0
    for name, analysis in analyses.items():
        chain, _ = best_of(args.repeat, analysis)
        split, _ = best_of(args.repeat, lambda a=analysis: a(by="store"))
        worst = max(worst, split / chain)
        print(f"{name:24} {chain:9.2f} s {split:9.2f} s {split / chain:6.2f}x")
    seconds, cards = best_of(args.repeat, lambda: analytics.cards(txs))
    chain_breakage, _ = best_of(args.repeat, analyses["breakage"])
    print(
        f"\nanalytics.cards: {seconds:.2f} s for {cards:,} cards "
        f"({seconds / chain_breakage:.2f}x the chain-wide breakage, which also follows cards)"
    )
    print(f"\naim: every split under 1.5x its chain-wide time; worst here {worst:.2f}x")


if __name__ == "__main__":
    main()
