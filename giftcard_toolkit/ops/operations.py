"""One card operation, sent and read back the same way wherever ops start it (a form, a
bulk file's row, a case's step): what was asked, and what came of it.

``apply(client, Operation(...))`` never raises for what the server or the network did: a
decline, a refusal and a failure on the way are outcomes too. ``Outcome.definite`` says
whether the server's answer settles the operation for good (approved, partially
approved, declined, or refused before anything was applied) or whether it may or may not
have been applied and must be sent again, with the same Idempotency-Key, to learn which.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from giftcard_toolkit import errors, models
from giftcard_toolkit.cards import Card
from giftcard_toolkit.client import CardLike

MONEY_OPERATIONS = ("sell", "reload", "redeem")
STATUS_OPERATIONS = ("block", "unblock")
OPERATIONS = ("balance", *MONEY_OPERATIONS, *STATUS_OPERATIONS)
# Outcomes the server's answer settles; anything else ("error") is sent again.
DEFINITE = ("approved", "partial", "declined", "rejected")


@dataclass(frozen=True, repr=False)
class Operation:
    """What to do to one card. ``key`` is the Idempotency-Key of a money or status change."""

    name: str
    card: CardLike
    amount: Decimal | None = None
    store: Any = None  # a store id or a Store
    reason: str | None = None
    pos_ref: str | None = None
    accept_partial: bool = False
    key: str | None = None

    def __post_init__(self) -> None:
        if self.name not in OPERATIONS:
            raise errors.InvalidInput(f"operation must be one of {', '.join(OPERATIONS)}")

    @property
    def masked(self) -> str:
        return self.card.masked if isinstance(self.card, Card) else "(token)"

    def __repr__(self) -> str:
        return f"Operation({self.name} {self.masked})"


@dataclass(frozen=True)
class Outcome:
    """What came of an :class:`Operation`."""

    status: str  # approved | partial | declined | rejected | error
    statuscode: str | None = None
    description: str | None = None
    host_ref: str | None = None
    balance: Decimal | None = None  # what the card holds afterwards, when the answer says
    moved: Decimal | None = None  # the amount applied (a partial redemption: less)
    active: bool | None = None  # the card's state, after a balance check or status change
    replayed: bool = False  # the stored answer to an earlier attempt with the same key
    error: errors.GiftCardError | None = None

    @property
    def definite(self) -> bool:
        return self.status in DEFINITE


def apply(client: Any, op: Operation) -> Outcome:
    """Send ``op`` through ``client`` (a ``GiftCardClient``); its outcome, never raised."""
    try:
        return _send(client, op)
    except errors.InsufficientFunds as declined:
        return _declined(declined, balance=declined.balance)
    except errors.Declined as declined:
        return _declined(declined)
    except (errors.RequestRejected, errors.InvalidInput) as refused:
        return Outcome("rejected", description=str(refused), error=refused)
    except errors.GiftCardError as failed:
        return Outcome("error", description=str(failed), error=failed)


def _declined(declined: errors.Declined, balance: Decimal | None = None) -> Outcome:
    return Outcome(
        "declined",
        statuscode=declined.statuscode,
        description=declined.description,
        balance=balance,
        error=declined,
    )


def _send(client: Any, op: Operation) -> Outcome:
    if op.name == "balance":
        balance: models.Balance = client.balance(op.card)
        return Outcome(
            "approved",
            statuscode="000000",
            description="Success",
            balance=balance.balance,
            active=balance.active,
        )
    if op.name in STATUS_OPERATIONS:
        change: models.StatusChange = client.change_status(
            op.card, op.name == "unblock", op.reason or "", idempotency_key=op.key
        )
        return Outcome(
            "approved",
            statuscode="000000",
            description="Success",
            balance=change.balance,
            active=change.active,
            replayed=change.replayed,
        )
    if op.name == "redeem":
        redemption: models.Redemption = client.redeem(
            op.card,
            op.amount,
            op.store,
            pos_ref=op.pos_ref,
            accept_partial=op.accept_partial,
            idempotency_key=op.key,
        )
        return Outcome(
            "partial" if redemption.partial else "approved",
            statuscode="000001" if redemption.partial else "000000",
            description="Partially approved" if redemption.partial else "Success",
            host_ref=redemption.host_ref,
            balance=redemption.new_balance,
            moved=redemption.approved,
            replayed=redemption.replayed,
        )
    send = client.sell if op.name == "sell" else client.reload
    load: models.Load = send(
        op.card, op.amount, op.store, pos_ref=op.pos_ref, idempotency_key=op.key
    )
    return Outcome(
        "approved",
        statuscode="000000",
        description="Success",
        host_ref=load.host_ref,
        balance=load.balance,
        moved=op.amount,
        replayed=load.replayed,
    )
