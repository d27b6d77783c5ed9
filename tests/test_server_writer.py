"""The ledger's writer thread: no request ever waits forever on it.

A writer that dies answers every write it held (``WriterStopped``), says so on /Health,
and is replaced by the next write; a stuck writer shows on /Health after
``WRITER_STALL_AFTER`` and requests answer 503 after ``WRITE_TIMEOUT`` instead of hanging.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import Future, wait
from decimal import Decimal
from typing import Any

import httpx
import pytest
from serverkit import Pos, body

from giftcard_toolkit.server import app as app_module
from giftcard_toolkit.server import ledger as ledger_module
from giftcard_toolkit.server import running
from giftcard_toolkit.server.ledger import CardRef, WriterStopped
from giftcard_toolkit.server.ledger import sqlite as sqlite_storage

# The writer thread is SQLite's (one writer, group commit); PostgreSQL's writes run side by
# side in a pool of threads, each its own transaction (tests/test_server_postgres.py).
SERVER_BACKENDS = ("sqlite",)


class WriterKiller(BaseException):
    """What no write should raise: today it kills the writer thread."""


def _kill_writer() -> None:
    raise WriterKiller("a bug escaped a write")


def _health(pos: Pos) -> int:
    return pos.http.get("/Health").status_code


def _until_health(pos: Pos, status: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while _health(pos) != status:
        assert time.monotonic() < deadline, f"/Health never answered {status}"
        time.sleep(0.02)


def _reload(pos: Pos, token: str, amount: str, key: str) -> httpx.Response:
    return pos.send(
        "POST",
        "/Transaction/reload",
        {"cardtoken": token, "amount": Decimal(amount), "FranchiseeID": pos.srv.stores[0].id},
        headers={"Idempotency-Key": key},
    )


def test_a_killed_writer_answers_its_caller_shows_on_health_and_is_replaced(caplog):
    with running() as srv:
        pos = Pos(srv)
        _, token = pos.sold_card("20.00")
        assert _health(pos) == 200

        killed = srv.ledger.submit(_kill_writer)
        with pytest.raises(WriterStopped):
            killed.result(timeout=5)
        error = killed.exception()
        assert error is not None and isinstance(error.__cause__, WriterKiller)
        health = pos.http.get("/Health")
        assert health.status_code == 503
        assert health.json()["status"] == "Unhealthy"
        assert _health(pos) == 503, "still dead: nothing has restarted it yet"

        with caplog.at_level(logging.ERROR, logger="giftcard_toolkit.server.ledger"):
            reloaded = _reload(pos, token, "5.25", str(uuid.uuid4()))
        assert reloaded.status_code == 200, reloaded.text
        answer = body(reloaded)
        assert answer["statuscode"] == "000000"
        assert answer["balance"] == Decimal("25.25")
        assert any(
            r.levelno == logging.ERROR and "starting a new one" in r.getMessage()
            for r in caplog.records
        )
        assert pos.balance(token) == Decimal("25.25")
        assert _health(pos) == 200
        assert srv.ledger.check_invariants() == []
        pos.close()


def test_writes_queued_with_a_killer_are_all_answered_and_the_books_stay_exact():
    with running() as srv:
        pos = Pos(srv)
        _, token = pos.sold_card("20.00")
        ledger = srv.ledger
        stores = frozenset(s.id for s in srv.stores)
        store = srv.stores[0].id

        def redeem() -> str:
            return ledger.redeem("demo", stores, CardRef(token=token), Decimal("1.00"), store, None)

        # Queue them while the writer waits for the write lock, so they share its groups.
        with ledger.write():
            futures: list[Future[Any]] = [ledger.submit(redeem), ledger.submit(_kill_writer)]
            futures += [ledger.submit(redeem) for _ in range(5)]
        done, pending = wait(futures, timeout=5)
        assert not pending, "a write was left waiting forever"
        with pytest.raises(WriterStopped):
            futures[1].result()
        approved = 0
        for future in futures[:1] + futures[2:]:
            if future.exception() is None:
                assert json.loads(future.result())["statuscode"] == "000000"
                approved += 1
            else:
                assert isinstance(future.exception(), WriterStopped)
        assert approved < 6, "the group of the killer was not applied"
        assert pos.balance(token) == Decimal(20 - approved)
        assert json.loads(ledger.submit(redeem).result(timeout=5))["statuscode"] == "000000"
        assert pos.balance(token) == Decimal(19 - approved)
        assert ledger.check_invariants() == []
        pos.close()


def test_a_stuck_writer_shows_on_health_and_requests_answer_503_in_time(monkeypatch):
    monkeypatch.setattr(sqlite_storage, "WRITER_STALL_AFTER", 0.3)
    monkeypatch.setattr(app_module, "WRITE_TIMEOUT", 0.5)
    with running() as srv:
        pos = Pos(srv)
        _, token = pos.sold_card("20.00")
        assert _health(pos) == 200
        unblock = threading.Event()
        stuck = srv.ledger.submit(lambda: unblock.wait(60))
        key = str(uuid.uuid4())
        try:
            _until_health(pos, 503)
            started = time.monotonic()
            refused = _reload(pos, token, "5.00", key)
            waited = time.monotonic() - started
            assert refused.status_code == 503, refused.text
            assert waited < 5, "answered within the write timeout, not when the writer woke"
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert int(refused.headers["retry-after"]) > 0
            problem = refused.json()
            assert problem["status"] == 503
            assert "may or may not have been applied" in problem["detail"]
            assert "same Idempotency-Key" in problem["detail"]
            assert _health(pos) == 503
        finally:
            unblock.set()
        assert stuck.result(timeout=5) is True
        _until_health(pos, 200)
        # The retry with the same key is applied exactly once.
        retried = _reload(pos, token, "5.00", key)
        assert retried.status_code == 200, retried.text
        assert body(retried)["balance"] == Decimal("25.00")
        again = _reload(pos, token, "5.00", key)
        assert body(again)["balance"] == Decimal("25.00")
        assert pos.balance(token) == Decimal("25.00")
        assert srv.ledger.check_invariants() == []
        pos.close()


def test_closing_a_ledger_whose_writer_died_does_not_hang(tmp_path):
    ledger = ledger_module.Ledger(tmp_path / "x.sqlite")
    try:
        with pytest.raises(WriterStopped):
            ledger.submit(_kill_writer).result(timeout=5)
        assert not ledger.healthy()
        assert ledger.submit(lambda: 42).result(timeout=5) == 42
        assert ledger.healthy()
        with pytest.raises(WriterStopped):
            ledger.submit(_kill_writer).result(timeout=5)
    finally:
        closer = threading.Thread(target=ledger.close, daemon=True)
        closer.start()
        closer.join(timeout=5)
    assert not closer.is_alive(), "close() hung on a dead writer"
