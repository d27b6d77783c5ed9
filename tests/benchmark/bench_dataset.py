"""The local dataset: sync beside sequential fetch, and the analytics suite read from it.

    python tests/benchmark/bench_dataset.py [--stores 50] [--days 365] [--rows 10000000 ...]
                                            [--chunk 10000000] [--no-sync] [--data DIR]
                                            [--only NAME ...] [--chain-db FILE] [--duckdb]

1. Sync of a chain's history (``serve --seed chain``, a server in its own process, by
   default 50 stores and 365 days) with ``frames.sync`` (stores concurrently) beside a
   sequential ``frames.fetch`` of the same data, then a re-sync with nothing new
   (``--rows`` with no number runs this part only; ``--chain-db FILE`` serves a copy of a
   chain seeded before rather than seeding one).
2. ``write_dataset``: a dataset of any size written directly (no server), in chunks of
   ``--chunk`` rows (each chunk its own 10 stores, so memory stays that of one chunk), then
   the whole analytics suite over ``frames.scan`` of it, in a fresh process with its peak RSS.
   With ``--data DIR`` each dataset is kept in ``DIR/rows-N`` and reused by later runs (written
   only when that folder holds none), rather than written anew into a temporary folder;
   ``--only`` runs just the analyses named (e.g. ``--only liability breakage``); ``--duckdb``
   runs the same suite written by hand in DuckDB SQL over the same files, in its own process.

Each measurement of 2. runs in its own process, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from bench_frames import Clock, batches_of, duckdb_suite, synthetic_transactions  # noqa: E402


def write_dataset(
    path: Path, rows: int, chunk: int = 10_000_000, days: int = 365, states: bool = True
) -> Path:
    """A dataset of ``rows`` synthetic transactions at ``path``, in ``sync``'s layout and
    manifest, written chunk by chunk (each chunk 10 stores of its own), then its cards'
    states made (unless not ``states``)."""
    from giftcard_toolkit.analysis import dataset, frames

    manifest = dataset._new_manifest()
    manifest["generation"] = 1
    written = 0
    with ThreadPoolExecutor(max_workers=dataset._FLUSHERS) as flusher:
        for number in range(max(1, -(-rows // chunk))):
            size = min(chunk, rows - written)
            txs = synthetic_transactions(size, stores=10, days=days, seed=number)
            # Each chunk's own stores and host refs (its cards differ already: seeded apart).
            txs = txs.with_columns(
                pl.col("store_id").str.replace("-0000-4000", f"-{number:04d}-4000", literal=True),
                pl.format("c{}-{}", pl.lit(number), pl.col("host_ref")).alias("host_ref"),
                pl.format("{} ({})", pl.col("store_name"), pl.lit(number)).alias("store_name"),
            )
            txs = frames.conform(txs, frames.TRANSACTION_SCHEMA)
            for (store,), store_txs in txs.partition_by("store_id", as_dict=True).items():
                entry = _write_store(path, store_txs, flusher)
                manifest["stores"][str(store)] = entry
            written += size
            del txs
    dataset._write_manifest(path, manifest)
    if states:
        dataset._keep_states(path)  # as a sync leaves it: with its cards' states
    return path


def _write_store(path: Path, txs: pl.DataFrame, flusher: ThreadPoolExecutor) -> dict[str, object]:
    """One store's synthetic transactions (and their batches) written as ``sync`` writes
    them, a file per month; the store's manifest entry."""
    from giftcard_toolkit.analysis import dataset

    part = "part-000001.parquet"
    store = txs["store_id"][0]
    store_batches = batches_of(txs).sort("opened_at")
    parts = {f"batches/store_id={store}/{part}": store_batches}
    months = txs.with_columns(pl.col("at").dt.strftime("%Y-%m").alias("_month"))
    files = {}
    for (month,), month_txs in months.partition_by("_month", as_dict=True).items():
        relative = f"transactions/store_id={store}/month={month}/{part}"
        parts[relative] = month_txs.drop("_month").sort("at", "host_ref")
        files[str(month)] = relative
    dataset._write_parts(path, parts, flusher)
    return {
        "listed_since": None,
        "batches": next(iter(parts)),
        "store_name": store_batches["store_name"][0],
        "transactions": dict(sorted(files.items())),
    }


def analytics_over_dataset(path: str, only: list[str] | None = None) -> Clock:
    """The suite over ``frames.scan`` of the dataset: seconds and peak RSS per analysis
    (those named in ``only``, else all)."""
    from duckdb_analytics import toolkit_calls

    from giftcard_toolkit import frames

    clock = Clock()
    batches, txs = frames.scan(path)
    as_of = txs.select(pl.col("at").max()).collect().item()
    clock.lap("read")
    for name, call in toolkit_calls(txs, batches, as_of).items():
        if only and name not in only:
            continue
        call()
        clock.lap(name)
    return clock


def hive_sql(path: str | Path) -> tuple[str, str]:
    """SQL that reads the dataset's transactions and batches as DuckDB reads a Hive dataset
    (``store_id``, and ``month``, from the folder names), in the frames' columns."""
    from giftcard_toolkit import frames

    def files(kind: str, schema: pl.Schema, types: str) -> str:
        glob = (Path(path) / kind / "**" / "*.parquet").as_posix()
        columns = ", ".join(f'"{name}"' for name in schema)
        return (
            f"(SELECT {columns} FROM read_parquet('{glob}', hive_partitioning = true, "
            f"hive_types = {{{types}}}))"
        )

    return (
        files("transactions", frames.TRANSACTION_SCHEMA, "'store_id': VARCHAR, 'month': VARCHAR"),
        files("batches", frames.BATCH_SCHEMA, "'store_id': VARCHAR"),
    )


def duckdb_over_dataset(path: str, only: list[str] | None = None) -> Clock:
    """The same suite in DuckDB SQL written by hand over the dataset's own files."""
    return duckdb_suite(*hive_sql(path), only)


def measure(path: str, only: list[str] | None = None, engine: str = "toolkit") -> dict[str, object]:
    started = time.perf_counter()
    suite = duckdb_over_dataset if engine == "duckdb" else analytics_over_dataset
    clock = suite(path, only)
    seconds = time.perf_counter() - started
    peak = max(clock.peaks.values())
    return {"seconds": seconds, "steps": clock.seconds, "peaks": clock.peaks, "peak_mb": peak}


def sync_beside_fetch(tmp: Path, stores: int, days: int, chain_db: Path | None = None) -> None:
    """Sequential ``frames.fetch`` then ``frames.sync`` (then a re-sync) against one server
    process, with the requests each made (counted on the wire) and the server's CPU seconds.
    ``chain_db``: serve a copy of that chain database (seeded by ``serve --seed chain`` of
    the same shape) rather than seeding one here."""
    import os
    import shutil

    import httpx

    from giftcard_toolkit import GiftCardClient, frames
    from giftcard_toolkit.server.runner import server_process
    from giftcard_toolkit.server.seed import DEMO_USERS, chain, open_demo

    class Counting(httpx.HTTPTransport):
        requests = 0

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            Counting.requests += request.url.path.startswith("/Batch/")
            return super().handle_request(request)

    def server_cpu(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    shape = chain(stores, days)
    started = time.perf_counter()
    if chain_db is not None:
        for part in chain_db.parent.glob(f"{chain_db.name}*"):
            shutil.copy(part, tmp / part.name.replace(chain_db.name, "chain.sqlite"))
        print(f"a copy of the chain {chain_db} ({shape})")
    else:
        ledger, _ = open_demo(tmp / "chain.sqlite", shape=shape)  # seeded here, served there
        ledger.close()
        print(f"seeded a chain of {shape} in {time.perf_counter() - started:.0f} s")
    figures = {}
    with (
        server_process(tmp / "chain.sqlite", shape=shape) as srv,
        GiftCardClient(srv.url, "demo", DEMO_USERS["demo"], timeout=60, transport=Counting()) as gc,
    ):
        gc.verify()
        for name, call in (
            ("fetch", lambda: frames.fetch(gc, progress=False)),
            ("sync", lambda: frames.sync(gc, tmp / "demo", progress=False)),
            ("again", lambda: frames.sync(gc, tmp / "demo", progress=False)),
        ):
            Counting.requests = 0
            cpu = server_cpu(srv.process.pid)
            started = time.perf_counter()
            result = call()
            seconds = time.perf_counter() - started
            figures[name] = (result, seconds, Counting.requests, server_cpu(srv.process.pid) - cpu)
    (_, txs), fetch_s, fetch_n, fetch_cpu = figures["fetch"]
    report, sync_s, sync_n, sync_cpu = figures["sync"]
    again, resync_s, resync_n, _ = figures["again"]
    print(f"chain server: {stores} stores, {days} days, {txs.height:,} transactions")
    print(
        f"  sequential fetch      {fetch_s:6.2f} s  {fetch_n} requests, "
        f"server CPU {fetch_cpu:.2f} s"
    )
    print(
        f"  sync (concurrent)     {sync_s:6.2f} s  {fetch_s / sync_s:4.1f}x fetch  {sync_n} "
        f"requests, server CPU {sync_cpu:.2f} s  {report}"
    )
    print(f"  re-sync, nothing new  {resync_s:6.2f} s  ({resync_n} requests)")
    print(f"  load average {' '.join(f'{n:.2f}' for n in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=50)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--rows", type=int, nargs="*", default=[10_000_000])
    parser.add_argument("--chunk", type=int, default=10_000_000)
    parser.add_argument("--no-sync", action="store_true", help="skip the sync benchmark")
    parser.add_argument(
        "--chain-db", type=Path, help="sync benchmark: serve a copy of this seeded chain database"
    )
    parser.add_argument(
        "--data", type=Path, help="keep the datasets in DIR/rows-N and reuse them across runs"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="just these analyses (e.g. liability)"
    )
    parser.add_argument(
        "--duckdb", action="store_true", help="also the suite in DuckDB SQL over the same files"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="toolkit", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.only, args.engine)))
        return
    with tempfile.TemporaryDirectory(prefix="giftcard-bench-") as name:
        tmp = Path(name)
        if not args.no_sync:
            sync_beside_fetch(tmp, args.stores, args.days, args.chain_db)
        for rows in args.rows:
            started = time.perf_counter()
            path = (args.data or tmp) / f"rows-{rows}"
            if args.data is not None and (path / "manifest.json").exists():
                made_by = "reused"
            else:
                write_dataset(path, rows, chunk=args.chunk)
                made_by = f"written in {time.perf_counter() - started:.0f} s"
            only = ["--only", *args.only] if args.only else []
            results = {}
            for engine in ("toolkit", "duckdb") if args.duckdb else ("toolkit",):
                out = subprocess.run(
                    [sys.executable, str(HERE), "--measure", str(path), "--engine", engine, *only],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                results[engine] = result = json.loads(out.strip().splitlines()[-1])
                print(
                    f"analytics suite over the dataset ({engine}), {rows:,} transactions "
                    f"({made_by}): {result['seconds']:.2f} s, peak RSS {result['peak_mb']:,.0f} MB"
                    " ("
                    + ", ".join(
                        f"{k} {v:.2f} s {result['peaks'][k]:,.0f} MB"
                        for k, v in result["steps"].items()
                    )
                    + ")",
                    flush=True,
                )
            if args.duckdb:
                ours, theirs = results["toolkit"], results["duckdb"]
                print(
                    "  toolkit / DuckDB: "
                    + ", ".join(
                        f"{k} {v / theirs['steps'][k]:.2f}x"
                        for k, v in ours["steps"].items()
                        if k != "read"
                    )
                    + f"; total {ours['seconds'] / theirs['seconds']:.2f}x, "
                    f"peak {ours['peak_mb'] / theirs['peak_mb']:.2f}x"
                )
    print("aims: sync >= 2x fetch; re-sync <= 2 s; analytics at 100M rows <= 3 GB peak")


if __name__ == "__main__":
    main()
