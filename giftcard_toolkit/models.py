"""Typed results of the API, read the tolerant way.

The production server may answer in another letter case (``HostRef``, ``NewBalance``) and
with fields this toolkit does not know: names are matched case-insensitively and unknown
fields are kept in ``extra``. Money is ``Decimal``; times are timezone-aware (up to 7
fractional digits, as .NET writes them; a time without offset is taken as UTC).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from giftcard_toolkit.cards import mask
from giftcard_toolkit.errors import ProtocolError


class Fields:
    """A response object whose fields are read by name in any letter case."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self._by_lower = {str(k).lower(): (k, v) for k, v in body.items()}
        self._used: set[str] = set()

    def get(self, name: str, default: Any = None) -> Any:
        key = name.lower()
        self._used.add(key)
        found = self._by_lower.get(key)
        return default if found is None or found[1] is None else found[1]

    def require(self, name: str) -> Any:
        value = self.get(name)
        if value is None:
            raise ProtocolError(f"the server's answer has no {name!r} field")
        return value

    def money(self, name: str, *, required: bool = True) -> Decimal:
        value = self.require(name) if required else self.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int | Decimal | float | str):
            raise ProtocolError(f"{name!r} in the server's answer is not a number")
        return Decimal(str(value))

    def time(self, name: str) -> datetime | None:
        return parse_time(self.get(name))

    def extra(self) -> dict[str, Any]:
        """The fields nobody read: kept so that nothing the server sent is lost."""
        return {k: v for lower, (k, v) in self._by_lower.items() if lower not in self._used}


def parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise ProtocolError(f"{value!r} in the server's answer is not an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _masked(value: Any) -> str:
    """A card as the server showed it, masked again in case a server sent more digits."""
    text = str(value or "")
    return mask(text) if text else ""


@dataclass(frozen=True)
class Health:
    healthy: bool
    status: str
    version: str | None = None
    time: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Store:
    id: str
    name: str = ""
    address: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # Where it trades (ISO 3166, e.g. "US-NY"), for unclaimed-property rules; "" when the
    # server does not say (an added field: older servers send none).
    jurisdiction: str = field(default="", compare=False)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Store:
        f = Fields(body)
        return cls(
            str(f.require("franchiseeid")).lower(),
            str(f.get("storename", "")),
            str(f.get("storeaddress", "")),
            jurisdiction=str(f.get("jurisdiction", "")).strip().upper(),
            extra=f.extra(),
        )


def _limit(value: Any) -> Decimal | None:
    """A user's limit as the server sent it; None when absent or not a positive amount
    (the server still enforces its own word on each request)."""
    if (
        value is None
        or isinstance(value, bool)
        or not isinstance(value, int | float | str | Decimal)
    ):
        return None
    try:
        limit = Decimal(str(value))
    except ArithmeticError:
        return None
    return limit if limit.is_finite() and limit > 0 else None


@dataclass(frozen=True)
class Verification:
    """Who the credentials are and what they may do. ``role`` (``clerk`` or ``analyst``:
    read only) and ``max_amount`` (the user's own limit per sale, reload or redemption)
    are None when the server does not say (the production server may not): then the
    server's answers to each request are the only word on what is allowed."""

    username: str
    stores: tuple[Store, ...]
    role: str | None = None
    max_amount: Decimal | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def read_only(self) -> bool:
        """Whether the server said this user may only read (role ``analyst``)."""
        return self.role == "analyst"

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Verification:
        f = Fields(body)
        stores = tuple(Store.parse(s) for s in f.get("stores", []))
        role = f.get("role")
        limit = _limit(f.get("maxamount"))
        return cls(
            str(f.get("username", "")),
            stores,
            None if role is None else str(role).lower(),
            limit,
            _rest(f),
        )


@dataclass(frozen=True)
class Token:
    """A card token: a stand-in for the card number, valid until ``expires_at``.

    ``tokenize()`` returns one; pass it wherever a card goes. A token obtained elsewhere is
    wrapped as ``Token(value, expires_at)``: the client never takes a plain string as a
    token, since card numbers and tokens are both 16 digits.
    """

    token: str = field(repr=False)
    expires_at: datetime

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Token:
        f = Fields(body)
        expires = f.time("exp")
        if expires is None:
            raise ProtocolError("the token answer has no 'exp' time")
        return cls(str(f.require("token")), expires)

    def __repr__(self) -> str:
        return f"Token(token='****', expires_at={self.expires_at.isoformat()!r})"


@dataclass(frozen=True)
class Balance:
    card_last4: str
    balance: Decimal
    active: bool
    activated_at: datetime | None
    last_used_at: datetime | None
    expires_at: datetime | None
    # The server's pseudonym of the card, as batch rows carry it (None if not sent).
    card_ref: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def state(self) -> str:
        """``active``, ``unsold`` (never activated), ``expired`` or ``blocked``."""
        if self.active:
            return "active"
        if self.activated_at is None:
            return "unsold"
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            return "expired"
        return "blocked"

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Balance:
        f = Fields(body)
        return cls(
            card_last4=str(f.get("cardending", ""))[-4:],
            balance=f.money("balance"),
            active=bool(f.get("status", False)),
            activated_at=f.time("activated"),
            last_used_at=f.time("lastused"),
            expires_at=f.time("expire"),
            card_ref=f.get("cardref"),
            extra=_rest(f),
        )


def _store_of(f: Fields) -> Store:
    return Store(
        str(f.get("franchiseeid", "")).lower(),
        str(f.get("storename", "")),
        str(f.get("storeaddress", "")),
    )


def _rest(f: Fields) -> dict[str, Any]:
    f.get("statuscode")
    f.get("description")
    return f.extra()


@dataclass(frozen=True)
class Load:
    """A sale (first load) or a reload."""

    host_ref: str
    card: str
    balance: Decimal
    store: Store
    at: datetime | None
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # The server answered an Idempotency-Key it had seen: this is the first attempt's
    # answer again, and nothing moved now.
    replayed: bool = field(default=False, compare=False)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Load:
        f = Fields(body)
        f.get("status")
        return cls(
            host_ref=str(f.require("hostref")),
            card=_masked(f.get("cardno")),
            balance=f.money("balance"),
            store=_store_of(f),
            at=f.time("datetimereloaded"),
            extra=_rest(f),
        )


@dataclass(frozen=True)
class Redemption:
    host_ref: str
    card: str
    approved: Decimal
    previous_balance: Decimal
    new_balance: Decimal
    partial: bool
    store: Store
    at: datetime | None
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # The server answered an Idempotency-Key it had seen: this is the first attempt's
    # answer again, and nothing moved now.
    replayed: bool = field(default=False, compare=False)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Redemption:
        f = Fields(body)
        f.get("status")
        return cls(
            host_ref=str(f.require("hostref")),
            card=_masked(f.get("cardno")),
            approved=f.money("approvedbalance"),
            previous_balance=f.money("previousbalance"),
            new_balance=f.money("newbalance"),
            partial=str(f.get("statuscode")) == "000001",
            store=_store_of(f),
            at=f.time("datetimeradeemed"),
            extra=_rest(f),
        )


@dataclass(frozen=True)
class StatusChange:
    card: str
    balance: Decimal
    active: bool
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # The server answered an Idempotency-Key it had seen: this is the first attempt's
    # answer again, and nothing moved now.
    replayed: bool = field(default=False, compare=False)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> StatusChange:
        f = Fields(body)
        return cls(_masked(f.get("card")), f.money("balance"), bool(f.require("status")), _rest(f))


@dataclass(frozen=True)
class Transaction:
    host_ref: str
    type: str
    card: str
    card_ref: str | None
    amount: Decimal
    previous_balance: Decimal
    new_balance: Decimal
    pos_ref: str | None
    at: datetime | None
    username: str | None
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def card_last4(self) -> str:
        return self.card[-4:]

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Transaction:
        f = Fields(body)
        return cls(
            host_ref=str(f.require("hostref")),
            type=str(f.require("type")).lower(),
            card=_masked(f.get("cardno")),
            card_ref=f.get("cardref"),
            amount=f.money("amount"),
            previous_balance=f.money("previousbalance"),
            new_balance=f.money("newbalance"),
            pos_ref=f.get("posref"),
            at=f.time("datetime"),
            username=f.get("username"),
            extra=f.extra(),
        )


@dataclass(frozen=True)
class Batch:
    store_id: str
    store_name: str
    id: str
    status: str
    opened_at: datetime | None
    closed_at: datetime | None
    transaction_count: int
    sold: Decimal
    reloaded: Decimal
    redeemed: Decimal
    net: Decimal
    transactions: tuple[Transaction, ...] = field(default=(), repr=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # The server answered an Idempotency-Key it had seen: this is the first attempt's
    # answer again, and nothing moved now.
    replayed: bool = field(default=False, compare=False)

    @classmethod
    def parse(cls, body: Mapping[str, Any], store_id: str, store_name: str) -> Batch:
        f = Fields(body)
        transactions = tuple(Transaction.parse(t) for t in f.get("transactions") or [])
        return cls(
            store_id=store_id,
            store_name=store_name,
            id=str(f.require("batchid")),
            status=str(f.require("status")).lower(),
            opened_at=f.time("opened"),
            closed_at=f.time("closed"),
            transaction_count=int(f.get("transactioncount", len(transactions))),
            sold=f.money("soldamount", required=False),
            reloaded=f.money("reloadedamount", required=False),
            redeemed=f.money("redeemedamount", required=False),
            net=f.money("netamount", required=False),
            transactions=transactions,
            extra=f.extra(),
        )


def parse_batches(body: Mapping[str, Any]) -> list[Batch]:
    """The batches of a ``GET /Batch`` or batch-close envelope."""
    f = Fields(body)
    store_id = str(f.get("franchiseeid", "")).lower()
    store_name = str(f.get("storename", ""))
    return [Batch.parse(b, store_id, store_name) for b in f.get("batches") or []]
