"""Server throughput over loopback, beside the stack's ceiling on this machine.

    python tests/benchmark/bench_server.py [--seconds 10] [--connections 16]

Three servers run one after the other, each alone in its own process under uvicorn with
the same settings: a minimal FastAPI app answering a constant JSON body (the ceiling:
what FastAPI + uvicorn can do here at all), then the GiftCard server with the demo data
(access log on, as in production) for ``balancecheck`` and for ``radeem``. The load comes
from ``wrk`` (installed with apt-get if missing): 16 keep-alive connections, one thread.
After the redeem run the books are checked: approvals x 0.01 left the card, and the
ledger invariants hold.
"""

from __future__ import annotations

import argparse
import base64
import json
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

    @app.post("/Transaction/balancecheck")
    async def constant() -> Response:
        return Response(body, media_type="application/json")

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--ceiling-app", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
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
