"""Nothing the client shows, logs or raises holds a card number, security code or token."""

from __future__ import annotations

import logging

import httpx
import pytest

from giftcard_toolkit import Card, GiftCardClient, errors
from giftcard_toolkit.server import running


class LoseOnce(httpx.HTTPTransport):
    """Loses the first answer of every path (so every retry path runs too)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: set[str] = set()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path not in self.lost:
            self.lost.add(request.url.path)
            response.read()
            raise httpx.ReadTimeout("lost", request=request)
        return response


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
            ]
            for failing in failures:
                with pytest.raises(errors.GiftCardError) as raised:
                    failing()
                shown += [str(raised.value), repr(raised.value)]
    logged = [record.getMessage() for record in caplog.records]
    assert any(r.name == "giftcard_toolkit" for r in caplog.records), "the client logged"
    text = "\n".join(shown + logged)
    assert card.number not in text
    assert token.token not in text
    code = card.security_code
    for form in (f"'{code}'", f'"{code}"', f"={code}", f": {code}", f":{code}"):
        assert form not in text, f"the security code shows as {form!r}"
    assert card.masked in text, "cards are shown, masked"
