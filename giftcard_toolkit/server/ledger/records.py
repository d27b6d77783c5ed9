"""The ledger's small value types, its exceptions, and how money, times and answers are
written: what every concern module of the ledger shares, with no rule and no SQL in it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import simplejson

from giftcard_toolkit.cards import mask
from giftcard_toolkit.rules import JURISDICTION, JURISDICTION_EXAMPLE, is_money_amount

Clock = Callable[[], datetime]
Body = dict[str, Any]

CENT = Decimal("0.01")


def utc_now() -> datetime:
    return datetime.now(UTC)


def ts(moment: datetime) -> str:
    """How times are stored: UTC, fixed width, so text order is time order."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def to_cents(amount: Decimal) -> int:
    return int(amount * 100)


def from_cents(cents: int) -> Decimal:
    return (Decimal(cents) / 100).quantize(CENT)


def amount_problem(amount: Decimal) -> bool:
    """True when ``amount`` is not a positive, finite money amount with at most 2 decimals."""
    return not is_money_amount(amount)


def check_jurisdiction(jurisdiction: str) -> None:
    if jurisdiction and not JURISDICTION.match(jurisdiction):
        raise ValueError(
            f"jurisdiction {jurisdiction!r} is not an ISO 3166 code: give a country or a "
            f"subdivision in capitals, e.g. {JURISDICTION_EXAMPLE} (or nothing)"
        )


@dataclass(frozen=True)
class Limits:
    """Per-movement and per-card limits (contract status ``100012``)."""

    max_load: Decimal = Decimal("500.00")
    max_balance: Decimal = Decimal("2000.00")


@dataclass(frozen=True)
class Store:
    id: str
    name: str
    address: str
    jurisdiction: str = ""  # where it trades (``rules.JURISDICTION``); "" when not set


class UserRecord(NamedTuple):
    """What authenticating a user needs: the password hash, the stores, the role, the limit."""

    password_hash: str
    stores: frozenset[str]
    role: str = "clerk"
    max_amount: Decimal | None = None  # the user's own limit per movement; None: none


@dataclass(frozen=True)
class Account:
    """A user as ``admin list-users`` shows it: never the password hash."""

    username: str
    role: str
    stores: tuple[str, ...]
    max_amount: Decimal | None


@dataclass(frozen=True)
class IssuedCard:
    """A card created into a store's stock; the only place its number and code exist."""

    number: str
    security_code: str
    store_id: str

    def __repr__(self) -> str:
        return f"IssuedCard({mask(self.number)!r}, store_id={self.store_id!r})"


@dataclass(frozen=True)
class CardRef:
    """How a request names its card: exactly one of the two is set."""

    token: str | None = None
    encrypted: str | None = None


@dataclass(frozen=True)
class Idempotency:
    """An ``Idempotency-Key`` as the ledger keys it: per user and endpoint."""

    username: str
    endpoint: str
    key: str
    request_hash: str  # the body by the card it names, or as sent when no card resolves
    sent_hash: str  # the body as sent (token digested): still matches once it expired
    resolved: bool = True  # whether request_hash names the card itself


@dataclass(frozen=True)
class Reservation:
    """The answer to :meth:`Ledger.reserve`: go ahead, replay, or refuse."""

    outcome: str  # "new" | "replay" | "mismatch" | "in_flight"
    response: str | None = None
    owner: str | None = None


class Decline(Exception):
    """A contract decline raised inside a transaction; rolled back, then answered."""

    def __init__(self, code: str, **extra: Any) -> None:
        super().__init__(code)
        self.code = code
        self.extra = extra


class WriterStopped(RuntimeError):
    """The writer thread could not give this write an answer: it stopped on an unexpected
    error (or, in the HTTP layer, did not commit in time). The write may have been applied
    or not; a retry with the same ``Idempotency-Key`` is applied once either way."""


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached (or dropped the connection): nothing of the request
    was applied; answered 503, and the next request connects again."""


class IdempotencyLost(RuntimeError):
    """Our idempotency reservation was taken over; the operation was rolled back."""


DESCRIPTIONS = {
    "000000": "Success",
    "000001": "Partially approved",
    "100001": "Card not found",
    "100002": "Card not active",
    "100003": "Card expired",
    "100004": "Card already activated",
    "100005": "Insufficient balance",
    "100006": "Invalid amount",
    "100007": "Token unknown, expired or not yours",
    "100008": "Wrong security code",
    "100009": "Encrypted card data could not be read",
    "100010": "Store unknown or not granted to this user",
    "100012": "Over limit",
    "100013": "Batch totals differ from the expected ones",
    "100014": "Too many wrong security codes: card locked for 15 minutes",
    "100015": "Card already in the requested status",
    "100016": "No open batch to close",
    "100017": "Not permitted for this user's role",
    "999999": "System error",
}


def decline_body(code: str, **extra: Any) -> Body:
    return {"statuscode": code, "description": DESCRIPTIONS[code], "status": False, **extra}


# Made once: simplejson.dumps with options builds a new encoder at every call.
_ENCODER = simplejson.JSONEncoder(use_decimal=True, separators=(",", ":"))


def dumps(body: Body) -> str:
    """JSON text of a response body, money as exact decimal numbers."""
    return _ENCODER.encode(body)


def json_string(text: str | None) -> str:
    """``text`` as ``dumps`` writes it (the same escaping), or ``null``."""
    return "null" if text is None else _QUOTE(text)


def money_json(cents: int) -> str:
    """``from_cents(cents)`` as ``dumps`` writes it, without making a ``Decimal``."""
    whole, part = divmod(abs(cents), 100)
    return f"{'-' if cents < 0 else ''}{whole}.{part:02d}"


_QUOTE = simplejson.encoder.encode_basestring_ascii
RawJSON = simplejson.RawJSON  # text that ``dumps`` puts in as it is: already JSON
