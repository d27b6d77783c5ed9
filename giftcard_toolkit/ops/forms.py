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
    forms.ops_console(audit_log="audit.jsonl")           # each person signs in first

What a form offers follows the signed-in user's role (an analyst only reads: balance and
card history) and own limit: above it, the Review step asks for a supervisor's sign-in, and
that one request is sent under the supervisor (both named in the audit log).
"""

from __future__ import annotations

import html
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from giftcard_toolkit import _protocol, errors, models
from giftcard_toolkit.cards import Card, card_number_problem, mask, scrub, security_code_problem
from giftcard_toolkit.ops import cases, operations, signin
from giftcard_toolkit.ops.approval import Approval, verification_of
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


# Every label of a form gets the same width, wide enough for the longest ("Security code")
# in any browser font: ipywidgets' default (80px) cuts labels off ("Security c...").
LABEL_WIDTH = "9em"
OK_COLOUR, BAD_COLOUR = "#17692a", "#a10000"


def _sized(field: widgets.DescriptionWidget, width: str, name: str) -> Any:
    """``field`` with the common label width, sized for its content (``width`` counts the
    label), and a CSS class naming it (what browser tests and the benchmark find it by)."""
    field.style.description_width = LABEL_WIDTH
    field.layout.width = width
    field.add_class(f"gc-{name}")
    if isinstance(field, widgets.Text):
        # Sent once, when the field is left (a click on a button leaves it first), not on
        # every key: a button's click is never held back, but typed keys are while the
        # kernel is busy, so a quick click could overtake the last digits typed.
        field.continuous_update = False
    return field


def _beside(field: widgets.Widget, problem: widgets.HTML) -> widgets.HBox:
    """A field with its problem beside it, wrapping below it when the page is narrow."""
    problem.layout.margin = "0 0 0 8px"
    return widgets.HBox([field, problem], layout=widgets.Layout(flex_flow="row wrap"))


def _result_box(output: widgets.HTML) -> widgets.HTML:
    """The answer's place: a line under the form, coloured by :func:`_say`."""
    output.layout.margin = "8px 0"
    output.layout.padding = "0 0 0 8px"
    output.add_class("gc-output")
    return output


def _say(output: widgets.HTML, text: str, good: bool | None = None) -> None:
    """Show ``text`` (plain words) in ``output``: green when done, red when not."""
    colour = None if good is None else (OK_COLOUR if good else BAD_COLOUR)
    output.style.text_color = colour
    output.layout.border_left = f"4px solid {colour}" if colour else None
    output.value = html.escape(text)


def _review_box(confirmation: widgets.HTML, *buttons: widgets.Button) -> widgets.VBox:
    """The Review step: what will be sent, framed, with Confirm beside Cancel."""
    confirmation.add_class("gc-confirmation")
    return widgets.VBox(
        [confirmation, widgets.HBox(list(buttons))],
        layout=widgets.Layout(
            border="2px solid #b35900", padding="4px 12px", margin="8px 0", max_width="48em"
        ),
    )


def _buttons(**buttons: widgets.Button) -> None:
    for name, button in buttons.items():
        button.add_class(f"gc-{name}")


class _ApprovalBox(widgets.VBox):
    """On the Review step, when the amount is above the signed-in user's own limit: a
    supervisor's username and password, so that one request is sent under their sign-in.
    The password is cleared from the field (and so from the page) as soon as it is read.
    ``given``: an approver's client passed from code (``approver=`` of a form), used instead
    of asking; it stays open (its owner closes it)."""

    def __init__(self, given: Any = None) -> None:
        self.given = given
        self.note = widgets.HTML()
        self.note.add_class("gc-approval_note")
        self.username = _sized(
            widgets.Text(description="Supervisor", placeholder="their username"),
            "24em",
            "approver",
        )
        self.password = _sized(
            widgets.Password(description="Their password"), "24em", "approver_password"
        )
        self.needed = False
        super().__init__([self.note, self.username, self.password])
        self.add_class("gc-approval")
        self.layout.display = "none"

    def ask(self, client: Any, amount: Decimal | None) -> None:
        """Show the approval fields when ``amount`` is above ``client``'s own limit."""
        limit = verification_of(client).max_amount
        self.needed = amount is not None and limit is not None and abs(amount) > limit
        self.layout.display = None if self.needed else "none"
        self.username.value = self.password.value = ""
        self.note.value = (
            f"<b>Needs approval:</b> {_money(abs(amount or Decimal(0)))} is above your own "
            f"limit of {_money(limit or Decimal(0))}. A supervisor signs in here to approve "
            "it; it is then sent under their name. Nothing is sent without it."
            if self.needed and self.given is None
            else ""
        )
        if self.given is not None:  # approved from code: nothing to ask on screen
            self.layout.display = "none"

    def approver(self, client: Any) -> Any:
        """The supervisor's client, signed in (a wrong password raises ``SignInFailed``)."""
        if self.given is not None:
            return self.given
        username, password = self.username.value, self.password.value
        self.password.value = ""
        return signin.sign_in(
            client.base_url, username, password, card_cipher=getattr(client, "_cipher", None)
        )

    def ready(self, client: Any, output: widgets.HTML) -> tuple[bool, Any]:
        """(whether to send, the approver to send under): the supervisor signs in when
        approval is needed; a refusal is said in ``output`` and nothing is sent."""
        if not self.needed:
            return True, None
        try:
            return True, self.approver(client)
        except errors.GiftCardError as failed:
            _say(output, f"Not approved, nothing was sent: {failed}", False)
            return False, None

    def release(self, approver: Any) -> None:
        """Sign out an approver signed in on this screen (not one given from code)."""
        if approver is not None and approver is not self.given:
            approver.close()


class OperationForm(widgets.VBox):
    """One operation's form. Its fields are attributes, so it can be driven from code."""

    def __init__(
        self,
        client: Any,
        operation: str,
        *,
        audit_log: AuditLog | None = None,
        stores: list[models.Store] | None = None,
        approver: Any = None,
    ) -> None:
        """``approver``: a supervisor's client, for amounts above the signed-in user's own
        limit (from code; on screen, the Review step asks for their sign-in instead)."""
        if operation not in TITLES:
            raise ValueError(f"operation must be one of {', '.join(TITLES)}")
        self.client = client
        self.operation = operation
        self.audit = audit_log
        self.moves = operation in ("sell", "reload", "redeem")
        self.card_number = _sized(
            widgets.Text(description="Card number", placeholder="16 digits"), "22em", "card_number"
        )
        self.security_code = _sized(
            widgets.Password(description="Security code", placeholder="4 digits"),
            "15em",
            "security_code",
        )
        self.amount = _sized(
            widgets.Text(description="Amount", placeholder="e.g. 25.00"), "17em", "amount"
        )
        known = stores if stores is not None else list(client.verify().stores)
        self.store = _sized(
            widgets.Dropdown(description="Store", options=[(s.name or s.id, s) for s in known]),
            "28em",
            "store",
        )
        self.active = _sized(
            widgets.ToggleButtons(
                options=[("Block", False), ("Unblock", True)], description="Action"
            ),
            "auto",
            "active",
        )
        self.reason = _sized(
            widgets.Text(description="Reason", placeholder="why (required)"), "36em", "reason"
        )
        self.accept_partial = widgets.Checkbox(
            description="Accept a partial redemption", indent=False
        )
        self.accept_partial.layout.margin = f"2px 0 2px calc({LABEL_WIDTH} + 10px)"
        self.accept_partial.add_class("gc-accept_partial")
        self.problems = {
            name: widgets.HTML()
            for name in ("card_number", "security_code", "amount", "store", "reason")
        }
        self.submit = widgets.Button(
            description="Check balance" if operation == "balance" else "Review",
            button_style="primary",
        )
        self.submit.layout.margin = f"4px 0 4px calc({LABEL_WIDTH} + 10px)"
        self.confirm = widgets.Button(description="Confirm", button_style="danger")
        self.cancel = widgets.Button(description="Cancel")
        _buttons(submit=self.submit, confirm=self.confirm, cancel=self.cancel)
        self.confirmation = widgets.HTML()
        self.output = _result_box(widgets.HTML())
        self.approval = _ApprovalBox(approver)
        self.review = _review_box(self.confirmation, self.confirm, self.cancel)
        self.review.children = [self.confirmation, self.approval, *self.review.children[1:]]
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
        rows += [self.submit, self.review, self.output]
        super().__init__(rows)
        self.add_class(f"gc-{operation}")

    def _row(self, name: str, field: widgets.Widget) -> widgets.HBox:
        return _beside(field, self.problems[name])

    def _show_confirmation(self, shown: bool) -> None:
        self.review.layout.display = None if shown else "none"
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
            _say(self.output, "Nothing was sent: fix the fields marked in red.", False)
            return
        if self.operation == "balance":
            self._apply(request)
            return
        self._reviewed = request
        self.confirmation.value = f"<b>Please confirm:</b> {html.escape(self._describe(request))}"
        self.approval.ask(self.client, request.amount)
        self._show_confirmation(True)
        _say(self.output, "")

    def _on_cancel(self) -> None:
        self._reviewed = None
        self._show_confirmation(False)
        _say(self.output, "Cancelled: nothing was sent.")

    def _on_confirm(self) -> None:
        request = self._reviewed
        if request is None or self._busy:
            return
        approved, approver = self.approval.ready(self.client, self.output)
        if not approved:  # the Review stays: try again or Cancel
            return
        self._reviewed = None  # a second click finds nothing
        try:
            self._apply(request, approver)
        finally:
            self.approval.release(approver)

    def _clear_secrets(self) -> None:
        self.card_number.value = ""
        self.security_code.value = ""

    # ------------------------------------------------------------ sending

    def _apply(self, request: _Reviewed, approver: Any = None) -> None:
        self._set_busy(True)
        try:
            approval = Approval(self.client, approver)
            if approver is not None and request.amount is not None:
                approval.check(request.amount, self._describe(request))
            sender, approved_by = approval.sender(self.operation, request.amount)
            outcome = operations.apply(sender, self._operation(request))
        except errors.GiftCardError as refused:  # the approver may not: nothing was sent
            _say(self.output, f"Not sent: {refused}", False)
            return
        finally:
            self._set_busy(False)
            self._show_confirmation(False)
        good = outcome.status in ("approved", "partial")
        _say(self.output, self._message(request, outcome), good)
        if self.audit is not None:
            self.audit.record(
                user=getattr(self.client, "username", "?"),
                approved_by=approved_by,
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
    so it can be driven from code. ``read_only`` (an analyst): look up only."""

    def __init__(
        self,
        client: Any,
        *,
        audit_log: AuditLog | None = None,
        stores: list[models.Store] | None = None,
        read_only: bool = False,
        approver: Any = None,
    ) -> None:
        self.client = client
        self.audit = audit_log
        self.read_only = read_only
        self.card_number = _sized(
            widgets.Text(description="Card number", placeholder="16 digits"), "22em", "card_number"
        )
        self.security_code = _sized(
            widgets.Password(description="Security code", placeholder="4 digits"),
            "15em",
            "security_code",
        )
        self.lookup = widgets.Button(description="Look up", button_style="primary")
        self.lookup.layout.margin = f"4px 0 4px calc({LABEL_WIDTH} + 10px)"
        self.summary = widgets.HTML()
        self.summary.add_class("gc-summary")
        self.history = widgets.HTML()
        self.history.add_class("gc-history")
        self.action = _sized(
            widgets.Dropdown(
                description="Action", options=[(label, a) for a, label in CARD_ACTIONS.items()]
            ),
            "42em",
            "action",
        )
        self.new_card_number = _sized(
            widgets.Text(description="New card", placeholder="16 digits"), "22em", "new_card"
        )
        self.new_security_code = _sized(
            widgets.Password(description="New code", placeholder="4 digits"), "15em", "new_code"
        )
        self.transaction = _sized(
            widgets.Dropdown(description="Transaction", options=[]), "38em", "transaction"
        )
        self.amount = _sized(
            widgets.Text(description="Amount", placeholder="e.g. -45.00 or 5.00"), "19em", "amount"
        )
        known = stores if stores is not None else list(client.verify().stores)
        self.store = _sized(
            widgets.Dropdown(description="Store", options=[(s.name or s.id, s) for s in known]),
            "28em",
            "store",
        )
        self.reason = _sized(
            widgets.Text(description="Reason", placeholder="why (required)"), "36em", "reason"
        )
        self.problems = {
            name: widgets.HTML()
            for name in ("card_number", "security_code", "new_card", "transaction", "amount")
            + ("store", "reason")
        }
        self.submit = widgets.Button(description="Review", button_style="primary")
        self.submit.layout.margin = f"4px 0 4px calc({LABEL_WIDTH} + 10px)"
        self.confirm = widgets.Button(description="Confirm", button_style="danger")
        self.cancel = widgets.Button(description="Cancel")
        _buttons(lookup=self.lookup, submit=self.submit, confirm=self.confirm, cancel=self.cancel)
        self.confirmation = widgets.HTML()
        self.output = _result_box(widgets.HTML())
        self.approval = _ApprovalBox(approver)
        self.review = _review_box(self.confirmation, self.confirm, self.cancel)
        self.review.children = [self.confirmation, self.approval, *self.review.children[1:]]
        self._card: Card | None = None
        self._balance = Decimal(0)
        self._reviewed: _CaseRequest | None = None
        self._busy = False
        self.lookup.on_click(lambda _: self._on_lookup())
        self.action.observe(lambda _: self._show_fields(), names="value")
        self.submit.on_click(lambda _: self._on_submit())
        self.confirm.on_click(lambda _: self._on_confirm())
        self.cancel.on_click(lambda _: self._on_cancel())
        self._rows = {
            "new_card": widgets.VBox(
                [_beside(self.new_card_number, self.problems["new_card"]), self.new_security_code]
            ),
            "transaction": _beside(self.transaction, self.problems["transaction"]),
            "amount": _beside(self.amount, self.problems["amount"]),
            "store": _beside(self.store, self.problems["store"]),
        }
        self._actions = widgets.VBox(
            [
                self.action,
                *self._rows.values(),
                _beside(self.reason, self.problems["reason"]),
                self.submit,
                self.review,
            ]
        )
        self._show_confirmation(False)
        self._actions.layout.display = "none"
        self._show_fields()
        super().__init__(
            [
                _beside(self.card_number, self.problems["card_number"]),
                _beside(self.security_code, self.problems["security_code"]),
                self.lookup,
                self.summary,
                self.history,
                *([] if read_only else [self._actions]),
                self.output,
            ]
        )
        self.add_class("gc-card")

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
        self.review.layout.display = None if shown else "none"
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
            _say(self.output, "Nothing was looked up: fix the fields marked in red.", False)
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
            _say(self.output, f"Not found: {failed}", False)
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
        self._balance = balance.balance
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
        _say(self.output, "")

    # ------------------------------------------------------------ acting

    def _check(self) -> _CaseRequest | None:
        card = self._card
        if card is None:
            _say(self.output, "Look a card up first.", False)
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
                _say(self.output, "Nothing was sent: fix the fields marked in red.", False)
            return
        self._reviewed = request
        self.confirmation.value = f"<b>Please confirm:</b> {html.escape(self._describe(request))}"
        self.approval.ask(self.client, self._moves(request))
        self._show_confirmation(True)
        _say(self.output, "")

    def _moves(self, request: _CaseRequest) -> Decimal | None:
        """The money the case moves (what a limit applies to), None when none."""
        if request.action == "replace":
            return self._balance
        if request.action == "reverse":
            return abs(Decimal(self.transaction.value["amount"]))
        return None if request.amount is None else abs(request.amount)

    def _on_cancel(self) -> None:
        self._reviewed = None
        self._show_confirmation(False)
        _say(self.output, "Cancelled: nothing was sent.")

    def _on_confirm(self) -> None:
        request = self._reviewed
        if request is None or self._busy:
            return
        approved, approver = self.approval.ready(self.client, self.output)
        if not approved:  # the Review stays: try again or Cancel
            return
        self._reviewed = None  # a second click finds nothing
        self._set_busy(True)
        try:
            message = self._run(request, approver)
        except errors.GiftCardError as failed:
            message = f"Not done: {failed}"
        finally:
            self._set_busy(False)
            self._show_confirmation(False)
            self.approval.release(approver)
        self._refresh()
        _say(self.output, message, not message.startswith("Not done"))

    def _run(self, request: _CaseRequest, approver: Any = None) -> str:
        """Run the case (above the user's limit, under ``approver``); its outcome in plain
        words. Replace and reverse use their natural keys (the cards, the hostRef), so a
        colleague's same case is never done twice."""
        gc, card, log = self.client, request.card, self.audit
        if request.action == "replace":
            assert request.new_card is not None
            done = cases.replace(
                gc,
                card,
                request.new_card,
                request.store,
                request.reason,
                audit_log=log,
                approver=approver,
            )
            return (
                f"Done: moved {_money(done.moved)} from {done.old_card} to {done.new_card}, "
                f"which holds {_money(done.new_balance)}; {done.old_card} is blocked"
            )
        if request.action == "reverse":
            assert request.host_ref is not None
            back = cases.reverse(
                gc,
                card,
                request.host_ref,
                request.store,
                request.reason,
                audit_log=log,
                approver=approver,
            )
            return (
                f"Done: {back.reversed_type} {back.reversed_host_ref} reversed "
                f"({_money(back.amount)}); card {back.card} holds {_money(back.balance)}"
            )
        if request.action == "adjust":
            assert request.amount is not None
            fixed = cases.adjust(
                gc,
                card,
                request.amount,
                request.store,
                request.reason,
                request.key,
                log,
                approver=approver,
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
    cell = "padding:2px 10px;text-align:{}"
    right = {"amount", "balance"}
    head = "".join(
        f"<th style='{cell.format('right' if h in right else 'left')}'>{h}</th>"
        for h in ("when", "type", "amount", "balance", "store", "hostRef")
    )
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td style='{cell.format('right' if i in (2, 3) else 'left')}'>"
            f"{html.escape(str(v))}</td>"
            for i, v in enumerate(
                (
                    f"{r['at']:%Y-%m-%d %H:%M}",
                    r["type"],
                    _money(r["amount"]),
                    _money(r["new_balance"]),
                    r["store_name"],
                    r["host_ref"],
                )
            )
        )
        + "</tr>"
        for r in reversed(story.rows(named=True))
    )
    return f"<table style='border-collapse:collapse'><tr>{head}</tr>{rows}</table>"


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
        approver: Any = None,
    ) -> OperationForm:
        return OperationForm(
            client, operation, audit_log=AuditLog.of(audit_log), stores=stores, approver=approver
        )

    make.__name__ = make.__qualname__ = f"{operation}_form"
    make.__doc__ = f"The {TITLES[operation]} form on its own (the console has them all)."
    return make


balance_form = _factory("balance")
sell_form = _factory("sell")
reload_form = _factory("reload")
redeem_form = _factory("redeem")
status_form = _factory("status")


class Console(widgets.Tab):
    """The ops console: a Tab of every form. Where widgets cannot run (an HTML report read
    offline: the widget renderer would come from a CDN), it shows as a static picture."""

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:
            bundle["text/html"] = picture(self)
        return bundle


def ops_console(
    client: Any = None,
    audit_log: str | Path | AuditLog | None = "audit.jsonl",
    *,
    url: str | None = None,
    idle_minutes: float = 15,
) -> Any:
    """Every form the user's role may use in one Tab, sharing one audit log and the user's
    stores (one verify): an analyst gets the Card tab (look up only) and Balance.

    Without ``client``, a :class:`SignInConsole` at ``url`` (default ``GIFTCARD_URL``):
    each person signs in as themselves first, and is signed out after ``idle_minutes``."""
    if client is None:
        where = url or os.environ.get("GIFTCARD_URL")
        if not where:
            raise errors.ConfigurationError(
                "no server to sign in to: pass url= or set GIFTCARD_URL (or pass a client)"
            )
        return SignInConsole(where, audit_log=audit_log, idle_minutes=idle_minutes)
    log = AuditLog.of(audit_log)
    verification = client.verify()
    stores = list(verification.stores)
    shown = ("balance",) if verification.read_only else tuple(TITLES)
    forms: list[widgets.Widget] = [
        CardForm(client, audit_log=log, stores=stores, read_only=verification.read_only)
    ]
    forms += [OperationForm(client, op, audit_log=log, stores=stores) for op in shown]
    tab = Console(children=forms)
    for index, title in enumerate(["Card", *(TITLES[op] for op in shown)]):
        tab.set_title(index, title)
    return tab


def _role_words(verification: models.Verification) -> str:
    if verification.read_only:
        return "analyst: looks cards up, moves no money"
    role = verification.role or "user"
    if verification.max_amount is None:
        return role
    return f"{role}, up to {_money(verification.max_amount)} per sale, reload or redemption"


def _descendants(widget: widgets.Widget) -> list[widgets.Widget]:
    children = list(getattr(widget, "children", ()))
    return [widget, *(w for child in children for w in _descendants(child))]


class SignInConsole(widgets.VBox):
    """The console behind a sign-in: each person signs in with their own username and
    password (checked by the server), then sees what their role may do, who is signed in
    and a Sign out. The password is cleared from the field as soon as it is read, so it
    lives only in the client's memory, in this kernel; an idle page signs out."""

    def __init__(
        self,
        url: str,
        *,
        audit_log: str | Path | AuditLog | None = "audit.jsonl",
        idle_minutes: float = 15,
    ) -> None:
        if idle_minutes <= 0:
            raise errors.ConfigurationError("idle_minutes must be above zero (default 15)")
        self.url = url
        self.audit = AuditLog.of(audit_log)
        self.idle_minutes = idle_minutes
        self.username = _sized(widgets.Text(description="Username"), "24em", "username")
        self.password = _sized(widgets.Password(description="Password"), "24em", "password")
        self.sign_in_button = widgets.Button(description="Sign in", button_style="primary")
        self.sign_in_button.layout.margin = f"4px 0 4px calc({LABEL_WIDTH} + 10px)"
        self.sign_out_button = widgets.Button(description="Sign out")
        _buttons(sign_in=self.sign_in_button, sign_out=self.sign_out_button)
        self.message = _result_box(widgets.HTML())
        self.form = widgets.VBox([self.username, self.password, self.sign_in_button, self.message])
        self.form.add_class("gc-signin")
        self.who = widgets.HTML()
        self.who.add_class("gc-who")
        self.client: Any = None
        self.console: Any = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self.sign_in_button.on_click(lambda _: self.sign_in())
        self.sign_out_button.on_click(lambda _: self.sign_out("Signed out."))
        super().__init__([self.form])

    def sign_in(self) -> None:
        """Sign in with the fields' username and password; the console, or why not."""
        username, password = self.username.value, self.password.value
        self.password.value = ""
        try:
            client = signin.sign_in(self.url, username, password)
        except errors.GiftCardError as failed:
            _say(self.message, f"Not signed in: {failed}", False)
            return
        try:
            console = ops_console(client, audit_log=self.audit)
        except errors.GiftCardError as failed:
            client.close()
            _say(self.message, f"Not signed in: {failed}", False)
            return
        verification = verification_of(client)
        self.client, self.console = client, console
        self.who.value = (
            f"Signed in as <b>{html.escape(client.username)}</b> "
            f"({html.escape(_role_words(verification))}); every action is written to the "
            f"audit log under this name. Idle for {self.idle_minutes:g} minutes signs out."
        )
        for widget in _descendants(console):
            if isinstance(widget, widgets.Button):
                widget.on_click(lambda _: self._touch())
        console.observe(lambda _: self._touch(), names="selected_index")
        bar = widgets.HBox([self.who, self.sign_out_button])
        self.username.value = ""
        _say(self.message, "")
        self.children = [bar, console]
        self._touch()

    def sign_out(self, why: str) -> None:
        """Forget the client (and so the password) and the console; back to the sign-in."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            client, console, self.client, self.console = self.client, self.console, None, None
        if client is None:
            return
        client.close()
        self.children = [self.form]
        for widget in _descendants(console):
            widget.close()
        _say(self.message, why)

    def _touch(self) -> None:
        """Someone used the page: the idle time starts again."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            minutes = self.idle_minutes
            self._timer = threading.Timer(
                minutes * 60, self.sign_out, [f"Signed out after {minutes:g} minutes idle."]
            )
            self._timer.daemon = True
            self._timer.start()


# ------------------------------------------------------------------ a static picture

_PICTURE_STYLE = (
    "font-family:system-ui,sans-serif;font-size:13px;border:1px solid #bbb;padding:8px 12px;"
    "max-width:52em"
)
_CHOSEN_TAB = "border-bottom:2px solid #1976d2;font-weight:bold"


def picture(widget: widgets.Widget) -> str:
    """``widget`` drawn in plain HTML, as it looks now (hidden parts left out, no password
    or card number shown): what an HTML report shows where live widgets cannot run."""
    caption = (
        "<p style='color:#555;margin:0 0 8px'><i>A picture of the ops console: open the "
        "notebook in Jupyter (or run <code>giftcard-toolkit console</code>) to use it.</i></p>"
    )
    return f"<div class='gc-picture' style='{_PICTURE_STYLE}'>{caption}{_draw(widget)}</div>"


def _label(text: str) -> str:
    return (
        f"<span style='display:inline-block;width:{LABEL_WIDTH};text-align:right;"
        f"padding-right:8px'>{html.escape(text)}</span>"
    )


def _draw(widget: widgets.Widget) -> str:
    """One widget and its children in HTML; the kinds the console is made of."""
    if getattr(widget, "layout", None) is not None and widget.layout.display == "none":
        return ""
    if isinstance(widget, widgets.Tab):
        chosen = widget.selected_index or 0
        titles = "".join(
            f"<span style='padding:4px 12px;border:1px solid #bbb;"
            f"{_CHOSEN_TAB if i == chosen else 'color:#555'}'>{html.escape(t)}</span>"
            for i, t in enumerate(widget.titles)
        )
        body = _draw(widget.children[chosen]) if widget.children else ""
        return f"<div style='display:flex;flex-wrap:wrap;margin-bottom:8px'>{titles}</div>{body}"
    if isinstance(widget, widgets.Box):
        direction = "row" if isinstance(widget, widgets.HBox) else "column"
        inner = "".join(_draw(child) for child in widget.children)
        return f"<div style='display:flex;flex-direction:{direction};gap:4px'>{inner}</div>"
    if isinstance(widget, widgets.Password):
        return f"<div>{_label(widget.description)}<input disabled type='password'></div>"
    if isinstance(widget, widgets.Text):
        value = html.escape(scrub(widget.value), quote=True)
        hint = html.escape(widget.placeholder, quote=True)
        return (
            f"<div>{_label(widget.description)}"
            f"<input disabled value='{value}' placeholder='{hint}'></div>"
        )
    if isinstance(widget, widgets.Dropdown):
        return (
            f"<div>{_label(widget.description)}<select disabled>"
            f"<option>{html.escape(str(widget.label or ''))}</option></select></div>"
        )
    if isinstance(widget, widgets.ToggleButtons):
        buttons = "".join(
            f"<button disabled>{html.escape(str(label))}</button>"
            for label in widget._options_labels
        )
        return f"<div>{_label(widget.description)}{buttons}</div>"
    margin = (
        f" style='margin:{html.escape(widget.layout.margin, quote=True)}'"
        if widget.layout.margin
        else ""
    )
    if isinstance(widget, widgets.Checkbox):
        box = "<input type='checkbox' disabled>"
        return f"<div{margin}><label>{box} {html.escape(widget.description)}</label></div>"
    if isinstance(widget, widgets.Button):
        return f"<div{margin}><button disabled>{html.escape(widget.description)}</button></div>"
    if isinstance(widget, widgets.HTML):
        return f"<div>{widget.value}</div>" if widget.value else ""
    return ""
