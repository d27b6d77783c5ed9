"""The PostgreSQL store's transactions: writes side by side, and a write that runs alone."""

from __future__ import annotations

import threading
import time

import pytest
from pgkit import new_database, require_postgres

from giftcard_toolkit.server.ledger.postgres import PostgresStorage


@pytest.fixture
def storage():
    require_postgres()
    store = PostgresStorage(new_database())
    yield store
    store.close()


def _waiting_locks(storage: PostgresStorage) -> int:
    return (
        storage.connection()
        .execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        .fetchone()[0]
    )


def test_a_write_running_alone_waits_for_a_write_in_flight_without_a_deadlock(storage):
    """A write that lost its conflicts runs alone (it locks the written tables); a write in
    flight that touches one table, then another, must finish first, not deadlock with it
    (PostgreSQL would find the deadlock after a second and abort one of the two: a
    failure in either thread)."""
    order: list[str] = []
    failures: list[BaseException] = []

    def alone() -> None:
        try:
            with storage.write(alone=True) as conn:
                conn.execute("UPDATE cards SET state = state WHERE id = -1")
                order.append("alone")
        except BaseException as failed:  # noqa: BLE001 - reported by the assertion below
            failures.append(failed)

    with storage.write() as conn:
        conn.execute("UPDATE idempotency SET state = state WHERE key = 'none'")
        lone = threading.Thread(target=alone)
        lone.start()
        deadline = time.monotonic() + 10
        while not _waiting_locks(storage) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _waiting_locks(storage), "the lone write waits for the one in flight"
        conn.execute("UPDATE cards SET state = state WHERE id = -1")  # another table
        order.append("in flight")
    lone.join(10)
    assert not failures
    assert order == ["in flight", "alone"]
