"""Roles and limits from the client: refusals as ``NotPermitted`` in the server's words, the
role and limit in ``verify()`` (and a server that sends neither), and ``sign_in``."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest

from giftcard_toolkit import GiftCardClient, errors
from giftcard_toolkit.ops.signin import SignInFailed, sign_in
from giftcard_toolkit.server import hash_password


@pytest.fixture(scope="module")
def capped(server):
    """A clerk of the first store with a limit of 100.00 of its own."""
    stores = [server.stores[0].id]
    server.ledger.put_user(
        "capped", hash_password("capped-password"), stores, max_amount=Decimal("100.00")
    )
    with GiftCardClient(server.url, "capped", "capped-password") as client:
        yield client


@pytest.fixture(scope="module")
def cards(server):
    return iter([c for c in server.card_stock if not c.sold and c.store_id == server.stores[0].id])


def test_verify_exposes_role_and_limit(server, capped):
    with GiftCardClient(server.url, "analyst", "analyst-password") as reader:
        answer = reader.verify()
    assert (answer.role, answer.max_amount, answer.read_only) == ("analyst", None, True)
    assert {s.id for s in answer.stores} == {s.id for s in server.stores}
    mine = capped.verify()
    assert (mine.role, mine.max_amount, mine.read_only) == ("clerk", Decimal("100.00"), False)
    assert capped.verification == mine, "the client keeps its last verify() answer"
    assert "role" not in mine.extra and "maxamount" not in mine.extra


def test_a_refused_role_raises_not_permitted_in_the_servers_words(server, cards):
    store = server.stores[0].id
    card = next(cards)
    with GiftCardClient(server.url, "demo", "demo-password") as clerk:
        clerk.sell(card, "30.00", store)
    with GiftCardClient(server.url, "analyst", "analyst-password") as reader:
        for refused in (
            lambda: reader.reload(card, "5.00", store),
            lambda: reader.redeem(card, "5.00", store),
            lambda: reader.sell(next(cards), "5.00", store),
            lambda: reader.change_status(card, False, "lost"),
            lambda: reader.close_batch(store),
        ):
            with pytest.raises(errors.NotPermitted) as raised:
                refused()
            assert isinstance(raised.value, errors.Declined)
            assert raised.value.statuscode == "100017"
            assert "may only read" in str(raised.value)
            assert "sign in as a user whose role may do this" in str(raised.value)
        assert reader.balance(card).balance == Decimal("30.00"), "nothing changed"


def test_a_users_own_limit_raises_over_limit_naming_it(server, capped, cards):
    store = server.stores[0].id
    card = next(cards)
    with pytest.raises(errors.OverLimit) as raised:
        capped.sell(card, "100.01", store)
    assert "own limit of 100.00" in str(raised.value)
    assert capped.sell(card, "100.00", store).balance == Decimal("100.00")


def _without_roles(request: httpx.Request) -> httpx.Response:
    """A server from before roles (the production server, say): verify names no role."""
    assert request.url.path == "/Auth/verify"
    store = {"franchiseeid": "3f2a6c1e-8b1d-4c7a-9e2f-0a1b2c3d4e5f", "storename": "Main"}
    answer = {
        "StatusCode": "000000",
        "Description": "Success",
        "UserName": "pos",
        "Stores": [store],
    }
    return httpx.Response(200, content=json.dumps(answer).encode())


def test_verify_copes_with_a_server_that_sends_no_role_or_limit():
    transport = httpx.MockTransport(_without_roles)
    with GiftCardClient("http://old.example", "pos", "pos-password", transport=transport) as gc:
        answer = gc.verify()
    assert answer.username == "pos" and len(answer.stores) == 1
    assert (answer.role, answer.max_amount, answer.read_only) == (None, None, False)


def test_sign_in_checks_the_password_with_verify(server):
    client = sign_in(server.url, "clerk", "clerk-password")
    with client:
        assert client.verification is not None
        assert client.verification.username == "clerk"
        assert client.verification.role == "clerk"
        assert [s.id for s in client.verification.stores] == [server.stores[0].id]


def test_a_wrong_password_is_said_in_words(server):
    with pytest.raises(SignInFailed) as raised:
        sign_in(server.url, "clerk", "not-the-password")
    message = str(raised.value)
    assert "did not accept username 'clerk' with that password" in message
    assert "not-the-password" not in message and "not-the-password" not in repr(raised.value)
    assert isinstance(raised.value, errors.AuthenticationError)
    with pytest.raises(SignInFailed, match="enter both a username and a password"):
        sign_in(server.url, "clerk", "")
