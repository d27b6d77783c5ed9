"""Ops forms for Jupyter (ipywidgets): fix one card by hand, safely and on the record.

Every form checks its input before sending (card number length and Luhn, a 4-digit
security code, an amount above zero with at most 2 decimals, a store from the user's own
stores, a reason for status changes) and says what is wrong beside the field. Anything that
moves money or changes a card's status goes through a confirmation step (masked card,
amount, store, operation) and nothing is sent before Confirm; the buttons are disabled while
a request is in flight, and a second click sends nothing twice (the reviewed request, with
its Idempotency-Key, is consumed by the first). The result or the error is shown in plain
words, the card number and code fields are cleared after every submit, and every attempt
is written to the audit log.

    forms.ops_console(client, audit_log="audit.jsonl")   # a Tab with every form
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from giftcard_toolkit import _protocol, errors, models
from giftcard_toolkit.cards import Card, card_number_problem, mask, security_code_problem
from giftcard_toolkit.ops import cases, operations
from giftcard_toolkit.ops.audit import AuditLog

TITLES = {
    "balance": "Balance",
    "sell": "Sell",
    "reload": "Reload",
    "redeem": "Redeem",
    "status": "Block / unblock",
}


@dataclass(frozen=True)
class _Reviewed:
    """A request checked and shown for confirmation; sent at most once."""

    card: Card
    amount: Decimal | None
    store: models.Store | None
    active: bool | None
    reason: str | None
    key: str


def _money(value: Decimal) -> str:
    return f"${value:,.2f}"


class OperationForm(widgets.VBox):
    """One operation's form. Its fields are attributes, so it can be driven from code."""

    def __init__(
        self,
        client: Any,
        operation: str,
        *,
        audit_log: AuditLog | None = None,
        stores: list[models.Store] | None = None,
    ) -> None:
        if operation not in TITLES:
            raise ValueError(f"operation must be one of {', '.join(TITLES)}")
        self.client = client
        self.operation = operation
        self.audit = audit_log
        self.moves = operation in ("sell", "reload", "redeem")
        self.card_number = widgets.Text(description="Card number", placeholder="16 digits")
        self.security_code = widgets.Password(description="Security code", placeholder="4 digits")
        self.amount = widgets.Text(description="Amount", placeholder="e.g. 25.00")
        known = stores if stores is not None else list(client.verify().stores)
        self.store = widgets.Dropdown(
            description="Store", options=[(s.name or s.id, s) for s in known]
        )
        self.active = widgets.ToggleButtons(
            options=[("Block", False), ("Unblock", True)], description="Action"
        )
        self.reason = widgets.Text(description="Reason", placeholder="why (required)")
        self.accept_partial = widgets.Checkbox(description="Accept a partial redemption")
        self.problems = {
            name: widgets.HTML()
            for name in ("card_number", "security_code", "amount", "store", "reason")
        }
        self.submit = widgets.Button(
            description="Check balance" if operation == "balance" else "Review",
            button_style="primary",
        )
        self.confirm = widgets.Button(description="Confirm", button_style="danger")
        self.cancel = widgets.Button(description="Cancel")
        self.confirmation = widgets.HTML()
        self.output = widgets.HTML()
        self._reviewed: _Reviewed | None = None
        self._busy = False
        self.submit.on_click(lambda _: self._on_submit())
        self.confirm.on_click(lambda _: self._on_confirm())
        self.cancel.on_click(lambda _: self._on_cancel())
        self._show_confirmation(False)
        rows: list[widgets.Widget] = [
            self._row("card_number", self.card_number),
            self._row("security_code", self.security_code),
        ]
        if self.moves:
            rows += [self._row("amount", self.amount), self._row("store", self.store)]
        if operation == "redeem":
            rows.append(self.accept_partial)
        if operation == "status":
            rows += [self.active, self._row("reason", self.reason)]
        rows += [
            self.submit,
            self.confirmation,
            widgets.HBox([self.confirm, self.cancel]),
            self.output,
        ]
        super().__init__(rows)

    def _row(self, name: str, field: widgets.Widget) -> widgets.HBox:
        return widgets.HBox([field, self.problems[name]])

    def _show_confirmation(self, shown: bool) -> None:
        display = None if shown else "none"
        self.confirm.layout.display = display
        self.cancel.layout.display = display
        if not shown:
            self.confirmation.value = ""

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        for button in (self.submit, self.confirm, self.cancel):
            button.disabled = busy

    # ----------------------------------------------------------- checking

    def _check(self) -> _Reviewed | None:
        """The request if every field is right; else the problems beside their fields."""
        for box in self.problems.values():
            box.value = ""
        found: dict[str, str] = {}
        number = self.card_number.value.strip()
        problem = card_number_problem(number)
        if problem:
            found["card_number"] = f"Card number {problem}."
        problem = security_code_problem(self.security_code.value.strip())
        if problem:
            found["security_code"] = f"Security code {problem}."
        amount = None
        if self.moves:
            amount = _protocol.entered_amount(self.amount.value)
            if amount is None:
                found["amount"] = "Amount must be above zero with at most 2 decimals."
            if self.store.value is None:
                found["store"] = "Pick one of your stores."
        reason = self.reason.value.strip()
        if self.operation == "status" and not reason:
            found["reason"] = "Say why the card's status changes."
        for name, message in found.items():
            self.problems[name].value = f"<span style='color:#b00'>{html.escape(message)}</span>"
        if found:
            return None
        return _Reviewed(
            card=Card(number, self.security_code.value.strip()),
            amount=amount,
            store=self.store.value if self.moves else None,
            active=self.active.value if self.operation == "status" else None,
            reason=reason or None,
            key=_protocol.new_idempotency_key(),
        )

    def _describe(self, request: _Reviewed) -> str:
        card = request.card.masked
        if self.operation == "status":
            verb = "Unblock" if request.active else "Block"
            return f"{verb} card {card} (reason: {request.reason})"
        assert request.amount is not None and request.store is not None
        verb = {"sell": "Sell", "reload": "Reload", "redeem": "Redeem"}[self.operation]
        preposition = "from" if self.operation == "redeem" else "onto"
        return (
            f"{verb} {_money(request.amount)} {preposition} card {card} "
            f"at {request.store.name or request.store.id}"
        )

    # ---------------------------------------------------------- handlers

    def _on_submit(self) -> None:
        if self._busy:
            return
        request = self._check()
        self._clear_secrets()
        if request is None:
            self.output.value = "Nothing was sent: fix the fields marked in red."
            return
        if self.operation == "balance":
            self._send(request)
            return
        self._reviewed = request
        self.confirmation.value = f"<b>Please confirm:</b> {html.escape(self._describe(request))}"
        self._show_confirmation(True)
        self.output.value = ""

    def _on_cancel(self) -> None:
        self._reviewed = None
        self._show_confirmation(False)
        self.output.value = "Cancelled: nothing was sent."

    def _on_confirm(self) -> None:
        request, self._reviewed = self._reviewed, None  # a second click finds nothing
        if request is None or self._busy:
            return
        self._send(request)

    def _clear_secrets(self) -> None:
        self.card_number.value = ""
        self.security_code.value = ""

    # ------------------------------------------------------------ sending

    def _send(self, request: _Reviewed) -> None:
        self._set_busy(True)
        try:
            outcome = operations.apply(self.client, self._operation(request))
        finally:
            self._set_busy(False)
            self._show_confirmation(False)
        self.output.value = html.escape(self._message(request, outcome))
        if self.audit is not None:
            self.audit.record(
                user=getattr(self.client, "username", "?"),
                operation=self.operation,
                outcome=outcome.status,
                card=request.card,
                amount=request.amount,
                store_id=request.store.id if request.store else None,
                host_ref=outcome.host_ref,
                statuscode=outcome.statuscode,
                description=outcome.description,
                idempotency_key=None if self.operation == "balance" else request.key,
            )

    def _operation(self, request: _Reviewed) -> operations.Operation:
        name = self.operation
        if name == "status":
            name = "unblock" if request.active else "block"
        return operations.Operation(
            name,
            request.card,
            amount=request.amount,
            store=request.store,
            reason=request.reason,
            accept_partial=self.accept_partial.value,
            key=request.key,
        )

    def _message(self, request: _Reviewed, outcome: operations.Outcome) -> str:
        """The outcome in plain words."""
        masked = mask(request.card.number)
        if outcome.status == "declined":
            message = f"Declined: {(outcome.description or '').lower()}"
            if outcome.balance is not None:
                message += f", card holds {_money(outcome.balance)}"
            return message
        if outcome.status in ("rejected", "error"):
            return f"Not done: {outcome.description}"
        held = _money(outcome.balance or Decimal(0))
        again = " (this request had been applied already: nothing moved twice)"
        replayed = again if outcome.replayed else ""
        if self.operation == "balance":
            state = "active" if outcome.active else "not usable"
            return f"Card {masked} holds {held} ({state})"
        if self.operation == "status":
            verb = "unblocked" if outcome.active else "blocked"
            return f"Done: card {masked} {verb}; it holds {held}{replayed}"
        if self.operation == "redeem":
            how = "Partially approved" if outcome.status == "partial" else "Approved"
            moved = _money(outcome.moved or Decimal(0))
            return f"{how}: redeemed {moved} from {masked}; it holds {held}{replayed}"
        verb = "sold" if self.operation == "sell" else "reloaded"
        amount = _money(request.amount or Decimal(0))
        return f"Approved: {verb} {masked} for {amount}; it holds {held}{replayed}"


@dataclass(frozen=True)
class _CaseRequest:
    """A card case checked and shown for confirmation; run at most once."""

    action: str
    card: Card
    new_card: Card | None
    host_ref: str | None
    amount: Decimal | None
    store: models.Store | None
    reason: str
    key: str


CARD_ACTIONS = {
    "replace": "Replace (move its balance to a new card, block this one)",
    "reverse": "Reverse a transaction",
    "adjust": "Adjust the balance (+ or -)",
    "block": "Block",
    "unblock": "Unblock",
}


class CardForm(widgets.VBox):
    """The Card tab: look a card up (balance, status, dates, its history, masked), then
    replace it, reverse one of its transactions, adjust it, block or unblock it, with the
    same Review, Confirm, once-only behaviour as the other forms. Fields are attributes,
    so it can be driven from code."""

    def __init__(
        self,
        client: Any,
        *,
        audit_log: AuditLog | None = None,
        stores: list[models.Store] | None = None,
    ) -> None:
        self.client = client
        self.audit = audit_log
        self.card_number = widgets.Text(description="Card number", placeholder="16 digits")
        self.security_code = widgets.Password(description="Security code", placeholder="4 digits")
        self.lookup = widgets.Button(description="Look up", button_style="primary")
        self.summary = widgets.HTML()
        self.history = widgets.HTML()
        self.action = widgets.Dropdown(
            description="Action", options=[(label, a) for a, label in CARD_ACTIONS.items()]
        )
        self.new_card_number = widgets.Text(description="New card", placeholder="16 digits")
        self.new_security_code = widgets.Password(description="New code", placeholder="4 digits")
        self.transaction = widgets.Dropdown(description="Transaction", options=[])
        self.amount = widgets.Text(description="Amount", placeholder="e.g. -45.00 or 5.00")
        known = stores if stores is not None else list(client.verify().stores)
        self.store = widgets.Dropdown(
            description="Store", options=[(s.name or s.id, s) for s in known]
        )
        self.reason = widgets.Text(description="Reason", placeholder="why (required)")
        self.problems = {
            name: widgets.HTML()
            for name in ("card_number", "security_code", "new_card", "transaction", "amount")
            + ("store", "reason")
        }
        self.submit = widgets.Button(description="Review", button_style="primary")
        self.confirm = widgets.Button(description="Confirm", button_style="danger")
        self.cancel = widgets.Button(description="Cancel")
        self.confirmation = widgets.HTML()
        self.output = widgets.HTML()
        for field in (self.card_number, self.security_code, self.new_card_number):
            field.style.description_width = "initial"
        self._card: Card | None = None
        self._reviewed: _CaseRequest | None = None
        self._busy = False
        self.lookup.on_click(lambda _: self._on_lookup())
        self.action.observe(lambda _: self._show_fields(), names="value")
        self.submit.on_click(lambda _: self._on_submit())
        self.confirm.on_click(lambda _: self._on_confirm())
        self.cancel.on_click(lambda _: self._on_cancel())
        self._rows = {
            "new_card": widgets.VBox(
                [
                    widgets.HBox([self.new_card_number, self.problems["new_card"]]),
                    self.new_security_code,
                ]
            ),
            "transaction": widgets.HBox([self.transaction, self.problems["transaction"]]),
            "amount": widgets.HBox([self.amount, self.problems["amount"]]),
            "store": widgets.HBox([self.store, self.problems["store"]]),
        }
        self._actions = widgets.VBox(
            [
                self.action,
                *self._rows.values(),
                widgets.HBox([self.reason, self.problems["reason"]]),
                self.submit,
                self.confirmation,
                widgets.HBox([self.confirm, self.cancel]),
            ]
        )
        self._show_confirmation(False)
        self._actions.layout.display = "none"
        self._show_fields()
        super().__init__(
            [
                widgets.HBox([self.card_number, self.problems["card_number"]]),
                widgets.HBox([self.security_code, self.problems["security_code"]]),
                self.lookup,
                self.summary,
                self.history,
                self._actions,
                self.output,
            ]
        )

    # ------------------------------------------------------------ showing

    def _show_fields(self) -> None:
        needs = {
            "replace": ("new_card", "store"),
            "reverse": ("transaction", "store"),
            "adjust": ("amount", "store"),
        }.get(self.action.value, ())
        for name, row in self._rows.items():
            row.layout.display = None if name in needs else "none"

    def _show_confirmation(self, shown: bool) -> None:
        display = None if shown else "none"
        self.confirm.layout.display = display
        self.cancel.layout.display = display
        if not shown:
            self.confirmation.value = ""

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        for button in (self.lookup, self.submit, self.confirm, self.cancel):
            button.disabled = busy

    def _mark(self, found: dict[str, str]) -> None:
        for name, box in self.problems.items():
            text = found.get(name)
            box.value = f"<span style='color:#b00'>{html.escape(text)}</span>" if text else ""

    # ------------------------------------------------------------ looking up

    def _on_lookup(self) -> None:
        if self._busy:
            return
        number, code = self.card_number.value.strip(), self.security_code.value.strip()
        self.card_number.value = self.security_code.value = ""
        found = {}
        problem = card_number_problem(number)
        if problem:
            found["card_number"] = f"Card number {problem}."
        problem = security_code_problem(code)
        if problem:
            found["security_code"] = f"Security code {problem}."
        self._mark(found)
        if found:
            self.output.value = "Nothing was looked up: fix the fields marked in red."
            return
        self._card = Card(number, code)
        self._refresh()

    def _refresh(self) -> None:
        """Show the looked-up card: its state and its story."""
        card = self._card
        if card is None:
            return
        self._set_busy(True)
        try:
            balance = self.client.balance(card)
            story = cases.history(self.client, card)
        except errors.GiftCardError as failed:
            self._card = None
            self._actions.layout.display = "none"
            self.summary.value = self.history.value = ""
            self.output.value = html.escape(f"Not found: {failed}")
            return
        finally:
            self._set_busy(False)
        dates = ", ".join(
            f"{label} {when:%Y-%m-%d}"
            for label, when in (
                ("activated", balance.activated_at),
                ("last used", balance.last_used_at),
                ("expires", balance.expires_at),
            )
            if when is not None
        )
        self.summary.value = html.escape(
            f"Card {card.masked} holds {_money(balance.balance)}; {balance.state}"
            + (f"; {dates}" if dates else "")
        )
        self.history.value = _history_table(story)
        self.transaction.options = [
            (f"{r['at']:%Y-%m-%d %H:%M} {r['type']} {_money(r['amount'])} ({r['host_ref']})", r)
            for r in reversed(story.rows(named=True))
        ]
        self._actions.layout.display = None
        self.output.value = ""

    # ------------------------------------------------------------ acting

    def _check(self) -> _CaseRequest | None:
        card = self._card
        if card is None:
            self.output.value = "Look a card up first."
            return None
        action = self.action.value
        found: dict[str, str] = {}
        new_card = host_ref = amount = None
        if action == "replace":
            number, code = self.new_card_number.value.strip(), self.new_security_code.value.strip()
            problem = card_number_problem(number) or security_code_problem(code)
            if problem:
                found["new_card"] = f"New card: {problem}."
            else:
                new_card = Card(number, code)
                if new_card.number == card.number:
                    found["new_card"] = "The new card must be another card."
        if action == "reverse":
            if self.transaction.value is None:
                found["transaction"] = "Pick the transaction to reverse."
            else:
                host_ref = str(self.transaction.value["host_ref"])
        if action == "adjust":
            text = self.amount.value.strip()
            sign = -1 if text.startswith("-") else 1
            amount = _protocol.entered_amount(text.lstrip("+-"))
            if amount is None:
                found["amount"] = "A non-zero amount with at most 2 decimals, e.g. -45.00."
            else:
                amount *= sign
        if action in ("replace", "reverse", "adjust") and self.store.value is None:
            found["store"] = "Pick one of your stores."
        reason = " ".join(self.reason.value.split())
        if not reason:
            found["reason"] = "Say why: it goes to the audit log."
        self._mark(found)
        if found:
            return None
        return _CaseRequest(
            action=action,
            card=card,
            new_card=new_card,
            host_ref=host_ref,
            amount=amount,
            store=self.store.value if action in ("replace", "reverse", "adjust") else None,
            reason=reason,
            key=_protocol.new_idempotency_key(),
        )

    def _describe(self, request: _CaseRequest) -> str:
        card = request.card.masked
        at = f" at {request.store.name or request.store.id}" if request.store else ""
        if request.action == "replace":
            assert request.new_card is not None
            return (
                f"Move the whole balance of card {card} onto card {request.new_card.masked}"
                f"{at}, then block {card} (reason: {request.reason})"
            )
        if request.action == "reverse":
            row = self.transaction.value
            return (
                f"Reverse {row['type']} {request.host_ref} of {_money(row['amount'])} on card "
                f"{card}{at} (reason: {request.reason})"
            )
        if request.action == "adjust":
            assert request.amount is not None
            return (
                f"Adjust card {card} by {'+' if request.amount > 0 else '-'}"
                f"{_money(abs(request.amount))}{at} (reason: {request.reason})"
            )
        return f"{request.action.capitalize()} card {card} (reason: {request.reason})"

    def _on_submit(self) -> None:
        if self._busy:
            return
        request = self._check()
        self.new_card_number.value = self.new_security_code.value = ""
        if request is None:
            if self._card is not None:
                self.output.value = "Nothing was sent: fix the fields marked in red."
            return
        self._reviewed = request
        self.confirmation.value = f"<b>Please confirm:</b> {html.escape(self._describe(request))}"
        self._show_confirmation(True)
        self.output.value = ""

    def _on_cancel(self) -> None:
        self._reviewed = None
        self._show_confirmation(False)
        self.output.value = "Cancelled: nothing was sent."

    def _on_confirm(self) -> None:
        request, self._reviewed = self._reviewed, None  # a second click finds nothing
        if request is None or self._busy:
            return
        self._set_busy(True)
        try:
            message = self._run(request)
        except errors.GiftCardError as failed:
            message = f"Not done: {failed}"
        finally:
            self._set_busy(False)
            self._show_confirmation(False)
        self._refresh()
        self.output.value = html.escape(message)

    def _run(self, request: _CaseRequest) -> str:
        """Run the case; its outcome in plain words. Replace and reverse use their natural
        keys (the cards, the hostRef), so a colleague's same case is never done twice."""
        gc, card, log = self.client, request.card, self.audit
        if request.action == "replace":
            assert request.new_card is not None
            done = cases.replace(
                gc, card, request.new_card, request.store, request.reason, audit_log=log
            )
            return (
                f"Done: moved {_money(done.moved)} from {done.old_card} to {done.new_card}, "
                f"which holds {_money(done.new_balance)}; {done.old_card} is blocked"
            )
        if request.action == "reverse":
            assert request.host_ref is not None
            back = cases.reverse(
                gc, card, request.host_ref, request.store, request.reason, audit_log=log
            )
            return (
                f"Done: {back.reversed_type} {back.reversed_host_ref} reversed "
                f"({_money(back.amount)}); card {back.card} holds {_money(back.balance)}"
            )
        if request.action == "adjust":
            assert request.amount is not None
            fixed = cases.adjust(
                gc, card, request.amount, request.store, request.reason, request.key, log
            )
            return f"Done: card {fixed.card} adjusted; it holds {_money(fixed.balance)}"
        op = operations.Operation(request.action, card, reason=request.reason, key=request.key)
        outcome = operations.apply(gc, op)
        if log is not None:
            log.record(
                user=getattr(gc, "username", "?"),
                operation=request.action,
                outcome=outcome.status,
                card=card,
                statuscode=outcome.statuscode,
                description=outcome.description,
                idempotency_key=request.key,
            )
        if outcome.status != "approved":
            return f"Not done: {outcome.description}"
        held = _money(outcome.balance or Decimal(0))
        return f"Done: card {card.masked} {request.action}ed; it holds {held}"


def _history_table(story: Any) -> str:
    """A card's transactions as an HTML table (cards masked), newest first."""
    if story.is_empty():
        return "<i>No transactions.</i>"
    head = "".join(
        f"<th>{h}</th>" for h in ("when", "type", "amount", "balance", "store", "hostRef")
    )
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(v))}</td>"
            for v in (
                f"{r['at']:%Y-%m-%d %H:%M}",
                r["type"],
                _money(r["amount"]),
                _money(r["new_balance"]),
                r["store_name"],
                r["host_ref"],
            )
        )
        + "</tr>"
        for r in reversed(story.rows(named=True))
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def card_form(
    client: Any,
    audit_log: str | Path | AuditLog | None = None,
    stores: list[models.Store] | None = None,
) -> CardForm:
    return CardForm(client, audit_log=AuditLog.of(audit_log), stores=stores)


def _factory(operation: str) -> Callable[..., OperationForm]:
    def make(
        client: Any,
        audit_log: str | Path | AuditLog | None = None,
        stores: list[models.Store] | None = None,
    ) -> OperationForm:
        return OperationForm(client, operation, audit_log=AuditLog.of(audit_log), stores=stores)

    make.__name__ = make.__qualname__ = f"{operation}_form"
    make.__doc__ = f"The {TITLES[operation]} form on its own (the console has them all)."
    return make


balance_form = _factory("balance")
sell_form = _factory("sell")
reload_form = _factory("reload")
redeem_form = _factory("redeem")
status_form = _factory("status")


def ops_console(
    client: Any, audit_log: str | Path | AuditLog | None = "audit.jsonl"
) -> widgets.Tab:
    """Every form in one Tab, sharing one audit log and the user's stores (one verify)."""
    log = AuditLog.of(audit_log)
    stores = list(client.verify().stores)
    forms: list[widgets.Widget] = [CardForm(client, audit_log=log, stores=stores)]
    forms += [OperationForm(client, op, audit_log=log, stores=stores) for op in TITLES]
    tab = widgets.Tab(children=forms)
    for index, title in enumerate(["Card", *TITLES.values()]):
        tab.set_title(index, title)
    return tab
