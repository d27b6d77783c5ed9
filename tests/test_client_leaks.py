"""Nothing the client shows, logs or raises holds a card number, security code or token."""

from __future__ import annotations

import base64
import inspect
import logging
from decimal import Decimal

import httpx
import pytest

from giftcard_toolkit import AsyncGiftCardClient, Card, GiftCardClient, Token, errors
from giftcard_toolkit.ops import cases
from giftcard_toolkit.ops.signin import SignInFailed, sign_in
from giftcard_toolkit.server import hash_password, running


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


async def do(result):
    return await result if inspect.isawaitable(result) else result


def _client(kind: str, srv):
    options = {"card_key": srv.card_key, "backoff": 0.01}
    if kind == "sync":
        return GiftCardClient(srv.url, srv.username, srv.password, transport=LoseOnce(), **options)
    return AsyncGiftCardClient(
        srv.url, srv.username, srv.password, transport=AsyncLoseOnce(), **options
    )


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_every_operation_at_debug_leaks_nothing(kind, caplog):
    shown: list[str] = []
    with running() as srv, caplog.at_level(logging.DEBUG):
        card = next(c for c in srv.card_stock if not c.sold)
        store = card.store_id
        gc = _client(kind, srv)
        try:
            token = await do(gc.tokenize(card))
            calls = [
                lambda: gc.health(),
                lambda: gc.verify(),
                lambda: gc.balance(card),
                lambda: gc.sell(card, 30, store),
                lambda: gc.reload(card, 5, store),
                lambda: gc.redeem(card, 50, store, accept_partial=True),
                lambda: gc.reload(Card(card.number), 10, store),  # encrypted
                lambda: gc.change_status(card, False, "lost"),
                lambda: gc.change_status(card, True, "found"),
                lambda: gc.batches(store, status="open"),
                lambda: gc.close_batch(store),
            ]
            results = [token] + [await do(call()) for call in calls]
            shown += [repr(r) for r in results] + [str(r) for r in results]
            shown += [repr(t) for b in results[-2] for t in b.transactions]
            shown.append(repr(gc))
            wrong = Card(card.number, f"{(int(card.security_code) + 1) % 10000:04d}")
            failures = [
                lambda: gc.redeem(card, 1000, store),
                lambda: gc.tokenize(wrong),
                lambda: gc.balance(Token(token.token[::-1], token.expires_at)),
                lambda: gc.sell(card, 12.5, store),
                lambda: gc.sell(card, 5, store, idempotency_key="k"),
                lambda: gc.sell(card, 6, store, idempotency_key="k"),
            ]
            for failing in failures:
                with pytest.raises(errors.GiftCardError) as raised:
                    await do(failing())
                shown += [str(raised.value), repr(raised.value)]
        finally:
            await do(gc.close() if kind == "sync" else gc.aclose())
    assert_nothing_leaks(card, token.token, shown, caplog)


def test_a_password_never_shows_in_logs_errors_or_reprs(caplog):
    """Signing in, a wrong password, an analyst's refusal and an approval: the passwords
    (and the Basic header that carries them) appear nowhere the client shows or logs."""
    shown: list[str] = []
    with running() as srv, caplog.at_level(logging.DEBUG):
        store = srv.stores[0].id
        srv.ledger.put_user("till", hash_password("till-secret-pw"), [store], max_amount=Decimal(5))
        card = next(c for c in srv.card_stock if not c.sold and c.store_id == store)
        with pytest.raises(SignInFailed) as wrong:
            sign_in(srv.url, "till", "wrong-secret-pw")
        shown += [str(wrong.value), repr(wrong.value), repr(wrong.value.body)]
        with (
            sign_in(srv.url, "till", "till-secret-pw") as till,
            sign_in(srv.url, "demo", srv.password) as lead,
            sign_in(srv.url, "analyst", "analyst-password") as reader,
        ):
            shown += [repr(till), repr(till.verification), repr(till._settings)]
            with pytest.raises(errors.NotPermitted) as refused:
                reader.sell(card, 10, store)
            shown += [str(refused.value), repr(refused.value)]
            lead.sell(card, 10, store)
            done = cases.adjust(till, card, "-8", store, "overcharge", approver=lead)
            shown += [repr(done), str(done)]
            with pytest.raises(errors.ApprovalRequired) as unapproved:
                cases.adjust(till, card, "-6", store, "overcharge")
            shown.append(str(unapproved.value))
    text = "\n".join(shown + [r.getMessage() for r in caplog.records])
    assert any(r.name == "giftcard_toolkit" for r in caplog.records), "the client logged"
    for name, password in (("till", "till-secret-pw"), ("demo", srv.password)):
        assert password not in text
        assert base64.b64encode(f"{name}:{password}".encode()).decode() not in text
    assert "wrong-secret-pw" not in text and "analyst-password" not in text
