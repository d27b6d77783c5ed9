"""A bulk dry run that predicts the run (and changes nothing); what a run reports after:
outcome names, the summary under the progress bar, rows held back or not sent."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest
from bulkkit import ledger_rows, sold, unsold, write

from giftcard_toolkit import GiftCardClient, bulk, errors


def _row(op, card, amount="", store="", reason=""):
    return [op, card.number, card.security_code, amount, store, reason, "dry"]


def test_dry_run_predicts_each_decline_the_run_meets_and_changes_nothing(server, tmp_path):
    a, never_sold, elsewhere = unsold(server, 3)
    mine, other = server.stores[0].id, server.stores[1].id  # clerk: the first store only
    rows = [
        _row("sell", a, "500.00", mine),  # 2
        _row("reload", a, "500.00", mine),  # 3
        _row("reload", a, "500.00", mine),  # 4
        _row("reload", a, "500.00", mine),  # 5: 2,000.00, the most a card may hold
        _row("reload", a, "0.01", mine),  # 6: over the balance limit
        _row("reload", a, "500.01", mine),  # 7: over the per-load limit
        _row("reload", never_sold, "10.00", mine),  # 8: an unsold card
        _row("redeem", a, "2000.01", mine),  # 9: above the balance
        _row("sell", elsewhere, "10.00", other),  # 10: a store not granted to clerk
        _row("sell", a, "10.00", mine),  # 11: sold already (by row 2)
        _row("block", a, reason="lost"),  # 12
        _row("redeem", a, "5.00", mine),  # 13: blocked
        _row("unblock", a, reason="found"),  # 14
        _row("redeem", a, "5.00", mine),  # 15
        _row("block", never_sold, reason="lost"),  # 16: nothing to block
        _row("unblock", a, reason="again"),  # 17: active already
        _row("balance", never_sold),  # 18
    ]
    path = write(tmp_path / "fixes.csv", rows)
    before = ledger_rows(server)
    with GiftCardClient(server.url, "clerk", "clerk-password") as gc:
        dry = bulk.run(gc, path, dry_run=True, progress=False)
        assert ledger_rows(server) == before, "a dry run changes nothing"
        assert not (tmp_path / "fixes.csv.journal").exists()
        assert [gc.balance(c).balance for c in (a, never_sold)] == [Decimal(0)] * 2
        results = bulk.run(gc, path, progress=False)
    D, OK = "would be declined", "checked"
    assert dry["status"].to_list() == [OK, OK, OK, OK, D, D, D, D, D, D, OK, D, OK, OK, D, D, OK]
    codes = dry["statuscode"].to_list()
    assert codes == [
        *["000000"] * 4,
        *["100012", "100012", "100002", "100005", "100010", "100004"],
        *["000000", "100002", "000000", "000000", "100002", "100015", "000000"],
    ]
    said = dict(zip(dry["line"], dry["description"], strict=True))
    assert "would hold 2,000.01, over the server's limit of 2,000.00 per card" in said[6]
    assert "500.01 is over the server's limit of 500.00 per sale or reload" in said[7]
    assert "never sold: sell it first" in said[8]
    assert "would hold 2,000.00 by then, less than 2,000.01" in said[9]
    assert f"store {other} is not one of the 1 store(s) user 'clerk' may act for" in said[10]
    assert dry["new_balance"].to_list()[:5] == [Decimal(v) for v in (500, 1000, 1500, 2000, 2000)]
    assert dry["new_balance"][13] == Decimal("1995.00")
    # The run met exactly what the dry run predicted, row by row.
    as_run = {"checked": "approved", "would be declined": "declined"}
    assert results["status"].to_list() == [as_run[s] for s in dry["status"]]
    assert results["statuscode"].to_list() == codes
    assert results["new_balance"][13] == Decimal("1995.00")


class AddToVerify(httpx.HTTPTransport):
    """Adds fields to the ``PUT /Auth/verify`` answer, as a server with roles and per-user
    limits sends them."""

    def __init__(self, **fields) -> None:
        super().__init__()
        self.fields = fields

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path != "/Auth/verify":
            return response
        body = json.loads(response.read())
        return httpx.Response(response.status_code, json={**body, **self.fields})


def test_dry_run_applies_the_users_own_limit_from_verify(server, tmp_path):
    a, b = unsold(server, 2)
    store = server.stores[0].id
    path = write(
        tmp_path / "fixes.csv",
        [
            _row("sell", a, "50.00", store),
            _row("redeem", a, "50.01", store),
            _row("sell", b, "$60.00", store),
            _row("redeem", a, "50.00", store),
        ],
    )
    transport = AddToVerify(MaxAmount="50.00", Role="clerk")  # any letter case
    with GiftCardClient(server.url, server.username, server.password, transport=transport) as gc:
        dry = bulk.run(gc, path, dry_run=True, progress=False)
    assert dry["status"].to_list() == ["checked", *["would be declined"] * 2, "checked"]
    assert dry["statuscode"].to_list() == ["000000", "100012", "100012", "000000"]
    assert "50.01 is over user 'demo''s own limit of 50.00" in dry["description"][1]
    assert dry["new_balance"].to_list() == [
        Decimal("50.00"),
        Decimal("50.00"),
        Decimal("0.00"),
        Decimal("0.00"),
    ]
    # A read-only user: every change would be declined; a balance check would not.
    analyst = AddToVerify(role="analyst", maxamount=None)
    path = write(tmp_path / "read.csv", [_row("sell", b, "5", store), _row("balance", b)])
    with GiftCardClient(server.url, server.username, server.password, transport=analyst) as gc:
        dry = bulk.run(gc, path, dry_run=True, progress=False)
    assert dry.select("status", "statuscode").rows() == [
        ("would be declined", "100017"),
        ("checked", "000000"),
    ]


class LoseAnswers(httpx.HTTPTransport):
    """Loses the answers to the first ``lose`` requests on ``path`` (they were applied)."""

    def __init__(self, lose: int, path: str = "/Transaction/reload") -> None:
        super().__init__()
        self.lose, self.path = lose, path

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == self.path and self.lose > 0:
            self.lose -= 1
            response.read()
            raise httpx.RemoteProtocolError("connection dropped", request=request)
        return response


def test_summary_under_the_bar_names_every_outcome_and_rows_wait_on_unknown_ones(
    server, tmp_path, capsys
):
    a, b, c = sold(server, 3)
    rows = [
        _row("reload", a, "3.00", a.store_id),  # its answer is lost
        _row("reload", b, "3.00", b.store_id),
        _row("redeem", a, "1.00", a.store_id),  # must follow line 2: not sent
        _row("redeem", c, "999.00", c.store_id),  # declined
    ]
    path = write(tmp_path / "fixes.csv", rows)
    lossy = LoseAnswers(1)
    with GiftCardClient(
        server.url, server.username, server.password, transport=lossy, attempts=1
    ) as gc:
        first = bulk.run(gc, path, concurrency=1)
    shown = capsys.readouterr()
    assert first["status"].to_list() == ["error", "approved", "not sent", "declined"]
    assert "line 2 (the same card) has an unknown outcome" in first["description"][2]
    assert bulk.summary(first) == bulk.Summary(
        dry_run=False, rows=4, applied=1, already_applied=0, declined=1, not_sent=1, unknown=1
    )
    assert not bulk.summary(first).clean
    assert shown.out == (
        "4 row(s): 1 applied now, 0 already applied before, 1 declined, 1 not sent, "
        "1 outcome unknown (run the file again to learn it)\n"
    )
    assert "bulk" in shown.err and "4/4" in shown.err, "the progress bar, above it"
    with GiftCardClient(server.url, server.username, server.password) as gc:
        dry = bulk.run(gc, path, dry_run=True)
        assert capsys.readouterr().out == (
            "dry run of 4 row(s): 2 would be applied, 1 would be declined, 1 already "
            "applied before, 0 could not be checked\n"
        )
        # The lost row is sent again under its key: the run predicts nothing moves twice.
        assert dry["status"].to_list() == ["checked", "already applied", "checked", "declined"]
        assert "answer was lost" in dry["description"][0]
        second = bulk.run(gc, path)
        balances = [gc.balance(card).balance for card in (a, b, c)]
    assert second["status"].to_list() == [
        "already applied",
        "already applied",
        "approved",
        "declined",
    ]
    assert second["replayed"].to_list() == [True, False, False, False]
    assert capsys.readouterr().out == (
        "4 row(s): 1 applied now, 2 already applied before, 1 declined, 0 not sent\n"
    )
    assert balances == [Decimal("12.00"), Decimal("13.00"), Decimal("10.00")]


class Unreachable(httpx.HTTPTransport):
    """The server answers ``verify`` and tokens, then can no longer be reached."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/Transaction/"):
            raise httpx.ConnectError("connection refused", request=request)
        return super().handle_request(request)


def test_a_run_that_cannot_reach_the_server_stops_sending(server, tmp_path):
    cards = sold(server, 4)
    rows = [_row("reload", c, "3.00", c.store_id) for c in cards]
    path = write(tmp_path / "fixes.csv", rows)
    with GiftCardClient(
        server.url, server.username, server.password, transport=Unreachable(), attempts=1
    ) as gc:
        first = bulk.run(gc, path, concurrency=1, progress=False)
    assert first["status"].to_list() == ["error", "not sent", "not sent", "not sent"]
    assert all("stopped sending at line 2" in d for d in first["description"][1:])
    with GiftCardClient(server.url, server.username, server.password) as gc:
        again = bulk.run(gc, path, progress=False)
        balances = {gc.balance(c).balance for c in cards}
    assert again["status"].to_list() == ["approved"] * 4
    assert balances == {Decimal("13.00")}


def test_wrong_credentials_are_refused_before_anything_is_journalled(server, tmp_path):
    (card,) = sold(server, 1)
    path = write(tmp_path / "fixes.csv", [_row("reload", card, "3.00", card.store_id)])
    with (
        GiftCardClient(server.url, server.username, "not-the-password") as gc,
        pytest.raises(errors.AuthenticationError),
    ):
        bulk.run(gc, path, progress=False)
    assert not (tmp_path / "fixes.csv.journal").exists()


def test_a_dry_run_after_a_run_reads_the_journal_and_never_writes_it(server, tmp_path):
    a, b = sold(server, 2)
    rows = [_row("redeem", a, "4.00", a.store_id), _row("redeem", b, "40.00", b.store_id)]
    path = write(tmp_path / "fixes.csv", rows)
    with GiftCardClient(server.url, server.username, server.password) as gc:
        bulk.run(gc, path, progress=False)
        journal = (tmp_path / "fixes.csv.journal").read_bytes()
        dry = bulk.run(gc, path, dry_run=True, progress=False)
    assert dry["status"].to_list() == ["already applied", "declined"]
    assert dry["description"][1].startswith("in an earlier run: ")
    assert (tmp_path / "fixes.csv.journal").read_bytes() == journal
    assert bulk.summary(dry, dry_run=True).clean is False


def test_result_statuses_are_the_documented_ones(server, tmp_path):
    (card,) = sold(server, 1)
    path = write(tmp_path / "fixes.csv", [_row("balance", card)])
    with GiftCardClient(server.url, server.username, server.password) as gc:
        results = bulk.run(gc, path, progress=False)
        again = bulk.run(gc, path, progress=False)
    # A balance check is a read: it is made again by every run, never "already applied".
    assert results["status"].to_list() == again["status"].to_list() == ["approved"]
    assert results.schema == again.schema == bulk.RESULT_SCHEMA
    assert set(bulk.APPLIED_STATUSES) < {
        bulk.APPROVED,
        bulk.PARTIAL,
        bulk.ALREADY_APPLIED,
        bulk.DECLINED,
        bulk.REJECTED,
        bulk.NOT_SENT,
        bulk.ERROR,
        bulk.CHECKED,
        bulk.WOULD_BE_DECLINED,
        bulk.NOT_CHECKED,
    }
