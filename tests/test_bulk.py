"""Bulk fixes from CSV: all bad rows named before anything is sent; exactly once on resume."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal

import httpx
import polars as pl
import pytest
from bulkkit import balances, ledger_rows, sold, unsold, write
from serverkit import UNKNOWN_CARD

from giftcard_toolkit import GiftCardClient, audit, bulk


def test_every_bad_row_is_named_and_nothing_is_sent(server, tmp_path):
    cards = unsold(server, 10)  # nothing is sent, so a few cards can fill the file
    store = server.stores[0].id
    rows = []
    bad_lines = set()
    for i in range(1000):
        line = i + 2
        if i % 20 == 7:  # 5% bad rows, of several kinds
            bad = [
                ["refund", cards[0].number, cards[0].security_code, "5", store, "", ""],
                ["sell", "1234", "1234", "5", store, "", ""],
                ["reload", cards[0].number, cards[0].security_code, "1.234", store, "", ""],
                ["redeem", cards[0].number, cards[0].security_code, "5", "store-1", "", ""],
                ["block", cards[0].number, cards[0].security_code, "", "", "", ""],
            ][(i // 20) % 5]
            rows.append(bad)
            bad_lines.add(line)
        else:
            card = cards[i % len(cards)]
            rows.append(["sell", card.number, card.security_code, "10", store, "", "bulk"])
    before = ledger_rows(server)
    with (
        GiftCardClient(server.url, server.username, server.password) as gc,
        pytest.raises(bulk.BulkFileError) as raised,
    ):
        bulk.run(gc, write(tmp_path / "fixes.csv", rows), progress=False)
    assert {line for line, _ in raised.value.problems} == bad_lines
    assert len(raised.value.problems) == 50
    message = str(raised.value)
    assert "'refund' is not one of" in message and "must be 16 digits" in message
    assert "at most 2 decimals" in message and "GUID" in message and "reason" in message
    assert ledger_rows(server) == before, "nothing was sent"
    assert all(c.number not in message for c in cards)


class CrashAfter(httpx.HTTPTransport):
    """Lets ``money`` money-moving requests through, then crashes the run (like Ctrl-C)
    right after the next one reached the server: its answer is never seen."""

    def __init__(self, money: int) -> None:
        super().__init__()
        self.left = money

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.startswith("/Transaction/") and "balance" not in request.url.path:
            if self.left == 0:
                response.read()
                raise KeyboardInterrupt
            self.left -= 1
        return response


def test_an_interrupted_run_resumes_and_applies_every_row_exactly_once(server, tmp_path):
    cards = unsold(server, 30)
    store = server.stores[1].id
    rows = [["sell", c.number, c.security_code, "20.00", store, "", "bulk"] for c in cards]
    rows += [["redeem", c.number, c.security_code, "7.50", store, "", "bulk"] for c in cards]
    path = write(tmp_path / "fixes.csv", rows)
    before = ledger_rows(server)
    with (
        GiftCardClient(
            server.url, server.username, server.password, transport=CrashAfter(12)
        ) as gc,
        pytest.raises(KeyboardInterrupt),
    ):
        bulk.run(gc, path, concurrency=1, progress=False)
    journal = tmp_path / "fixes.csv.journal"
    events = [json.loads(line)["event"] for line in journal.read_text().splitlines()]
    assert events.count("done") == 12, "the 12 answered rows"
    assert events.count("sending") >= 13, "and the one whose answer the crash lost"
    assert journal.stat().st_mode & 0o777 == 0o600
    log = tmp_path / "audit.jsonl"
    with GiftCardClient(server.url, server.username, server.password) as gc:
        results = bulk.run(gc, path, concurrency=4, audit_log=log, progress=False)
        # A third run finds everything done and sends nothing: every row already applied.
        third = bulk.run(gc, path, progress=False)
        balances = {gc.balance(c).balance for c in cards}
    assert third["status"].to_list() == ["already applied"] * 60
    assert all("earlier run" in d for d in third["description"])
    assert third.drop("status", "description").equals(results.drop("status", "description"))
    assert results.height == 60 and results["line"].to_list() == list(range(2, 62))
    # The 12 journalled rows and the one whose answer the crash lost (replayed now) were
    # applied by the first run; the other 47 now.
    assert Counter(results["status"]) == {"approved": 47, "already applied": 13}
    earlier = results.filter(pl.col("status") == "already applied")
    assert earlier["replayed"].sum() == 1
    assert balances == {Decimal("12.50")}, "each sale and each redeem applied exactly once"
    assert ledger_rows(server) == before + 60
    with GiftCardClient(server.url, server.username, server.password) as gc:
        (open_batch,) = gc.batches(store, status="open")
    applied = [
        t
        for t in open_batch.transactions
        if t.pos_ref == "bulk" and t.card_last4 in {c.last4 for c in cards}
    ]
    assert len(applied) == 60, "each row once in the server's batches"
    assert set(results["host_ref"]) == {t.host_ref for t in applied}
    assert results.schema == bulk.RESULT_SCHEMA
    assert audit.read(log).height == 60 - 12, "the rows this run attempted"
    assert not any(c.number in log.read_text() for c in cards)


def test_dry_run_checks_cards_and_moves_nothing(server, tmp_path):
    cards = unsold(server, 3)
    store = server.stores[0].id
    path = write(
        tmp_path / "fixes.csv",
        [
            ["sell", cards[0].number, cards[0].security_code, "10", store, "", ""],
            ["redeem", cards[1].number, cards[1].security_code, "10", store, "", ""],
            ["block", cards[2].number, cards[2].security_code, "", "", "lost", ""],
        ],
    )
    before = ledger_rows(server)
    with GiftCardClient(server.url, server.username, server.password) as gc:
        checked = bulk.run(gc, path, dry_run=True, progress=False)
    # Predicted, not just checked: a never-sold card can be neither redeemed nor blocked.
    assert checked["status"].to_list() == ["checked", "would be declined", "would be declined"]
    assert checked["statuscode"].to_list() == ["000000", "100002", "100002"]
    assert checked["new_balance"].to_list() == [Decimal("10.00"), Decimal("0.00"), Decimal("0.00")]
    assert ledger_rows(server) == before
    assert not (tmp_path / "fixes.csv.journal").exists()


def test_declines_are_results_not_failures(server, tmp_path):
    (card,) = unsold(server, 1)
    store = server.stores[0].id
    path = write(
        tmp_path / "fixes.csv",
        [
            ["sell", card.number, card.security_code, "5", store, "", ""],
            ["redeem", card.number, card.security_code, "9", store, "", ""],
            ["block", card.number, card.security_code, "", "", "lost", ""],
            ["balance", card.number, card.security_code, "", "", "", ""],
        ],
    )
    with GiftCardClient(server.url, server.username, server.password) as gc:
        results = bulk.run(gc, path, concurrency=1, progress=False)
    got = results.select("operation", "status", "statuscode").rows()
    assert got == [
        ("sell", "approved", "000000"),
        ("redeem", "declined", "100005"),
        ("block", "approved", "000000"),
        ("balance", "approved", "000000"),
    ]
    assert results.filter(pl.col("operation") == "sell")["host_ref"][0]


class LoseAnswers(httpx.HTTPTransport):
    """A proxy that loses the answers to the first ``lose`` requests on ``path``: each one
    reaches the server and is applied, and the client sees the connection drop."""

    def __init__(self, lose: int, path: str = "/Transaction/reload", skip: int = 0) -> None:
        super().__init__()
        self.lose, self.path, self.skip = lose, path, skip

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path != self.path:
            return response
        if self.skip > 0:
            self.skip -= 1
        elif self.lose > 0:
            self.lose -= 1
            response.read()
            raise httpx.RemoteProtocolError("connection dropped", request=request)
        return response


def test_lost_answers_are_sent_again_with_the_same_key_and_reported_as_replays(server, tmp_path):
    cards = sold(server, 6)
    rows = [["reload", c.number, c.security_code, "3.00", c.store_id, "", "fix"] for c in cards]
    path = write(tmp_path / "fixes.csv", rows)
    with GiftCardClient(
        server.url, server.username, server.password, transport=LoseAnswers(4), attempts=1
    ) as gc:
        first = bulk.run(gc, path, concurrency=1, progress=False)
    assert first["status"].to_list() == ["error"] * 4 + ["approved"] * 2
    assert all("may have been applied" in d for d in first["description"][:4])
    assert balances(server, cards) == [Decimal("13.00")] * 6, "the lost four were applied"
    for _ in range(2):  # every rerun: the four answered as replays, nothing moved again
        with GiftCardClient(server.url, server.username, server.password) as gc:
            again = bulk.run(gc, path, progress=False)
        assert again["status"].to_list() == ["already applied"] * 6
        assert again["replayed"].to_list() == [True] * 4 + [False] * 2
        assert again["idempotency_key"].to_list() == first["idempotency_key"].to_list()
        assert again["new_balance"].to_list() == [Decimal("13.00")] * 6
    assert balances(server, cards) == [Decimal("13.00")] * 6


def test_mending_a_declined_row_sends_only_that_row_with_old_or_new_journal(server, tmp_path):
    cards = sold(server, 5)
    rows = [["reload", c.number, c.security_code, "3.00", c.store_id, "", ""] for c in cards]
    typo_row = ["reload", UNKNOWN_CARD, cards[4].security_code, "3.00", cards[4].store_id, "", ""]
    path = write(tmp_path / "fixes.csv", rows[:4] + [typo_row])
    with GiftCardClient(server.url, server.username, server.password) as gc:
        first = bulk.run(gc, path, progress=False)
        assert first["status"].to_list() == ["approved"] * 4 + ["declined"]
        write(path, rows)  # the typo mended
        mended = bulk.run(gc, path, progress=False)
        assert mended["status"].to_list() == ["already applied"] * 4 + ["approved"]
        assert mended["replayed"].to_list() == [False] * 5, "the four were not sent again"
        (tmp_path / "fixes.csv.journal").unlink()  # even a new journal applies nothing twice
        fresh = bulk.run(gc, path, progress=False)
    assert fresh["status"].to_list() == ["already applied"] * 5
    assert fresh["replayed"].to_list() == [True] * 5
    assert mended["idempotency_key"][:4].to_list() == first["idempotency_key"][:4].to_list()
    assert balances(server, cards) == [Decimal("13.00")] * 5


def test_a_row_of_unknown_outcome_that_changed_is_refused_until_restored(server, tmp_path):
    cards = sold(server, 3)
    rows = [["reload", c.number, c.security_code, "3.00", c.store_id, "", ""] for c in cards]
    path = write(tmp_path / "fixes.csv", rows)
    with GiftCardClient(
        server.url,
        server.username,
        server.password,
        transport=LoseAnswers(1, skip=2),
        attempts=1,
    ) as gc:
        partial = bulk.run(gc, path, concurrency=1, progress=False)
    assert partial["status"].to_list() == ["approved", "approved", "error"]
    write(path, [*rows[:2], [*rows[2][:3], "30.00", *rows[2][4:]]])  # "fixing" the lost row
    before = ledger_rows(server)
    with GiftCardClient(server.url, server.username, server.password) as gc:
        with pytest.raises(bulk.BulkFileError, match="line 4: reload .*outcome is unknown") as no:
            bulk.run(gc, path, progress=False)
        assert "Restore it" in str(no.value) and cards[2].number not in str(no.value)
        assert ledger_rows(server) == before, "nothing was sent"
        write(path, rows)  # restored
        restored = bulk.run(gc, path, progress=False)
    assert restored["status"].to_list() == ["already applied"] * 3
    assert restored["replayed"].to_list() == [False, False, True]
    assert balances(server, cards) == [Decimal("13.00")] * 3


def test_a_rows_key_depends_on_that_row_alone(server, tmp_path):
    cards = unsold(server, 3)
    store = server.stores[0].id
    rows = [["reload", c.number, c.security_code, "3.00", store, "", ""] for c in cards]
    with GiftCardClient(server.url, server.username, server.password) as gc:
        keys = [f.key for f in bulk.validate(write(tmp_path / "a.csv", rows), True, gc.derived_key)]
        changed = [rows[0], [*rows[1][:3], "4.00", *rows[1][4:]], rows[2], rows[2]]
        again = [
            f.key for f in bulk.validate(write(tmp_path / "b.csv", changed), True, gc.derived_key)
        ]
        with GiftCardClient(server.url, "clerk", "clerk-password") as other:
            theirs = bulk.validate(tmp_path / "a.csv", True, other.derived_key)
    assert again[0] == keys[0] and again[2] == keys[2], "unchanged rows keep their keys"
    assert again[1] != keys[1], "an edited row gets its own new key"
    assert len(set(again)) == 4, "identical rows are told apart by their place among them"
    assert [f.key for f in theirs] != keys, "keys are the user's own"
    assert not any(c.number in k or c.number[-8:] in k for c in cards for k in keys)


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "fixes.csv"
    path.write_text("operation,card_number\nbalance,6006491234567897\n")
    with pytest.raises(bulk.BulkFileError, match="missing column"):
        bulk.validate(path)


def test_a_journal_from_before_amounts_were_keyed_in_cents_keeps_its_keys(server, tmp_path):
    cards = sold(server, 2)
    rows = [["reload", c.number, c.security_code, "3", c.store_id, "", ""] for c in cards]
    path = write(tmp_path / "fixes.csv", rows)
    journal = tmp_path / "fixes.csv.journal"
    with GiftCardClient(server.url, server.username, server.password) as gc:
        fixes = bulk.validate(path, True, gc.derived_key)
        resaved = bulk.validate(
            write(tmp_path / "resaved.csv", [[*r[:3], "3.00", *r[4:]] for r in rows]),
            True,
            gc.derived_key,
        )
        assert [f.key for f in resaved] == [f.key for f in fixes], "3 and 3.00: one key"
        assert [f.legacy_key for f in resaved] == [None, None]
        assert all(f.legacy_key not in (None, f.key) for f in fixes)
        # An earlier version's run: line 2 applied and journalled, line 3 sent and its
        # answer lost, both under the keys of that version.
        done = gc.reload(cards[0], "3", cards[0].store_id, idempotency_key=fixes[0].legacy_key)
        gc.reload(cards[1], "3", cards[1].store_id, idempotency_key=fixes[1].legacy_key)
        old = [
            {"event": "sending", "line": 2, "operation": "reload", "card": cards[0].masked,
             "amount": "3", "idempotency_key": fixes[0].legacy_key},
            {"event": "done", "line": 2, "operation": "reload", "card": cards[0].masked,
             "status": "approved", "statuscode": "000000", "description": "Success",
             "host_ref": done.host_ref, "new_balance": "13.00", "replayed": False,
             "idempotency_key": fixes[0].legacy_key},
            {"event": "sending", "line": 3, "operation": "reload", "card": cards[1].masked,
             "amount": "3", "idempotency_key": fixes[1].legacy_key},
        ]  # fmt: skip
        journal.write_text("".join(json.dumps(e) + "\n" for e in old))
        results = bulk.run(gc, path, progress=False)
    assert results["status"].to_list() == ["already applied"] * 2
    assert results["replayed"].to_list() == [False, True]
    assert results["idempotency_key"].to_list() == [f.legacy_key for f in fixes]
    assert balances(server, cards) == [Decimal("13.00")] * 2, "nothing applied twice"


class ChecksWriteAhead(httpx.HTTPTransport):
    """Notes every money-moving request whose ``sending`` line is not yet in the journal."""

    def __init__(self, journal) -> None:
        super().__init__()
        self.journal, self.unjournalled, self.seen = journal, [], 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        key = request.headers.get("Idempotency-Key")
        if key is not None and request.url.path.startswith("/Transaction/"):
            self.seen += 1
            lines = [json.loads(t) for t in self.journal.read_text().splitlines()]
            if {"event": "sending", "key": key} not in [
                {"event": e["event"], "key": e["idempotency_key"]} for e in lines
            ]:
                self.unjournalled.append(key)
        return super().handle_request(request)


def test_each_row_is_journalled_before_it_is_sent_and_every_outcome_by_the_end(server, tmp_path):
    cards = sold(server, 24)
    rows = [["reload", c.number, c.security_code, "1.00", c.store_id, "", ""] for c in cards]
    rows += [["redeem", c.number, c.security_code, "2.00", c.store_id, "", ""] for c in cards]
    path = write(tmp_path / "fixes.csv", rows)
    journal = tmp_path / "fixes.csv.journal"
    checking = ChecksWriteAhead(journal)
    with GiftCardClient(server.url, server.username, server.password, transport=checking) as gc:
        results = bulk.run(gc, path, concurrency=8, progress=False)
    assert checking.seen == 48 and checking.unjournalled == []
    assert set(results["status"]) == {"approved"}
    events = Counter(json.loads(t)["event"] for t in journal.read_text().splitlines())
    assert events == {"sending": 48, "done": 48}
    assert balances(server, cards) == [Decimal("9.00")] * 24, "in file order, per card"
