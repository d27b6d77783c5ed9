"""Supervisor approval from Python: above the signed-in user's own limit, card cases and bulk
runs send under an approver (audited with both names), and nothing without one; reruns
apply nothing twice."""

from __future__ import annotations

import json
from decimal import Decimal

import polars as pl
import pytest
from bulkkit import balances, ledger_rows, sold, unsold, write

from giftcard_toolkit import GiftCardClient, audit, bulk, errors, frames
from giftcard_toolkit.ops import cases
from giftcard_toolkit.server import hash_password


@pytest.fixture(scope="module")
def clerk(server):
    """Signed in as a clerk of the first store whose own limit is 100.00."""
    stores = [server.stores[0].id]
    server.ledger.put_user(
        "till", hash_password("till-password"), stores, max_amount=Decimal("100.00")
    )
    with GiftCardClient(server.url, "till", "till-password") as client:
        yield client


@pytest.fixture(scope="module")
def supervisor(server):
    with GiftCardClient(server.url, server.username, server.password) as client:
        yield client


def _made_by(server, host_ref: str) -> str:
    """Who the server says applied a transaction (its batch row's username)."""
    with GiftCardClient(server.url, server.username, server.password) as gc:
        _, txs = frames.fetch(gc, progress=False)
    return str(txs.filter(pl.col("host_ref") == host_ref)["username"].item())


def test_a_case_above_the_limit_sends_nothing_without_an_approver(server, clerk, tmp_path):
    (card,) = sold(server, 1, "150.00", first_store=True)
    store = server.stores[0].id
    log = tmp_path / "audit.jsonl"
    before = ledger_rows(server)
    with pytest.raises(errors.ApprovalRequired) as raised:
        cases.adjust(clerk, card, "-120.00", store, "double charge", key="fix-1", audit_log=log)
    message = str(raised.value)
    assert "over user 'till''s own limit of 100.00" in message
    assert "approver=" in message and "nothing was sent" in message
    assert (raised.value.amount, raised.value.limit) == (Decimal("120.00"), Decimal("100.00"))
    assert ledger_rows(server) == before
    assert balances(server, [card]) == [Decimal("150.00")]
    assert audit.read(log).is_empty()


def test_an_approved_adjustment_is_sent_by_the_approver_once_and_audited_with_both(
    server, clerk, supervisor, tmp_path
):
    (card,) = sold(server, 1, "150.00", first_store=True)
    store = server.stores[0].id
    log = tmp_path / "audit.jsonl"
    before = ledger_rows(server)
    done = cases.adjust(
        clerk, card, "-120.00", store, "double charge", "fix-2", log, approver=supervisor
    )
    assert done.balance == Decimal("30.00")
    assert _made_by(server, done.host_ref) == "demo", "the approver's credentials sent it"
    again = cases.adjust(
        clerk, card, "-120.00", store, "double charge", "fix-2", log, approver=supervisor
    )
    assert again.host_ref == done.host_ref and again.steps[0].earlier
    assert ledger_rows(server) == before + 1, "applied once"
    assert balances(server, [card]) == [Decimal("30.00")]
    records = audit.read(log)
    assert records["user"].to_list() == ["till", "till"]
    assert records["approved_by"].to_list() == ["demo", "demo"]
    within = cases.adjust(clerk, card, "20.00", store, "goodwill", approver=supervisor)
    assert _made_by(server, within.host_ref) == "till", "within the limit: the clerk's own"


def test_an_approved_replacement_moves_the_balance_once(server, clerk, supervisor, tmp_path):
    (old,) = sold(server, 1, "150.00", first_store=True)
    (new,) = unsold(server, 1, first_store=True)
    store = server.stores[0].id
    log = tmp_path / "audit.jsonl"
    before = ledger_rows(server)
    done = cases.replace(clerk, old, new, store, "lost", audit_log=log, approver=supervisor)
    assert (done.moved, done.old_balance, done.new_balance) == (
        Decimal("150.00"),
        Decimal("0.00"),
        Decimal("150.00"),
    )
    again = cases.replace(clerk, old, new, store, "lost", audit_log=log, approver=supervisor)
    assert all(step.earlier for step in again.steps)
    assert ledger_rows(server) == before + 2, "one take, one give: once"
    steps = audit.read(log, case_id=done.case_id)
    by_operation = dict(zip(steps["operation"], steps["approved_by"], strict=False))
    assert by_operation["replace redeem"] == "demo" and by_operation["replace sell"] == "demo"
    assert by_operation["replace block"] is None, "a block moves no money: the clerk's own"
    assert set(steps["user"]) == {"till"}


def test_an_approver_must_be_another_person_allowed_the_amount(server, clerk):
    (card,) = sold(server, 1, "150.00", first_store=True)
    store = server.stores[0].id
    before = ledger_rows(server)
    with pytest.raises(errors.InvalidInput, match="needs a second person"):
        cases.adjust(clerk, card, "-120.00", store, "x", approver=clerk)
    with (
        GiftCardClient(server.url, "analyst", "analyst-password") as reader,
        pytest.raises(errors.ApprovalRequired, match="'analyst' may only read"),
    ):
        cases.adjust(clerk, card, "-120.00", store, "x", approver=reader)
    assert ledger_rows(server) == before


# ------------------------------------------------------------------ bulk


def _file(tmp_path, server, small, large):
    store = server.stores[0].id
    return write(
        tmp_path / "fixes.csv",
        [
            ["sell", small.number, small.security_code, "50.00", store, "", ""],
            ["sell", large.number, large.security_code, "150.00", store, "", ""],
            ["reload", small.number, small.security_code, "20.00", store, "", ""],
        ],
    )


def test_bulk_refuses_rows_above_the_limit_without_an_approver(server, clerk, tmp_path):
    small, large = unsold(server, 2, first_store=True)
    fixes = _file(tmp_path, server, small, large)
    before = ledger_rows(server)
    with pytest.raises(errors.ApprovalRequired) as raised:
        bulk.run(clerk, fixes, progress=False)
    assert "line(s) 3 (sell 150.00)" in str(raised.value)
    assert "own limit of 100.00" in str(raised.value)
    assert ledger_rows(server) == before
    forecast = bulk.run(clerk, fixes, dry_run=True, progress=False)
    assert forecast["status"].to_list() == ["checked", "would be declined", "checked"]
    assert "needs approver=" in forecast["description"][1]
    assert ledger_rows(server) == before


def test_bulk_sends_rows_above_the_limit_under_the_approver_once(
    server, clerk, supervisor, tmp_path
):
    small, large = unsold(server, 2, first_store=True)
    fixes = _file(tmp_path, server, small, large)
    log = tmp_path / "audit.jsonl"
    before = ledger_rows(server)
    forecast = bulk.run(clerk, fixes, dry_run=True, progress=False, approver=supervisor)
    assert forecast["status"].to_list() == ["checked"] * 3
    results = bulk.run(clerk, fixes, audit_log=log, progress=False, approver=supervisor)
    assert results["status"].to_list() == ["approved"] * 3
    assert _made_by(server, results["host_ref"][1]) == "demo"
    assert _made_by(server, results["host_ref"][0]) == "till"
    records = audit.read(log)
    assert records["user"].to_list() == ["till"] * 3
    # Rows are sent side by side: each row's record is found by its host_ref, not its place.
    approved_by = dict(zip(records["host_ref"], records["approved_by"], strict=True))
    assert [approved_by[ref] for ref in results["host_ref"]] == [None, "demo", None]

    # The answers are lost (the journal knows only that the rows were sent): a rerun must
    # send each under the same user as before to be answered, never applied twice.
    journal = tmp_path / "fixes.csv.journal"
    sent = [line for line in journal.read_text().splitlines() if '"sending"' in line]
    sent_as = {json.loads(line)["line"]: json.loads(line)["sent_as"] for line in sent}
    assert [sent_as[line] for line in sorted(sent_as)] == ["till", "demo", "till"]
    journal.write_text("\n".join(sent) + "\n")
    with pytest.raises(errors.ApprovalRequired, match=r"line\(s\) 3 \(by 'demo'\)"):
        bulk.run(clerk, fixes, progress=False)
    again = bulk.run(clerk, fixes, progress=False, approver=supervisor)
    assert again["status"].to_list() == ["already applied"] * 3
    assert again["replayed"].to_list() == [True] * 3
    assert ledger_rows(server) == before + 3
    assert balances(server, [small, large]) == [Decimal("70.00"), Decimal("150.00")]


def test_a_bulk_case_row_needing_approval_is_not_sent_nor_its_cards_later_rows(
    server, clerk, supervisor, tmp_path
):
    (card,) = sold(server, 1, "150.00", first_store=True)
    store = server.stores[0].id
    fixes = write(
        tmp_path / "cases.csv",
        [
            ["adjust", card.number, card.security_code, "-120.00", store, "double charge", ""],
            ["redeem", card.number, card.security_code, "10.00", store, "", ""],
        ],
    )
    before = ledger_rows(server)
    first = bulk.run(clerk, fixes, progress=False)
    assert first["status"].to_list() == ["not sent", "not sent"]
    assert "own limit of 100.00" in first["description"][0]
    assert "needs approval" in first["description"][1]
    assert ledger_rows(server) == before
    second = bulk.run(clerk, fixes, progress=False, approver=supervisor)
    assert second["status"].to_list() == ["approved", "approved"]
    assert balances(server, [card]) == [Decimal("20.00")]
