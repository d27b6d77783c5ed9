"""Nothing the client shows, logs or raises holds a card number, security code or token."""

from __future__ import annotations

import logging

import httpx
import pytest

from giftcard_toolkit import AsyncGiftCardClient, Card, GiftCardClient, errors
from giftcard_toolkit.server import running


class LoseOnce(httpx.HTTPTransport):
    """Loses the first answer of every path (so every retry path runs too), except
    /v1/Token's, which is not retried once sent."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: set[str] = {"/v1/Token"}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path not in self.lost:
            self.lost.add(request.url.path)
            response.read()
            raise httpx.ReadTimeout("lost", request=request)
        return response


class AsyncLoseOnce(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.lost: set[str] = {"/v1/Token"}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.url.path not in self.lost:
            self.lost.add(request.url.path)
            await response.aread()
            raise httpx.ReadTimeout("lost", request=request)
        return response


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def assert_nothing_leaks(card, token: str, shown: list[str], caplog) -> None:
    logged = [record.getMessage() for record in caplog.records]
    assert any(r.name == "giftcard_toolkit" for r in caplog.records), "the client logged"
    text = "\n".join(shown + logged)
    assert card.number not in text
    assert token not in text
    code = card.security_code
    for form in (f"'{code}'", f'"{code}"', f"={code}", f": {code}", f":{code}"):
        assert form not in text, f"the security code shows as {form!r}"
    assert card.masked in text, "cards are shown, masked"


def test_every_operation_at_debug_leaks_nothing(caplog):
    shown: list[str] = []
    with running() as srv, caplog.at_level(logging.DEBUG):
        card = next(c for c in srv.card_stock if not c.sold)
        store = card.store_id
        with GiftCardClient(
            srv.url,
            srv.username,
            srv.password,
            card_key=srv.card_key,
            transport=LoseOnce(),
            backoff=0.01,
        ) as gc:
            token = gc.tokenize(card)
            results = [
                token,
                gc.health(),
                gc.verify(),
                gc.balance(card),
                gc.sell(card, 30, store),
                gc.reload(card, 5, store),
                gc.redeem(card, 50, store, accept_partial=True),
                gc.reload(Card(card.number), 10, store),  # encrypted
                gc.change_status(card, False, "lost"),
                gc.change_status(card, True, "found"),
                gc.batches(store, status="open"),
                gc.close_batch(store),
            ]
            shown += [repr(r) for r in results] + [str(r) for r in results]
            shown += [repr(t) for b in results[-2] for t in b.transactions]
            shown.append(repr(gc))
            wrong = Card(card.number, f"{(int(card.security_code) + 1) % 10000:04d}")
            failures = [
                lambda: gc.redeem(card, 1000, store),
                lambda: gc.tokenize(wrong),
                lambda: gc.balance(token.token[::-1]),
                lambda: gc.sell(card, 12.5, store),
                lambda: gc.sell(card, 5, store, idempotency_key="k"),
                lambda: gc.sell(card, 6, store, idempotency_key="k"),
            ]
            for failing in failures:
                with pytest.raises(errors.GiftCardError) as raised:
                    failing()
                shown += [str(raised.value), repr(raised.value)]
    assert_nothing_leaks(card, token.token, shown, caplog)


@pytest.mark.anyio
async def test_every_async_operation_at_debug_leaks_nothing(caplog):
    shown: list[str] = []
    with running() as srv, caplog.at_level(logging.DEBUG):
        card = next(c for c in srv.card_stock if not c.sold)
        store = card.store_id
        async with AsyncGiftCardClient(
            srv.url,
            srv.username,
            srv.password,
            card_key=srv.card_key,
            transport=AsyncLoseOnce(),
            backoff=0.01,
        ) as gc:
            token = await gc.tokenize(card)
            results = [
                token,
                await gc.health(),
                await gc.verify(),
                await gc.balance(card),
                await gc.sell(card, 30, store),
                await gc.reload(card, 5, store),
                await gc.redeem(card, 50, store, accept_partial=True),
                await gc.reload(Card(card.number), 10, store),
                await gc.change_status(card, False, "lost"),
                await gc.change_status(card, True, "found"),
                await gc.batches(store, status="open"),
                await gc.close_batch(store),
            ]
            shown += [repr(r) for r in results] + [str(r) for r in results]
            shown += [repr(t) for b in results[-2] for t in b.transactions]
            shown.append(repr(gc))
            wrong = Card(card.number, f"{(int(card.security_code) + 1) % 10000:04d}")
            failures = [
                lambda: gc.redeem(card, 1000, store),
                lambda: gc.tokenize(wrong),
                lambda: gc.balance(token.token[::-1]),
                lambda: gc.sell(card, 12.5, store),
                lambda: gc.sell(card, 5, store, idempotency_key="k"),
                lambda: gc.sell(card, 6, store, idempotency_key="k"),
            ]
            for failing in failures:
                with pytest.raises(errors.GiftCardError) as raised:
                    await failing()
                shown += [str(raised.value), repr(raised.value)]
    assert_nothing_leaks(card, token.token, shown, caplog)
