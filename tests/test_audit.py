"""The audit log: appended, fsynced, read back exactly, and never holding a card number."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from decimal import Decimal

import polars as pl
import pytest

from giftcard_toolkit import audit
from giftcard_toolkit.cards import Card, luhn_check_digit

NUMBER = "600649123456789" + luhn_check_digit("600649123456789")


def test_records_read_back_as_a_frame_with_exact_money(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    when = datetime(2026, 9, 30, 12, 0, tzinfo=UTC)
    log.record(
        user="ops",
        operation="redeem",
        outcome="approved",
        card=Card(NUMBER, "1234"),
        card_ref="a1b2c3d4e5f60718",
        amount="12.30",
        store_id="s-1",
        host_ref="991",
        statuscode="000000",
        description="Success",
        idempotency_key="k-1",
        at=when,
    )
    log.record(
        user="ops",
        operation="redeem",
        outcome="declined",
        card=NUMBER,
        amount=5,
        statuscode="100005",
        description="Insufficient balance",
    )
    frame = audit.read(log.path)
    assert frame.schema == audit.AUDIT_SCHEMA
    assert frame.height == 2
    first = frame.row(0, named=True)
    assert first["at"] == when and first["amount"] == Decimal("12.30")
    assert first["card"] == "************" + NUMBER[-4:]
    assert frame["outcome"].to_list() == ["approved", "declined"]
    assert frame["amount"].to_list() == [Decimal("12.30"), Decimal("5.00")]


def test_no_card_number_or_code_ever_reaches_the_file(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    spaced = " ".join(NUMBER[i : i + 4] for i in range(0, 16, 4))
    log.record(
        user="ops",
        operation="sell",
        outcome="error",
        card=spaced,
        description=f"failed for {NUMBER} and {spaced}",
    )
    log.record(user="ops", operation="tokenize", outcome="rejected", card=Card(NUMBER, "9876"))
    text = log.path.read_text()
    assert NUMBER not in text and spaced not in text
    # (the record's time may hold any four digits: the code is looked for in the rest)
    rest = [{k: v for k, v in r.items() if k != "at"} for r in map(json.loads, text.splitlines())]
    assert "9876" not in json.dumps(rest)
    assert text.count("************" + NUMBER[-4:]) == 4


def test_refuses_floats_and_unknown_outcomes(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(TypeError, match="exact"):
        log.record(user="ops", operation="reload", outcome="approved", amount=1.5)
    with pytest.raises(ValueError, match="outcome"):
        log.record(user="ops", operation="reload", outcome="maybe")
    assert not log.path.exists() or log.path.read_text() == ""


def test_concurrent_writers_never_interleave_lines(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl")

    def write(worker: int) -> None:
        for i in range(100):
            log.record(
                user=f"w{worker}",
                operation="balance",
                outcome="approved",
                description="x" * 500,
                idempotency_key=f"{worker}-{i}",
            )

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = log.path.read_text().splitlines()
    assert len(lines) == 800
    assert len({json.loads(line)["idempotency_key"] for line in lines}) == 800
    assert audit.read(log.path).group_by("user").len()["len"].to_list() == [100] * 8


def test_a_missing_log_reads_as_an_empty_frame(tmp_path):
    frame = audit.read(tmp_path / "none.jsonl")
    assert frame.is_empty() and frame.schema == audit.AUDIT_SCHEMA
    assert isinstance(frame, pl.DataFrame)


def test_scrub_masks_card_numbers_and_leaves_store_ids_alone():
    from giftcard_toolkit.cards import scrub

    store = "8981649d-1234-5678-9012-123456789012"  # 12+ digits in a row between dashes
    text = f"store {store}: card 6006491234567897, again as 6006 4912 3456 7897"
    assert scrub(text) == (f"store {store}: card ************7897, again as ************7897")


def test_records_name_the_person_and_the_approver(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    log.record(user="till", operation="sell", outcome="approved", amount="50.00")
    log.record(
        user="till", approved_by="supervisor", operation="sell", outcome="approved", amount="150"
    )
    frame = audit.read(log.path)
    assert frame["user"].to_list() == ["till", "till"]
    assert frame["approved_by"].to_list() == [None, "supervisor"]


def test_a_log_written_before_approvals_and_cases_reads_back(tmp_path):
    """Old lines have no ``approved_by`` (nor ``case_id``): read back with them empty."""
    path = tmp_path / "audit.jsonl"
    old = {
        "at": "2026-09-30T12:00:00+00:00",
        "user": "ops",
        "operation": "reload",
        "card": "************" + NUMBER[-4:],
        "card_ref": None,
        "amount": "5.00",
        "store_id": "s-1",
        "host_ref": "17",
        "outcome": "approved",
        "statuscode": "000000",
        "description": "Success",
        "idempotency_key": "k-9",
    }
    path.write_text(json.dumps(old) + "\n")
    audit.AuditLog(path).record(
        user="ops", approved_by="lead", operation="sell", outcome="approved"
    )
    frame = audit.read(path)
    assert frame.schema == audit.AUDIT_SCHEMA
    assert frame["approved_by"].to_list() == [None, "lead"]
    assert frame["case_id"].to_list() == [None, None]
    assert frame["amount"][0] == Decimal("5.00") and frame["host_ref"][0] == "17"
