"""Ops forms driven from Python against a live server: checks, confirmation, audit, once only."""

from __future__ import annotations

from decimal import Decimal

import ipywidgets as widgets
import pytest

from giftcard_toolkit import GiftCardClient, audit, forms


@pytest.fixture
def gc(server):
    with GiftCardClient(server.url, server.username, server.password) as client:
        yield client


def _unsold(server, taken=set()):  # noqa: B006 - one pool of cards for the module
    card = next(
        c
        for c in server.card_stock
        if not c.sold and c.number not in taken and c.store_id == server.stores[0].id
    )
    taken.add(card.number)
    return card


def _fill(form, card, amount=None, reason=None):
    form.card_number.value = card.number
    form.security_code.value = card.security_code
    if amount is not None:
        form.amount.value = amount
    if reason is not None:
        form.reason.value = reason


def _ledger_rows(server) -> int:
    with server.ledger.read() as conn:
        return int(conn.execute("SELECT count(*) FROM ledger").fetchone()[0])


def test_sell_needs_confirmation_and_sends_once_on_a_double_click(server, gc, tmp_path):
    log = tmp_path / "audit.jsonl"
    form = forms.sell_form(gc, audit_log=log)
    card = _unsold(server)
    _fill(form, card, amount="25.00")
    form.store.value = next(s for s in form.store.options if s[1].id == card.store_id)[1]
    before = _ledger_rows(server)
    form.submit.click()
    assert "Please confirm" in form.confirmation.value and card.last4 in form.confirmation.value
    assert card.number not in form.confirmation.value
    assert form.card_number.value == "" and form.security_code.value == "", "cleared"
    assert _ledger_rows(server) == before, "nothing is sent before Confirm"
    form.confirm.click()
    form.confirm.click()
    assert _ledger_rows(server) == before + 1, "a double click sends once"
    assert form.output.value.startswith("Approved: sold ************" + card.last4)
    assert "$25.00" in form.output.value
    assert gc.balance(card).balance == Decimal("25.00")
    (record,) = audit.read(log).to_dicts()
    assert record["operation"] == "sell" and record["outcome"] == "approved"
    assert record["amount"] == Decimal("25.00") and record["host_ref"]
    assert record["idempotency_key"] and record["card"].endswith(card.last4)
    assert card.number not in log.read_text()


def test_bad_input_is_named_beside_each_field_and_nothing_is_sent(server, gc):
    form = forms.redeem_form(gc)
    form.card_number.value = "6006 1234"
    form.security_code.value = "12"
    form.amount.value = "1.234"
    before = _ledger_rows(server)
    form.submit.click()
    assert "16 digits" in form.problems["card_number"].value
    assert "4 digits" in form.problems["security_code"].value
    assert "2 decimals" in form.problems["amount"].value
    assert "Nothing was sent" in form.output.value
    assert form.confirmation.value == "" and _ledger_rows(server) == before


def test_cancel_sends_nothing(server, gc):
    form = forms.reload_form(gc)
    card = _unsold(server)
    _fill(form, card, amount="10")
    form.submit.click()
    form.cancel.click()
    form.confirm.click()
    assert "Cancelled" in form.output.value
    assert gc.balance(card).balance == 0


def test_a_decline_is_said_in_plain_words(server, gc, tmp_path):
    card = _unsold(server)
    gc.sell(card, "4.20", card.store_id)
    log = tmp_path / "audit.jsonl"
    form = forms.redeem_form(gc, audit_log=log)
    _fill(form, card, amount="10")
    form.store.value = next(s for s in form.store.options if s[1].id == card.store_id)[1]
    form.submit.click()
    form.confirm.click()
    assert form.output.value == "Declined: insufficient balance, card holds $4.20"
    (record,) = audit.read(log).to_dicts()
    assert (record["outcome"], record["statuscode"]) == ("declined", "100005")


def test_status_form_needs_a_reason_and_blocks(server, gc):
    card = _unsold(server)
    gc.sell(card, 30, card.store_id)
    form = forms.status_form(gc)
    _fill(form, card)
    form.active.value = False
    form.submit.click()
    assert "why" in form.problems["reason"].value.lower()
    _fill(form, card, reason="customer reported it lost")
    form.submit.click()
    assert "Block card ************" in form.confirmation.value
    form.confirm.click()
    assert "blocked" in form.output.value
    assert gc.balance(card).active is False


def test_balance_form_answers_at_once(server, gc):
    card = next(c for c in server.card_stock if c.sold)
    form = forms.balance_form(gc)
    _fill(form, card)
    form.submit.click()
    assert form.output.value.startswith(f"Card ************{card.last4} holds $")


def test_ops_console_offers_only_the_users_stores(server):
    with GiftCardClient(server.url, "clerk", "clerk-password") as clerk:
        console = forms.ops_console(clerk, audit_log=None)
    assert isinstance(console, widgets.Tab)
    assert [console.get_title(i) for i in range(5)] == list(forms.TITLES.values())
    sell = console.children[1]
    assert [store.id for _, store in sell.store.options] == [server.stores[0].id]


def test_buttons_are_disabled_while_a_request_is_in_flight(server, gc):
    card = _unsold(server)
    form = forms.sell_form(gc)
    seen = []
    real_sell = gc.sell

    def watching_sell(*args, **kwargs):
        seen.append((form.submit.disabled, form.confirm.disabled))
        form.confirm.click()  # a click while in flight sends nothing more
        return real_sell(*args, **kwargs)

    gc.sell = watching_sell
    _fill(form, card, amount="5")
    form.store.value = next(s for s in form.store.options if s[1].id == card.store_id)[1]
    form.submit.click()
    form.confirm.click()
    assert seen == [(True, True)]
    assert not form.confirm.disabled, "enabled again afterwards"
