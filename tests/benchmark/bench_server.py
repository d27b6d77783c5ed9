"""Server throughput over loopback, beside the stack's ceiling on this machine.

    python tests/benchmark/bench_server.py [--seconds 10] [--connections 16]
    python tests/benchmark/bench_server.py --compare-with HEAD [--rounds 5] [--cpu]

Three servers run one after the other, each alone in its own process under uvicorn with
the same settings: a minimal FastAPI app answering a constant JSON body (the ceiling:
what FastAPI + uvicorn can do here at all), then the GiftCard server with the demo data
(access log on, as in production) for ``balancecheck`` and for ``radeem``. The load comes
from ``wrk`` (installed with apt-get if missing): 16 keep-alive connections, one thread.
After the redeem run the books are checked: approvals x 0.01 left the card, and the
ledger invariants hold.

``--compare-with REV`` measures what a change costs instead: the server as committed at
``REV`` (exported with ``git archive``) and the server in this working tree run side by
side, each in its own process with the demo data, and ``balancecheck`` is loaded on one
then the other, ``--rounds`` times, alternating (so that drift of the machine hits both
alike). It prints each round, the medians and their ratio. With ``--cpu`` it measures
the CPU time of one ``balancecheck`` instead: each build's ASGI app called in process (no
network, no load generator; access log on, to a file), the best of several runs per round,
which a busy machine disturbs far less than a requests-per-second figure.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx

from giftcard_toolkit.server.runner import server_process

HERE = Path(__file__).resolve()


def ceiling_app():  # type: ignore[no-untyped-def]
    from fastapi import FastAPI
    from fastapi.responses import Response

    app = FastAPI()
    body = json.dumps({"statuscode": "000000", "description": "Success", "balance": 25.0})

    async def constant() -> Response:
        return Response(body, media_type="application/json")

    # bench_latency.py sends its writes here too: the same constant answer at each path.
    for path in ("/Transaction/balancecheck", "/Transaction/reload", "/Transaction/radeem"):
        app.post(path)(constant)
    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            httpx.post(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("server did not start in time")


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"], check=False, stdout=subprocess.DEVNULL
    )
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is needed: apt-get install wrk")
    return found


def run_wrk(
    url: str, body: dict[str, object] | None, auth: str, seconds: int, connections: int, tmp: Path
) -> tuple[float, int, int]:
    """(requests per second, requests, non-2xx responses)."""
    script = tmp / "request.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body or {}))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Basic {auth}"\n'
    )
    out = subprocess.run(
        [ensure_wrk(), "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, total, int(errors.group(1)) if errors else 0


def start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _balance_target(url: str, stock: Path) -> dict[str, object]:
    """A card of the demo stock, sold and tokenized on the server at ``url``: the body of a
    balance check that is approved."""
    from giftcard_toolkit.server.seed import read_card_stock

    card = next(c for c in read_card_stock(stock) if not c.sold)
    with httpx.Client(base_url=url, auth=("demo", "demo-password")) as http:
        token = http.post(
            "/v1/Token", json={"cardnumber": card.number, "securitycode": card.security_code}
        ).json()["token"]
        sold = http.post(
            "/Transaction/sellnewcard",
            json={"cardtoken": token, "amount": 25, "FranchiseeID": card.store_id},
        ).json()
        assert sold["statuscode"] == "000000", sold
    return {"cardtoken": token}


# Run in a build's own tree (``python -c``): the CPU time of one balancecheck through the
# whole ASGI app (middleware, authentication from the cache, parsing, the ledger read, the
# access log), in microseconds, the best of ``runs`` runs of ``n`` calls.
_CPU_PROBE = """
import asyncio, base64, json, logging, shutil, sys, tempfile, time
from pathlib import Path
from giftcard_toolkit.server import create_app, open_demo

n, runs = int(sys.argv[1]), int(sys.argv[2])
tmp = Path(tempfile.mkdtemp(prefix="giftcard-cpu-"))
logging.basicConfig(filename=tmp / "access.log", level=logging.INFO)
ledger, demo = open_demo(tmp / "cpu.sqlite")
app = create_app(ledger)
auth = b"Basic " + base64.b64encode(b"demo:demo-password")


async def call(method, path, payload):
    body = json.dumps(payload).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8800),
        "headers": [
            (b"host", b"127.0.0.1:8800"), (b"content-type", b"application/json"),
            (b"authorization", auth), (b"content-length", str(len(body)).encode()),
        ],
    }
    answer = {}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] = answer.get("body", b"") + message.get("body", b"")

    await app(scope, receive, send)
    assert answer["status"] == 200, answer
    return json.loads(answer["body"])


async def main():
    card = next(c for c in demo.card_stock if not c.sold)
    token = (await call("POST", "/v1/Token", {"cardnumber": card.number,
                                              "securitycode": card.security_code}))["token"]
    sold = await call("POST", "/Transaction/sellnewcard",
                      {"cardtoken": token, "amount": 25, "FranchiseeID": card.store_id})
    assert sold["statuscode"] == "000000", sold
    check = {"cardtoken": token}
    for _ in range(n // 10):  # warm up
        await call("POST", "/Transaction/balancecheck", check)
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        for _ in range(n):
            await call("POST", "/Transaction/balancecheck", check)
        best = min(best, (time.process_time() - started) / n)
    print(best * 1e6)


asyncio.run(main())
ledger.close()
logging.shutdown()
shutil.rmtree(tmp, ignore_errors=True)  # leave nothing behind in /tmp
"""


def compare_cpu(revision: str, base: Path, root: Path, rounds: int) -> None:
    import statistics

    builds = {f"at {revision}": base, "this tree": root}
    times: dict[str, list[float]] = {label: [] for label in builds}
    for round_ in range(rounds):
        order = list(builds.items()) if round_ % 2 == 0 else list(reversed(builds.items()))
        for label, tree in order:
            out = subprocess.run(
                [sys.executable, "-c", _CPU_PROBE, "5000", "5"],
                cwd=tree,
                env={**os.environ, "PYTHONPATH": str(tree)},
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            times[label].append(float(out.split()[-1]))
        print(
            f"round {round_ + 1}: "
            + "  ".join(f"{label} {times[label][-1]:6.1f} us" for label in builds),
            flush=True,
        )
    before, after = (statistics.median(t) for t in times.values())
    print("CPU time of one balancecheck through the ASGI app, best of 5 x 5,000, medians:")
    print(f"  at {revision:10} {before:6.1f} us  ({1e6 / before:7.0f} req/s of one core)")
    print(
        f"  this tree     {after:6.1f} us  ({1e6 / after:7.0f} req/s of one core)  "
        f"{after / before - 1:+.1%} time per request"
    )


def compare(revision: str, args: argparse.Namespace) -> None:
    """``balancecheck`` req/s of the server at ``revision`` beside this working tree's."""
    import statistics

    root = HERE.parents[2]
    auth = base64.b64encode(b"demo:demo-password").decode()
    with tempfile.TemporaryDirectory(prefix="giftcard-bench-compare-") as name:
        tmp = Path(name)
        base = tmp / "base"
        base.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", revision, "giftcard_toolkit"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        if args.cpu:
            compare_cpu(revision, base, root, args.rounds)
            return
        builds = {f"at {revision}": base, "this tree": root}
        servers: dict[str, tuple[str, dict[str, object], subprocess.Popen[bytes]]] = {}
        try:
            for label, tree in builds.items():
                port = free_port()
                folder = tmp / label.replace(" ", "-")
                folder.mkdir()
                command = [
                    sys.executable,
                    "-m",
                    "giftcard_toolkit.cli",
                    "serve",
                    "--seed",
                    "demo",
                    "--db",
                    str(folder / "bench.sqlite"),
                    "--card-stock",
                    str(folder / "stock.csv"),
                    "--port",
                    str(port),
                    "--log-level",
                    "info",  # the access log on, as in production
                ]
                process = subprocess.Popen(  # noqa: S603
                    command,
                    cwd=tree,  # -m puts the tree first on sys.path: its package is the one run
                    env={**os.environ, "PYTHONPATH": str(tree)},
                    stdout=(folder / "server.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
                url = f"http://127.0.0.1:{port}"
                servers[label] = (url, {}, process)
                wait_healthy(f"{url}/Health", process)
                servers[label] = (url, _balance_target(url, folder / "stock.csv"), process)
            rates: dict[str, list[float]] = {label: [] for label in builds}
            for url, check, _ in servers.values():  # warm up
                run_wrk(f"{url}/Transaction/balancecheck", check, auth, 2, args.connections, tmp)
            for round_ in range(args.rounds):
                order = list(servers.items())
                if round_ % 2:
                    order.reverse()
                for label, (url, check, _) in order:
                    rate, _, failed = run_wrk(
                        f"{url}/Transaction/balancecheck",
                        check,
                        auth,
                        args.seconds,
                        args.connections,
                        tmp,
                    )
                    if failed:
                        raise SystemExit(f"{label}: {failed} answers were not 2xx")
                    rates[label].append(rate)
                print(
                    f"round {round_ + 1}: "
                    + "  ".join(f"{label} {rates[label][-1]:7.0f} req/s" for label in builds),
                    flush=True,
                )
        finally:
            for _, _, process in servers.values():
                process.terminate()
                process.wait()
    before, after = (statistics.median(r) for r in rates.values())
    print(
        f"balancecheck, loopback, {args.connections} connections, {args.seconds} s x "
        f"{args.rounds} rounds each, wrk -t1, medians:"
    )
    print(f"  at {revision:10} {before:7.0f} req/s")
    print(f"  this tree     {after:7.0f} req/s  ({after / before - 1:+.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--compare-with", metavar="REV", help="a git revision to compare with")
    parser.add_argument("--rounds", type=int, default=5, help="with --compare-with (5)")
    parser.add_argument(
        "--cpu", action="store_true", help="with --compare-with: CPU time per request instead"
    )
    parser.add_argument("--ceiling-app", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare_with:
        compare(args.compare_with, args)
        return
    if args.ceiling_app:
        import uvicorn

        uvicorn.run(
            ceiling_app(),
            host="127.0.0.1",
            port=args.ceiling_app,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        return

    auth = base64.b64encode(b"demo:demo-password").decode()
    with tempfile.TemporaryDirectory(prefix="giftcard-bench-") as name:
        tmp = Path(name)
        port = free_port()
        ceiling = start([sys.executable, str(HERE), "--ceiling-app", str(port)], tmp / "c.log")
        url = f"http://127.0.0.1:{port}/Transaction/balancecheck"
        try:
            wait_healthy(url, ceiling)
            run_wrk(url, None, auth, 2, args.connections, tmp)  # warm up
            ceiling_rate, _, _ = run_wrk(url, None, auth, args.seconds, args.connections, tmp)
        finally:
            ceiling.terminate()
            ceiling.wait()

        db = tmp / "bench.sqlite"
        stock = tmp / "stock.csv"
        # The access log stays on (info), as in production.
        with server_process(db, card_stock=stock, log=tmp / "server.log", log_level="info") as ours:
            base = ours.url
            from giftcard_toolkit.server.seed import read_card_stock

            card = next(c for c in read_card_stock(stock) if not c.sold)
            store = card.store_id
            with httpx.Client(base_url=base, auth=("demo", "demo-password")) as http:
                token = http.post(
                    "/v1/Token",
                    json={"cardnumber": card.number, "securitycode": card.security_code},
                ).json()["token"]
                http.post(
                    "/Transaction/sellnewcard",
                    json={"cardtoken": token, "amount": 500, "FranchiseeID": store},
                ).raise_for_status()
                for _ in range(3):
                    http.post(
                        "/Transaction/reload",
                        json={"cardtoken": token, "amount": 500, "FranchiseeID": store},
                    )
                check = {"cardtoken": token}
                redeem = {"cardtoken": token, "amount": 0.01, "FranchiseeID": store}
                run_wrk(f"{base}/Transaction/balancecheck", check, auth, 2, args.connections, tmp)
                balance_rate, _, balance_errors = run_wrk(
                    f"{base}/Transaction/balancecheck",
                    check,
                    auth,
                    args.seconds,
                    args.connections,
                    tmp,
                )
                before = Decimal(
                    str(http.post("/Transaction/balancecheck", json=check).json()["balance"])
                )
                redeem_rate, redeems, redeem_errors = run_wrk(
                    f"{base}/Transaction/radeem", redeem, auth, args.seconds, args.connections, tmp
                )
                after = Decimal(
                    str(http.post("/Transaction/balancecheck", json=check).json()["balance"])
                )

        from giftcard_toolkit.server import Ledger

        ledger = Ledger(db)
        problems = ledger.check_invariants()
        ledger.close()

    print(f"loopback, {args.connections} connections, {args.seconds} s each, wrk -t1")
    print(f"{'ceiling (constant JSON)':28} {ceiling_rate:9.0f} req/s")
    print(
        f"{'balancecheck':28} {balance_rate:9.0f} req/s  {balance_rate / ceiling_rate:6.1%} "
        f"of ceiling (aim >= 50%)  non-2xx {balance_errors}"
    )
    print(
        f"{'radeem 0.01':28} {redeem_rate:9.0f} req/s  {redeem_rate / ceiling_rate:6.1%} "
        f"of ceiling (aim >= 25%)  non-2xx {redeem_errors}"
    )
    moved = before - after
    print(
        f"redeems sent {redeems}, money moved {moved} (= {int(moved * 100)} x 0.01); "
        f"ledger invariants: {problems or 'hold'}"
    )
    if problems or redeem_errors or balance_errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
