from __future__ import annotations

import asyncio
import re
import threading
from decimal import Decimal

import httpx
from serverkit import Pos, body

from giftcard_toolkit.server import running

MASKED = re.compile(r"^\*{12}[0-9]{4}$")


def test_fifty_concurrent_redeems_never_overdraw():
    with running() as srv:
        pos = Pos(srv)
        _, token = pos.sold_card("20.00")
        store = srv.stores[0].id

        async def redeem_all() -> list[str]:
            auth = ("demo", "demo-password")
            limits = httpx.Limits(max_connections=50)
            async with httpx.AsyncClient(base_url=srv.url, auth=auth, limits=limits) as http:
                answers = await asyncio.gather(
                    *[
                        http.post(
                            "/Transaction/radeem",
                            json={"cardtoken": token, "amount": 1, "FranchiseeID": store},
                        )
                        for _ in range(50)
                    ]
                )
            return [a.json()["statuscode"] for a in answers]

        codes = asyncio.run(redeem_all())
        assert codes.count("000000") == 20
        assert codes.count("100005") == 30
        assert pos.balance(token) == Decimal("0.00")
        assert srv.ledger.check_invariants() == []
        pos.close()


def test_redeems_racing_a_batch_close_land_in_exactly_one_batch():
    with running() as srv:
        pos = Pos(srv)
        store = srv.stores[2].id
        tokens = [pos.sold_card("100", store_index=2)[1] for _ in range(4)]
        approved: list[str] = []
        closed_ids: list[str] = []
        stop = threading.Event()

        def redeemer(token: str) -> None:
            with httpx.Client(base_url=srv.url, auth=("demo", "demo-password")) as http:
                for _ in range(25):
                    answer = http.post(
                        "/Transaction/radeem",
                        json={"cardtoken": token, "amount": 1, "FranchiseeID": store},
                    ).json()
                    if answer["statuscode"] == "000000":
                        approved.append(answer["hostRef"])

        def closer() -> None:
            with httpx.Client(base_url=srv.url, auth=("demo", "demo-password")) as http:
                while not stop.is_set():
                    answer = http.post(f"/Batch/batch/{store}").json()
                    if answer["statuscode"] == "000000":
                        closed_ids.append(answer["batches"][0]["batchid"])

        workers = [threading.Thread(target=redeemer, args=(t,)) for t in tokens]
        closing = threading.Thread(target=closer)
        closing.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stop.set()
        closing.join()

        listed = body(pos.http.get(f"/Batch/{store}", params={"limit": 1000}))["batches"]
        seen: dict[str, str] = {}
        for batch in listed:
            for t in batch["transactions"]:
                assert t["hostRef"] not in seen, "a transaction in two batches"
                seen[t["hostRef"]] = batch["batchid"]
            assert batch["netamount"] == sum(
                (-t["amount"] if t["type"] == "redeem" else t["amount"])
                for t in batch["transactions"]
            )
        assert len(approved) == 100
        assert set(approved) <= set(seen), "an approved redeem in no batch"
        assert len(closed_ids) >= 2, "the close really raced the redeems"
        assert srv.ledger.check_invariants() == []
        pos.close()
