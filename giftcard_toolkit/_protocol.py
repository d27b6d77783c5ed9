"""The sans-IO core of the client: what to send for each endpoint, and what an answer means.

Nothing here does I/O. Each endpoint is a function that returns a :class:`Call`: the
``httpx.Request`` to send, how to parse its response into a model (or raise the right
error), and whether it may be retried. ``GiftCardClient`` and ``AsyncGiftCardClient``
only send what is built here, so the two can never disagree about the API.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar

import httpx
import simplejson

from giftcard_toolkit import errors, models
from giftcard_toolkit.cards import mask, scrub
from giftcard_toolkit.rules import GUID, GUID_EXAMPLE, IDEMPOTENCY_KEY, is_money_amount

T = TypeVar("T")
APPROVED = ("000000", "000001")
RETRY_STATUSES = (502, 503, 504)


@dataclass(frozen=True)
class Settings:
    """Where the server is and who we are (the password lives only in the header)."""

    base_url: str
    authorization: str = ""

    @classmethod
    def make(cls, base_url: str, username: str, password: str) -> Settings:
        if not base_url:
            raise errors.ConfigurationError("base_url is empty: give the server's URL")
        raw = f"{username}:{password}".encode()
        return cls(base_url.rstrip("/"), "Basic " + base64.b64encode(raw).decode())

    def __repr__(self) -> str:
        return f"Settings(base_url={self.base_url!r})"


@dataclass(frozen=True)
class Call(Generic[T]):
    request: httpx.Request
    parse: Callable[[httpx.Response], T]
    retryable: bool  # a read, or carries an Idempotency-Key
    card: str | None = None  # masked, for messages and logs
    # Calls with the same ``flight`` share one request while one is in flight (tokenizing
    # a card: concurrent callers must not spend the card's wrong-code tries many times).
    flight: str | None = None

    @property
    def label(self) -> str:
        card = f" card={self.card}" if self.card else ""
        return f"{self.request.method} {self.request.url.path}{card}"


# ------------------------------------------------------------------ input


def money(value: Any, name: str = "amount") -> Decimal:
    """An amount as ``Decimal``: from Decimal, int or a string like ``"12.50"``; never float."""
    if isinstance(value, float):
        raise errors.FloatAmountError(
            f"{name} is a float ({value!r}); money must be exact: pass Decimal('12.50'), "
            "a string '12.50' or an int"
        )
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise errors.InvalidInput(f"{name} must be a Decimal, an int or a string like '12.50'")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise errors.InvalidInput(f"{name} {value!r} is not a number, e.g. '12.50'") from None
    if not amount.is_finite():
        raise errors.InvalidInput(f"{name} must be a finite number")
    return amount


def entered_amount(text: str) -> Decimal | None:
    """An amount typed by a person (a form field, a CSV cell) if it is one the server can
    accept: finite, above zero, whole cents; else None, for the caller to say so."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        return None
    return amount if is_money_amount(amount) else None


def store_id(store: Any) -> str:
    """A store's id from a ``Store`` or a GUID string; anything else is refused before
    sending, naming what was given (a card number given by mistake shown masked)."""
    value = getattr(store, "id", store)
    if isinstance(value, str) and GUID.fullmatch(value.strip()):
        return value.strip().lower()
    shown = repr(value) if not isinstance(value, str) else repr(scrub(value)[:60])
    raise errors.InvalidInput(
        f"store {shown} is not a store: give a Store (from verify().stores) or its id, a "
        f"GUID like {GUID_EXAMPLE}"
    )


# ------------------------------------------------------------------ building


def _request(
    settings: Settings,
    method: str,
    path: str,
    body: Any = None,
    params: dict[str, str] | None = None,
    key: str | None = None,
) -> httpx.Request:
    headers = {"Authorization": settings.authorization, "Accept": "application/json"}
    content = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        content = simplejson.dumps(body, use_decimal=True).encode()
    if key is not None:
        headers["Idempotency-Key"] = idempotency_key(key)
    return httpx.Request(
        method, settings.base_url + path, headers=headers, content=content, params=params
    )


def idempotency_key(key: str) -> str:
    """``key`` if the contract allows it: 1 to 64 printable ASCII characters."""
    if not isinstance(key, str) or not IDEMPOTENCY_KEY.match(key):
        raise errors.InvalidInput(
            "idempotency_key must be 1 to 64 printable ASCII characters, e.g. a UUID"
        )
    return key


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def key_or_new(key: str | None) -> str:
    """The caller's Idempotency-Key, checked, or a new one: money never moves without one."""
    return new_idempotency_key() if key is None else idempotency_key(key)


def health(settings: Settings) -> Call[models.Health]:
    request = httpx.Request("GET", settings.base_url + "/Health")
    return Call(request, parse_health, retryable=True)


def verify(settings: Settings) -> Call[models.Verification]:
    return Call(
        _request(settings, "PUT", "/Auth/verify"),
        _parser(models.Verification.parse),
        retryable=True,
    )


def tokenize(
    settings: Settings, number: str, security_code: str, flight: str | None = None
) -> Call[models.Token]:
    # Neither a read nor keyed (a repeated wrong code counts twice towards the card's
    # lockout), so it is sent again only when it never reached the server.
    body = {"cardnumber": number, "securitycode": security_code}
    return Call(
        _request(settings, "POST", "/v1/Token", body),
        _parser(models.Token.parse),
        retryable=False,
        card=mask(number),
        flight=flight,
    )


def balance(settings: Settings, card_field: dict[str, str], card: str) -> Call[models.Balance]:
    return Call(
        _request(settings, "POST", "/Transaction/balancecheck", card_field),
        _parser(models.Balance.parse, card),
        retryable=True,
        card=card,
    )


def load(
    settings: Settings,
    card_field: dict[str, str],
    card: str,
    *,
    sale: bool,
    amount: Decimal,
    store: str,
    pos_ref: str | None,
    key: str,
) -> Call[models.Load]:
    body = {**card_field, "amount": amount, "FranchiseeID": store, "PosRef": pos_ref}
    path = "/Transaction/sellnewcard" if sale else "/Transaction/reload"
    return Call(
        _request(settings, "POST", path, body, key=key),
        _parser(models.Load.parse, card),
        retryable=True,
        card=card,
    )


def redeem(
    settings: Settings,
    card_field: dict[str, str],
    card: str,
    *,
    amount: Decimal,
    store: str,
    pos_ref: str | None,
    accept_partial: bool,
    key: str,
) -> Call[models.Redemption]:
    body = {
        **card_field,
        "amount": amount,
        "FranchiseeID": store,
        "PosRef": pos_ref,
        "acceptpartialamount": accept_partial,
    }
    return Call(
        _request(settings, "POST", "/Transaction/radeem", body, key=key),
        _parser(models.Redemption.parse, card),
        retryable=True,
        card=card,
    )


def change_status(
    settings: Settings,
    card_field: dict[str, str],
    card: str,
    *,
    active: bool,
    reason: str,
    key: str,
) -> Call[models.StatusChange]:
    if not reason or not reason.strip():
        raise errors.InvalidInput("a reason is required to block or unblock a card")
    body = {**card_field, "status": active, "reason": reason}
    return Call(
        _request(settings, "PATCH", "/Transaction/changestatus", body, key=key),
        _parser(models.StatusChange.parse, card),
        retryable=True,
        card=card,
    )


def batches(
    settings: Settings,
    store: str,
    *,
    status: str,
    since: date | None,
    until: date | None,
    limit: int,
    transactions: bool,
) -> Call[list[models.Batch]]:
    if status not in ("open", "closed", "all"):
        raise errors.InvalidInput("status must be 'open', 'closed' or 'all'")
    params = {
        "status": status,
        "limit": str(limit),
        "includetransactions": "true" if transactions else "false",
    }
    if since is not None:
        params["from"] = since.isoformat()
    if until is not None:
        params["to"] = until.isoformat()
    return Call(
        _request(settings, "GET", f"/Batch/{store}", params=params),
        _parser(models.parse_batches),
        retryable=True,
    )


# An answer that starts by saying it was approved, in the contract's spelling.
_APPROVED_START = re.compile(rb'\s*\{\s*"statuscode"\s*:\s*"(?:000000|000001)"')


def batches_json(settings: Settings, store: str, **options: Any) -> Call[bytes]:
    """``batches`` (same options), its approved answer kept as the server sent it, for a
    reader of its own (``frames.from_json``); a decline or an error raises as ``batches``."""
    call = batches(settings, store, **options)

    def parse(response: httpx.Response) -> bytes:
        if response.status_code != 200 or not _APPROVED_START.match(response.content):
            call.parse(response)  # raises what batches() would (another spelling passes)
        return response.content

    return Call(call.request, parse, retryable=call.retryable)


def close_batch(
    settings: Settings,
    store: str,
    *,
    expected_count: int | None,
    expected_amount: Decimal | None,
    key: str,
) -> Call[models.Batch]:
    body: dict[str, Any] = {}
    if expected_count is not None:
        body["expectedcount"] = expected_count
    if expected_amount is not None:
        body["expectedamount"] = expected_amount
    return Call(
        _request(settings, "POST", f"/Batch/batch/{store}", body, key=key),
        _parser(_closed_batch),
        retryable=True,
    )


def _closed_batch(body: dict[str, Any]) -> models.Batch:
    closed = models.parse_batches(body)
    if len(closed) != 1:
        raise errors.ProtocolError("the batch-close answer does not hold exactly one batch")
    return closed[0]


# ------------------------------------------------------------------ parsing


def parse_health(response: httpx.Response) -> models.Health:
    """``/Health`` in JSON, or the plain-text ``Healthy`` of ASP.NET health checks."""
    text = response.text.strip()
    if not text.startswith("{"):
        healthy = response.status_code == 200 and text.strip('"').lower() == "healthy"
        return models.Health(healthy, text.strip('"') or str(response.status_code))
    body = read_json(response)
    if not isinstance(body, dict):
        raise errors.ProtocolError("the /Health answer is not a JSON object")
    f = models.Fields(body)
    status = str(f.get("status", ""))
    return models.Health(
        response.status_code == 200 and status.lower() == "healthy",
        status,
        f.get("version"),
        f.time("time"),
        f.extra(),
    )


def read_json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.text, parse_float=Decimal)
    except ValueError:
        raise errors.ProtocolError(
            f"HTTP {response.status_code} from {response.request.url.path} is not JSON"
        ) from None


def raise_for_problem(response: httpx.Response) -> None:
    """Raise the error an HTTP status other than 200 stands for."""
    status = response.status_code
    if status == 200:
        return
    try:
        body = json.loads(response.text, parse_float=Decimal)
    except ValueError:
        body = None
    problem = body if isinstance(body, dict) else {}
    detail = str(
        problem.get("detail")
        or problem.get("title")
        or problem.get("description")
        or response.reason_phrase
    )
    path = response.request.url.path
    if status == 401:
        raise errors.AuthenticationError(
            f"401 from {path}: {detail}. Check the username and password.", status=status, body=body
        )
    if status == 400:
        field_errors = problem.get("errors") or {}
        listed = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in field_errors.items())
        raise errors.RequestRejected(
            f"400 from {path}: {listed or detail}", status=status, body=body, errors=field_errors
        )
    if status == 429:
        wait = response.headers.get("retry-after", "")
        retry_after = int(wait) if wait.isdigit() else None
        when = f"try again in {retry_after} s" if retry_after is not None else "try again later"
        raise errors.TooManyAttempts(
            f"429 from {path}: too many failed sign-ins for this username from this address; "
            f"{when}, with the right password (every attempt until then is refused)",
            status=status,
            body=body,
            retry_after=retry_after,
        )
    if status == 413:
        raise errors.RequestRejected(
            f"413 from {path}: {detail}. The request is larger than the server accepts",
            status=status,
            body=body,
        )
    if status == 409:
        raise errors.IdempotencyConflict(f"409 from {path}: {detail}", status=status, body=body)
    if status == 422:
        raise errors.IdempotencyMismatch(f"422 from {path}: {detail}", status=status, body=body)
    if status >= 500:
        raise errors.ServerError(f"{status} from {path}: {detail}", status=status, body=body)
    raise errors.ProtocolError(f"unexpected HTTP {status} from {path}: {detail}")


def _parser(
    build: Callable[[dict[str, Any]], T], card: str | None = None
) -> Callable[[httpx.Response], T]:
    def parse(response: httpx.Response) -> T:
        raise_for_problem(response)
        body = read_json(response)
        if not isinstance(body, dict):
            raise errors.ProtocolError(
                f"the answer from {response.request.url.path} is not a JSON object"
            )
        f = models.Fields(body)
        code = str(f.get("statuscode", "000000"))
        if code not in APPROVED:
            description = str(f.get("description", ""))
            if code == "999999":
                raise errors.ServerError(f"system error: {description}", status=200, body=body)
            raise errors.DECLINES.get(code, errors.Declined)(code, description, body, card)
        result = build(body)
        if response.headers.get("idempotent-replayed", "").lower() == "true":
            result = dataclasses.replace(result, replayed=True)  # type: ignore[type-var]
        return result

    return parse


def retry_delay(
    call: Call[Any],
    attempt: int,
    attempts: int,
    backoff: float,
    response: httpx.Response | None = None,
    error: Exception | None = None,
) -> float | None:
    """How long to wait before sending ``call`` again, or None to stop.

    Only reads and requests carrying an Idempotency-Key are retried, only after connect
    errors, timeouts or 502/503/504, and at most ``attempts`` times in all. Any other call
    is sent again only after it failed to connect, when it provably never left.
    """
    if attempt + 1 >= attempts:
        return None
    if not call.retryable and not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return None
    if response is not None and response.status_code not in RETRY_STATUSES:
        return None
    if error is not None and not isinstance(error, httpx.RequestError):
        return None
    return float(backoff * (2**attempt))


def transport_error(
    call: Call[Any], error: httpx.RequestError, earlier_attempts: int = 0
) -> errors.TransportError:
    """The toolkit's error for a failed send or an unreadable answer (any
    ``httpx.RequestError``) after ``earlier_attempts`` other sends of the same call; the
    message never holds card data."""
    what = type(error).__name__
    may_have = (
        "it may have been applied; send it again with the same idempotency key to "
        "learn its outcome (a money-moving call is then never applied twice)"
    )
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        server = f"{call.request.url.scheme}://{call.request.url.netloc.decode()}"
        if earlier_attempts:  # this one never left, but an earlier one may have arrived
            return errors.ConnectError(
                f"could not connect for {call.label} ({what}) after {earlier_attempts} "
                f"earlier attempt(s): {may_have}; is the server at {server} up?"
            )
        return errors.ConnectError(
            f"could not connect for {call.label} ({what}), so it was not applied: is the "
            f"server at {server} up?"
        )
    if isinstance(error, httpx.TimeoutException):
        return errors.Timeout(f"no answer in time for {call.label} ({what}): {may_have}")
    if isinstance(error, httpx.DecodingError):
        return errors.TransportError(
            f"the answer to {call.label} could not be decoded ({what}): {may_have}"
        )
    return errors.TransportError(f"{call.label} failed on the way ({what}): {may_have}")
