"""Card cases in bulk files: replace, reverse and adjust rows, checked with the rest of the
file, predicted by the dry run, and applied exactly once through ``ops.cases``."""

from __future__ import annotations

import csv
import json
import re
from decimal import Decimal
from typing import cast

import httpx
import polars as pl
import pytest
from bulkkit import balances, ledger_rows, sold, unsold

from giftcard_toolkit import GiftCardClient, audit, bulk, frames
from giftcard_toolkit.ops import cases

HEADER = [*bulk.COLUMNS, *bulk.CASE_COLUMNS]
STEP_PATHS = (
    "/Transaction/radeem",
    "/Transaction/sellnewcard",
    "/Transaction/reload",
    "/Transaction/changestatus",
)


def _row(op, card, amount="", reason="", *, new=None, host_ref="", pos_ref="", store=None):
    return [
        op,
        card.number,
        card.security_code,
        amount,
        card.store_id if store is None else store,
        reason,
        pos_ref,
        "" if new is None else new.number,
        "" if new is None else new.security_code,
        host_ref,
    ]


def _write(path, rows, header=HEADER):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _state(server, card) -> str:
    with GiftCardClient(server.url, server.username, server.password) as gc:
        return gc.balance(card).state


def _case_id(description: str) -> str:
    found = re.search(r"case ([0-9a-f]{20})", description)
    assert found, description
    return found[1]


def _marked(server, case_id: str) -> list[str]:
    """The step marks of every transaction a case made, in the server's batches."""
    with GiftCardClient(server.url, server.username, server.password) as gc:
        _, txs = cast(tuple[pl.DataFrame, pl.DataFrame], frames.fetch(gc, progress=False))
    rows = txs.filter(pl.col("pos_ref").str.starts_with(f"case {case_id} "))
    return sorted(rows["pos_ref"].to_list())


def _no_card_in(text: str, cards) -> None:
    for card in cards:
        assert card.number not in text
        assert card.number[:12] not in text


# ------------------------------------------------------------------ a run, and reruns


def test_a_file_mixing_cases_and_ordinary_rows_applies_each_exactly_once(server, tmp_path):
    lost, stolen, charged, fixed = sold(server, 4, "60.00", first_store=True)
    onto_new, onto_active, plain = unsold(server, 3, first_store=True)
    with GiftCardClient(server.url, server.username, server.password) as gc:
        gc.sell(onto_active, "10.00", onto_active.store_id)
        gc.change_status(stolen, False, "reported stolen")
        first = gc.redeem(charged, "20.00", charged.store_id)
        gc.redeem(charged, "20.00", charged.store_id)  # the till charged twice: 20.00 left
    rows = [
        _row("sell", plain, "25.00", store=plain.store_id),  # 2
        _row("redeem", lost, "10.00"),  # 3: before the replace of its card
        _row("replace", lost, reason="customer lost it", new=onto_new),  # 4: a sale
        _row("reload", onto_new, "5.00"),  # 5: after the replace onto its card
        _row("reverse", charged, reason="charged twice", host_ref=first.host_ref),  # 6
        _row("adjust", fixed, "+5.00", "clerk loaded 5 short"),  # 7
        _row("adjust", fixed, "-20.00", "loaded 20 too much"),  # 8
        _row("adjust", fixed, "-20.00", "loaded 20 too much"),  # 9: a second correction
        _row("replace", stolen, reason="stolen", new=onto_active),  # 10: blocked, a reload
        _row("redeem", plain, "5.00"),  # 11
    ]
    path = _write(tmp_path / "fixes.csv", rows)
    log = tmp_path / "audit.jsonl"
    before = ledger_rows(server)
    with GiftCardClient(server.url, server.username, server.password) as gc:
        results = bulk.run(gc, path, concurrency=8, audit_log=log, progress=False)
    assert results["status"].to_list() == ["approved"] * 10, results["description"].to_list()
    assert results.schema == bulk.RESULT_SCHEMA
    cards = [lost, onto_new, charged, fixed, stolen, onto_active, plain]
    assert balances(server, cards) == [Decimal(v) for v in ("0", "55", "40", "25", "0", "70", "20")]
    assert [_state(server, c) for c in (lost, stolen, onto_new)] == ["blocked"] * 2 + ["active"]
    # 1 sale, 2 redemptions, 1 reload; cases: 2 + 2 (take, give), 1 reversal, 3 adjustments.
    assert ledger_rows(server) == before + 12
    by_line = {r["line"]: r for r in results.iter_rows(named=True)}
    assert by_line[4]["new_balance"] == Decimal("0.00"), "the row's card: emptied"
    assert "moved 50.00 onto card ************" + onto_new.number[-4:] in by_line[4]["description"]
    assert by_line[6]["new_balance"] == Decimal("40.00")
    assert [by_line[n]["new_balance"] for n in (7, 8, 9)] == [Decimal(v) for v in (65, 45, 25)]
    assert by_line[8]["idempotency_key"] != by_line[9]["idempotency_key"]
    assert by_line[10]["new_balance"] == Decimal("0.00")
    # host_ref: the hostRef of the case's last money step (a replace's: the give).
    replace_id = _case_id(by_line[4]["description"])
    steps = audit.read(log, case_id=replace_id)
    assert steps["operation"].to_list() == ["replace redeem", "replace sell", "replace block"]
    assert by_line[4]["host_ref"] == steps["host_ref"][1]
    reversal = audit.read(log, case_id=_case_id(by_line[6]["description"]))
    assert by_line[6]["host_ref"] == reversal["host_ref"][0]
    # Audited once: the cases' steps (with their case ids) and the ordinary rows, no more.
    trail = audit.read(log)
    rows_audited = trail.filter(pl.col("case_id").is_null())["operation"].to_list()
    assert sorted(rows_audited) == ["bulk redeem", "bulk redeem", "bulk reload", "bulk sell"]
    assert trail.filter(pl.col("case_id").is_not_null()).height == 3 + 1 + 3 + 4
    assert set(trail["outcome"].cast(pl.String)) == {"approved"}
    # No card number anywhere: results, the results file, the journal, the audit log.
    out = bulk.write_results(results, tmp_path / "fixes.results.csv")
    journal = tmp_path / "fixes.csv.journal"
    for text in (str(results.rows()), out.read_text(), journal.read_text(), log.read_text()):
        _no_card_in(text, cards)

    # A rerun finds every row in the journal: already applied, nothing moved.
    with GiftCardClient(server.url, server.username, server.password) as gc:
        again = bulk.run(gc, path, audit_log=log, progress=False)
    assert again["status"].to_list() == ["already applied"] * 10
    assert ledger_rows(server) == before + 12
    # Without the journal (a colleague's copy of the file): the cases find themselves done
    # in the cards' histories, the adjustments and ordinary rows are answered as replays.
    journal.unlink()
    with GiftCardClient(server.url, server.username, server.password) as gc:
        fresh = bulk.run(gc, path, progress=False)
    assert fresh["status"].to_list() == ["already applied"] * 10, fresh["description"].to_list()
    assert fresh["host_ref"].to_list() == results["host_ref"].to_list()
    assert fresh["new_balance"].to_list() == results["new_balance"].to_list()
    assert "found done" in fresh["description"][2]
    with GiftCardClient(server.url, "clerk", "clerk-password") as colleague:
        theirs = bulk.run(
            colleague, _write(tmp_path / "theirs.csv", [rows[2], rows[4]]), progress=False
        )
    assert theirs["status"].to_list() == ["already applied"] * 2, theirs["description"].to_list()
    assert ledger_rows(server) == before + 12
    assert balances(server, cards) == [Decimal(v) for v in ("0", "55", "40", "25", "0", "70", "20")]


class LoseSecondStep(httpx.HTTPTransport):
    """Loses the answer to a case's second step (it reached the server and was applied)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        key = request.headers.get("idempotency-key", "")
        if request.url.path in STEP_PATHS and key.startswith("case-"):
            self.steps += 1
            if self.steps == 2:
                response.read()
                raise httpx.ReadTimeout("answer lost", request=request)
        return response


def test_a_case_whose_answer_was_lost_is_an_error_and_the_next_run_finishes_it(server, tmp_path):
    (old,) = sold(server, 1, "45.00", first_store=True)
    (other,) = sold(server, 1, "10.00", first_store=True)
    new, later = unsold(server, 2, first_store=True)
    rows = [
        _row("replace", old, reason="lost", new=new),  # 2: its give's answer is lost
        _row("reload", new, "5.00"),  # 3: must follow line 2
        _row("replace", new, reason="lost again", new=later),  # 4: must follow too
        _row("reload", other, "1.00"),  # 5: unrelated
    ]
    path = _write(tmp_path / "fixes.csv", rows)
    before = ledger_rows(server)
    with GiftCardClient(
        server.url, server.username, server.password, transport=LoseSecondStep(), attempts=1
    ) as gc:
        first = bulk.run(gc, path, concurrency=2, progress=False)
    assert first["status"].to_list() == ["error", "not sent", "not sent", "approved"]
    assert "may or may not have been applied" in first["description"][0]
    assert "line 2 (the same card) has an unknown outcome" in first["description"][1]
    assert balances(server, [old, new]) == [Decimal("0.00"), Decimal("45.00")], "the give landed"
    events = [json.loads(t) for t in (tmp_path / "fixes.csv.journal").read_text().splitlines()]
    assert [e["event"] for e in events if e["line"] == 2] == ["sending"], "not journalled done"
    with GiftCardClient(server.url, server.username, server.password) as gc:
        second = bulk.run(gc, path, progress=False)
    assert second["status"].to_list() == ["approved", "approved", "approved", "already applied"]
    assert balances(server, [old, new, later]) == [Decimal(0), Decimal(0), Decimal("50.00")]
    assert [_state(server, c) for c in (old, new, later)] == ["blocked", "blocked", "active"]
    assert ledger_rows(server) == before + 1 + 2 + 1 + 2, "each step once"
    case_id = _case_id(second["description"][0])
    assert _marked(server, case_id) == [f"case {case_id} give", f"case {case_id} take"]


def test_a_replace_the_new_card_refuses_is_declined_and_the_money_put_back(server, tmp_path):
    (old,) = sold(server, 1, "100.00", first_store=True)
    (full,) = sold(server, 1, "500.00", first_store=True)
    (large,) = sold(server, 1, "500.00", first_store=True)
    (spare,) = unsold(server, 1, first_store=True)
    with GiftCardClient(server.url, server.username, server.password) as gc:
        for _ in range(3):
            gc.reload(full, "500.00", full.store_id)  # 2,000.00: the most a card may hold
        gc.reload(large, "300.00", large.store_id)  # 800.00: more than one load moves
    rows = [
        _row("replace", old, reason="lost", new=full),
        _row("replace", large, reason="lost", new=spare),  # moved in two loads
    ]
    path = _write(tmp_path / "fixes.csv", rows)
    before = ledger_rows(server)
    with GiftCardClient(server.url, server.username, server.password) as gc:
        results = bulk.run(gc, path, progress=False)
    assert results["status"].to_list() == ["declined", "approved"]
    assert results["statuscode"][0] == "100012"
    assert "put back" in results["description"][0]
    assert balances(server, [old, full, large, spare]) == [
        Decimal("100.00"),
        Decimal("2000.00"),
        Decimal("0.00"),
        Decimal("800.00"),
    ]
    assert _state(server, old) == "active" and _state(server, spare) == "active"
    assert ledger_rows(server) == before + 2 + 3, "take and undo; take and two gives"
    with GiftCardClient(server.url, server.username, server.password) as gc:
        again = bulk.run(gc, path, progress=False)
    assert again["status"].to_list() == ["declined", "already applied"], "journalled"
    assert ledger_rows(server) == before + 5


# ------------------------------------------------------------------ the file


def test_bad_case_rows_are_named_with_the_rest_and_nothing_is_sent(server, tmp_path):
    card, other = sold(server, 2, "20.00", first_store=True)
    (new,) = unsold(server, 1, first_store=True)
    sci = f"{int(new.number[:7]) / 10**6:.5f}E+15"
    rows = [
        _row("replace", card, reason="lost"),  # 2: no new card
        _row("reverse", card, reason="twice"),  # 3: no hostRef
        _row("adjust", card, "0.00", "nothing"),  # 4: zero
        _row("adjust", card, "", "nothing"),  # 5: no amount
        [*_row("replace", card, reason="lost")[:7], sci, new.security_code, ""],  # 6
        [*_row("replace", card, reason="lost")[:7], new.number, "123", ""],  # 7
        _row("replace", card, reason="lost", new=card),  # 8: onto itself
        _row("reverse", card, "5.00", "twice", host_ref="1"),  # 9: an amount
        _row("adjust", card, "-5.00", "x", pos_ref="lane 2"),  # 10: a pos_ref
        _row("reload", card, "5.00", host_ref="1"),  # 11: a host_ref on a reload
        _row("adjust", card, "-5.00", ""),  # 12: no reason
        _row("reverse", card, reason="twice", host_ref=other.number),  # 13: a card number
        _row("adjust", card, "-1.005", "x"),  # 14
        _row("adjust", card, "-5.00", "fine"),  # 15: a good row
        _row("replace", card, reason="x", new=new, store="store-1"),  # 16
    ]
    path = _write(tmp_path / "fixes.csv", rows)
    before = ledger_rows(server)
    with (
        GiftCardClient(server.url, server.username, server.password) as gc,
        pytest.raises(bulk.BulkFileError) as refused,
    ):
        bulk.run(gc, path, progress=False)
    said = dict(refused.value.problems)
    assert sorted(said) == [*range(2, 15), 16]
    assert "new_card_number is empty: replace needs the card" in said[2]
    assert "host_ref is empty: reverse needs the hostRef" in said[3]
    assert "is zero: an adjustment changes the balance" in said[4]
    assert "amount is empty: adjust needs the signed correction" in said[5]
    assert "new_card_number is in scientific notation" in said[6] and "as Text" in said[6]
    assert "new_security_code has 3 digit(s), not 4" in said[7]
    assert "new_card_number is the card itself" in said[8]
    assert "amount must be empty for reverse" in said[9]
    assert "pos_ref must be empty for adjust" in said[10]
    assert "host_ref is read for reverse rows only: leave it empty for reload" in said[11]
    assert "reason is required to adjust" in said[12]
    assert "host_ref holds a card number" in said[13]
    assert "at most 2 decimals" in said[14]
    assert "store_id must be the store's GUID" in said[16]
    assert ledger_rows(server) == before, "nothing was sent"
    assert not (tmp_path / "fixes.csv.journal").exists()
    _no_card_in(str(refused.value), [card, other, new])


def test_case_columns_are_optional_in_the_header(server, tmp_path):
    (card,) = sold(server, 1, "20.00", first_store=True)
    ordinary = _write(
        tmp_path / "old-style.csv",
        [_row("adjust", card, "-5.00", "too much")[:7], _row("balance", card)[:7]],
        header=bulk.COLUMNS,
    )
    with GiftCardClient(server.url, server.username, server.password) as gc:
        fixes = bulk.validate(ordinary, True, gc.derived_key)
        assert [f.operation for f in fixes] == ["adjust", "balance"]
        assert fixes[0].amount == Decimal("-5.00")
        missing = _write(
            tmp_path / "no-new-card.csv",
            [_row("replace", card, reason="lost")[:7]],
            header=bulk.COLUMNS,
        )
        with pytest.raises(bulk.BulkFileError, match="line 2: new_card_number is empty"):
            bulk.validate(missing, True, gc.derived_key)
        # Any letter case and spacing, in any order, as for the other columns.
        spaced = tmp_path / "spaced.csv"
        header = ["Host Ref", "New Security Code", "New Card Number", *bulk.COLUMNS]
        row = _row("reverse", card, reason="twice", host_ref="77")
        _write(spaced, [[row[9], row[8], row[7], *row[:7]]], header=header)
        (fix,) = bulk.validate(spaced, True, gc.derived_key)
    assert fix.reversed_ref == "77" and fix.new_card is None


@pytest.mark.parametrize(
    ("text", "separator", "amount"),
    [
        ("-45.00", ",", "-45.00"),
        ("+12.50", ",", "12.50"),
        ("12.5", ",", "12.50"),
        ("-$45.00", ",", "-45.00"),
        ("$-1,000.00", ",", "-1000.00"),
        ("(45.00)", ",", "-45.00"),
        ("−45,00 €", ";", "-45.00"),
    ],
)
def test_signed_amounts_as_spreadsheets_write_them(text, separator, amount):
    assert bulk.parse_signed_amount(text, separator) == Decimal(amount)


@pytest.mark.parametrize(
    ("text", "why"),
    [("0", "is zero"), ("-0.00", "is zero"), ("-1.005", "at most 2 decimals"), ("", "empty"),
     ("(-5)", "negative twice"), ("-1,000", "ambiguous")],
)  # fmt: skip
def test_signed_amounts_that_are_refused(text, why):
    with pytest.raises(bulk.AmountError, match=why):
        bulk.parse_signed_amount(text)


def test_replace_rows_join_the_chains_of_both_cards(server, tmp_path):
    a, b, c, d, e = unsold(server, 5, first_store=True)
    rows = [
        _row("sell", c, "5", store=c.store_id),
        _row("replace", a, reason="x", new=b),
        _row("sell", a, "5", store=a.store_id),
        _row("replace", b, reason="x", new=c),
        _row("sell", d, "5", store=d.store_id),
        _row("reload", c, "5"),
        _row("adjust", e, "5", "x"),
    ]
    path = _write(tmp_path / "fixes.csv", rows)
    chains = bulk._by_card(bulk.validate(path))
    assert sorted([f.line for f in chain] for chain in chains) == [[2, 3, 4, 5, 7], [6], [8]]


# ------------------------------------------------------------------ the dry run


def test_dry_run_predicts_case_rows_and_the_run_meets_it(server, tmp_path):
    lost, charged, fixed, other = sold(server, 4, "60.00", first_store=True)
    (large,) = sold(server, 1, "500.00", first_store=True)
    (full,) = sold(server, 1, "500.00", first_store=True)
    new, spare = unsold(server, 2, first_store=True)
    with GiftCardClient(server.url, server.username, server.password) as gc:
        gc.reload(large, "300.00", large.store_id)  # 800.00
        for _ in range(3):
            gc.reload(full, "500.00", full.store_id)  # 2,000.00
        first = gc.redeem(charged, "20.00", charged.store_id)
        theirs = gc.redeem(other, "5.00", other.store_id)
    rows = [
        _row("replace", large, reason="lost", new=spare),  # 2: 800.00, in two loads
        _row("reverse", charged, reason="x", host_ref=theirs.host_ref),  # 3: another card's
        _row("replace", lost, reason="lost", new=new),  # 4
        _row("reload", new, "5.00"),  # 5: 65.00 by then
        _row("reverse", charged, reason="twice", host_ref=first.host_ref),  # 6
        _row("reverse", charged, reason="twice", host_ref=first.host_ref),  # 7: again
        _row("adjust", fixed, "-60.01", "x"),  # 8: more than it holds
        _row("adjust", fixed, "-10.00", "x"),  # 9
        _row("adjust", fixed, "500.01", "x"),  # 10: over the per-load limit
        _row("replace", fixed, reason="x", new=full),  # 11: the new card is full
        _row("replace", new, reason="again", new=lost),  # 12: onto a blocked card
    ]
    path = _write(tmp_path / "fixes.csv", rows)
    before = ledger_rows(server)
    with GiftCardClient(server.url, server.username, server.password) as gc:
        dry = bulk.run(gc, path, dry_run=True, progress=False)
    assert ledger_rows(server) == before, "a dry run changes nothing"
    assert not (tmp_path / "fixes.csv.journal").exists()
    OK, D, DONE = "checked", "would be declined", "already applied"
    assert dry["status"].to_list() == [OK, D, OK, OK, OK, DONE, D, OK, D, D, D]
    assert dry["statuscode"].to_list() == [
        "000000", None, "000000", "000000", "000000", None, "100005", "000000", "100012",
        "100012", None,
    ]  # fmt: skip
    said = dict(zip(dry["line"], dry["description"], strict=True))
    assert "would move 800.00 onto card ************" + spare.number[-4:] in said[2]
    assert f"hostRef {theirs.host_ref} is not a transaction of this card" in said[3]
    assert "would move 60.00 onto card ************" + new.number[-4:] in said[4]
    assert "(a sale, which would then hold 60.00) and block this card" in said[4]
    assert f"would reverse redeem {first.host_ref} (20.00) by a reload" in said[6]
    assert "reversed earlier by this case (by an earlier row)" in said[7]
    assert "would hold 60.00 by then, less than 60.01" in said[8]
    assert "would refuse 50.00" in said[11] and "over the server's limit of 2,000.00" in said[11]
    assert "it is blocked" in said[12]
    assert dry["new_balance"].to_list() == [
        Decimal(v) for v in (0, 40, 0, 65, 60, 60, 60, 50, 50, 50, 65)
    ]
    _no_card_in(str(dry.rows()), [lost, charged, fixed, other, large, full, new, spare])
    with GiftCardClient(server.url, server.username, server.password) as gc:
        results = bulk.run(gc, path, progress=False)
    as_run = {OK: "approved", D: "declined", DONE: "already applied"}
    assert results["status"].to_list() == [as_run[s] for s in dry["status"]], results[
        "description"
    ].to_list()
    assert balances(server, [large, charged, lost, new, fixed, full, spare]) == [
        Decimal(v) for v in ("0", "60", "0", "65", "50", "2000", "800")
    ]
    # A dry run after the run, without the journal: the cases are found done.
    (tmp_path / "fixes.csv.journal").unlink()
    with GiftCardClient(server.url, server.username, server.password) as gc:
        after = bulk.run(gc, path, dry_run=True, progress=False)
    assert after["status"][2] == DONE and after["status"][4] == DONE


def test_cases_called_as_bulk_calls_them_keep_step_keys_short(server):
    """An adjust row passes its own key (bulk-<40 hex>, 45 characters) to the case, whose
    step keys must stay within the contract's 64."""
    (card,) = sold(server, 1, "10.00", first_store=True)
    key = "bulk-" + "f" * 40
    seen = []

    class Keys(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if "idempotency-key" in request.headers:
                seen.append(request.headers["idempotency-key"])
            return super().handle_request(request)

    with GiftCardClient(server.url, server.username, server.password, transport=Keys()) as gc:
        done = cases.adjust(gc, card, "-1.00", card.store_id, "x", key=key)
    assert done.balance == Decimal("9.00")
    assert seen and all(len(k) <= 64 for k in seen)
