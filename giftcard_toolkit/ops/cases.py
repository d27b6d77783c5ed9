"""A customer's card case: one card's whole story, and the fixes ops make, each applied
exactly once whoever runs it, however often, whatever fails on the way.

    cases.history(gc, card)                                  # every transaction of the card
    cases.replace(gc, lost, new, store, "customer lost it")  # balance moved, old card blocked
    cases.reverse(gc, card, "H1234", store, "charged twice") # one transaction undone, once ever
    cases.adjust(gc, card, "-45.00", store, "loaded 50, not 5")

Built on the ten POSPointe endpoints only, so they work against the production server too.

How a case stays exact:

* every step carries an Idempotency-Key and a ``PosRef`` marker derived from the case
  (``key``, or by default the cards' ``cardref`` or the transaction's hostRef): the cards'
  own histories on the server are the case's journal, so running the same case again
  after a crash, a lost answer or Ctrl-C, on any machine, by any colleague, finds the
  steps already applied and applies each step once;
* a step whose outcome is unknown stops the case with :class:`CaseIncomplete`: run it
  again to finish it;
* a step the server declines after earlier steps moved money undoes them with keyed
  compensating calls, and :class:`CaseError` says what was done and undone: money is never
  created or lost;
* a transaction is reversed once, ever: its reversal is marked with its hostRef, found in
  the card's history before and after reversing (two colleagues racing: the later
  reversal undoes itself).

Every step is written to the audit log with the case id (``audit.read(log, case_id=...)``).

Approval: a case that moves more than the signed-in user's own limit (``verify().max_amount``)
needs ``approver=``, a client signed in as a user allowed the amount; each step above the
limit is sent under the approver (whose role and limit the server applies) and audited with
``approved_by``. Without one, :class:`~giftcard_toolkit.errors.ApprovalRequired` is raised
before anything is sent. A case stopped half-way is finished by running it again with the
same approver (its steps are then answered or found, never applied twice).
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import polars as pl

from giftcard_toolkit import _protocol, errors, models
from giftcard_toolkit.analysis import frames
from giftcard_toolkit.cards import Card
from giftcard_toolkit.client import CardLike
from giftcard_toolkit.ops import operations
from giftcard_toolkit.ops.approval import Approval
from giftcard_toolkit.ops.audit import AuditLog
from giftcard_toolkit.rules import is_money_amount

# How often a step answered 409 (the same step in flight from another thread or
# colleague with the same key) is asked again before the case stops.
CONFLICT_RETRIES = 6
# The contract's limit per sale or reload (status 100012): a replacement loads the new
# card, and puts money back on the old one, in parts of at most this much.
MAX_LOAD = Decimal("500.00")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class AmbiguousHistory(UserWarning):
    """The server sends no ``cardref``: the history was matched on the last four digits,
    which other cards share."""


class CaseError(errors.GiftCardError):
    """A case that was refused or stopped; ``steps`` lists what was applied (and undone)."""

    def __init__(self, message: str, steps: Sequence[Step] = ()) -> None:
        self.steps = tuple(steps)
        if self.steps:
            message += "\nsteps: " + "; ".join(str(s) for s in self.steps)
        super().__init__(message)


class CaseIncomplete(CaseError):
    """A step's outcome is unknown (its answer was lost): run the same case again, with the
    same key, to finish it. Nothing is applied twice."""


@dataclass(frozen=True)
class Step:
    """One applied step of a case."""

    name: str  # e.g. "take", "give", "block", "undo-take", "reverse"
    operation: str  # sell | reload | redeem | block | unblock
    card: str  # masked
    amount: Decimal | None = None
    host_ref: str | None = None
    earlier: bool = False  # found applied by an earlier run of the case

    def __str__(self) -> str:
        amount = f" {self.amount:.2f}" if self.amount is not None else ""
        ref = f" hostRef {self.host_ref}" if self.host_ref else ""
        again = " (earlier run)" if self.earlier else ""
        return f"{self.name}: {self.operation} {self.card}{amount}{ref}{again}"


@dataclass(frozen=True)
class Replacement:
    case_id: str
    moved: Decimal
    old_card: str
    new_card: str
    old_balance: Decimal
    new_balance: Decimal
    steps: tuple[Step, ...] = field(repr=False)

    @property
    def host_refs(self) -> list[str]:
        return [s.host_ref for s in self.steps if s.host_ref]


@dataclass(frozen=True)
class Reversal:
    case_id: str
    card: str
    reversed_host_ref: str
    reversed_type: str
    amount: Decimal
    host_ref: str
    balance: Decimal
    steps: tuple[Step, ...] = field(repr=False)


@dataclass(frozen=True)
class Adjustment:
    case_id: str
    card: str
    amount: Decimal  # signed: + loaded, - taken off
    host_ref: str
    balance: Decimal
    steps: tuple[Step, ...] = field(repr=False)


# ------------------------------------------------------------------ history


def history(
    client: Any, card: CardLike, since: date | None = None, until: date | None = None
) -> pl.DataFrame:
    """Every transaction of ``card`` in every store the user can see, oldest first, in
    ``frames.TRANSACTION_SCHEMA``. Matched by the card's ``cardref``; a server that sends
    none is matched on the last four digits with an :class:`AmbiguousHistory` warning."""
    balance = client.balance(card)
    return _histories(client, [balance], since, until)[0]


def _histories(
    client: Any, balances: Sequence[models.Balance], since: date | None, until: date | None
) -> list[pl.DataFrame]:
    """The histories of several cards from one fetch of the batches."""
    if all(b.activated_at is None for b in balances):
        return [frames.transactions_frame([]) for _ in balances]
    _, txs = cast(
        tuple[pl.DataFrame, pl.DataFrame],
        frames.fetch(client, since=since, until=until, progress=False),
    )
    found = []
    for balance in balances:
        if balance.card_ref:
            mine = pl.col("card_ref") == balance.card_ref
        else:
            warnings.warn(
                f"the server sends no cardref: the history of card ending {balance.card_last4} "
                "is matched on its last four digits, and other cards ending so are mixed in",
                AmbiguousHistory,
                stacklevel=3,
            )
            mine = pl.col("card_last4") == balance.card_last4
        found.append(txs.filter(mine).sort("at", "host_ref"))
    return found


# ------------------------------------------------------------------ running a case


class _Case:
    """A case's identity, its keyed and marked steps, and what they did."""

    def __init__(
        self,
        client: Any,
        kind: str,
        identity: str,
        key: str | None,
        audit: AuditLog | None,
        approver: Any = None,
    ) -> None:
        self.client = client
        self.approval = Approval(client, approver)
        self.kind = kind
        if key is not None and _SAFE_KEY.match(key):
            self.id = key
        else:
            material = f"{kind}:{key if key is not None else identity}"
            self.id = hashlib.sha256(material.encode()).hexdigest()[:20]
        self.audit = audit
        self.steps: list[Step] = []

    def marker(self, step: str) -> str:
        """The PosRef a step's transaction carries: how a later run finds it."""
        return f"case {self.id} {step}"

    def key(self, step: str) -> str:
        """The step's Idempotency-Key (its first word: a case does each step once)."""
        return f"case-{self.id}-{step.split()[0]}"

    @staticmethod
    def found(history: pl.DataFrame, marker: str) -> dict[str, Any] | None:
        rows = history.filter(pl.col("pos_ref") == marker)
        return None if rows.is_empty() else rows.row(0, named=True)

    def earlier(self, step: str, card: CardLike, tx: dict[str, Any]) -> None:
        """A step an earlier run applied, as the card's history shows it."""
        name = "sell" if tx["type"] == "sale" else str(tx["type"])
        self.steps.append(
            Step(step, name, _masked(card), tx["amount"], tx["host_ref"], earlier=True)
        )

    def send(
        self,
        step: str,
        name: str,
        card: CardLike,
        *,
        amount: Decimal | None = None,
        store: Any = None,
        reason: str | None = None,
    ) -> operations.Outcome:
        """Apply one step; a definite outcome is answered, an unknown one stops the case."""
        op = operations.Operation(
            name,
            card,
            amount=amount,
            store=store,
            reason=reason,
            pos_ref=self.marker(step) if name in operations.MONEY_OPERATIONS else None,
            key=self.key(step),
        )
        sender, approved_by = self.approval.sender(name, amount)
        for attempt in range(CONFLICT_RETRIES):
            outcome = operations.apply(sender, op)
            if not isinstance(outcome.error, errors.IdempotencyConflict):
                break
            time.sleep(0.1 * 2**attempt)  # the same step is in flight elsewhere: its answer
        self._record(op, outcome, reason, approved_by)
        if outcome.status in ("approved", "partial"):
            moved = outcome.moved if name in operations.MONEY_OPERATIONS else None
            self.steps.append(
                Step(step, name, op.masked, moved, outcome.host_ref, earlier=outcome.replayed)
            )
        elif not outcome.definite:
            raise CaseIncomplete(
                f"{self.kind} case {self.id}: step {step!r} ({name} {op.masked}) "
                f"may or may not have been applied ({outcome.description}); run the same "
                "case again (with the same approver, if it had one) to finish it: nothing "
                "is applied twice",
                self.steps,
            )
        return outcome

    def _record(
        self,
        op: operations.Operation,
        outcome: operations.Outcome,
        why: Any,
        approved_by: str | None,
    ) -> None:
        if self.audit is None:
            return
        self.audit.record(
            user=getattr(self.client, "username", "?"),
            approved_by=approved_by,
            operation=f"{self.kind} {op.name}",
            outcome=outcome.status,
            card=op.card if isinstance(op.card, Card) else None,
            amount=op.amount,
            store_id=None if op.store is None else _protocol.store_id(op.store),
            host_ref=outcome.host_ref,
            statuscode=outcome.statuscode,
            description=outcome.description if why is None else f"{outcome.description}: {why}",
            idempotency_key=op.key,
            case_id=self.id,
        )

    def fail(self, message: str) -> CaseError:
        return CaseError(f"{self.kind} case {self.id}: {message}", self.steps)


def _masked(card: CardLike) -> str:
    return card.masked if isinstance(card, Card) else "(token)"


def _reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise errors.InvalidInput("a reason is required: say why, for the audit log and batch")
    return " ".join(reason.split())


def _load_name(balance: models.Balance) -> str:
    return "sell" if balance.state == "unsold" else "reload"


# ------------------------------------------------------------------ replace


def replace(
    client: Any,
    old: CardLike,
    new: CardLike,
    store: Any,
    reason: str,
    key: str | None = None,
    audit_log: str | Path | AuditLog | None = None,
    approver: Any = None,
) -> Replacement:
    """Move the whole balance of ``old`` onto ``new`` (a sale when ``new`` was never sold,
    a reload when it is active), then block ``old`` with a reason naming the new card.
    ``approver``: see the module docstring (a balance above the user's own limit).

    Steps: (unblock ``old`` if it was blocked) → take (one redemption from ``old``) → give
    (a sale or reload of ``new``, in parts of at most ``MAX_LOAD``: ``give``, ``give-2``...)
    → block ``old``. A declined part undoes the others: what reached ``new`` is taken back
    (``undo-give``) and the whole amount reloaded onto ``old`` (``undo-take``...).
    """
    why = _reason(reason)
    store_id = _protocol.store_id(store)
    before_old, before_new = client.balance(old), client.balance(new)
    same_ref = before_old.card_ref is not None and before_old.card_ref == before_new.card_ref
    if same_ref or (isinstance(old, Card) and isinstance(new, Card) and old.number == new.number):
        raise errors.InvalidInput("the new card is the old card: replace it with another card")
    identity = f"{before_old.card_ref or client.derived_key(_number(old))}>" + (
        before_new.card_ref or client.derived_key(_number(new))
    )
    case = _Case(client, "replace", identity, key, AuditLog.of(audit_log), approver)
    old_history, new_history = _histories(client, [before_old, before_new], None, None)
    took = case.found(old_history, case.marker("take"))
    undo = _Undo(case, old, new, store_id, why, old_history, new_history)
    if took is not None and undo.started():
        # An earlier run was undoing this case when it stopped: finish the undo first.
        undo.finish(Decimal(took["amount"]), blocked=True)
        raise case.fail(
            "this case was undone earlier (the money went back to the old card): fix what "
            "stopped it, then start a new case (another key)"
        )
    if took is None:
        amount = before_old.balance
        if amount <= 0:
            raise case.fail(f"card {_masked(old)} holds nothing to move; nothing was sent")
        if before_old.state in ("unsold", "expired"):
            raise case.fail(
                f"card {_masked(old)} is {before_old.state}: its balance cannot be moved; "
                "nothing was sent"
            )
        if before_new.state not in ("unsold", "active"):
            raise case.fail(
                f"cannot move money onto card {_masked(new)}: it is {before_new.state}; "
                "nothing was sent"
            )
    else:
        amount = Decimal(took["amount"])
        case.earlier("take", old, took)
    case.approval.check(amount, f"replacing card {_masked(old)}")
    unblocked = False
    if took is None:
        if before_old.state == "blocked":
            case.send("unblock", "unblock", old, reason=f"replacing the card: {why}")
            unblocked = True
        taken = case.send("take", "redeem", old, amount=amount, store=store_id)
        if taken.status != "approved":
            if unblocked:
                case.send("reblock", "block", old, reason=f"replacement stopped: {why}")
            raise case.fail(f"taking {amount:.2f} from {_masked(old)}: {taken.description}")
    new_balance = None
    for index, part in enumerate(_parts(amount), start=1):
        step = _numbered("give", index)
        gave = case.found(new_history, case.marker(step))
        if gave is not None:
            case.earlier(step, new, gave)
            undo.given += part
            continue
        name = _load_name(before_new) if index == 1 else "reload"
        given = case.send(step, name, new, amount=part, store=store_id)
        if given.status != "approved":
            undo.finish(amount, blocked=unblocked or before_old.state == "blocked")
            raise case.fail(
                f"card {_masked(new)} refused {part:.2f} ({given.description}); the money "
                f"was put back on {_masked(old)}: nothing moved"
            )
        undo.given += part
        new_balance = given.balance
    last4 = _masked(new)[-4:]
    blocked = case.send("block", "block", old, reason=f"replaced by card ending {last4}: {why}")
    if blocked.status == "declined" and blocked.statuscode != "100015":  # 100015: blocked already
        raise case.fail(f"the money moved, but blocking {_masked(old)}: {blocked.description}")
    return Replacement(
        case_id=case.id,
        moved=amount,
        old_card=_masked(old),
        new_card=_masked(new),
        old_balance=client.balance(old).balance,
        new_balance=new_balance if new_balance is not None else client.balance(new).balance,
        steps=tuple(case.steps),
    )


def _parts(amount: Decimal) -> list[Decimal]:
    """``amount`` as loads of at most ``MAX_LOAD`` (the same parts on every run)."""
    whole, rest = divmod(amount, MAX_LOAD)
    return [MAX_LOAD] * int(whole) + ([rest] if rest else [])


def _numbered(step: str, index: int) -> str:
    return step if index == 1 else f"{step}-{index}"


class _Undo:
    """Putting a replacement's money back: take back from the new card what reached it,
    reload the whole amount onto the old one in parts, block it again. Every step is
    found in the cards' histories first, so an undo stopped half-way is finished, never
    done twice."""

    def __init__(
        self,
        case: _Case,
        old: CardLike,
        new: CardLike,
        store_id: str,
        why: str,
        old_history: pl.DataFrame,
        new_history: pl.DataFrame,
    ) -> None:
        self.case, self.old, self.new, self.store_id, self.why = case, old, new, store_id, why
        self.old_history, self.new_history = old_history, new_history
        self.given = Decimal(0)  # what reached the new card

    def started(self) -> bool:
        marks = (self.case.marker("undo-give"), self.case.marker("undo-take"))
        return any(
            self.case.found(history, mark) is not None
            for history in (self.old_history, self.new_history)
            for mark in marks
        )

    def finish(self, amount: Decimal, blocked: bool) -> None:
        if self.given == 0:  # an earlier run's gives, from the new card's history
            for index in range(1, len(_parts(amount)) + 1):
                gave = self.case.found(self.new_history, self.case.marker(_numbered("give", index)))
                self.given += Decimal(gave["amount"]) if gave is not None else 0
        if self.given and not self._done(self.new_history, "undo-give", self.new):
            back = self.case.send(
                "undo-give", "redeem", self.new, amount=self.given, store=self.store_id
            )
            self._check(back, f"taking {self.given:.2f} back from {_masked(self.new)}")
        for index, part in enumerate(_parts(amount), start=1):
            step = _numbered("undo-take", index)
            if not self._done(self.old_history, step, self.old):
                put = self.case.send(step, "reload", self.old, amount=part, store=self.store_id)
                self._check(put, f"putting {part:.2f} back on {_masked(self.old)}")
        if blocked:
            self.case.send("reblock", "block", self.old, reason=f"replacement undone: {self.why}")

    def _done(self, history: pl.DataFrame, step: str, card: CardLike) -> bool:
        found = self.case.found(history, self.case.marker(step))
        if found is not None:
            self.case.earlier(step, card, found)
        return found is not None

    def _check(self, outcome: operations.Outcome, what: str) -> None:
        if outcome.status != "approved":
            raise self.case.fail(
                f"{what} was refused ({outcome.description}) while undoing the replacement: "
                "the money is not where it was; fix the cause, then run this same case "
                "again to finish the undo"
            )


def _number(card: CardLike) -> str:
    return card.number if isinstance(card, Card) else card.token


# ------------------------------------------------------------------ reverse


_OPPOSITE = {"redeem": "reload", "reload": "redeem", "sale": "redeem"}


def reverse(
    client: Any,
    card: CardLike,
    host_ref: str,
    store: Any,
    reason: str,
    key: str | None = None,
    audit_log: str | Path | AuditLog | None = None,
    approver: Any = None,
) -> Reversal:
    """Undo one transaction of ``card`` by its opposite (a redemption by a reload; a reload
    or a sale by a redemption of its amount). Once only, ever: a transaction reversed
    before (by anybody using this toolkit) is refused, naming the reversal. ``approver``:
    see the module docstring (an amount above the user's own limit)."""
    why = _reason(reason)
    store_id = _protocol.store_id(store)
    if not isinstance(host_ref, str) or not host_ref.strip():
        raise errors.InvalidInput("host_ref must be the hostRef of the transaction to reverse")
    host_ref = host_ref.strip()
    balance = client.balance(card)
    case = _Case(client, "reverse", host_ref, key, AuditLog.of(audit_log), approver)
    (past,) = _histories(client, [balance], None, None)
    target = past.filter(pl.col("host_ref") == host_ref)
    if target.is_empty():
        raise case.fail(
            f"hostRef {host_ref} is not a transaction of card {_masked(card)} (unknown, or "
            "another card's): pick one from cases.history(); nothing was sent"
        )
    tx = target.row(0, named=True)
    if str(tx["pos_ref"] or "").startswith(f"case {case.id} "):
        raise case.fail(f"hostRef {host_ref} is this case's own step; nothing was sent")
    mark = f"reversal {host_ref}"
    earlier = _reversals(past, host_ref)
    mine = [r for r in earlier if r["pos_ref"] == case.marker(mark)]
    if mine:
        case.earlier(mark, card, mine[0])
        return _reversal(case, card, tx, mine[0]["host_ref"], balance.balance)
    if earlier:
        raise case.fail(
            f"hostRef {host_ref} was reversed already (by hostRef {earlier[0]['host_ref']}); "
            "nothing was sent"
        )
    amount, name = Decimal(tx["amount"]), _OPPOSITE[tx["type"]]
    if name == "redeem" and balance.balance < amount:
        raise case.fail(
            f"reversing {tx['type']} {host_ref} takes {amount:.2f} off card {_masked(card)}, "
            f"which holds {balance.balance:.2f}; nothing was sent"
        )
    case.approval.check(amount, f"reversing {tx['type']} {host_ref}")
    done = case.send(mark, name, card, amount=amount, store=store_id, reason=why)
    if done.status != "approved":
        raise case.fail(f"reversing {host_ref}: {done.description}; nothing moved")
    # Two colleagues reversing at once, each under their own keys: the earliest stands.
    (after,) = _histories(client, [balance], None, None)
    racing = _reversals(after, host_ref)
    if len(racing) > 1 and racing[0]["host_ref"] != done.host_ref:
        case.send("undo-reversal", _OPPOSITE[name], card, amount=amount, store=store_id)
        raise case.fail(
            f"hostRef {host_ref} was reversed at the same time by hostRef "
            f"{racing[0]['host_ref']}: this reversal was undone"
        )
    return _reversal(case, card, tx, done.host_ref or "", done.balance)


def _reversals(history: pl.DataFrame, host_ref: str) -> list[dict[str, Any]]:
    """The reversals of ``host_ref`` in a card's history, earliest first."""
    suffix = f" reversal {host_ref}"
    return history.filter(pl.col("pos_ref").str.ends_with(suffix)).rows(named=True)


def _reversal(
    case: _Case, card: CardLike, tx: dict[str, Any], host_ref: str, balance: Decimal | None
) -> Reversal:
    return Reversal(
        case_id=case.id,
        card=_masked(card),
        reversed_host_ref=tx["host_ref"],
        reversed_type=tx["type"],
        amount=Decimal(tx["amount"]),
        host_ref=host_ref,
        balance=balance if balance is not None else case.client.balance(card).balance,
        steps=tuple(case.steps),
    )


# ------------------------------------------------------------------ adjust


def adjust(
    client: Any,
    card: CardLike,
    amount: Decimal | int | str,
    store: Any,
    reason: str,
    key: str | None = None,
    audit_log: str | Path | AuditLog | None = None,
    approver: Any = None,
) -> Adjustment:
    """A signed correction: plus loads the card (a reload), minus takes it off (a
    redemption, never below zero). Pass ``key`` to make a retry of the same correction safe;
    without one each call is a new correction. ``approver``: see the module docstring (an
    amount above the user's own limit; a retry must have the same approver)."""
    why = _reason(reason)
    value = _protocol.money(amount)
    if not is_money_amount(abs(value)):
        raise errors.InvalidInput(
            f"amount {value} must be a non-zero amount with at most 2 decimals, e.g. '-45.00'"
        )
    store_id = _protocol.store_id(store)
    case = _Case(client, "adjust", uuid.uuid4().hex, key, AuditLog.of(audit_log), approver)
    case.approval.check(abs(value), f"adjusting card {_masked(card)} by {value:+,.2f}")
    name = "reload" if value > 0 else "redeem"
    done = case.send("adjust", name, card, amount=abs(value), store=store_id, reason=why)
    if done.status != "approved":
        held = f"; the card holds {done.balance:.2f}" if done.balance is not None else ""
        raise case.fail(f"adjusting by {value:+.2f}: {done.description}{held}; nothing moved")
    return Adjustment(
        case_id=case.id,
        card=_masked(card),
        amount=value,
        host_ref=done.host_ref or "",
        balance=done.balance if done.balance is not None else Decimal(0),
        steps=tuple(case.steps),
    )
