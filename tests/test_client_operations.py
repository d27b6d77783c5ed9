"""Every client method, sync and async, against the embedded server over loopback."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from giftcard_toolkit import AsyncGiftCardClient, Card, GiftCardClient, errors, frames, models
from giftcard_toolkit.server import running


@pytest.fixture(params=["sync", "async"])
async def gc(request, server) -> AsyncIterator[Any]:
    """A client of either kind; tests ``await do(...)`` whatever it returns."""
    options = {"card_key": server.card_key, "backoff": 0.01}
    if request.param == "sync":
        with GiftCardClient(server.url, server.username, server.password, **options) as client:
            yield client
    else:
        async with AsyncGiftCardClient(
            server.url, server.username, server.password, **options
        ) as client:
            yield client


async def do(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


class Stock:
    """Hands out unsold demo cards, each to one test only."""

    def __init__(self, server) -> None:
        self.server = server
        self.cards = {
            s.id: iter([c for c in server.card_stock if not c.sold and c.store_id == s.id])
            for s in server.stores
        }

    def fresh(self, store_index: int = 0):
        card = next(self.cards[self.server.stores[store_index].id], None)
        assert card is not None, "ran out of unsold demo cards"
        return card


@pytest.fixture(scope="module")
def stock(server) -> Stock:
    return Stock(server)


pytestmark = pytest.mark.anyio


async def test_health_and_verify(gc, server):
    health = await do(gc.health())
    assert health.healthy and health.status == "Healthy"
    verified = await do(gc.verify())
    assert verified.username == "demo"
    assert {s.id for s in verified.stores} == {s.id for s in server.stores}


async def test_money_round_trip(gc, stock):
    card = stock.fresh()
    store = card.store_id
    sold = await do(gc.sell(card, "25.00", store, pos_ref="lane 1"))
    assert isinstance(sold, models.Load)
    assert sold.balance == Decimal("25.00") and sold.card.endswith(card.last4)
    assert sold.store.id == store and sold.host_ref
    reloaded = await do(gc.reload(card, 10, store))
    assert reloaded.balance == Decimal("35.00")
    redeemed = await do(gc.redeem(card, Decimal("12.34"), store))
    assert (redeemed.approved, redeemed.new_balance, redeemed.partial) == (
        Decimal("12.34"),
        Decimal("22.66"),
        False,
    )
    balance = await do(gc.balance(card))
    assert balance.balance == Decimal("22.66") and balance.active
    assert balance.card_last4 == card.last4 and balance.expires_at > balance.activated_at
    partial = await do(gc.redeem(card, 100, store, accept_partial=True))
    assert partial.partial and partial.approved == Decimal("22.66") and partial.new_balance == 0


async def test_store_objects_are_accepted(gc, stock):
    card = stock.fresh()
    store = next(s for s in (await do(gc.verify())).stores if s.id == card.store_id)
    assert (await do(gc.sell(card, 5, store))).store.name == store.name


async def test_block_and_unblock(gc, stock):
    card = stock.fresh()
    await do(gc.sell(card, 30, card.store_id))
    blocked = await do(gc.change_status(card, False, "reported lost"))
    assert blocked.active is False and blocked.balance == 30
    with pytest.raises(errors.CardInactive):
        await do(gc.redeem(card, 1, card.store_id))
    with pytest.raises(errors.StatusUnchanged):
        await do(gc.change_status(card, False, "again"))
    assert (await do(gc.change_status(card, True, "found"))).active is True


async def test_batches_and_close(gc, server, stock):
    store = server.stores[2].id
    card = stock.fresh(2)
    sold = await do(gc.sell(card, 40, store))
    (current,) = await do(gc.batches(store, status="open"))
    assert current.status == "open" and current.store_id == store
    assert current.store_name == server.stores[2].name
    assert sold.host_ref in {t.host_ref for t in current.transactions}
    mine = next(t for t in current.transactions if t.host_ref == sold.host_ref)
    assert mine.type == "sale" and mine.amount == 40 and mine.card_last4 == card.last4
    assert mine.card_ref and len(mine.card_ref) == 16
    window = await do(
        gc.batches(
            store,
            status="closed",
            since=date(2026, 9, 1),
            until=date(2026, 9, 3),
            transactions=False,
        )
    )
    assert [b.opened_at.date() for b in window] == [date(2026, 9, d) for d in (3, 2, 1)]
    assert all(b.transactions == () for b in window)
    with pytest.raises(errors.BatchTotalsMismatch) as mismatch:
        await do(gc.close_batch(store, expected_count=1, expected_amount="1.00"))
    assert mismatch.value.transaction_count == current.transaction_count
    assert mismatch.value.net_amount == current.net
    closed = await do(gc.close_batch(store, current.transaction_count, current.net))
    assert closed.status == "closed" and closed.id == current.id
    with pytest.raises(errors.NoOpenBatch):
        await do(gc.close_batch(store))


async def test_batches_as_sent_read_by_frames_equal_the_batches_and_raise_alike(gc, server):
    """``batches_json`` is ``batches()``'s answer as the server sent it, for
    ``frames.from_json``: the same batches and transactions, and the same error for a
    store the user may not see."""
    store = server.stores[1].id
    ask = {"status": "closed", "since": date(2026, 9, 1), "until": date(2026, 9, 7)}
    answer = await do(gc.batches_json(store, **ask))
    assert isinstance(answer, bytes)
    batches, txs = frames.from_json(answer)
    listed = await do(gc.batches(store, **ask))
    assert len(listed) == 7 and txs.height > 0
    assert batches.equals(frames.batches_frame(listed))
    assert txs.equals(frames.transactions_frame(listed))
    unknown = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(errors.GiftCardError) as from_batches:
        await do(gc.batches(unknown))
    with pytest.raises(type(from_batches.value)):
        await do(gc.batches_json(unknown))


async def test_tokens_and_encrypted_cards(gc, stock):
    card = stock.fresh()
    token = await do(gc.tokenize(card))
    assert "****" in repr(token) and token.token not in repr(token)
    await do(gc.sell(token, 15, card.store_id))  # the Token tokenize() returned
    by_number_only = Card(card.number)  # no security code: travels encrypted
    assert (await do(gc.balance(by_number_only))).balance == 15


@pytest.mark.parametrize(
    "action,error",
    [
        ("unknown card", errors.CardNotFound),
        ("wrong code", errors.WrongSecurityCode),
        ("resell", errors.CardAlreadyActive),
        ("reload unsold", errors.CardInactive),
        ("overdraw", errors.InsufficientFunds),
        ("zero amount", errors.InvalidAmount),
        ("bad token", errors.TokenInvalid),
        ("foreign store", errors.StoreNotGranted),
        ("over limit", errors.OverLimit),
        ("bad cipher", errors.EncryptedDataUnreadable),
    ],
)
async def test_each_decline_raises_its_own_class(gc, server, stock, action, error):
    from serverkit import UNKNOWN_CARD

    from giftcard_toolkit.cards import AesGcmCardCipher

    card = stock.fresh()
    store = card.store_id
    calls = {
        "unknown card": lambda: gc.balance(Card(UNKNOWN_CARD, "1234")),
        "wrong code": lambda: gc.balance(
            Card(card.number, f"{(int(card.security_code) + 1) % 10000:04d}")
        ),
        "resell": None,
        "reload unsold": lambda: gc.reload(card, 5, store),
        "overdraw": None,
        "zero amount": lambda: gc.sell(card, 0, store),
        "bad token": lambda: gc.balance(models.Token("0000000000000000", datetime.now(UTC))),
        "foreign store": lambda: gc.sell(card, 5, "00000000-0000-4000-8000-000000000000"),
        "over limit": lambda: gc.sell(card, "500.01", store),
        "bad cipher": None,
    }
    if action in ("resell", "overdraw"):
        await do(gc.sell(card, 5, store))
        calls["resell"] = lambda: gc.sell(card, 5, store)
        calls["overdraw"] = lambda: gc.redeem(card, 6, store)
    if action == "bad cipher":
        other = type(gc)(
            server.url, server.username, server.password, card_cipher=AesGcmCardCipher(b"x" * 32)
        )
        calls["bad cipher"] = lambda: other.balance(Card(card.number))
    with pytest.raises(error) as raised:
        await do(calls[action]())
    assert raised.value.statuscode and raised.value.description
    assert isinstance(raised.value.body, dict)
    assert card.number not in str(raised.value)


async def test_expired_and_locked_cards_raise_their_classes(anyio_backend):
    from serverkit import MovableClock

    clock = MovableClock()
    with running(clock=clock) as srv:
        card = next(c for c in srv.card_stock if not c.sold)
        async with AsyncGiftCardClient(srv.url, srv.username, srv.password) as gc:
            await gc.sell(card, 10, card.store_id)
            clock.advance(days=5 * 366)
            with pytest.raises(errors.CardExpired):
                await gc.redeem(card, 1, card.store_id)
            wrong = Card(card.number, f"{(int(card.security_code) + 3) % 10000:04d}")
            for _ in range(5):
                with pytest.raises(errors.WrongSecurityCode):
                    await gc.tokenize(wrong)
            with pytest.raises(errors.CardLocked):
                await gc.tokenize(card)


async def test_floats_and_bad_input_are_refused_before_sending(gc, stock):
    card = stock.fresh()
    with pytest.raises(errors.FloatAmountError, match="exact"):
        await do(gc.sell(card, 12.5, card.store_id))
    with pytest.raises(TypeError):
        await do(gc.redeem(card, 0.1, card.store_id))
    with pytest.raises(errors.InvalidInput, match="not a number"):
        await do(gc.sell(card, "twelve", card.store_id))
    with pytest.raises(errors.InvalidInput, match="reason"):
        await do(gc.change_status(card, False, "  "))
    with pytest.raises(errors.InvalidInput, match="idempotency_key"):
        await do(gc.sell(card, 5, card.store_id, idempotency_key="x" * 65))
    assert (await do(gc.balance(card))).balance == 0, "nothing was sent"


async def test_wrong_credentials_raise_authentication_error(server):
    with (
        GiftCardClient(server.url, "demo", "wrong") as gc,
        pytest.raises(errors.AuthenticationError, match="401"),
    ):
        gc.verify()
    async with AsyncGiftCardClient(server.url, "nobody", "x") as agc:
        with pytest.raises(errors.AuthenticationError):
            await agc.verify()


async def test_request_rejected_names_the_fields(gc, server):
    card = next(c for c in server.card_stock if c.sold)
    with pytest.raises(errors.RequestRejected) as rejected:
        await do(gc.reload(card, "5.00", card.store_id, pos_ref="x" * 101))
    assert list(rejected.value.errors) == ["PosRef"]


def test_from_env_names_what_is_missing(monkeypatch, server):
    for name in ("GIFTCARD_URL", "GIFTCARD_USERNAME", "GIFTCARD_PASSWORD", "GIFTCARD_CARD_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIFTCARD_URL", server.url)
    with pytest.raises(errors.ConfigurationError, match="GIFTCARD_USERNAME, GIFTCARD_PASSWORD"):
        GiftCardClient.from_env()
    monkeypatch.setenv("GIFTCARD_USERNAME", "demo")
    monkeypatch.setenv("GIFTCARD_PASSWORD", "demo-password")
    monkeypatch.setenv("GIFTCARD_CARD_KEY", "not-a-key")
    with pytest.raises(errors.ConfigurationError, match="GIFTCARD_CARD_KEY"):
        AsyncGiftCardClient.from_env()
    monkeypatch.setenv("GIFTCARD_CARD_KEY", server.card_key)
    with GiftCardClient.from_env() as gc:
        assert gc.verify().username == "demo"
        card = next(c for c in server.card_stock if c.sold)
        assert gc.balance(Card(card.number)).card_last4 == card.last4


def test_connection_refused_is_a_clear_transport_error():
    with (
        GiftCardClient("http://127.0.0.1:9", "u", "p", attempts=2, backoff=0.01) as gc,
        pytest.raises(errors.ConnectError, match="is the server at"),
    ):
        gc.health()
