"""A token is passed as the ``Token`` that ``tokenize()`` returns; a bare string is refused,
in words and before anything is sent (a card number and a token are both 16 digits)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from serverkit import Recording

from giftcard_toolkit import AsyncGiftCardClient, GiftCardClient, Token, errors

NUMBER = "6006491234567897"
STORE = "3f2a6c1e-8b1d-4c7a-9e2f-0a1b2c3d4e5f"


class AsyncRecording(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return await super().handle_async_request(request)


CALLS = {
    "balance": lambda gc, card: gc.balance(card),
    "sell": lambda gc, card: gc.sell(card, "25.00", STORE),
    "reload": lambda gc, card: gc.reload(card, 5, STORE),
    "redeem": lambda gc, card: gc.redeem(card, 5, STORE, accept_partial=True),
    "block": lambda gc, card: gc.change_status(card, False, "lost"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("bare", [NUMBER, "6006 4912 3456 7897", "4827466716824759", ""])
def test_a_bare_string_is_refused_before_any_request(server, call, bare):
    transport = Recording()
    with (
        GiftCardClient(server.url, server.username, server.password, transport=transport) as gc,
        pytest.raises(errors.InvalidInput, match=r"Card\(number, security_code\)") as refused,
    ):
        CALLS[call](gc, bare)
    assert transport.sent == [], "nothing was sent"
    message = str(refused.value)
    assert "Token that tokenize() returned" in message and "nothing was sent" in message
    assert NUMBER not in message and "7897" not in message, "the string is not echoed"


@pytest.mark.anyio
@pytest.mark.parametrize("call", sorted(CALLS))
async def test_the_async_client_refuses_a_bare_string_too(server, call):
    transport = AsyncRecording()
    async with AsyncGiftCardClient(
        server.url, server.username, server.password, transport=transport
    ) as gc:
        with pytest.raises(errors.InvalidInput, match="plain string"):
            await CALLS[call](gc, NUMBER)
    assert transport.sent == []


def test_a_card_of_another_type_is_refused_by_name(server):
    transport = Recording()
    with (
        GiftCardClient(server.url, server.username, server.password, transport=transport) as gc,
        pytest.raises(errors.InvalidInput, match="not int"),
    ):
        gc.balance(6006491234567897)  # type: ignore[arg-type]
    assert transport.sent == []


def test_the_token_tokenize_returns_is_used_as_the_card(server):
    card = next(c for c in server.card_stock if c.sold)
    transport = Recording()
    with GiftCardClient(server.url, server.username, server.password, transport=transport) as gc:
        token = gc.tokenize(card)
        assert isinstance(token, Token) and token.token not in repr(token)
        assert gc.balance(token).balance == gc.balance(card).balance
    bodies = [r.content for r in transport.sent if r.url.path == "/Transaction/balancecheck"]
    assert bodies and all(token.token.encode() in body for body in bodies)


def test_a_token_obtained_elsewhere_is_wrapped_explicitly(server):
    card = next(c for c in server.card_stock if c.sold)
    with GiftCardClient(server.url, server.username, server.password) as gc:
        value = gc.tokenize(card).token
    with GiftCardClient(server.url, server.username, server.password) as other:
        wrapped = Token(value, datetime.now(UTC) + timedelta(minutes=10))
        assert other.balance(wrapped).card_last4 == card.number[-4:]
