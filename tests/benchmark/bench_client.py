"""Client overhead: AsyncGiftCardClient beside bare httpx.AsyncClient, same requests, same run.

    python tests/benchmark/bench_client.py [--checks 2000] [--concurrency 32] [--rounds 3]
                                           [--in-process]

The seeded server runs in its own process (``giftcard-toolkit serve --seed demo``), so that
client and server do not share a GIL; ``--in-process`` uses ``server.running()`` instead
(a uvicorn thread in this process: both clients are slowed by the server's share of the GIL,
so the ratio is the figure to read). Each round sends ``--checks`` balance checks
with ``--concurrency`` in flight, once through the toolkit (a ``Card``: tokenized once,
parsed into ``Balance`` models with Decimal money) and once with bare httpx posting the
same token and reading the JSON; the best round of each is reported, with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from giftcard_toolkit import AsyncGiftCardClient
from giftcard_toolkit.server import running
from giftcard_toolkit.server.runner import server_process
from giftcard_toolkit.server.seed import read_card_stock


async def toolkit_round(url: str, card, checks: int, concurrency: int) -> float:
    async with AsyncGiftCardClient(url, "demo", "demo-password", max_connections=concurrency) as gc:
        await gc.balance(card)  # tokenize and warm the connections
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                await gc.balance(card)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(checks)))
        return checks / (time.perf_counter() - started)


async def bare_round(url: str, token: str, checks: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, auth=("demo", "demo-password"), limits=limits
    ) as http:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                response = await http.post("/Transaction/balancecheck", json={"cardtoken": token})
                response.raise_for_status()
                assert response.json()["statuscode"] == "000000"

        await one()
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(checks)))
        return checks / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--in-process", action="store_true", help="serve with server.running() in this process"
    )
    args = parser.parse_args()
    if args.in_process:
        with running() as srv:
            card = next(c for c in srv.card_stock if c.sold)
            toolkit, bare = measure(srv.url, card, args)
        report(toolkit, bare, args, "server.running() in this process")
        return
    with tempfile.TemporaryDirectory(prefix="giftcard-bench-") as name:
        tmp = Path(name)
        stock = tmp / "stock.csv"
        with server_process(tmp / "bench.sqlite", card_stock=stock) as server:
            url = server.url
            card = next(c for c in read_card_stock(stock) if c.sold)
            toolkit, bare = measure(url, card, args)
    report(toolkit, bare, args, "giftcard-toolkit serve in its own process")


def measure(url: str, card, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """Alternate bare and toolkit rounds against ``url``; the rates of each round."""
    token = httpx.post(
        f"{url}/v1/Token",
        auth=("demo", "demo-password"),
        json={"cardnumber": card.number, "securitycode": card.security_code},
    ).json()["token"]
    toolkit, bare = [], []
    for _ in range(args.rounds):
        bare.append(asyncio.run(bare_round(url, token, args.checks, args.concurrency)))
        toolkit.append(asyncio.run(toolkit_round(url, card, args.checks, args.concurrency)))
    return toolkit, bare


def report(toolkit: list[float], bare: list[float], args: argparse.Namespace, where: str) -> None:
    best_toolkit, best_bare = max(toolkit), max(bare)
    print(
        f"{args.checks} balance checks, concurrency {args.concurrency}, "
        f"best of {args.rounds} rounds; server: {where}"
    )
    print(
        f"{'bare httpx.AsyncClient':26} {best_bare:8.0f} checks/s  "
        f"(rounds: {', '.join(f'{r:.0f}' for r in bare)})"
    )
    print(
        f"{'AsyncGiftCardClient':26} {best_toolkit:8.0f} checks/s  "
        f"(rounds: {', '.join(f'{r:.0f}' for r in toolkit)})"
    )
    print(f"toolkit / bare = {best_toolkit / best_bare:.1%} (aim >= 85%)")


if __name__ == "__main__":
    main()
