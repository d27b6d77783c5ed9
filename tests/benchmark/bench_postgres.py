"""The server on PostgreSQL with several worker processes, beside one process on SQLite.

    python tests/benchmark/bench_postgres.py [--seconds 10] [--connections 16] [--workers 4]

Three servers with the demo data, one after the other, each loaded by ``wrk`` through
``latency.lua`` (bench_latency.py's script: keyed durable redeems of 0.01 over 64 sold
cards, and balance checks): one ``giftcard-toolkit serve`` process on SQLite (its writer
thread, group commit), then ``serve --workers N`` on one PostgreSQL 16 database (from
``pgserver``: local, unix socket, default settings — durable commits), then ``--workers 1``
on PostgreSQL (what the workers add). Money is checked after every redeem run (0.01 per
applied redeem, as many as answered, plus at most one in flight per connection) and the
ledger's invariants at the end. Printed: req/s, p50, p99, max, the ratio of each to
SQLite's, and the CPU time each request cost the server's processes and PostgreSQL's (what
bounds the rate when the machine's cores are all busy). Aim (issue 14): redeems on
PostgreSQL with 4 workers >= the SQLite process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

import psutil  # noqa: E402
from bench_latency import STEP, Chain, Figures, run_wrk  # noqa: E402
from bench_server import ensure_wrk  # noqa: E402

from giftcard_toolkit.server import Ledger  # noqa: E402
from giftcard_toolkit.server.runner import server_process  # noqa: E402

WORKLOADS = ("radeem", "balancecheck")


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU time (user + system) so far of the server's processes and of PostgreSQL's."""
    top = psutil.Process(server_pid)
    ours = {p.pid for p in (top, *top.children(recursive=True))}
    spent = {"server": 0.0, "database": 0.0}
    for process in psutil.process_iter(["name", "cpu_times"]):
        kind = "server" if process.pid in ours else "database"
        if kind == "server" or process.info["name"] == "postgres":
            times = process.info["cpu_times"]
            if times is not None:
                spent[kind] += times.user + times.system
    return spent


def run_case(
    name: str, db: str, workers: int, args: argparse.Namespace, tmp: Path
) -> tuple[dict[str, Figures], dict[str, dict[str, float]]]:
    """Each workload on one server; the books checked after the redeems. Also answers the
    CPU microseconds per request, of the server's processes and of the database's."""
    log, stock = tmp / f"{name}.log", tmp / f"{name}-stock.csv"
    results: dict[str, Figures] = {}
    cpu: dict[str, dict[str, float]] = {}
    with server_process(
        db, card_stock=stock, log=log, log_level="info", workers=workers, timeout=180
    ) as server:
        chain = Chain(server.url, stock, log)
        warm = tmp / "warm.jsonl"
        chain.bodies("balancecheck", warm)
        run_wrk(server.url, "balancecheck", warm, 2, args.connections, keyed=False)
        for workload in WORKLOADS:
            bodies = tmp / f"{name}-{workload}.jsonl"
            tokens = chain.bodies(workload, bodies)
            keyed = workload != "balancecheck"
            before = chain.total(tokens) if keyed else Decimal(0)
            spent = cpu_seconds(server.process.pid)
            figures = run_wrk(server.url, workload, bodies, args.seconds, args.connections, keyed)
            after = cpu_seconds(server.process.pid)
            cpu[workload] = {
                kind: (after[kind] - spent[kind]) / max(figures.requests, 1) * 1e6 for kind in after
            }
            if keyed:
                time.sleep(0.5)  # the writes in flight when wrk stopped are answered by now
                applied = abs(chain.total(tokens) - before) / STEP
                if not figures.requests <= applied <= figures.requests + args.connections:
                    print(
                        f"  BOOKS WRONG on {name}: {applied} applied, {figures.requests} answered"
                    )
                    figures.failed += 1
            results[workload] = figures
        chain.close()
    ledger = Ledger(db)
    problems = ledger.check_invariants()
    ledger.close()
    if problems:
        print(f"  LEDGER INVARIANTS BROKEN on {name}: {problems[:3]}")
        results["radeem"].failed += 1
    return results, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    ensure_wrk()
    import psycopg
    from pgkit import pgserver_module  # its lock files in a folder it removes

    tmp = Path(tempfile.mkdtemp(prefix="giftcard-bench-pg-"))
    server = pgserver_module().get_server(tmp / "pgdata", cleanup_mode="stop")
    try:

        def database(name: str) -> str:
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            return server.get_uri(name)

        print(
            f"wrk -t1 -c{args.connections}, {args.seconds} s per case; load average at the "
            f"start {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores"
        )
        cases = [
            ("sqlite, 1 process", str(tmp / "bench.sqlite"), 1),
            (f"postgresql, {args.workers} workers", database("bench_many"), args.workers),
            ("postgresql, 1 worker", database("bench_one"), 1),
        ]
        found: dict[str, dict[str, Figures]] = {}
        costs: dict[str, dict[str, dict[str, float]]] = {}
        for name, db, workers in cases:
            found[name], costs[name] = run_case(
                name.split(",")[0] + str(workers), db, workers, args, tmp
            )
        base = found[cases[0][0]]
        print(
            f"{'server':24} {'workload':13} {'req/s':>8} {'p50':>7} {'p99':>7} {'max':>8} ratio"
            "   CPU us/req: server  database"
        )
        for name, results in found.items():
            for workload, f in results.items():
                ratio = f.rate / base[workload].rate
                failed = f"  {f.failed} FAILED" if f.failed else ""
                cost = costs[name][workload]
                database = f"{cost['database']:8.0f}" if "postgresql" in name else "       -"
                print(
                    f"{name:24} {workload:13} {f.rate:8.0f} {f.p50:7.2f} {f.p99:7.2f} "
                    f"{f.max:8.1f} {ratio:5.2f}x {cost['server']:18.0f} {database}{failed}"
                )
        many = found[cases[1][0]]["radeem"].rate / base["radeem"].rate
        print(
            f"redeems, PostgreSQL with {args.workers} workers / SQLite process: {many:.2f}x "
            f"(aim >= 1.0x): {'met' if many >= 1 else 'MISSED'}"
        )
        print(
            "load average (1, 5, 15 min) at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
        )
        if any(f.failed for results in found.values() for f in results.values()):
            raise SystemExit(1)
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
