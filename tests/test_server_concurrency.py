"""Concurrency over real HTTP: no overdraft, and every transaction in exactly one batch."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import httpx
from serverkit import Pos, body

from giftcard_toolkit.server import running


def test_fifty_concurrent_redeems_never_overdraw():
    with running() as srv:
        pos = Pos(srv)
        _, token = pos.sold_card("20.00")
        store = srv.stores[0].id

        async def redeem_all() -> list[dict]:
            auth = (srv.username, srv.password)
            limits = httpx.Limits(max_connections=50)
            async with httpx.AsyncClient(base_url=srv.url, auth=auth, limits=limits) as http:
                answers = await asyncio.gather(
                    *[
                        http.post(
                            "/Transaction/radeem",
                            json={"cardtoken": token, "amount": 1.00, "FranchiseeID": store},
                        )
                        for _ in range(50)
                    ]
                )
            assert {a.status_code for a in answers} == {200}
            return [body(a) for a in answers]

        answers = asyncio.run(redeem_all())
        codes = [a["statuscode"] for a in answers]
        assert codes.count("000000") == 20
        assert codes.count("100005") == 30
        approved = [a for a in answers if a["statuscode"] == "000000"]
        # Each approval saw its own balance: 20 -> 19, 19 -> 18, ... 1 -> 0, never below.
        assert sorted(a["newbalance"] for a in approved) == [Decimal(n) for n in range(20)]
        assert sorted(a["previousbalance"] for a in approved) == [Decimal(n) for n in range(1, 21)]
        assert len({a["hostRef"] for a in approved}) == 20
        assert all(0 <= a["balance"] < 1 for a in answers if a["statuscode"] == "100005")
        assert pos.balance(token) == Decimal("0.00")
        listed = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"]
        in_batch = {t["hostRef"] for b in listed for t in b["transactions"]}
        assert {a["hostRef"] for a in approved} <= in_batch
        assert srv.ledger.check_invariants() == []
        pos.close()


def test_redeems_racing_a_batch_close_land_in_exactly_one_batch():
    with running() as srv:
        pos = Pos(srv)
        store = srv.stores[2].id
        tokens = [pos.sold_card("100", store_index=2)[1] for _ in range(4)]
        approved: list[str] = []
        closed_ids: list[str] = []
        closed_refs: dict[str, set[str]] = {}
        stop = threading.Event()

        sent = [0]

        def redeemer(token: str) -> None:
            # At least 25 each, and on until the closer has closed a few batches under them
            # (a close takes longer on some backends); never past the card's 100.00.
            with httpx.Client(base_url=srv.url, auth=("demo", "demo-password")) as http:
                for n in range(90):
                    if n >= 25 and len(closed_ids) >= 3:
                        break
                    sent[0] += 1
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
                        (batch,) = answer["batches"]
                        closed_ids.append(batch["batchid"])
                        closed_refs[batch["batchid"]] = {
                            t["hostRef"] for t in batch["transactions"]
                        }

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
            assert batch["transactioncount"] == len(batch["transactions"])
            assert batch["redeemedamount"] == sum(
                t["amount"] for t in batch["transactions"] if t["type"] == "redeem"
            )
            assert batch["netamount"] == sum(
                (-t["amount"] if t["type"] == "redeem" else t["amount"])
                for t in batch["transactions"]
            )
        assert len(approved) == sent[0] >= 100
        assert set(approved) <= set(seen), "an approved redeem in no batch"
        assert len(closed_ids) >= 2, "the close really raced the redeems"
        for batch_id, refs in closed_refs.items():
            later = {ref for ref, in_batch in seen.items() if in_batch == batch_id}
            assert later == refs, "a closed batch changed after it was closed"
        assert srv.ledger.check_invariants() == []
        pos.close()


def test_concurrent_retries_with_one_key_apply_once(srv, pos):
    """A POS that fires its retries in parallel: one redeem, the rest 409 or the replay."""
    _, token = pos.sold_card("50")
    store = srv.stores[0].id

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.url, auth=(srv.username, srv.password)) as http:
            return await asyncio.gather(
                *[
                    http.post(
                        "/Transaction/radeem",
                        json={"cardtoken": token, "amount": 1, "FranchiseeID": store},
                        headers={"Idempotency-Key": "retry-storm"},
                    )
                    for _ in range(30)
                ]
            )

    answers = asyncio.run(fire())
    assert {a.status_code for a in answers} <= {200, 409}
    applied = [a for a in answers if a.status_code == 200]
    assert len({a.text for a in applied}) == 1, "every 200 is the same answer"
    assert len([a for a in applied if "idempotent-replayed" not in a.headers]) == 1
    assert pos.balance(token) == 49
    again = pos.send(
        "POST",
        "/Transaction/radeem",
        {"cardtoken": token, "amount": 1, "FranchiseeID": store},
        headers={"Idempotency-Key": "retry-storm"},
    )
    assert again.headers["idempotent-replayed"] == "true" and again.text == applied[0].text
