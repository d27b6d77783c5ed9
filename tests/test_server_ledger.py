"""The ledger's group commit: writes queued together still succeed or fail alone."""

from __future__ import annotations

import json
from concurrent.futures import wait
from datetime import UTC
from decimal import Decimal

import pytest

from giftcard_toolkit.server.ledger import CardRef, Ledger
from giftcard_toolkit.server.runner import demo_in_postgres
from giftcard_toolkit.server.seed import DEFAULT_AS_OF, open_demo


@pytest.fixture
def demo(database):
    if isinstance(database, str):  # PostgreSQL: a copy of the seeded template
        ledger, data = demo_in_postgres(database, 0, DEFAULT_AS_OF, UTC)
    else:
        ledger, data = open_demo(database)
    yield ledger, data
    ledger.close()


def _fresh_card(ledger: Ledger, data, amount: str) -> tuple[CardRef, str, frozenset[str]]:
    card = next(c for c in data.card_stock if not c.sold and c.store_id == data.stores[0].id)
    data.card_stock.remove(card)
    token = json.loads(ledger.tokenize("demo", card.number, card.security_code))["token"]
    ref = CardRef(token=token)
    stores = frozenset(s.id for s in data.stores)
    sold = json.loads(
        ledger.load("demo", stores, ref, Decimal(amount), card.store_id, None, sale=True)
    )
    assert sold["statuscode"] == "000000"
    return ref, card.store_id, stores


@pytest.mark.backends("sqlite")  # the SQLite writer's group commit (PostgreSQL has none)
def test_a_failing_write_in_a_group_takes_nothing_else_down(demo):
    ledger, data = demo
    ref, store, stores = _fresh_card(ledger, data, "50")

    def redeem():
        return ledger.redeem("demo", stores, ref, Decimal("1.00"), store, None)

    def broken():
        ledger.redeem("demo", stores, ref, Decimal("5.00"), store, None)
        raise RuntimeError("the request died after its write")

    # Queue them while the writer is busy, so that they share one transaction.
    with ledger.write():
        futures = [ledger.submit(redeem), ledger.submit(broken), ledger.submit(redeem)]
    wait(futures, timeout=10)
    assert json.loads(futures[0].result())["newbalance"] == 49
    with pytest.raises(RuntimeError, match="died after its write"):
        futures[1].result()
    assert json.loads(futures[2].result())["newbalance"] == 48  # the 5.00 was rolled back
    assert json.loads(ledger.balance("demo", ref))["balance"] == 48
    assert ledger.check_invariants() == []


def test_many_queued_redeems_never_overdraw(demo):
    ledger, data = demo
    ref, store, stores = _fresh_card(ledger, data, "20")
    futures = [
        ledger.submit(lambda: ledger.redeem("demo", stores, ref, Decimal("1.00"), store, None))
        for _ in range(50)
    ]
    codes = [json.loads(f.result(timeout=10))["statuscode"] for f in futures]
    assert codes.count("000000") == 20
    assert codes.count("100005") == 30
    assert json.loads(ledger.balance("demo", ref))["balance"] == 0
    assert ledger.check_invariants() == []


@pytest.mark.backends("sqlite")  # the SQLite writer thread
def test_close_stops_the_writer_after_finishing_what_was_queued(tmp_path):
    ledger, data = open_demo(tmp_path / "demo.sqlite")
    ref, store, stores = _fresh_card(ledger, data, "10")
    future = ledger.submit(lambda: ledger.redeem("demo", stores, ref, Decimal("2.50"), store, None))
    ledger.close()
    assert json.loads(future.result(timeout=10))["newbalance"] == Decimal("7.5")


def test_operations_in_one_transaction_leave_no_savepoint_open(demo):
    """A seed (or a group commit) runs many operations in one transaction: each releases
    its savepoint, declined or not, so they do not nest deeper and deeper (a chain's seed
    slowed from seconds to many minutes when they did)."""
    ledger, data = demo
    ref, store_id, stores = _fresh_card(ledger, data, "10")
    with ledger.write() as conn:
        approved = ledger.redeem("demo", stores, ref, Decimal("1"), store_id, None)
        declined = ledger.redeem("demo", stores, ref, Decimal("500"), store_id, None)
        assert json.loads(approved)["statuscode"] == "000000"
        assert json.loads(declined)["statuscode"] == "100005"
        with pytest.raises(Exception, match="(?i)savepoint"):
            conn.execute("RELEASE operation")  # none left open by the operations
            conn.execute("SELECT 1")  # on PostgreSQL the RELEASE is sent with the next one
