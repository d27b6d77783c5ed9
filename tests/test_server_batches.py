"""Settlement batches: listing with totals and filters, closing, the open/closed life."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st
from serverkit import MovableClock, Pos, body

from giftcard_toolkit.server import running
from giftcard_toolkit.server.ledger.batches import _transaction_json
from giftcard_toolkit.server.ledger.records import dumps, from_cents

MASKED = re.compile(r"^\*{12}[0-9]{4}$")


def test_batches_list_newest_first_with_totals_and_filters(srv, pos):
    store = srv.stores[2].id
    listed = body(pos.http.get(f"/Batch/{store}", params={"limit": 5}))
    assert listed["statuscode"] == "000000" and listed["franchiseeid"] == store
    batches = listed["batches"]
    assert len(batches) == 5
    assert batches[0]["status"] == "open" and batches[0]["closed"] is None
    assert [b["opened"] for b in batches] == sorted((b["opened"] for b in batches), reverse=True)
    for batch in batches:
        kinds = {"sale": Decimal(0), "reload": Decimal(0), "redeem": Decimal(0)}
        for t in batch["transactions"]:
            kinds[t["type"]] += t["amount"]
            assert MASKED.match(t["cardno"]) and re.fullmatch(r"[0-9a-f]{16}", t["cardref"])
            sign = -1 if t["type"] == "redeem" else 1
            assert t["newbalance"] == t["previousbalance"] + sign * t["amount"]
        assert batch["transactioncount"] == len(batch["transactions"])
        assert (batch["soldamount"], batch["reloadedamount"], batch["redeemedamount"]) == (
            kinds["sale"],
            kinds["reload"],
            kinds["redeem"],
        )
        assert batch["netamount"] == kinds["sale"] + kinds["reload"] - kinds["redeem"]
        times = [t["datetime"] for t in batch["transactions"]]
        assert times == sorted(times), "oldest first within a batch"

    closed = body(
        pos.http.get(
            f"/Batch/{store}",
            params={
                "status": "closed",
                "from": "2026-09-10",
                "to": "2026-09-12",
                "includetransactions": "false",
            },
        )
    )["batches"]
    assert [b["opened"][:10] for b in closed] == ["2026-09-12", "2026-09-11", "2026-09-10"]
    assert all("transactions" not in b and b["status"] == "closed" for b in closed)
    opened = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"]
    assert len(opened) == 1


def test_cardref_follows_one_card_across_transactions(srv, pos):
    store = srv.stores[0].id
    card, token = pos.sold_card("30")
    pos.post("/Transaction/radeem", {"cardtoken": token, "amount": 5, "FranchiseeID": store})
    listed = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"][0]
    mine = [t for t in listed["transactions"] if t["cardno"].endswith(card.number[-4:])]
    assert len({t["cardref"] for t in mine}) == 1
    assert card.number not in pos.http.get(f"/Batch/{store}").text


def test_close_batch_with_expected_totals():
    clock = MovableClock()
    with running(clock=clock) as srv:
        pos = Pos(srv)
        store = srv.stores[1].id
        open_now = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"][0]
        mismatch = pos.post(f"/Batch/batch/{store}", {"expectedcount": 1, "expectedamount": 1})
        assert mismatch["statuscode"] == "100013"
        assert mismatch["transactioncount"] == open_now["transactioncount"]
        assert mismatch["netamount"] == open_now["netamount"]
        closed = pos.post(
            f"/Batch/batch/{store}",
            {
                "expectedcount": open_now["transactioncount"],
                "expectedamount": open_now["netamount"],
            },
        )
        assert closed["statuscode"] == "000000"
        (batch,) = closed["batches"]
        assert batch["batchid"] == open_now["batchid"] and batch["status"] == "closed"
        assert len(batch["transactions"]) == open_now["transactioncount"]
        again = pos.http.post(f"/Batch/batch/{store}")
        assert body(again)["statuscode"] == "100016"
        clock.advance(minutes=1)
        _, token = pos.sold_card("10", store_index=1)
        after = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"]
        assert len(after) == 1 and after[0]["batchid"] != batch["batchid"]
        assert after[0]["transactioncount"] == 1
        pos.close()


def test_days_filter_uses_the_server_time_zone():
    from zoneinfo import ZoneInfo

    with running(tz=ZoneInfo("America/New_York")) as srv:
        pos = Pos(srv)
        store = srv.stores[0].id
        batches = body(
            pos.http.get(
                f"/Batch/{store}",
                params={"status": "closed", "from": "2026-09-20", "to": "2026-09-20"},
            )
        )["batches"]
        assert len(batches) == 1
        assert batches[0]["opened"].startswith("2026-09-20T")
        assert batches[0]["opened"].endswith("-04:00")
        pos.close()


def test_every_time_carries_its_utc_offset(srv, pos):
    pos.sold_card("3", store_index=2)
    listed = body(pos.http.get(f"/Batch/{srv.stores[2].id}", params={"limit": 3}))
    times = [b["opened"] for b in listed["batches"]]
    times += [b["closed"] for b in listed["batches"] if b["closed"]]
    times += [t["datetime"] for b in listed["batches"] for t in b["transactions"]]
    assert len(times) > 3
    assert all(datetime.fromisoformat(t).utcoffset() is not None for t in times)


@settings(max_examples=300, deadline=None)
@given(
    cents=st.lists(st.integers(-(10**17), 10**17), min_size=3, max_size=3),
    texts=st.lists(st.none() | st.text(), min_size=4, max_size=4),
)
def test_a_listed_transaction_is_the_json_its_dict_would_be(cents, texts):
    """Listings write each transaction's JSON by hand (a thousand batches at a time): the
    text must be exactly what ``dumps`` gives the transaction's dict, whatever the amounts
    (negative balances, no cents, huge) and texts (quotes, controls, non-ASCII, absent)."""
    ref, pos_ref, moment, user = texts
    fields = (123, "reload", "4759", ref, *cents, pos_ref, moment, user)
    expected = {
        "hostRef": "123",
        "type": "reload",
        "cardno": "************4759",
        "cardref": ref,
        "amount": from_cents(cents[0]),
        "previousbalance": from_cents(cents[1]),
        "newbalance": from_cents(cents[2]),
        "posref": pos_ref,
        "datetime": moment,
        "username": user,
    }
    assert _transaction_json(fields, lambda at: at) == dumps(expected)


def test_two_listings_at_most_are_built_at_once_and_every_one_is_answered(srv, monkeypatch):
    """Listings are long and mostly Python: more at once in one process only contend for the
    interpreter. Eight asked together are built two at a time, and all eight answered."""
    building, most = 0, 0
    counting = threading.Lock()
    real = srv.ledger.batches

    def slow_listing(*args, **kwargs):
        nonlocal building, most
        with counting:
            building += 1
            most = max(most, building)
        try:
            time.sleep(0.05)
            return real(*args, **kwargs)
        finally:
            with counting:
                building -= 1

    monkeypatch.setattr(srv.ledger, "batches", slow_listing)
    store = srv.stores[0].id

    def listed(_: int) -> dict:
        with httpx.Client(base_url=srv.url, auth=("demo", srv.users["demo"])) as http:
            return body(http.get(f"/Batch/{store}", params={"limit": 2}))

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(listed, range(8)))
    assert [a["statuscode"] for a in answers] == ["000000"] * 8
    assert all(len(a["batches"]) == 2 for a in answers)
    assert most == 2
