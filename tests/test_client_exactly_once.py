"""The review's exactly-once holes on the client side: one tokenize per card in flight,
every transport failure a TransportError, retries after a token expired, keys kept."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from serverkit import MovableClock

from giftcard_toolkit import AsyncGiftCardClient, Card, GiftCardClient, errors
from giftcard_toolkit.server import running


def _sold(srv, gc, amount="40"):
    card = next(c for c in srv.card_stock if not c.sold and c.store_id == srv.stores[0].id)
    srv.card_stock.remove(card)  # no other test of this server takes it
    gc.sell(card, amount, card.store_id)
    return card


def _wrong_code(card) -> Card:
    return Card(card.number, f"{(int(card.security_code) + 1) % 10000:04d}")


class Counting(httpx.HTTPTransport):
    """A real transport that counts requests by path; it can hold /v1/Token answers back a
    moment so that concurrent callers really overlap."""

    def __init__(self, hold: float = 0.0) -> None:
        super().__init__()
        self.hold = hold
        self.paths: list[str] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.paths.append(request.url.path)
        response = super().handle_request(request)
        if request.url.path == "/v1/Token" and self.hold:
            threading.Event().wait(self.hold)
        return response


class AsyncCounting(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        response = await super().handle_async_request(request)
        if request.url.path == "/v1/Token":
            await asyncio.sleep(0.05)
        return response


def test_ten_concurrent_calls_tokenize_a_card_once(server):
    transport = Counting(hold=0.05)
    with GiftCardClient(server.url, "demo", "demo-password", transport=transport) as gc:
        card = _sold(server, gc)
        transport.paths.clear()
        fresh = GiftCardClient(server.url, "demo", "demo-password", transport=transport)
        with fresh, ThreadPoolExecutor(10) as pool:
            balances = list(pool.map(lambda _: fresh.balance(card).balance, range(10)))
    assert balances == [Decimal("40.00")] * 10
    assert transport.paths.count("/v1/Token") == 1
    assert transport.paths.count("/Transaction/balancecheck") == 10


def test_ten_concurrent_calls_with_a_wrong_code_do_not_lock_the_card(server):
    transport = Counting(hold=0.05)
    with GiftCardClient(server.url, "demo", "demo-password", transport=transport) as gc:
        card = _sold(server, gc)
        transport.paths.clear()
        wrong = _wrong_code(card)

        def attempt(_: int) -> str:
            try:
                gc.balance(wrong)
            except errors.Declined as declined:
                return type(declined).__name__
            return "approved"

        with ThreadPoolExecutor(10) as pool:
            outcomes = list(pool.map(attempt, range(10)))
        assert outcomes == ["WrongSecurityCode"] * 10
        assert transport.paths.count("/v1/Token") == 1, "one wrong try, not ten"
        # Later calls with the same wrong code are not sent either.
        with pytest.raises(errors.WrongSecurityCode):
            gc.balance(wrong)
        assert transport.paths.count("/v1/Token") == 1
        assert gc.balance(card).balance == Decimal("40.00"), "the card is not locked"


@pytest.mark.anyio
async def test_async_concurrent_calls_share_one_tokenize(server):
    with GiftCardClient(server.url, "demo", "demo-password") as gc:
        card = _sold(server, gc)
    transport = AsyncCounting()
    async with AsyncGiftCardClient(server.url, "demo", "demo-password", transport=transport) as ac:
        wrong = await asyncio.gather(
            *(ac.balance(_wrong_code(card)) for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(w, errors.WrongSecurityCode) for w in wrong)
        assert transport.paths.count("/v1/Token") == 1
        right = await asyncio.gather(*(ac.balance(card) for _ in range(10)))
        assert {b.balance for b in right} == {Decimal("40.00")}
        assert transport.paths.count("/v1/Token") == 2


class Garbling(httpx.HTTPTransport):
    """Lets the request through, then garbles the first ``garble`` answers on ``path`` as a
    broken proxy would: gzip claimed, not gzip sent."""

    def __init__(self, garble: int, path: str = "/Transaction/radeem") -> None:
        super().__init__()
        self.garble, self.path = garble, path

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == self.path and self.garble > 0:
            self.garble -= 1
            response.read()
            return httpx.Response(
                200,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
                content=b"\x1f\x8b this is not gzip",
                request=request,
            )
        return response


def test_a_garbled_answer_is_a_transport_error_saying_it_may_have_applied(server):
    with GiftCardClient(server.url, "demo", "demo-password") as gc:
        card = _sold(server, gc)
    with GiftCardClient(
        server.url, "demo", "demo-password", transport=Garbling(1), attempts=1
    ) as gc:
        with pytest.raises(errors.TransportError, match="may have been applied") as raised:
            gc.redeem(card, 5, card.store_id, idempotency_key="garbled-1")
        assert not isinstance(raised.value, httpx.HTTPError)
        assert card.number not in str(raised.value)
        # The same key again: the first attempt's answer, nothing moved twice.
        again = gc.redeem(card, 5, card.store_id, idempotency_key="garbled-1")
        assert again.replayed and again.new_balance == Decimal("35.00")
        assert gc.balance(card).balance == Decimal("35.00")


def test_a_garbled_answer_to_a_keyed_call_is_retried_and_replayed(server):
    with GiftCardClient(server.url, "demo", "demo-password") as gc:
        card = _sold(server, gc)
    with GiftCardClient(
        server.url, "demo", "demo-password", transport=Garbling(1), backoff=0.01
    ) as gc:
        redemption = gc.redeem(card, 5, card.store_id)
        assert redemption.replayed, "the retry got the stored answer"
        assert gc.balance(card).balance == Decimal("35.00")


class LosingAcrossExpiry(httpx.HTTPTransport):
    """Loses the first redeem answer and lets 11 minutes pass on the server meanwhile, so
    the retry carries a token that has expired since."""

    def __init__(self, clock: MovableClock) -> None:
        super().__init__()
        self.clock = clock
        self.lost = False
        self.keys: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/Transaction/radeem":
            self.keys.append(request.headers["idempotency-key"])
            if not self.lost:
                self.lost = True
                response.read()
                self.clock.advance(minutes=11)
                raise httpx.ReadTimeout("answer lost", request=request)
        return response


def test_a_retry_after_the_token_expired_is_replayed_not_refused():
    clock = MovableClock()
    with running(clock=clock) as srv:
        transport = LosingAcrossExpiry(clock)
        with GiftCardClient(
            srv.url, "demo", "demo-password", transport=transport, backoff=0.01
        ) as gc:
            card = _sold(srv, gc, "30")
            redemption = gc.redeem(card, 10, card.store_id)
            assert redemption.replayed and redemption.new_balance == Decimal("20.00")
            assert len(transport.keys) == 2 and len(set(transport.keys)) == 1
            assert gc.balance(card).balance == Decimal("20.00")


def test_re_tokenizing_after_a_refused_token_keeps_the_key():
    clock = MovableClock(datetime.now(UTC))  # so the client's cached token looks fresh
    with running(clock=clock) as srv:
        transport = Counting()
        with GiftCardClient(srv.url, "demo", "demo-password", transport=transport) as gc:
            card = _sold(srv, gc, "30")
            clock.advance(minutes=11)  # the server's clock: the cached token is expired
            seen: list[str] = []
            hook = transport.handle_request

            def recording(request: httpx.Request) -> httpx.Response:
                if request.url.path == "/Transaction/radeem":
                    seen.append(request.headers["idempotency-key"])
                return hook(request)

            transport.handle_request = recording  # type: ignore[method-assign]
            redemption = gc.redeem(card, 10, card.store_id, idempotency_key="till-7-0042")
            assert redemption.new_balance == Decimal("20.00")
            assert seen == ["till-7-0042", "till-7-0042"]
            assert gc.balance(card).balance == Decimal("20.00")
