"""Frames and analytics at scale, beside DuckDB SQL and pandas doing the same work in the same run.

    python tests/benchmark/bench_frames.py [--json-rows 1000000] [--analytics-rows 10000000]
        [--only json|analytics] [--repeat 3] [--data DIR]

1. JSON as the server sends it (one ``GET /Batch`` answer per store) -> the batch and
   transaction frames: ``frames.from_json`` against ``json.loads`` + ``pd.json_normalize``
   (with the same types: UTC datetimes, categorical type; pandas holds money as float64,
   having no decimal type).
2. The whole analytics suite (daily summary, liability, redemption curve, breakage,
   anomalies, reconciliation) over a Parquet file of transactions: ``analytics`` (eager
   and lazy) against the same computations in DuckDB SQL (``duckdb_analytics.py``, the
   answers cross-checked first) and in pandas; the toolkit and DuckDB run ``--repeat``
   times, taking turns, and the best is kept: this machine's timings wander by +-20 %.

Each measurement runs in its own fresh process, so its peak RSS is its own (per step, and
the largest of the steps). The data is synthetic (``synthetic_transactions``: stores,
cards, days, seed), made once per run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))  # duckdb_analytics, beside this file
START = datetime(2025, 10, 1, tzinfo=UTC)
AMOUNTS = np.array([1000, 1500, 2000, 2500, 5000, 7500, 10000, 3550])  # cents


# ------------------------------------------------------------------ the data


def synthetic_transactions(
    rows: int, stores: int = 10, days: int = 365, seed: int = 0
) -> pl.DataFrame:
    """``rows`` transactions of ``frames.TRANSACTION_SCHEMA`` over ``days`` from START.

    About ten transactions a card; each card's first is its sale at its home store, then
    reloads (15%) and redemptions, mostly at home; balances follow the amounts.
    """
    from giftcard_toolkit import frames

    rng = np.random.default_rng(seed)
    cards = max(1, rows // 10)
    card = rng.integers(0, cards, rows)
    seconds = rng.integers(0, days * 86400, rows)
    order = np.lexsort((seconds, card))
    card, seconds = card[order], seconds[order]
    first = np.r_[True, card[1:] != card[:-1]]
    kind = np.where(first, 0, np.where(rng.random(rows) < 0.15, 1, 2))
    # A card's later transactions come after its sale (its first, the card's own: not a
    # running maximum across cards, which piled most transactions onto the year's end).
    sale_second = seconds[np.maximum.accumulate(np.where(first, np.arange(rows), 0))]
    seconds = np.where(first, seconds, np.maximum(seconds, sale_second + 60))
    cents = np.where(kind == 2, rng.integers(100, 6000, rows), rng.choice(AMOUNTS, rows))
    home = card % stores
    store = np.where(rng.random(rows) < 0.9, home, rng.integers(0, stores, rows))
    frame = pl.DataFrame(
        {"card": card, "seconds": seconds, "kind": kind, "cents": cents, "store": store}
    )
    signed = pl.when(pl.col("kind") == 2).then(-pl.col("cents")).otherwise(pl.col("cents"))
    money = [
        ("amount", pl.col("cents")),
        ("new_balance", pl.col("new")),
        ("previous_balance", pl.col("new") - signed),
    ]
    store_id = pl.format(
        "{}-0000-4000-8000-000000000000", pl.col("store").cast(pl.String).str.zfill(8)
    )
    out = (
        # A card's transactions in its balance order; ties in time spread by microseconds,
        # so that every card has one first and one last transaction.
        frame.with_columns(
            signed.cum_sum().over("card").alias("new"),
            pl.int_range(pl.len()).over("card").alias("tie"),
        )
        .sort("seconds", "tie")
        .with_row_index("row")
        .select(
            store_id.alias("store_id"),
            pl.format("Store {}", pl.col("store")).alias("store_name"),
            pl.format("{}-{}", pl.col("store"), pl.col("seconds") // 86400).alias("batch_id"),
            pl.col("row").cast(pl.String).alias("host_ref"),
            # Its place in its batch (one a store and day), oldest first, as the server lists.
            pl.int_range(pl.len()).over("store", pl.col("seconds") // 86400).alias("position"),
            pl.col("kind")
            .replace_strict([0, 1, 2], ["sale", "reload", "redeem"], return_dtype=pl.String)
            .alias("type"),
            (pl.col("card") % 10000).cast(pl.String).str.zfill(4).alias("card_last4"),
            pl.col("card").hash(seed).cast(pl.String).str.slice(0, 16).alias("card_ref"),
            *[(expr.cast(pl.Int64) / 100).cast(frames.MONEY).alias(name) for name, expr in money],
            pl.lit("POS").alias("pos_ref"),
            (
                pl.lit(START) + pl.duration(seconds=pl.col("seconds"), microseconds=pl.col("tie"))
            ).alias("at"),
            pl.lit("demo").alias("username"),
        )
    )
    return frames.conform(out, frames.TRANSACTION_SCHEMA)


def batches_of(txs: pl.DataFrame) -> pl.DataFrame:
    """The batches that hold ``txs`` (one per store and day), with true totals."""
    from giftcard_toolkit import frames

    def total(kind: str) -> pl.Expr:
        return pl.col("amount").filter(pl.col("type") == kind).sum().fill_null(0)

    signed = pl.when(pl.col("type") == "redeem").then(-pl.col("amount")).otherwise(pl.col("amount"))
    out = txs.group_by("store_id", "store_name", "batch_id").agg(
        pl.lit("closed").alias("status"),
        pl.col("at").min().alias("opened_at"),
        pl.col("at").max().alias("closed_at"),
        pl.len().cast(pl.Int64).alias("transaction_count"),
        total("sale").alias("sold"),
        total("reload").alias("reloaded"),
        total("redeem").alias("redeemed"),
        signed.sum().alias("net"),
    )
    return frames.conform(out, frames.BATCH_SCHEMA)


def server_json(txs: pl.DataFrame) -> list[bytes]:
    """One ``GET /Batch`` answer per store, in the server's own field names and format."""
    text = pl.col
    tx_json = pl.format(
        '{{"hostRef":"{}","type":"{}","cardno":"************{}","cardref":"{}","amount":{},'
        '"previousbalance":{},"newbalance":{},"posref":"{}","datetime":"{}","username":"{}"}}',
        text("host_ref"),
        text("type"),
        text("card_last4"),
        text("card_ref"),
        text("amount").cast(pl.String),
        text("previous_balance").cast(pl.String),
        text("new_balance").cast(pl.String),
        text("pos_ref"),
        text("at").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00"),
        text("username"),
    )
    batches = batches_of(txs)
    per_batch = (
        txs.sort("at")
        .with_columns(tx_json.alias("json"))
        .group_by("store_id", "batch_id")
        .agg(pl.col("json").str.join(","))
        .join(batches, on=["store_id", "batch_id"])
        .sort("store_id", "opened_at", descending=[False, True])
        .select(
            "store_id",
            "store_name",
            pl.format(
                '{{"batchid":"{}","status":"closed","opened":"{}","closed":"{}",'
                '"transactioncount":{},"soldamount":{},"reloadedamount":{},"redeemedamount":{},'
                '"netamount":{},"transactions":[{}]}}',
                "batch_id",
                text("opened_at").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00"),
                text("closed_at").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00"),
                "transaction_count",
                *[text(c).cast(pl.String) for c in ("sold", "reloaded", "redeemed", "net")],
                "json",
            ).alias("json"),
        )
    )
    envelopes = per_batch.group_by("store_id", "store_name", maintain_order=True).agg(
        pl.col("json").str.join(",")
    )
    return [
        (
            '{"statuscode":"000000","description":"Success",'
            f'"franchiseeid":"{store_id}","storename":"{store_name}","batches":[{batches}]}}'
        ).encode()
        for store_id, store_name, batches in envelopes.iter_rows()
    ]


# ---------------------------------------------------------------- the work


def polars_json(envelopes: list[bytes]) -> int:
    from giftcard_toolkit import frames

    _, txs = frames.from_json(envelopes)
    return txs.height


def pandas_json(envelopes: list[bytes]) -> int:
    import pandas as pd

    tx_parts, batch_parts = [], []
    for raw in envelopes:
        envelope = json.loads(raw)
        meta = ["franchiseeid", "storename"]
        tx_parts.append(
            pd.json_normalize(
                envelope,
                record_path=["batches", "transactions"],
                meta=[*meta, ["batches", "batchid"]],
            )
        )
        batch_parts.append(
            pd.json_normalize(envelope, record_path=["batches"], meta=meta).drop(
                columns=["transactions"]
            )
        )
    txs = pd.concat(tx_parts, ignore_index=True)
    txs["datetime"] = pd.to_datetime(txs["datetime"], utc=True, format="ISO8601")
    txs["type"] = txs["type"].astype("category")
    txs["card_last4"] = txs.pop("cardno").str[-4:]
    batches = pd.concat(batch_parts, ignore_index=True)
    for column in ("opened", "closed"):
        batches[column] = pd.to_datetime(batches[column], utc=True, format="ISO8601")
    return len(txs)


class Clock:
    """Seconds per step of one process's work, by name; and (``peaks``) each step's own
    peak RSS in MB (Linux: the peak is reset after each step)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        with open("/proc/self/status") as status:
            peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
        self.peaks[name] = peak_kb / 1024
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # the peak starts again here
        self.last = time.perf_counter()


def polars_analytics(txs_path: str, batches_path: str, lazy: bool = False) -> Clock:
    """The suite over the file read into memory once, or (``lazy``) scanned by each
    analysis for just the columns it needs: less memory, more reading."""
    from duckdb_analytics import toolkit_calls

    clock = Clock()
    read = pl.scan_parquet if lazy else pl.read_parquet
    txs: pl.DataFrame | pl.LazyFrame = read(txs_path)
    batches: pl.DataFrame | pl.LazyFrame = read(batches_path)
    as_of = txs.lazy().select(pl.col("at").max()).collect().item()
    clock.lap("read")
    for name, call in toolkit_calls(txs, batches, as_of).items():
        call()
        clock.lap(name)
    return clock


def polars_analytics_lazy(txs_path: str, batches_path: str) -> Clock:
    return polars_analytics(txs_path, batches_path, lazy=True)


def duckdb_suite(txs: str, batches: str, only: list[str] | None = None) -> Clock:
    """The suite in DuckDB SQL written by hand (those named in ``only``, else all), each
    query reading ``txs`` and ``batches`` (SQL that reads the files)."""
    from duckdb_analytics import connect, duckdb_calls

    clock = Clock()
    con = connect()
    as_of = con.sql(f'SELECT max("at") FROM {txs}').fetchall()[0][0]
    clock.lap("read")
    for name, call in duckdb_calls(con, txs, batches, as_of.isoformat()).items():
        if only and name not in only:
            continue
        call()
        clock.lap(name)
    return clock


def duckdb_analytics(txs_path: str, batches_path: str) -> Clock:
    """The suite in DuckDB SQL written by hand, each query reading the Parquet files."""
    return duckdb_suite(f"read_parquet('{txs_path}')", f"read_parquet('{batches_path}')")


def cross_check(txs_path: str, batches_path: str) -> dict[str, float]:
    """The toolkit's answers and DuckDB's, compared to the cent, row by row: the run
    stops here if any differs, before anything is timed."""
    from duckdb_analytics import answers, connect, differences, duckdb_calls, toolkit_calls

    txs, batches = pl.read_parquet(txs_path), pl.read_parquet(batches_path)
    as_of = txs["at"].max()
    ours = answers(toolkit_calls(txs, batches, as_of))  # type: ignore[arg-type]
    con = connect()
    sql_txs, sql_batches = f"read_parquet('{txs_path}')", f"read_parquet('{batches_path}')"
    theirs = answers(duckdb_calls(con, sql_txs, sql_batches, as_of.isoformat()))  # type: ignore[union-attr]
    found = differences(ours, theirs)
    if found:
        raise SystemExit("DuckDB and the toolkit differ:\n" + "\n".join(found.values()))
    return {name: float(frame.height) for name, frame in ours.items()}


def pandas_analytics(txs_path: str, batches_path: str) -> Clock:
    """The same six analyses in pandas, with the same rules as ``analytics``."""
    import pandas as pd

    clock = Clock()
    tx = pd.read_parquet(txs_path)
    batches = pd.read_parquet(batches_path)
    for column in ("amount", "previous_balance", "new_balance"):
        tx[column] = tx[column].astype("float64")
    tx["signed"] = np.where(tx["type"] == "redeem", -tx["amount"], tx["amount"])
    tx["day"] = tx["at"].dt.floor("D")
    tx["card"] = tx["card_ref"].fillna(tx["card_last4"])
    clock.lap("read")
    # daily summary
    daily = tx.groupby(["store_id", "store_name", "day", "type"], observed=True)["amount"]
    daily.agg(["count", "sum"]).unstack("type", fill_value=0)
    tx.groupby(["store_id", "store_name", "day"])["signed"].sum()
    clock.lap("daily summary")
    # liability per home store and total
    tx = tx.sort_values(["at", "position"])
    first = tx.groupby("card").agg(
        home=("store_id", "first"), opening=("previous_balance", "first")
    )
    tx = tx.join(first["home"], on="card")
    change = (
        (tx["new_balance"] - tx["previous_balance"])
        .groupby([tx["home"], tx["day"]])
        .sum()
        .unstack(fill_value=0)
    )
    per_store = change.cumsum(axis=1).add(first.groupby("home")["opening"].sum(), axis=0)
    per_store.sum(axis=0)
    clock.lap("liability")
    # redemption curve
    activated = tx[tx["type"] == "sale"].groupby("card")["at"].min().rename("activated")
    cohort = tx.join(activated, on="card", how="inner")
    age = (cohort["at"] - cohort["activated"]).dt.total_seconds() / 86400
    cohort = cohort[age <= 84].assign(
        days=(np.ceil(age[age <= 84] / 7) * 7).astype("int64"),
        week=lambda f: f["activated"].dt.tz_localize(None).dt.to_period("W"),
        redeem=lambda f: f["type"] == "redeem",
    )
    curve = cohort.groupby(["week", "days", "redeem"])["amount"].sum().unstack(fill_value=0)
    curve = curve.groupby(level="week").cumsum()
    (curve.get(True, 0) / curve.get(False, 1)).dropna()
    clock.lap("redemption curve")
    # breakage
    last = tx.groupby("card").agg(balance=("new_balance", "last"), last_used=("at", "last"))
    last = last[last["balance"] > 0]
    idle = (tx["at"].max() - last["last_used"]).dt.days
    bucket = pd.cut(idle, [-1, 30, 90, 180, 365, np.inf])
    last.groupby(bucket, observed=False)["balance"].agg(["count", "sum"])
    last[idle >= 365]["balance"].sum()
    clock.lap("breakage")
    # anomalies
    sales = tx.loc[tx["type"] == "sale", ["card", "store_id", "at"]]
    redeems = tx[tx["type"] == "redeem"]
    joined = redeems.merge(sales, on="card", suffixes=("", "_sale"))
    soon = joined["at"] - joined["at_sale"]
    joined[
        (joined["store_id"] != joined["store_id_sale"])
        & (soon >= pd.Timedelta(0))
        & (soon <= pd.Timedelta(minutes=60))
    ]
    rolling = (
        redeems.sort_values(["card", "at"])
        .set_index("at")
        .groupby("card")["amount"]
        .rolling("1h")
        .count()
    )
    rolling[rolling > 4]
    by_card = tx.sort_values(["card", "at", "position"])
    following = by_card.groupby("card")[["type", "at", "amount"]].shift(-1)
    starts = (
        (by_card["type"] == "reload")
        & (following["type"] == "redeem")
        & (following["at"] - by_card["at"] <= pd.Timedelta(hours=24))
        & (following["amount"] >= by_card["amount"] * 0.9)
    )
    cycles = starts.groupby(by_card["card"]).transform("sum")
    by_card[(starts | starts.groupby(by_card["card"]).shift(1, fill_value=False)) & (cycles >= 2)]
    clock.lap("anomalies")
    # reconciliation
    computed = tx.groupby(["store_id", "batch_id"]).agg(
        count=("host_ref", "size"), net=("signed", "sum")
    )
    merged = batches.merge(computed, on=["store_id", "batch_id"], how="left")
    (merged["transaction_count"] == merged["count"]).all()
    clock.lap("reconciliation")
    return clock


WORK: dict[str, Callable[..., Any]] = {
    "polars-json": polars_json,
    "pandas-json": pandas_json,
    "polars-analytics": polars_analytics,
    "polars-analytics-lazy": polars_analytics_lazy,
    "duckdb-analytics": duckdb_analytics,
    "pandas-analytics": pandas_analytics,
    "cross-check": cross_check,
}


def measure(work: str, paths: list[str]) -> dict[str, Any]:
    """Run one piece of work in this (fresh) process: seconds (and per step), peak RSS."""
    if work.endswith("-json"):
        envelopes = Path(paths[0]).read_bytes().split(b"\n")
        started = time.perf_counter()
        rows = WORK[work](envelopes)
    else:
        started = time.perf_counter()
        rows = WORK[work](*paths)
    seconds = time.perf_counter() - started
    # VmHWM, not ru_maxrss: the latter keeps the parent's size across fork and exec. A
    # ``Clock`` resets it after each step, so the run's peak is the largest step's.
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    if isinstance(rows, Clock):
        steps, peaks = rows.seconds, rows.peaks
    else:
        steps, peaks = (rows if isinstance(rows, dict) else {}), {}
    return {
        "seconds": seconds,
        "rows": rows if isinstance(rows, int) else 0,
        "steps": steps,
        "peaks": peaks,
        "peak_mb": max([peak_kb / 1024, *peaks.values()]),
    }


def run(work: str, paths: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(HERE), "--measure", work, *paths], capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"{work} failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


ENGINES = {
    "toolkit eager": "polars-analytics",
    "toolkit lazy": "polars-analytics-lazy",
    "DuckDB SQL": "duckdb-analytics",
    "pandas": "pandas-analytics",
}


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one engine as one: the fastest run's total, each step's fastest
    time (timing noise only ever adds), each step's largest peak (memory is the worst)."""
    steps, peaks = runs[0]["steps"], runs[0]["peaks"]
    return {
        "seconds": min(r["seconds"] for r in runs),
        "steps": {k: min(r["steps"][k] for r in runs) for k in steps},
        "peaks": {k: max(r["peaks"][k] for r in runs) for k in peaks},
        "peak_mb": max(r["peak_mb"] for r in runs),
    }


def analytics_table(rows: int, files: list[str], repeat: int = 3) -> None:
    """Cross-check, then each engine in its own process (the toolkit and DuckDB ``repeat``
    times, taking turns; pandas once): seconds per analysis, ratios to DuckDB, totals
    (read included) and peak RSS."""
    from duckdb_analytics import NAMES

    started = time.perf_counter()
    checked = run("cross-check", files)["steps"]
    print(
        f"\nanalytics, {rows:,} transactions: the toolkit's answers equal DuckDB's to the cent "
        f"(checked in {time.perf_counter() - started:.0f} s; rows: "
        + ", ".join(f"{name} {int(n):,}" for name, n in checked.items())
        + ")"
    )
    runs: dict[str, list[dict[str, Any]]] = {who: [] for who in ENGINES}
    for turn in range(repeat):
        for who, work in ENGINES.items():
            if who != "pandas" or turn == 0:
                runs[who].append(run(work, files))
    results = {who: best(found) for who, found in runs.items()}
    print(
        f"  best of {repeat} runs each (pandas: 1); a step's time is its fastest, its peak "
        "its largest"
    )
    duck = results["DuckDB SQL"]
    header = f"  {'analysis':18}" + "".join(f"{who:>15}" for who in results)
    print(header + f"{'eager/DuckDB':>14}{'lazy/DuckDB':>13}")
    for step in ("read", *NAMES):
        line = f"  {step:18}" + "".join(f"{r['steps'][step]:13.2f} s" for r in results.values())
        base = duck["steps"][step]
        if step != "read":
            line += "".join(
                f"{results[who]['steps'][step] / base:13.2f}x"
                for who in ("toolkit eager", "toolkit lazy")
            )
        print(line)
    print(f"  {'total':18}" + "".join(f"{r['seconds']:13.2f} s" for r in results.values()))
    print(
        f"  {'total / DuckDB':18}"
        + "".join(f"{r['seconds'] / duck['seconds']:14.2f}x" for r in results.values())
    )
    print("  peak RSS by step (each step's own; the eager run's include the frame it holds)")
    for step in ("read", *NAMES):
        print(
            f"  {step:18}"
            + "".join(f"{r['peaks'].get(step, 0):12,.0f} MB" for r in results.values())
        )
    print(f"  {'peak RSS':18}" + "".join(f"{r['peak_mb']:12,.0f} MB" for r in results.values()))
    print(
        f"  {'peak / DuckDB':18}"
        + "".join(f"{r['peak_mb'] / duck['peak_mb']:14.2f}x" for r in results.values())
    )
    print(
        "  aims: total <= 1.0x DuckDB, no analysis above 1.2x, peak <= DuckDB's; "
        "<= 10 s and <= 3 GB in the same run"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-rows", type=int, default=1_000_000)
    parser.add_argument("--analytics-rows", type=int, default=10_000_000)
    parser.add_argument(
        "--only", choices=("json", "analytics"), help="run one of the two parts only"
    )
    parser.add_argument(
        "--data", help="keep the generated files in this folder and reuse them on later runs"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of the toolkit and DuckDB (best taken)"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args, paths = parser.parse_known_args()
    if args.measure:
        print(json.dumps(measure(args.measure, paths)))
        return
    with tempfile.TemporaryDirectory(prefix="giftcard-bench-") as name:
        tmp = Path(args.data or name)
        tmp.mkdir(parents=True, exist_ok=True)
        if args.only != "analytics":
            json_part(tmp, args.json_rows)
        if args.only != "json":
            txs = tmp / f"txs-{args.analytics_rows}.parquet"
            batches = tmp / f"batches-{args.analytics_rows}.parquet"
            if not (txs.exists() and batches.exists()):
                started = time.perf_counter()
                big = synthetic_transactions(args.analytics_rows, seed=1)
                big.write_parquet(txs)
                batches_of(big).write_parquet(batches)
                del big
                print(f"analytics data made in {time.perf_counter() - started:.0f} s")
            analytics_table(args.analytics_rows, [str(txs), str(batches)], args.repeat)


def json_part(tmp: Path, rows: int) -> None:
    started = time.perf_counter()
    small = synthetic_transactions(rows)
    (tmp / "batches.ndjson").write_bytes(b"\n".join(server_json(small)))
    del small
    print(
        f"JSON made in {time.perf_counter() - started:.0f} s "
        f"({(tmp / 'batches.ndjson').stat().st_size / 1e6:.0f} MB)"
    )
    json_args = [str(tmp / "batches.ndjson")]
    ours, theirs = run("polars-json", json_args), run("pandas-json", json_args)
    print(f"\nJSON -> frames: {rows:,} transactions")
    for who, result in [("giftcard_toolkit (polars)", ours), ("pandas", theirs)]:
        speedup = theirs["seconds"] / result["seconds"]
        print(
            f"  {who:29} {result['seconds']:7.2f} s  {rows / result['seconds']:11,.0f} "
            f"rows/s  peak RSS {result['peak_mb']:6,.0f} MB  {speedup:5.1f}x pandas"
        )
    print("  aims: >= 1M rows/s and >= 5x pandas")


if __name__ == "__main__":
    main()
