"""Everything the toolkit raises, in one hierarchy::

    GiftCardError
    ├── ConfigurationError        a missing setting (GIFTCARD_URL, a card key...)
    ├── InvalidInput              bad input caught before sending (also a ValueError)
    │   └── FloatAmountError      a float amount: money is exact (also a TypeError)
    ├── TransportError            the request may or may not have reached the server
    │   ├── ConnectError          could not connect
    │   └── Timeout               no answer in time
    ├── ProtocolError             an answer the toolkit cannot read
    ├── AuthenticationError       401: missing or wrong credentials
    │   └── TooManyAttempts       429: too many failed sign-ins from here (.retry_after)
    ├── RequestRejected           400: the server could not read the request (.errors);
    │                             413: the body is over the server's limit
    ├── IdempotencyConflict       409: a request with this Idempotency-Key is in flight
    ├── IdempotencyMismatch       422: the Idempotency-Key was used for another request
    ├── ServerError               5xx, and the 999999 system error
    ├── ApprovalRequired          above the signed-in user's own limit, and no approver
    │                             given: nothing was sent (.amount, .limit)
    └── Declined                  the server answered, and said no (.statuscode, .body)
        ├── CardNotFound          100001
        ├── CardInactive          100002
        ├── CardExpired           100003
        ├── CardAlreadyActive     100004
        ├── InsufficientFunds     100005 (.balance)
        ├── InvalidAmount         100006
        ├── TokenInvalid          100007
        ├── WrongSecurityCode     100008
        ├── EncryptedDataUnreadable 100009
        ├── StoreNotGranted       100010
        ├── OverLimit             100012 (the server's limits, or the user's own)
        ├── BatchTotalsMismatch   100013 (.transaction_count, .net_amount: the server's)
        ├── CardLocked            100014
        ├── StatusUnchanged       100015
        ├── NoOpenBatch           100016
        └── NotPermitted          100017: the user's role may only read

Messages say what was wrong and what to do. None ever holds a full card number, a
security code or a token: cards appear masked to their last four digits.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class GiftCardError(Exception):
    """Base of every error the toolkit raises."""


class ConfigurationError(GiftCardError):
    """A setting the toolkit needs is missing or malformed."""


class InvalidInput(GiftCardError, ValueError):
    """Input the toolkit refused before sending anything."""


class FloatAmountError(InvalidInput, TypeError):
    """A float was given as money: binary floats cannot hold cents exactly."""


class TransportError(GiftCardError):
    """The request failed on the way; it may or may not have been applied."""


class ConnectError(TransportError):
    """The server could not be reached."""


class Timeout(TransportError):
    """The server did not answer in time."""


class ProtocolError(GiftCardError):
    """The server's answer could not be read as the contract describes."""


class _HttpProblem(GiftCardError):
    """An HTTP error answer (4xx/5xx) with its parsed problem body, if any."""

    def __init__(self, message: str, *, status: int, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class AuthenticationError(_HttpProblem):
    """401: check the username and password (GIFTCARD_USERNAME / GIFTCARD_PASSWORD)."""


class TooManyAttempts(AuthenticationError):
    """429: too many failed authentications for this username from this address; the
    server refuses every request of the pair, even with the right password, for
    ``retry_after`` seconds (None when it did not say), longer while failures go on."""

    def __init__(
        self, message: str, *, status: int, body: Any = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.retry_after = retry_after


class RequestRejected(_HttpProblem):
    """400: the server could not read the request; ``errors`` maps each field to why.
    Also 413: the body is larger than the server reads (``status`` says which)."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: Any = None,
        errors: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.errors = errors or {}


class IdempotencyConflict(_HttpProblem):
    """409: the first request with this Idempotency-Key is still in flight; retry later."""


class IdempotencyMismatch(_HttpProblem):
    """422: this Idempotency-Key was used for a different request, which may have been
    applied: check the card or the batch before sending this one under a new key."""


class ServerError(_HttpProblem):
    """The server failed (5xx or statuscode 999999); retrying later may help."""


class Declined(GiftCardError):
    """The server answered and declined: ``statuscode``, ``description`` and the ``body``."""

    statuscode = ""
    advice = ""

    def __init__(
        self, statuscode: str, description: str, body: dict[str, Any], card: str | None = None
    ) -> None:
        self.statuscode = statuscode
        self.description = description
        self.body = body
        self.card = card  # masked
        where = f" for card {card}" if card else ""
        advice = f": {self.advice}" if self.advice else ""
        super().__init__(f"Declined {statuscode} ({description}){where}{advice}")


class CardNotFound(Declined):
    advice = "check the card number"


class CardInactive(Declined):
    advice = "the card was never sold or is blocked; sell it, or unblock it with change_status"


class CardExpired(Declined):
    advice = "the card is past its expiry date and cannot be used"


class CardAlreadyActive(Declined):
    advice = "the card was sold already; reload it instead"


class InsufficientFunds(Declined):
    advice = "redeem less, or pass accept_partial=True to take what the card holds"

    @property
    def balance(self) -> Decimal | None:
        """What the card holds, as the server reported it."""
        for key, value in self.body.items():
            if key.lower() == "balance" and value is not None:
                return Decimal(str(value))
        return None

    def __str__(self) -> str:
        held = self.balance
        return super().__str__() + (f" (card holds ${held:.2f})" if held is not None else "")


class InvalidAmount(Declined):
    advice = "amounts must be positive with at most 2 decimals"


class TokenInvalid(Declined):
    advice = "the token is unknown, expired or another user's; tokenize the card again"


class WrongSecurityCode(Declined):
    advice = "check the 4-digit security code on the card (5 wrong tries lock the card)"


class EncryptedDataUnreadable(Declined):
    advice = "the server could not decrypt the card: check that both sides use the same card key"


class StoreNotGranted(Declined):
    advice = "the store is unknown or not granted to this user; see verify().stores"


class OverLimit(Declined):
    advice = (
        "at most 500.00 per sale or reload and 2,000.00 on a card (server defaults), and "
        "a user's own limit where it has one: above that, a user allowed more must approve"
    )


class BatchTotalsMismatch(Declined):
    advice = "nothing was closed; compare your totals with the server's"

    def _figure(self, name: str) -> Any:
        return next((v for k, v in self.body.items() if k.lower() == name), None)

    @property
    def transaction_count(self) -> int | None:
        value = self._figure("transactioncount")
        return None if value is None else int(value)

    @property
    def net_amount(self) -> Decimal | None:
        value = self._figure("netamount")
        return None if value is None else Decimal(str(value))


class CardLocked(Declined):
    advice = "too many wrong security codes: the card is locked for 15 minutes"


class StatusUnchanged(Declined):
    advice = "the card is already in the requested status"


class NoOpenBatch(Declined):
    advice = "the store has no open batch with transactions to close"


class NotPermitted(Declined):
    advice = "nothing was changed: sign in as a user whose role may do this (a clerk)"


class ApprovalRequired(GiftCardError):
    """An amount above the signed-in user's own limit, with no approver to send it: nothing
    was sent. Pass an approver (a client signed in as a user allowed the amount)."""

    def __init__(self, message: str, *, amount: Decimal, limit: Decimal) -> None:
        super().__init__(message)
        self.amount = amount
        self.limit = limit


DECLINES: dict[str, type[Declined]] = {
    "100001": CardNotFound,
    "100002": CardInactive,
    "100003": CardExpired,
    "100004": CardAlreadyActive,
    "100005": InsufficientFunds,
    "100006": InvalidAmount,
    "100007": TokenInvalid,
    "100008": WrongSecurityCode,
    "100009": EncryptedDataUnreadable,
    "100010": StoreNotGranted,
    "100012": OverLimit,
    "100013": BatchTotalsMismatch,
    "100014": CardLocked,
    "100015": StatusUnchanged,
    "100016": NoOpenBatch,
    "100017": NotPermitted,
}
