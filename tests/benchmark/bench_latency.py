"""The till's wait: the server's latency under load, measured with wrk beside bare FastAPI.

    python tests/benchmark/bench_latency.py [--seconds 10] [--connections 1,8,32,128]
        [--workloads balancecheck,reload,radeem] [--stall-seconds 75]
        [--postgresql [--workers 4]]

A till waits on every request, so what matters is the tail, not only the mean. Two servers
run side by side, each in its own process under uvicorn with the same settings: a bare
FastAPI app answering a constant JSON body (``bench_server.py --ceiling-app``: what FastAPI
and uvicorn can do on this machine at all) and the GiftCard server with the demo data,
access log on, as ``giftcard-toolkit serve`` runs in production. ``wrk`` (a C load
generator, one thread, so that it is not the bottleneck; ``./dev bench`` installs it) sends
the same requests to both through ``latency.lua``: balance checks, durable reloads and
redeems of 0.01, each write under a fresh ``Idempotency-Key``, spread over 64 sold cards.
Each case is measured on one server then the other (alternating), so that drift of a busy
machine hits both alike; the printed ratios are what to compare across machines.

``--postgresql``: our server on a PostgreSQL 16 database (``pgserver``, local, default
settings) with ``--workers`` processes, instead of one process on SQLite.

Then ``--stall-seconds`` of balance checks at 8 connections on each server look for
periodic stalls (the credential cache once expired for everyone at once every 60 s).

Per case: requests per second, p50, p99 and max latency as wrk saw them, and the server's
own p99 from its access log (the time spent inside the app; the rest is queueing).
Money is checked after each write run: the cards' balances moved by exactly 0.01 per
applied write, as many as wrk had answered (plus at most one in flight per connection),
and the ledger's invariants hold at the end; the run fails otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from base64 import b64encode
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(1, str(HERE.parents[1]))  # the tests' pgkit, for --postgresql

from bench_server import ensure_wrk  # noqa: E402

from giftcard_toolkit.server.runner import free_port, server_process  # noqa: E402
from giftcard_toolkit.server.seed import read_card_stock  # noqa: E402

USER, PASSWORD = "demo", "demo-password"
AUTHORIZATION = "Basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode()
CARDS = 64
STEP = Decimal("0.01")
# The aims (ratios to bare FastAPI at 32 connections, same run).
AIMS = {
    "balancecheck": (0.70, 2.0),
    "reload": (0.50, 3.0),
    "radeem": (0.50, 3.0),
}
STALL_LIMIT_MS = 100.0
# An access-log line (cli's format): its clock time, and how long the request took inside.
_ACCESS = re.compile(
    rb"^\S+ (\d\d):(\d\d):(\d\d),(\d{3}) .* POST /Transaction/\w+ \d{3} ([\d.]+)ms ", re.M
)


@dataclass
class Figures:
    """One wrk run: what the load generator saw, and the server's own p99 (ms) if known."""

    rate: float
    requests: int
    p50: float
    p99: float
    max: float
    failed: int
    inside_p99: float | None = None
    inside_max: float | None = None
    slow: list[tuple[float, float]] = field(default_factory=list)  # (s into the run, ms)

    def row(self) -> str:
        inside = f"{self.inside_p99:6.2f}" if self.inside_p99 is not None else "     -"
        failed = f"  {self.failed} FAILED" if self.failed else ""
        return f"{self.rate:8.0f} {self.p50:7.2f} {self.p99:7.2f} {self.max:8.1f} {inside}{failed}"


class Chain:
    """The GiftCard server's side: 64 sold cards, fresh tokens for each run, the books."""

    def __init__(self, url: str, stock: Path, log: Path) -> None:
        self.http = httpx.Client(base_url=url, auth=(USER, PASSWORD), timeout=30)
        self.cards = [c for c in read_card_stock(stock) if not c.sold][:CARDS]
        self.log = log
        for card in self.cards:
            sold = self.http.post(
                "/Transaction/sellnewcard",
                json={"cardtoken": self.token(card), "amount": 500, "FranchiseeID": card.store_id},
            ).json()
            assert sold["statuscode"] == "000000", sold

    def token(self, card) -> str:  # type: ignore[no-untyped-def]
        answer = self.http.post(
            "/v1/Token", json={"cardnumber": card.number, "securitycode": card.security_code}
        ).json()
        return str(answer["token"])

    def bodies(self, workload: str, path: Path) -> list[str]:
        """One body per card, with a token fresh for this run (tokens live 10 minutes);
        written to ``path`` for wrk, the tokens returned."""
        tokens = [self.token(card) for card in self.cards]
        lines = []
        for token, card in zip(tokens, self.cards, strict=True):
            if workload == "balancecheck":
                lines.append(json.dumps({"cardtoken": token}))
            else:  # amount as written, an exact decimal: no float on the way
                lines.append(
                    f'{{"cardtoken": "{token}", "amount": {STEP}, '
                    f'"FranchiseeID": "{card.store_id}"}}'
                )
        path.write_text("\n".join(lines) + "\n")
        return tokens

    def total(self, tokens: list[str]) -> Decimal:
        """The cards' balances added up, exactly."""
        total = Decimal(0)
        for token in tokens:
            answer = self.http.post("/Transaction/balancecheck", json={"cardtoken": token})
            total += Decimal(answer.json(parse_float=Decimal)["balance"])
        return total

    def inside(self, since: int, figures: Figures) -> None:
        """The server's own p99 and max (ms), and when it was slower than the stall limit,
        from the access-log lines after ``since``."""
        with self.log.open("rb") as log:
            log.seek(since)
            lines = [
                (int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000, float(took))
                for h, m, s, ms, took in _ACCESS.findall(log.read())
            ]
        if len(lines) >= 100:
            times = [took for _, took in lines]
            figures.inside_p99 = statistics.quantiles(times, n=100)[98]
            figures.inside_max = max(times)
            start = lines[0][0]
            figures.slow = [(at - start, took) for at, took in lines if took > STALL_LIMIT_MS]

    def close(self) -> None:
        self.http.close()


def run_wrk(
    base: str, workload: str, bodies: Path, seconds: int, connections: int, keyed: bool
) -> Figures:
    prefix = f"{workload[:3]}{connections}-{secrets.token_hex(6)}" if keyed else "-"
    path = f"/Transaction/{workload}"
    command = [ensure_wrk(), "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s"]
    command += ["-s", str(HERE.parent / "latency.lua"), base + path, "--"]
    command += [path, AUTHORIZATION, str(bodies), prefix]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    found = re.search(r"^RESULT (.*)$", out, re.MULTILINE)
    if found is None:
        raise SystemExit(f"wrk printed no result:\n{out}")
    r = json.loads(found.group(1))
    return Figures(
        rate=r["requests"] / (r["duration_us"] / 1e6),
        requests=r["requests"],
        p50=r["p50_us"] / 1000,
        p99=r["p99_us"] / 1000,
        max=r["max_us"] / 1000,
        failed=r["non2xx"] + r["socket_errors"] + r["timeouts"],
    )


def start_bare(log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """bench_server.py's constant-JSON FastAPI app, under uvicorn as ``serve`` runs ours."""
    port = free_port()
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, str(HERE.parent / "bench_server.py"), "--ceiling-app", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.post(f"{url}/Transaction/balancecheck", timeout=1).raise_for_status()
            return url, process
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the bare FastAPI app did not start") from None
            time.sleep(0.2)


def measure(
    chain: Chain,
    ours: str,
    bare: str,
    workload: str,
    connections: int,
    seconds: int,
    tmp: Path,
    turn: int,
) -> tuple[Figures, Figures, str]:
    """One case on both servers (order alternating by ``turn``); the books after it."""
    bodies = tmp / f"{workload}.jsonl"
    tokens = chain.bodies(workload, bodies)
    keyed = workload != "balancecheck"
    before = chain.total(tokens) if keyed else Decimal(0)
    results: dict[str, Figures] = {}
    for name in ("bare", "ours") if turn % 2 == 0 else ("ours", "bare"):
        base = bare if name == "bare" else ours
        since = chain.log.stat().st_size
        results[name] = run_wrk(base, workload, bodies, seconds, connections, keyed)
        if name == "ours":
            chain.inside(since, results[name])
    books = ""
    if keyed:
        time.sleep(0.5)  # the writes in flight when wrk stopped are answered by now
        moved = abs(chain.total(tokens) - before)
        applied, answered = moved / STEP, results["ours"].requests
        exact = applied == int(applied) and answered <= applied <= answered + connections
        books = f"{int(applied)} applied" + ("" if exact else f" BOOKS WRONG ({answered} ans.)")
        if not exact:
            results["ours"].failed += 1
    return results["ours"], results["bare"], books


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="per case and server (10)")
    parser.add_argument("--connections", default="1,8,32,128")
    parser.add_argument("--workloads", default="balancecheck,reload,radeem")
    parser.add_argument("--stall-seconds", type=int, default=75, help="0: skip (75)")
    parser.add_argument("--postgresql", action="store_true", help="ours on PostgreSQL")
    parser.add_argument("--workers", type=int, default=4, help="with --postgresql (4)")
    args = parser.parse_args()
    connections = [int(c) for c in args.connections.split(",")]
    workloads = args.workloads.split(",")
    ensure_wrk()

    failures = 0
    with tempfile.TemporaryDirectory(prefix="giftcard-latency-") as name:
        tmp = Path(name)
        bare, bare_process = start_bare(tmp / "bare.log")
        log, stock = tmp / "server.log", tmp / "stock.csv"
        db, workers, postgres = str(tmp / "bench.sqlite"), 1, None
        if args.postgresql:
            import psycopg
            from pgkit import pgserver_module  # its lock files in a folder it removes

            postgres = pgserver_module().get_server(tmp / "pgdata", cleanup_mode="stop")
            with psycopg.connect(postgres.get_uri(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            db, workers = postgres.get_uri("bench"), args.workers
            print(f"ours: PostgreSQL 16 (pgserver), {workers} worker processes")
        try:
            with server_process(
                db, card_stock=stock, log=log, log_level="info", workers=workers, timeout=180
            ) as server:
                chain = Chain(server.url, stock, log)
                warm = tmp / "warm.jsonl"
                chain.bodies("balancecheck", warm)
                for base in (bare, server.url):
                    run_wrk(base, "balancecheck", warm, 2, 8, keyed=False)
                print(
                    f"wrk -t1, loopback, {args.seconds} s per case and server; latency in ms "
                    "(inside: the server's own p99 from its access log); load average at the "
                    "start {:.1f}, {} cores".format(os.getloadavg()[0], os.cpu_count())
                )
                print(
                    f"{'case':22} {'ours req/s':>10} {'p50':>7} {'p99':>7} {'max':>8} "
                    f"{'inside':>6} | {'bare req/s':>10} {'p99':>7} {'max':>8} | "
                    f"{'rate':>5} {'p99':>5}"
                )
                summary: list[str] = []
                for turn, (workload, conns) in enumerate(
                    (w, c) for w in workloads for c in connections
                ):
                    ours, base, books = measure(
                        chain, server.url, bare, workload, conns, args.seconds, tmp, turn
                    )
                    failures += ours.failed + base.failed
                    ratio, p99_ratio = ours.rate / base.rate, ours.p99 / base.p99
                    print(
                        f"{workload + ' x' + str(conns):22} {ours.row()} | "
                        f"{base.rate:10.0f} {base.p99:7.2f} {base.max:8.1f} | "
                        f"{ratio:5.0%} {p99_ratio:4.1f}x  {books}",
                        flush=True,
                    )
                    if workload in AIMS and conns == 32:
                        least, most = AIMS[workload]
                        met = ratio >= least and p99_ratio <= most
                        summary.append(
                            f"{workload} x32: {ratio:.0%} of bare req/s (aim >= {least:.0%}), "
                            f"p99 {p99_ratio:.1f}x bare (aim <= {most:g}x): "
                            + ("met" if met else "MISSED")
                        )
                if args.stall_seconds:
                    bodies = tmp / "stall.jsonl"
                    chain.bodies("balancecheck", bodies)
                    since = log.stat().st_size
                    stall = run_wrk(
                        server.url, "balancecheck", bodies, args.stall_seconds, 8, False
                    )
                    chain.inside(since, stall)
                    quiet = run_wrk(bare, "balancecheck", bodies, args.stall_seconds, 8, False)
                    failures += stall.failed + quiet.failed
                    print(
                        f"{'stalls x8 ' + str(args.stall_seconds) + ' s':22} {stall.row()} | "
                        f"{quiet.rate:10.0f} {quiet.p99:7.2f} {quiet.max:8.1f}"
                    )
                    summary.append(
                        f"stalls: slowest of {stall.requests:,} balance checks in "
                        f"{args.stall_seconds} s {stall.max:.1f} ms (aim <= {STALL_LIMIT_MS:g}; "
                        f"inside the server {stall.inside_max or 0:.1f} ms; "
                        f"bare FastAPI's slowest {quiet.max:.1f} ms): "
                        + ("met" if stall.max <= STALL_LIMIT_MS else "MISSED")
                    )
                    if stall.slow:  # stalls every 60 s would point at the credential cache
                        summary.append(
                            "  slower than that inside the server, at: "
                            + ", ".join(f"{at:.1f} s ({took:.0f} ms)" for at, took in stall.slow)
                        )
                chain.close()
            from giftcard_toolkit.server import Ledger

            ledger = Ledger(db)
            problems = ledger.check_invariants()
            ledger.close()
        finally:
            bare_process.terminate()
            bare_process.wait()
            if postgres is not None:
                postgres.cleanup()
    for line in summary:
        print(line)
    print("load average (1, 5, 15 min) at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print(f"ledger invariants: {problems or 'hold'}")
    if problems or failures:
        raise SystemExit(f"{failures} failed requests or wrong books; invariants: {problems}")


if __name__ == "__main__":
    main()
