"""The explorer on a large dataset: a control change to the redrawn figure, beside computing
the same measure from scratch, and the explorer's first display.

    python tests/benchmark/bench_explore.py [--rows 10000000] [--chunk 10000000]
                                            [--changes 60] [--dataset PATH]

A dataset of ``--rows`` synthetic transactions is written by ``bench_dataset.write_dataset``
(``--dataset``: reuse one). Then, in this one process:

1. first display: ``explore.explorer(path)`` until its first figure is drawn;
2. each measure at each grain shown once (the aggregates computed and cached);
3. ``--changes`` control changes (stores, dates, compare, measure, grain: the cached views
   an analyst moves between), each timed from setting ``.value`` to the new PNG: p50, p95;
4. the baseline: the same measures computed from scratch over ``frames.scan`` of the
   dataset (``analytics.summary`` / ``liability`` for one store and window), each timed.

Printed: every time, and p95 of a change as a ratio of the from-scratch median (aim: p95
at most 500 ms; first display at most 10 s, on 10 million rows).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from bench_dataset import write_dataset  # noqa: E402


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from giftcard_toolkit import analytics, frames
    from giftcard_toolkit.analysis import explore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--chunk", type=int, default=10_000_000)
    parser.add_argument("--changes", type=int, default=60)
    parser.add_argument("--dataset", help="an existing dataset to use (not written)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.dataset) if args.dataset else Path(tmp) / "history"
        if not args.dataset:
            started = time.perf_counter()
            write_dataset(path, args.rows, args.chunk)
            print(f"dataset of {args.rows:,} rows written in {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        ex = explore.explorer(path)
        first_display = time.perf_counter() - started
        assert isinstance(ex, explore.Explorer), ex.value
        print(f"first display (sales by week, all stores): {first_display:.2f} s")

        for grain in explore.GRAINS:  # each (measure, grain) computed by one change
            ex.measure.value = "sales"
            for measure in explore.MEASURES:
                started = time.perf_counter()
                if measure == "sales":
                    ex.grain.value = grain
                else:
                    ex.measure.value = measure
                took = time.perf_counter() - started
                print(f"  first view of {measure} by {grain}: {took:.2f} s")

        measures = list(explore.MEASURES)
        stores = [sid for _, sid in ex.stores.options]
        rng = random.Random(7)
        ex.all_stores.value, ex.measure.value, ex.grain.value = True, "sales", "week"
        changes: list[float] = []
        for _ in range(args.changes):
            control = rng.choice(["stores", "dates", "compare", "measure", "grain"])
            started = time.perf_counter()
            if control == "stores":
                ex.stores.value = tuple(rng.sample(stores, rng.randint(1, min(5, len(stores)))))
            elif control == "dates":
                start = ex.first_day + timedelta(days=rng.randint(0, 200))
                ex.since.value, ex.until.value = start, start + timedelta(days=rng.randint(7, 150))
            elif control == "compare":
                ex.compare.value = not ex.compare.value
            elif control == "measure":
                ex.measure.value = rng.choice(measures)
            else:
                ex.grain.value = rng.choice(list(explore.GRAINS))
            changes.append(time.perf_counter() - started)
            assert ex.figure is not None, ex.message.value
        p50, p95 = percentile(changes, 0.5), percentile(changes, 0.95)

        _, txs = frames.scan(path)
        since, until = ex.first_day + timedelta(days=28), ex.first_day + timedelta(days=120)
        scratch: list[float] = []
        for work in (
            lambda: analytics.summary(txs, "1w", stores=stores[:2], since=since, until=until),
            lambda: analytics.liability(txs, "1w", stores=stores[:2], since=since, until=until),
            lambda: analytics.summary(txs, "1d", by="store"),
        ):
            started = time.perf_counter()
            work()
            scratch.append(time.perf_counter() - started)
        baseline = statistics.median(scratch)
        print(
            f"control change to redrawn figure ({len(changes)} changes): p50 {p50 * 1000:.0f} ms, "
            f"p95 {p95 * 1000:.0f} ms (aim: p95 <= 500 ms)"
        )
        print(
            "the measure from scratch (baseline): "
            + ", ".join(f"{s:.2f} s" for s in scratch)
            + f"; median {baseline:.2f} s"
        )
        print(f"ratio p95 change / from scratch: {p95 / baseline:.3f}x")
        print(f"first display {first_display:.2f} s (aim: <= 10 s)")


if __name__ == "__main__":
    main()
