"""bulk.run beside bare httpx sending the same reloads, in the same run.

    python tests/benchmark/bench_bulk.py [--reloads 2000] [--concurrency 16]

The seeded server runs in its own process. Both sides tokenize each card once and send
every reload with its own Idempotency-Key, ``--concurrency`` at a time (threads): bare
httpx posts prepared JSON; ``bulk.run`` validates the CSV, keeps its fsynced journal and
parses every answer into models. Reported: reloads per second and the ratio (aim >= 70%).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from giftcard_toolkit import GiftCardClient, bulk
from giftcard_toolkit.server.runner import server_process
from giftcard_toolkit.server.seed import read_card_stock

AUTH = ("demo", "demo-password")


def bare(url: str, cards, reloads: int, concurrency: int) -> float:
    started = time.perf_counter()
    with httpx.Client(
        base_url=url, auth=AUTH, limits=httpx.Limits(max_connections=concurrency)
    ) as http:

        def token(card) -> str:
            return http.post(
                "/v1/Token", json={"cardnumber": card.number, "securitycode": card.security_code}
            ).json()["token"]

        with ThreadPoolExecutor(concurrency) as pool:
            tokens = list(pool.map(token, cards))

        def reload(index: int) -> None:
            card = cards[index % len(cards)]
            answer = http.post(
                "/Transaction/reload",
                headers={"Idempotency-Key": str(uuid.uuid4())},
                json={
                    "cardtoken": tokens[index % len(cards)],
                    "amount": 1,
                    "FranchiseeID": card.store_id,
                },
            )
            assert answer.json()["statuscode"] == "000000"

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(reload, range(reloads)))
    return reloads / (time.perf_counter() - started)


def toolkit(url: str, cards, reloads: int, concurrency: int, tmp: Path) -> float:
    path = tmp / f"reloads-{uuid.uuid4().hex[:6]}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(bulk.COLUMNS)
        for index in range(reloads):
            card = cards[index % len(cards)]
            writer.writerow(
                [
                    "reload",
                    card.number,
                    card.security_code,
                    "1.00",
                    card.store_id,
                    "",
                    f"bench {index}",
                ]
            )
    started = time.perf_counter()
    with GiftCardClient(url, *AUTH) as gc:
        results = bulk.run(gc, path, concurrency=concurrency, progress=False)
    rate = reloads / (time.perf_counter() - started)
    assert set(results["status"]) == {"approved"}, results["status"].value_counts()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--cards", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="giftcard-bench-") as name:
        tmp = Path(name)
        stock = tmp / "stock.csv"
        with server_process(tmp / "bench.sqlite", card_stock=stock) as server:
            url = server.url
            sold = [c for c in read_card_stock(stock) if c.sold][: args.cards * 2]
            bare_rate = bare(url, sold[: args.cards], args.reloads, args.concurrency)
            toolkit_rate = toolkit(url, sold[args.cards :], args.reloads, args.concurrency, tmp)
    print(f"{args.reloads} reloads over {args.cards} cards, concurrency {args.concurrency}")
    print(f"{'bare httpx (threads)':24} {bare_rate:8.0f} reloads/s")
    print(f"{'bulk.run':24} {toolkit_rate:8.0f} reloads/s")
    print(f"bulk / bare = {toolkit_rate / bare_rate:.1%} (aim >= 70%)")


if __name__ == "__main__":
    main()
