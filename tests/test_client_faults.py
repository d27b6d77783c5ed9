"""Lost answers, retries, token renewal, and the production server's dialect."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from serverkit import MovableClock, Recording

from giftcard_toolkit import AsyncGiftCardClient, Card, GiftCardClient, Token, errors
from giftcard_toolkit.cards import luhn_check_digit
from giftcard_toolkit.server import running


class Faulty(httpx.HTTPTransport):
    """A real transport that can lose answers: the request reaches the server and is
    applied, then the client sees a timeout instead of the response."""

    def __init__(self, lose: int = 0, path: str = "/Transaction/radeem") -> None:
        super().__init__()
        self.lose, self.path = lose, path
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        response = super().handle_request(request)
        if request.url.path == self.path and self.lose > 0:
            self.lose -= 1
            response.read()
            raise httpx.ReadTimeout("answer lost on the way back", request=request)
        return response


class AsyncFaulty(httpx.AsyncHTTPTransport):
    def __init__(self, lose: int = 0, path: str = "/Transaction/radeem") -> None:
        super().__init__()
        self.lose, self.path = lose, path
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        response = await super().handle_async_request(request)
        if request.url.path == self.path and self.lose > 0:
            self.lose -= 1
            await response.aread()
            raise httpx.ReadTimeout("answer lost on the way back", request=request)
        return response


def _unsold(server, taken=set()):  # noqa: B006 - one pool of cards for the whole module
    card = next(c for c in server.card_stock if not c.sold and c.number not in taken)
    taken.add(card.number)
    return card


def _redeems_of(server, host_ref: str) -> int:
    """How many times the server's batches list this hostRef (it must be exactly once)."""
    with GiftCardClient(server.url, server.username, server.password) as gc:
        listed = [
            t.host_ref
            for s in server.stores
            for b in gc.batches(s.id, status="open")
            for t in b.transactions
        ]
    return listed.count(host_ref)


def test_a_lost_redeem_answer_is_retried_and_applied_once(server):
    card = _unsold(server)
    transport = Faulty(lose=2)
    with GiftCardClient(
        server.url, server.username, server.password, transport=transport, backoff=0.01
    ) as gc:
        gc.sell(card, 50, card.store_id)
        redemption = gc.redeem(card, 20, card.store_id)
        assert redemption.new_balance == 30
        assert gc.balance(card).balance == 30, "applied once although sent three times"
    redeems = [r for r in transport.sent if r.url.path == "/Transaction/radeem"]
    assert len(redeems) == 3
    assert len({r.headers["idempotency-key"] for r in redeems}) == 1
    assert _redeems_of(server, redemption.host_ref) == 1


@pytest.mark.anyio
async def test_async_lost_answer_is_applied_once(server):
    card = _unsold(server)
    transport = AsyncFaulty(lose=1, path="/Transaction/sellnewcard")
    async with AsyncGiftCardClient(
        server.url, server.username, server.password, transport=transport, backoff=0.01
    ) as gc:
        sold = await gc.sell(card, "42.42", card.store_id)
        assert sold.balance == Decimal("42.42")
        assert (await gc.balance(card)).balance == Decimal("42.42")
    assert _redeems_of(server, sold.host_ref) == 1


def test_retries_give_up_after_the_configured_attempts(server):
    card = _unsold(server)
    transport = Faulty(lose=5)
    with GiftCardClient(
        server.url, server.username, server.password, transport=transport, attempts=2, backoff=0.01
    ) as gc:
        gc.sell(card, 10, card.store_id)
        with pytest.raises(
            errors.Timeout,
            match="may have been applied; send it again with the same idempotency key",
        ):
            gc.redeem(card, 1, card.store_id, idempotency_key="mine-1")
        assert sum(r.url.path == "/Transaction/radeem" for r in transport.sent) == 2
        transport.lose = 0
        again = gc.redeem(card, 1, card.store_id, idempotency_key="mine-1")
        assert again.new_balance == 9, "retrying with the same key applied it once"


class Flaky(httpx.BaseTransport):
    """Answers with ``statuses`` first, then passes requests on to the real server."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.real = httpx.HTTPTransport()
        self.count = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.count += 1
        if self.statuses:
            return httpx.Response(self.statuses.pop(0), text="busy", request=request)
        return self.real.handle_request(request)


def test_502_503_504_are_retried_but_500_is_not(server):
    flaky = Flaky([503, 502, 504])
    with GiftCardClient(
        server.url, "demo", "demo-password", transport=flaky, attempts=4, backoff=0.01
    ) as gc:
        assert gc.verify().username == "demo"
    assert flaky.count == 4
    broken = Flaky([500, 500])
    with (
        GiftCardClient(server.url, "demo", "demo-password", transport=broken, backoff=0.01) as gc,
        pytest.raises(errors.ServerError, match="500"),
    ):
        gc.verify()
    assert broken.count == 1


def test_a_rejected_request_is_not_retried(server):
    flaky = Flaky([400])
    with (
        GiftCardClient(server.url, "demo", "demo-password", transport=flaky, backoff=0.01) as gc,
        pytest.raises(errors.RequestRejected),
    ):
        gc.verify()
    assert flaky.count == 1


class RefuseFirst(httpx.HTTPTransport):
    """The first connection attempt fails: nothing reached the server."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.refused:
            self.refused = True
            raise httpx.ConnectError("connection refused", request=request)
        return super().handle_request(request)


def test_tokenize_is_resent_only_when_it_never_reached_the_server(server):
    card = _unsold(server)
    lossy = Faulty(lose=1, path="/v1/Token")
    with GiftCardClient(
        server.url, server.username, server.password, transport=lossy, backoff=0.01
    ) as gc:
        with pytest.raises(errors.Timeout):
            gc.tokenize(card)
        assert sum(r.url.path == "/v1/Token" for r in lossy.sent) == 1, "not retried once sent"
    with GiftCardClient(
        server.url, server.username, server.password, transport=RefuseFirst(), backoff=0.01
    ) as gc:
        assert gc.tokenize(card).token


class Counting(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.tokenized = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.tokenized += request.url.path == "/v1/Token"
        return super().handle_request(request)


def test_a_card_is_tokenized_once_and_renewed_before_expiry():
    real_now = datetime.now(UTC)
    clock = MovableClock(real_now)
    with running(clock=clock) as srv:
        card = next(c for c in srv.card_stock if not c.sold)
        counting = Counting()
        with GiftCardClient(srv.url, srv.username, srv.password, transport=counting) as gc:
            gc.sell(card, 20, card.store_id)
            gc.balance(card)
            gc.redeem(card, 1, card.store_id)
            assert counting.tokenized == 1, "one token for three calls"
            # The server now issues tokens that end 20 s from now: inside the 30 s margin.
            clock.now = datetime.now(UTC) - timedelta(minutes=9, seconds=40)
            gc.tokenize(card)
            gc.balance(card)
            assert counting.tokenized == 3, "a token about to expire is renewed before use"


def test_an_expired_token_is_renewed_once_and_the_call_retried():
    clock = MovableClock(datetime.now(UTC))
    with running(clock=clock) as srv:
        card = next(c for c in srv.card_stock if not c.sold)
        counting = Counting()
        with GiftCardClient(srv.url, srv.username, srv.password, transport=counting) as gc:
            gc.sell(card, 20, card.store_id)
            clock.advance(minutes=11)  # the server's clock says the token has expired
            assert gc.redeem(card, 5, card.store_id).new_balance == 15
            assert counting.tokenized == 2
            stale = Token("1234567890123456", datetime.now(UTC) + timedelta(minutes=5))
            with pytest.raises(errors.TokenInvalid):
                gc.balance(stale)  # a token given as such is not renewed: no card to renew it


PASCAL_BALANCE = {
    "StatusCode": "000000",
    "Description": "Success",
    "CardEnding": "4759",
    "Balance": 25.00,
    "Status": True,
    "Activated": "2024-09-04T02:23:34.0541675-04:00",
    "LastUsed": None,
    "Expire": "2029-09-04T02:23:34.0541675-04:00",
    "LoyaltyTier": "gold",
}
PASCAL_VERIFY = {
    "StatusCode": "000000",
    "Description": "Success",
    "UserName": "pos-7",
    "Stores": [
        {
            "FranchiseeID": "3F2A6C1E-8B1D-4C7A-9E2F-0A1B2C3D4E5F",
            "StoreName": "Main",
            "StoreAddress": "1 Main St",
            "Region": "west",
        }
    ],
    "Roles": ["pos"],
}
PASCAL_REDEEM = {
    "StatusCode": "000001",
    "Description": "Partially Approved",
    "HostRef": "H-991",
    "CardNo": "************4759",
    "ApprovedBalance": 4.2,
    "PreviousBalance": 4.2,
    "NewBalance": 0,
    "Status": True,
    "FranchiseeID": "3F2A6C1E-8B1D-4C7A-9E2F-0A1B2C3D4E5F",
    "StoreName": "Main",
    "StoreAddress": "1 Main St",
    "DateTimeRadeemed": "2024-09-04T02:23:34.0541675-04:00",
    "TerminalId": 7,
}
PASCAL_BATCHES = {
    "StatusCode": "000000",
    "Description": "Success",
    "FranchiseeID": "3f2a6c1e-8b1d-4c7a-9e2f-0a1b2c3d4e5f",
    "StoreName": "Main",
    "Batches": [
        {
            "BatchId": 17,
            "Status": "Closed",
            "Opened": "2024-09-03T08:00:00.1234567-04:00",
            "Closed": "2024-09-03T23:00:00-04:00",
            "TransactionCount": 1,
            "SoldAmount": 0,
            "ReloadedAmount": 0,
            "RedeemedAmount": 4.2,
            "NetAmount": -4.2,
            "Transactions": [
                {
                    "HostRef": "H-991",
                    "Type": "Redeem",
                    "CardNo": "4759",
                    "Amount": 4.2,
                    "PreviousBalance": 4.2,
                    "NewBalance": 0,
                    "PosRef": "POS",
                    "DateTime": "2024-09-03T10:00:00",
                    "UserName": "x",
                }
            ],
        }
    ],
}


def _production_like(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path == "/Health":
        return httpx.Response(200, text="Healthy")
    if path == "/Auth/verify":
        return httpx.Response(200, json=PASCAL_VERIFY)
    if path == "/Transaction/balancecheck":
        return httpx.Response(200, json=PASCAL_BALANCE)
    if path == "/Transaction/radeem":
        return httpx.Response(200, json=PASCAL_REDEEM)
    if path.startswith("/Batch/"):
        return httpx.Response(200, json=PASCAL_BATCHES)
    return httpx.Response(404)


def test_production_dialect_parses():
    with GiftCardClient(
        "https://giftcard.example", "u", "p", transport=httpx.MockTransport(_production_like)
    ) as gc:
        assert gc.health().healthy
        verified = gc.verify()
        assert verified.username == "pos-7" and verified.extra == {"Roles": ["pos"]}
        (store,) = verified.stores
        assert store.id == "3f2a6c1e-8b1d-4c7a-9e2f-0a1b2c3d4e5f" and store.name == "Main"
        assert store.extra == {"Region": "west"}
        token = Token("1111222233334444", datetime.now(UTC) + timedelta(minutes=10))
        balance = gc.balance(token)
        assert balance.balance == Decimal("25.00") and balance.card_last4 == "4759"
        assert balance.activated_at.utcoffset() == timedelta(hours=-4)
        assert balance.activated_at.microsecond == 54167
        assert balance.extra == {"LoyaltyTier": "gold"}
        redemption = gc.redeem(
            token, 10, "3f2a6c1e-8b1d-4c7a-9e2f-0a1b2c3d4e5f", accept_partial=True
        )
        assert redemption.partial and redemption.approved == Decimal("4.2")
        assert redemption.host_ref == "H-991" and redemption.extra == {"TerminalId": 7}
        (batch,) = gc.batches("3f2a6c1e-8b1d-4c7a-9e2f-0a1b2c3d4e5f")
        assert batch.id == "17" and batch.status == "closed" and batch.net == Decimal("-4.2")
        (tx,) = batch.transactions
        assert tx.type == "redeem" and tx.card_ref is None and tx.card == "************4759"
        assert tx.at.tzinfo is not None


class Answering(httpx.BaseTransport):
    """Answers ``path`` with canned responses (a proxy or a failing server in between);
    everything else goes to the real server."""

    def __init__(self, path: str, *answers: httpx.Response) -> None:
        self.path, self.answers = path, list(answers)
        self.real = httpx.HTTPTransport()
        self.count = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == self.path and self.answers:
            self.count += 1
            return self.answers.pop(0)
        return self.real.handle_request(request)


@pytest.mark.parametrize(
    "answer,error,match",
    [
        (httpx.Response(200, text="<html>proxy error</html>"), errors.ProtocolError, "not JSON"),
        (
            httpx.Response(200, json={"statuscode": "999999", "description": "System error"}),
            errors.ServerError,
            "system error",
        ),
        (
            httpx.Response(409, json={"title": "A request with this key is in flight"}),
            errors.IdempotencyConflict,
            "409",
        ),
        (
            httpx.Response(200, json={"statuscode": "100099", "description": "New decline"}),
            errors.Declined,
            "100099",
        ),
    ],
)
def test_answers_outside_the_happy_path_raise_their_errors(server, answer, error, match):
    card = _unsold(server)
    answering = Answering("/Transaction/sellnewcard", answer)
    with (
        GiftCardClient(
            server.url, server.username, server.password, transport=answering, backoff=0.01
        ) as gc,
        pytest.raises(error, match=match) as raised,
    ):
        gc.sell(card, 5, card.store_id)
    assert answering.count == 1, "not retried"
    assert card.number not in str(raised.value)


def test_a_reused_key_with_another_body_is_a_mismatch(server):
    card = _unsold(server)
    with GiftCardClient(server.url, server.username, server.password) as gc:
        gc.sell(card, 20, card.store_id, idempotency_key="till-7-sale-1")
        replay = gc.sell(card, 20, card.store_id, idempotency_key="till-7-sale-1")
        assert replay.balance == 20, "the same request replays, not applied twice"
        with pytest.raises(errors.IdempotencyMismatch, match="422"):
            gc.sell(card, 21, card.store_id, idempotency_key="till-7-sale-1")
        assert gc.balance(card).balance == 20


def test_a_cached_token_is_not_given_to_a_wrong_security_code(server):
    card = _unsold(server)
    wrong = Card(card.number, f"{(int(card.security_code) + 1) % 10000:04d}")
    with GiftCardClient(server.url, server.username, server.password) as gc:
        gc.sell(card, 5, card.store_id)
        with pytest.raises(errors.WrongSecurityCode):
            gc.balance(wrong)
        assert gc.balance(card).balance == 5


def test_requests_carry_exact_money_keys_and_tokens_only(server):
    card = _unsold(server)
    recording = Recording()
    with GiftCardClient(server.url, server.username, server.password, transport=recording) as gc:
        gc.sell(card, "0.10", card.store_id, pos_ref="lane 2")
        gc.redeem(card, Decimal("0.05"), card.store_id)
    token_call, sale, redeem = recording.sent
    assert token_call.url.path == "/v1/Token"
    assert b'"amount": 0.10' in sale.content and b'"amount": 0.05' in redeem.content
    for request in (sale, redeem):
        assert request.headers["idempotency-key"]
        assert request.headers["authorization"].startswith("Basic ")
        assert json.loads(request.content)["cardtoken"]
        assert card.number.encode() not in request.content, "the number travels only once"
        assert card.security_code.encode() not in request.content
    assert sale.headers["idempotency-key"] != redeem.headers["idempotency-key"]


def test_debug_log_names_calls_with_masked_cards(server, caplog):
    card = _unsold(server)
    with (
        caplog.at_level(logging.DEBUG, logger="giftcard_toolkit"),
        GiftCardClient(server.url, server.username, server.password) as gc,
    ):
        gc.sell(card, 5, card.store_id)
    lines = [r.getMessage() for r in caplog.records if r.name == "giftcard_toolkit"]
    assert any("/Transaction/sellnewcard" in line and card.masked in line for line in lines)
    assert not any(card.number in line for line in lines)


def test_card_repr_never_shows_number_or_code():
    number = "600649123456789" + luhn_check_digit("600649123456789")
    card = Card(f"{number[:4]} {number[4:8]}-{number[8:12]} {number[12:]}", "1234")
    assert card.number == number
    assert repr(card) == f"Card('************{number[-4:]}', security_code='****')"
    assert "1234" not in str(card) and number not in repr(card)
