"""The PostgreSQL store's transactions: writes side by side, a write that runs alone, and
statements held back to travel with the next one (fewer round trips)."""

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


def test_a_write_is_serializable_and_holds_its_table_locks_from_its_first_statement(storage):
    """``BEGIN`` and the table locks travel with the write's first statement (one round
    trip, not two): that statement already runs inside them."""
    with storage.write() as conn:
        isolation = conn.execute("SELECT current_setting('transaction_isolation')").fetchone()
        locks = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() "
            "AND mode = 'RowExclusiveLock' AND relation = 'cards'::regclass"
        ).fetchone()
    assert isolation[0] == "serializable"
    assert locks[0] == 1


def test_an_error_in_a_statement_sent_with_the_next_is_raised_and_nothing_is_applied(storage):
    """A savepoint statement is sent with the next one: its error (as PostgreSQL said it)
    comes with that statement, the write is rolled back whole, and nothing held back is
    left over for the connection's next write."""
    import psycopg

    refused = pytest.raises(psycopg.errors.InvalidSavepointSpecification, match="no_such")
    with refused, storage.write() as conn:
        conn.execute("INSERT INTO meta(key, value) VALUES ('probe', 'applied')")
        conn.execute("RELEASE no_such")  # held back: nothing sent yet
        conn.execute("SELECT 1")
    assert storage.meta("probe") is None
    with storage.write() as conn:  # the same thread's connection, clean
        conn.execute("SAVEPOINT fine")
        conn.execute("INSERT INTO meta(key, value) VALUES ('probe', 'later')")
        conn.execute("RELEASE fine")
    assert storage.meta("probe") == "later"


def test_a_write_on_a_connection_the_database_dropped_while_idle_is_sent_again_whole(storage):
    """The thread's connection is dropped between two writes (a restart, an idle timeout):
    the next write's first statement, with its ``BEGIN`` and locks, goes again on a new
    connection, and the write is applied once, serializable."""
    first = storage.connection()
    pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]
    other = PostgresStorage(storage.url)
    try:
        other.connection().execute("SELECT pg_terminate_backend(?)", (pid,))
    finally:
        other.close()
    with storage.write() as conn:
        conn.execute("INSERT INTO meta(key, value) VALUES ('after_drop', 'once')")
        isolation = conn.execute("SELECT current_setting('transaction_isolation')").fetchone()
    assert isolation[0] == "serializable"
    assert storage.meta("after_drop") == "once"
    assert storage.connection().execute("SELECT pg_backend_pid()").fetchone()[0] != pid
