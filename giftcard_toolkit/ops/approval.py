"""Supervisor approval from Python (the till's "manager override").

A user may have a limit of its own per sale, reload or redemption (``verify().max_amount``;
the server declines above it). An amount above it is sent under an *approver*: a second
client, signed in as a user allowed that amount, whose role and limit the server applies
to that one request. Nothing is sent above the limit without one: :class:`Approval`
raises :class:`~giftcard_toolkit.errors.ApprovalRequired` first, naming the limit.

The audit log names both: ``user`` (who signed in) and ``approved_by`` (the approver).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from giftcard_toolkit import errors, models
from giftcard_toolkit.ops import operations


def verification_of(client: Any) -> models.Verification:
    """The client's last ``verify()`` answer, asking the server once when there is none."""
    known: models.Verification | None = getattr(client, "verification", None)
    return known if known is not None else client.verify()


class Approval:
    """Who sends a money movement: the signed-in ``client``, or, above its own limit, the
    ``approver`` (None: amounts above the limit are refused before anything is sent)."""

    def __init__(self, client: Any, approver: Any = None) -> None:
        if approver is not None and approver.username == client.username:
            raise errors.InvalidInput(
                f"the approver is {client.username!r}, the signed-in user: approval needs "
                "a second person, signed in as themselves; nothing was sent"
            )
        self.client = client
        self.approver = approver

    @property
    def limit(self) -> Decimal | None:
        """The signed-in user's own limit (None: none, or a server that does not say)."""
        return verification_of(self.client).max_amount

    def needed(self, operation: str, amount: Decimal | None) -> bool:
        """Whether sending ``operation`` of ``amount`` needs the approver."""
        limit = self.limit
        return (
            operation in operations.MONEY_OPERATIONS
            and amount is not None
            and limit is not None
            and amount > limit
        )

    def check(self, amount: Decimal, what: str) -> None:
        """Refuse ``what`` (of ``amount``, the largest movement it makes) now, before
        anything is sent, when it needs approval that cannot be given."""
        limit = self.limit
        if limit is None or amount <= limit:
            return
        user = self.client.username
        if self.approver is None:
            raise errors.ApprovalRequired(
                f"{what}: {amount:,.2f} is over user {user!r}'s own limit of {limit:,.2f} "
                "per sale, reload or redemption, so it needs approval: pass approver= a "
                "client signed in as a user allowed that amount; nothing was sent",
                amount=amount,
                limit=limit,
            )
        theirs = verification_of(self.approver)
        if theirs.read_only or (theirs.max_amount is not None and amount > theirs.max_amount):
            allowed = (
                "may only read"
                if theirs.read_only
                else f"has a limit of {theirs.max_amount:,.2f} of its own"
            )
            raise errors.ApprovalRequired(
                f"{what}: {amount:,.2f} is over user {user!r}'s own limit of {limit:,.2f}, "
                f"and the approver {self.approver.username!r} {allowed}: ask a user allowed "
                "that amount; nothing was sent",
                amount=amount,
                limit=limit,
            )

    def sender(self, operation: str, amount: Decimal | None) -> tuple[Any, str | None]:
        """(the client to send with, the approver's name when it is the approver's)."""
        if not self.needed(operation, amount):
            return self.client, None
        if self.approver is None:
            assert amount is not None
            self.check(amount, f"{operation} {amount:,.2f}")  # raises: no approver
        return self.approver, self.approver.username
