"""The HTTP face of the GiftCard server: FastAPI routes over the :class:`Ledger`.

This module authenticates, reads and validates requests (``fields``), applies the
``Idempotency-Key`` rules, and turns the ledger's answers into responses. What a request
*does* to cards and money is decided in ``ledger`` alone.

Handlers are ``async``: reads run on the event loop, writes are handed to the ledger's
writer thread (group commit), so the loop keeps serving while SQLite commits.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode

import anyio
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from giftcard_toolkit.rules import GUID, GUID_EXAMPLE
from giftcard_toolkit.server import schemas
from giftcard_toolkit.server.auth import (
    REALM,
    Authenticator,
    Throttle,
    User,
    printable,
    username_of,
)
from giftcard_toolkit.server.fields import (
    DATE,
    Fields,
    InvalidRequest,
    idempotency_key,
    parse_json_object,
    path_guid,
    query_date,
)
from giftcard_toolkit.server.ledger import (
    WRITE_ROLES,
    CardRef,
    DatabaseUnavailable,
    Idempotency,
    Ledger,
    Reservation,
    WriterStopped,
    decline_body,
    dumps,
)

T = TypeVar("T")
log = logging.getLogger("giftcard_toolkit.server")
access_log = logging.getLogger("giftcard_toolkit.server.access")

JSON = "application/json"
PROBLEM = "application/problem+json"
_PROBLEM_TYPES = {
    400: "https://tools.ietf.org/html/rfc9110#section-15.5.1",
    401: "https://tools.ietf.org/html/rfc9110#section-15.5.2",
    409: "https://tools.ietf.org/html/rfc9110#section-15.5.10",
    413: "https://tools.ietf.org/html/rfc9110#section-15.5.14",
    422: "https://tools.ietf.org/html/rfc9110#section-15.5.21",
    429: "https://tools.ietf.org/html/rfc6585#section-4",
    503: "https://tools.ietf.org/html/rfc9110#section-15.6.4",
}
# The longest a request waits for the ledger's writer thread to commit its write before
# it answers 503 (seconds; read at each request, so tests can patch it). Shorter than the
# toolkit client's 10 s timeout, so that a client hears the 503 rather than timing out.
WRITE_TIMEOUT = 8.0
# What a 503 for a write the writer did not answer tells the client to wait (seconds).
WRITE_RETRY_AFTER = 5
# The largest request body read (bytes; ``serve --max-body``): a larger one is answered 413
# without being read. The largest request the contract describes is well under 1 KiB.
MAX_BODY = 64 * 1024


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("giftcard_toolkit")
    except PackageNotFoundError:
        return "0+unknown"


# ------------------------------------------------------------- request context


@dataclass
class _RequestContext:
    correlation_id: str
    user: str | None = None


_context: contextvars.ContextVar[_RequestContext | None] = contextvars.ContextVar(
    "giftcard_request", default=None
)
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# The production server's routes are case-insensitive; so are ours.
_STATIC_ROUTES = {
    p.lower(): p
    for p in (
        "/Health",
        "/Auth/verify",
        "/v1/Token",
        "/Transaction/balancecheck",
        "/Transaction/sellnewcard",
        "/Transaction/reload",
        "/Transaction/radeem",
        "/Transaction/changestatus",
    )
}
_BATCH_ROUTE = re.compile(r"^/batch/(batch/)?([^/]+)$", re.IGNORECASE)


def canonical_path(path: str) -> str:
    found = _STATIC_ROUTES.get(path.lower())
    if found:
        return found
    match = _BATCH_ROUTE.match(path)
    if match:
        return f"/Batch/{'batch/' if match.group(1) else ''}{match.group(2)}"
    return path


class BodyTooLarge(Exception):
    """A body with no Content-Length (chunked) went past the limit while it was read."""


class _Boundary:
    """Outermost ASGI layer: case-insensitive routes, correlation ids, the access log, the
    body limit (413, answered before the body is read), and the system-error answer
    (``999999``) for anything that escaped a handler."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int = MAX_BODY,
        direct: dict[tuple[str, str], ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        # The endpoints a till calls most, by (method, canonical path): called straight
        # from here (see ``_direct``), not through the router.
        self.direct = direct if direct is not None else {}
        # Correlation ids: a random prefix per process and a counter, unique and cheap.
        self._prefix = secrets.token_hex(4)
        self._seq = itertools.count(1)

    def _too_large(self, sent: int | None) -> Response:
        size = f" ({sent:,} bytes sent)" if sent is not None else ""
        return problem(
            413,
            "Request body too large",
            f"this server reads request bodies of at most {self.max_body:,} bytes{size}; "
            "nothing was read or applied",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = canonical_path(scope["path"])
        query = scope.get("query_string", b"")
        if query and query.lower() != query:
            query = urlencode([(k.lower(), v) for k, v in parse_qsl(query.decode("latin-1"))])
            query = query.encode("latin-1")
        scope = {**scope, "path": path, "raw_path": path.encode(), "query_string": query}
        offered, length = "", None  # length: Content-Length as sent (bytes)
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"x-correlation-id":
                offered = value.decode("latin-1")
        cid = offered if _CORRELATION_ID.match(offered) else f"{self._prefix}-{next(self._seq):x}"
        context = _RequestContext(cid)
        token = _context.set(context)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-correlation-id", cid.encode()),
                ]
            await send(message)

        try:
            if length is None or not length.isdigit():  # chunked, or no body: count what
                receive = self._counted(receive)  # is read, and stop past the limit
            elif int(length) > self.max_body:  # announced: answered before reading any of it
                await self._too_large(int(length))(scope, receive, send_with_id)
                return
            await self.direct.get((scope["method"], path), self.app)(scope, receive, send_with_id)
        except BodyTooLarge:
            if status == 0:
                await self._too_large(None)(scope, receive, send_with_id)
        except Exception as exc:
            unavailable = isinstance(exc, sqlite3.OperationalError | DatabaseUnavailable)
            log.error(
                "system error cid=%s %s %s: %s",
                cid,
                scope["method"],
                path,
                type(exc).__name__,
                exc_info=not unavailable,
            )
            if status == 0:
                status = 503 if unavailable else 500
                detail = (
                    "the database is busy or unreachable; retry shortly"
                    if unavailable
                    else "unexpected server error"
                )
                body = dumps(
                    decline_body("999999")
                    | {"description": f"System error: {detail} (correlation id {cid})"}
                ).encode()
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [
                            (b"content-type", JSON.encode()),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send_with_id({"type": "http.response.body", "body": body})
        finally:
            # Structured: the record's args are the named fields (for a JSON formatter).
            access_log.info(
                "%(method)s %(path)s %(status)s %(ms).1fms user=%(user)s cid=%(cid)s",
                {
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "ms": (time.perf_counter() - started) * 1000,
                    "user": context.user or "-",
                    "cid": cid,
                },
            )
            _context.reset(token)

    def _counted(self, receive: Receive) -> Receive:
        limit, received = self.max_body, 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        return counted


# ------------------------------------------------------------------ responses


def json_response(text: str, *, headers: dict[str, str] | None = None) -> Response:
    return Response(content=text, media_type=JSON, headers=headers)


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    errors: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"type": _PROBLEM_TYPES[status], "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = errors
    context = _context.get()
    if context:
        body["traceId"] = context.correlation_id
    return Response(content=dumps(body), status_code=status, media_type=PROBLEM, headers=headers)


class Unauthorized(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Throttled(Exception):
    """Too many failed authentications for this username from this address (429)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


def _refusal(exc: Unauthorized | Throttled) -> Response:
    if isinstance(exc, Throttled):
        return problem(
            429,
            "Too many failed sign-ins",
            "too many wrong passwords for this username from this address: try again in "
            f"{exc.retry_after} s (Retry-After); the wait grows while the failures go on",
            headers={"Retry-After": str(exc.retry_after)},
        )
    return problem(401, "Unauthorized", exc.detail, headers={"WWW-Authenticate": REALM})


def read_only(user: User) -> str:
    """The ``100017`` description: what the user's role may do, in words."""
    return (
        f"Not permitted: user {user.username} has the role {user.role}, which may only read "
        "(balance checks, tokens, batches); ask a clerk, or an administrator for that role"
    )


def _address(request: Request) -> str:
    return request.client.host if request.client else "-"


@dataclass
class _Gate:
    """One uncached password check at a time per (username, address): concurrent guesses
    cannot outrun the throttle, and a POS's first burst pays for one scrypt, not many."""

    lock: asyncio.Lock
    waiting: int = 0


def _problem_doc(description: str) -> dict[str, Any]:
    schema = schemas.Problem.model_json_schema()
    return {"description": description, "content": {PROBLEM: {"schema": schema}}}


_STANDARD_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _problem_doc("Malformed request: `errors` names each bad field"),
    401: _problem_doc("Missing or wrong credentials"),
    413: _problem_doc("The body is over the server's limit (64 KiB by default); not read"),
    429: _problem_doc(
        "Too many failed authentications for this username from this address: wait "
        "Retry-After seconds"
    ),
}
_IDEMPOTENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_STANDARD_RESPONSES,
    409: _problem_doc("A request with this Idempotency-Key is in flight"),
    422: _problem_doc("Idempotency-Key reused with another body"),
}
StoreId = Annotated[str, Path(pattern=GUID.pattern, description="The store's id (GUID)")]
# What a malformed path or query parameter is told, in the words of the other messages.
_PLAIN_PARAMETERS = {
    "storeid": f"storeid must be a store id GUID like {GUID_EXAMPLE}",
    "status": "status must be open, closed or all",
    "from": "from must be a date as YYYY-MM-DD, e.g. 2026-09-30",
    "to": "to must be a date as YYYY-MM-DD, e.g. 2026-09-30",
    "limit": "limit must be a whole number from 1 to 1000",
    "includetransactions": "includetransactions must be true or false",
}
_SYSTEM_ERROR = {"model": schemas.Decline, "description": "System error (statuscode 999999)"}


def _ok(model: Any) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"model": model, "description": "Approved or declined (see statuscode)"},
        500: _SYSTEM_ERROR,
        503: _SYSTEM_ERROR,
    }


def _direct(app: FastAPI, endpoint: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
    """``endpoint`` as an ASGI app, called as the router calls it but without the routing
    and dependency layers (a third of a balance check's time in the app): these endpoints
    take the bare ``Request`` and nothing else. Exceptions are answered by the app's own
    exception handlers, as the router's would be."""

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = next(
                (
                    app.exception_handlers[k]
                    for k in type(exc).__mro__
                    if k in app.exception_handlers
                ),
                None,
            )
            if handler is None:
                raise
            response = await handler(request, exc)  # type: ignore[misc]  # ours are async
        await response(scope, receive, send)

    return call


# ------------------------------------------------------------------------ app


LISTINGS_AT_ONCE = 2  # batch listings a server process builds at once


def create_app(
    ledger: Ledger,
    *,
    authenticator: Authenticator | None = None,
    throttle: Throttle | None = None,
    max_body: int = MAX_BODY,
) -> FastAPI:
    """The FastAPI application serving the contract over ``ledger``.

    ``throttle`` counts failed authentications (default: 10 per username and address in
    15 minutes); ``max_body`` is the largest request body read, in bytes.
    """
    auth = authenticator or Authenticator(ledger)
    throttle = throttle or Throttle()
    gates: dict[tuple[str, str], _Gate] = {}
    app = FastAPI(
        title="POSPointe GiftCard Server (giftcard_toolkit)",
        version=_version(),
        description="Implements the giftcard_toolkit API contract. Authenticate with HTTP "
        "Basic on every endpoint but /Health.",
        # FastAPI's own OpenTelemetry looks up the global providers on every request (a
        # fifth of a balance check's time); this server reports through its access log.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.ledger = ledger
    app.state.authenticator = auth
    app.state.throttle = throttle
    direct: dict[tuple[str, str], ASGIApp] = {}  # filled below, once the routes exist
    # Listings are long and mostly Python: more than two at once in one process only make
    # them take turns at the interpreter lock, which costs CPU. The rest wait their turn
    # on the event loop, holding no thread.
    listings = anyio.Semaphore(LISTINGS_AT_ONCE)
    app.add_middleware(_Boundary, max_body=max_body, direct=direct)

    @app.exception_handler(InvalidRequest)
    async def _invalid(request: Request, exc: InvalidRequest) -> Response:
        return problem(400, "One or more validation errors occurred.", errors=exc.errors)

    @app.exception_handler(RequestValidationError)
    async def _invalid_query(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI checks the path and query before a handler runs: authenticate first, so
        # that a caller without valid credentials gets 401, as on every other bad request.
        try:
            await authenticate(request)
        except (Unauthorized, Throttled) as refused:
            return _refusal(refused)
        errors: dict[str, list[str]] = {}
        for error in exc.errors():
            name = str(error["loc"][-1]) if error.get("loc") else "request"
            plain = _PLAIN_PARAMETERS.get(name) or f"{name}: {error.get('msg', 'invalid value')}"
            if plain not in errors.get(name, []):
                errors.setdefault(name, []).append(plain)
        return problem(400, "One or more validation errors occurred.", errors=errors)

    @app.exception_handler(WriterStopped)
    async def _writer_stopped(request: Request, exc: WriterStopped) -> Response:
        log.error("ledger writer unavailable: %s %s: %s", request.method, request.url.path, exc)
        return problem(
            503,
            "The ledger could not answer this request",
            f"{exc}. The request may or may not have been applied: retry it with the same "
            "Idempotency-Key, which applies it at most once and answers it either way.",
            headers={"Retry-After": str(WRITE_RETRY_AFTER)},
        )

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized) -> Response:
        return _refusal(exc)

    @app.exception_handler(Throttled)
    async def _throttled(request: Request, exc: Throttled) -> Response:
        return _refusal(exc)

    async def check_password(header: str, address: str) -> User | None:
        """The user, after scrypt (off the loop), with the throttle's count kept; one check
        at a time per (username, address)."""
        username = username_of(header)
        if username is None:
            return None  # malformed: names nobody, costs no scrypt, counts for nobody
        key = (username, address)
        gate = gates.get(key)
        if gate is None:
            gate = gates[key] = _Gate(asyncio.Lock())
        gate.waiting += 1
        try:
            async with gate.lock:
                wait = throttle.retry_after(username, address)
                if wait:
                    raise Throttled(wait)
                user = auth.cached(header) or await run_in_threadpool(auth.authenticate, header)
                if user is not None:
                    throttle.succeeded(username, address)
                    return user
                refusal = throttle.failed(username, address)
        finally:
            gate.waiting -= 1
            if not gate.waiting:
                del gates[key]
        if refusal:
            log.warning(
                "password guessing? user %s from %s refused (429) for %d s: %s",
                printable(username),
                printable(address),
                refusal.seconds,
                f"{throttle.limit} failed authentications within {throttle.window:g} s"
                if refusal.strike == 1
                else f"failed again after {refusal.strike - 1} refusal(s)",
            )
        return None

    async def authenticate(request: Request) -> User:
        header = request.headers.get("authorization")
        if throttle.refusing:
            username = username_of(header)
            if username is not None:
                wait = throttle.retry_after(username, _address(request))
                if wait:
                    raise Throttled(wait)
        user = auth.cached(header)
        if user is None and header:
            user = await check_password(header, _address(request))
        elif user is not None and throttle.counting:
            throttle.succeeded(user.username, _address(request))
        if user is None:
            if header is None:
                detail = "send Authorization: Basic base64(username:password)"
            elif ledger.user_count() == 0:
                detail = (
                    "this server has no users yet: add one with 'giftcard-toolkit admin add-user'"
                )
            else:
                detail = "wrong username or password (or a malformed Basic header)"
            raise Unauthorized(detail)
        context = _context.get()
        if context:
            context.user = user.username
        return user

    async def read_body(request: Request, *, required: bool = True) -> Fields:
        return Fields(parse_json_object(await request.body(), required=required))

    def movement(fields: Fields) -> tuple[CardRef, Decimal, str, str | None]:
        """The fields every money movement has; raises the 400 naming all that are wrong."""
        ref = fields.card_ref()
        amount = fields.money("amount", required=True)
        store_id = fields.guid("FranchiseeID")
        pos_ref = fields.text("PosRef", max_length=100, free_text=True)
        fields.check()
        assert ref is not None and amount is not None and store_id is not None
        return ref, amount, store_id, pos_ref

    async def write(operation: Callable[[], T]) -> T:
        """Run a ledger write in the ledger's writer thread (group commit); await its commit,
        but never longer than ``WRITE_TIMEOUT``: then (or when the writer stopped) raise
        :class:`WriterStopped`, answered 503. A write that had not started is cancelled."""
        deadline = asyncio.timeout(WRITE_TIMEOUT)
        try:
            async with deadline:
                return await asyncio.wrap_future(ledger.submit(operation))
        except TimeoutError:
            if not deadline.expired():
                raise  # raised by the write itself
            raise WriterStopped(
                f"the ledger did not commit this write within {WRITE_TIMEOUT:g} s"
            ) from None

    async def idempotent(
        request: Request,
        user: User,
        fields: Fields,
        apply: Callable[[Idempotency | None, str | None], str],
    ) -> Response:
        """Apply a money-moving request under its ``Idempotency-Key``, if it has one.
        A user whose role may only read is declined (``100017``) first: nothing applied,
        no key kept."""
        if user.role not in WRITE_ROLES:
            return json_response(dumps(decline_body("100017", description=read_only(user))))
        key = idempotency_key(request.headers.get("idempotency-key"))
        if key is None:
            return json_response(await write(lambda: apply(None, None)))
        endpoint = f"{request.method} {request.scope['path'].lower()}"  # no URL object made
        as_sent = fields.canonical_json()

        def reserve_and_apply() -> tuple[Reservation, str | None]:
            # One trip to the writer, one commit to wait for: the key is reserved and the
            # request applied in the same transaction, or neither is. The card is looked up
            # there too, off the event loop.
            card = ledger.card_identity(user.username, fields.card) if fields.card else None
            idem = Idempotency(
                user.username,
                endpoint,
                key,
                request_hash=as_sent if card is None else fields.canonical_json(card),
                sent_hash=as_sent,
                resolved=card is not None or fields.card is None,
            )
            reservation = ledger.reserve(idem)
            if reservation.outcome != "new":
                return reservation, None
            return reservation, apply(idem, reservation.owner or "")

        reservation, answer = await write(reserve_and_apply)
        if answer is not None:
            return json_response(answer)
        if reservation.outcome == "replay":
            return json_response(
                reservation.response or "", headers={"Idempotent-Replayed": "true"}
            )
        if reservation.outcome == "unresolved" and fields.card is not None:
            declined = ledger.unresolved_answer(user.username, fields.card)
            if declined is not None:
                return json_response(declined)
        if reservation.outcome in ("mismatch", "unresolved"):
            return problem(
                422,
                "Idempotency-Key reused with a different body",
                "this key was used in the last 24 hours for another request, which may "
                "have been applied: check the card's balance or the store's open batch "
                "before sending this one under a new key",
            )
        return problem(  # in_flight: reserved by a request not answered yet
            409,
            "A request with this Idempotency-Key is in flight",
            "wait for the first request to finish, then retry with the same key",
        )

    # ------------------------------------------------------------------ routes
    # Handlers are async and take the bare Request: FastAPI's dependency machinery costs
    # more than the work of a balance check. Reads run on the event loop (SQLite in WAL
    # mode answers them in tens of microseconds); writes go to the ledger's writer thread.

    @app.get(
        "/Health",
        tags=["Health"],
        responses={200: {"model": schemas.Health}, 503: {"model": schemas.Health}},
    )
    async def health() -> Response:
        healthy = ledger.healthy()
        body = {
            "status": "Healthy" if healthy else "Unhealthy",
            "version": _version(),
            "time": ledger.clock().astimezone(ledger.tz).isoformat(),
        }
        return Response(dumps(body), status_code=200 if healthy else 503, media_type=JSON)

    @app.put(
        "/Auth/verify",
        tags=["Auth"],
        responses={**_ok(schemas.Verification), 401: _STANDARD_RESPONSES[401]},
    )
    async def verify(request: Request) -> Response:
        user = await authenticate(request)
        stores = [s for s in ledger.stores() if s.id in user.stores]
        return json_response(
            dumps(
                {
                    "statuscode": "000000",
                    "description": "Success",
                    "username": user.username,
                    "role": user.role,
                    "maxamount": user.max_amount,
                    "stores": [
                        {
                            "franchiseeid": s.id,
                            "storename": s.name,
                            "storeaddress": s.address,
                            "jurisdiction": s.jurisdiction,
                        }
                        for s in stores
                    ],
                }
            )
        )

    @app.post(
        "/v1/Token",
        tags=["Tokenization"],
        responses={**_ok(schemas.TokenApproved | schemas.Decline), **_STANDARD_RESPONSES},
        openapi_extra=schemas.request_body(schemas.TokenRequest),
    )
    async def token(request: Request) -> Response:
        user = await authenticate(request)
        fields = await read_body(request)
        number = fields.card_number("cardnumber")
        code = fields.security_code("securitycode")
        fields.check()
        assert number is not None and code is not None
        return json_response(await write(lambda: ledger.tokenize(user.username, number, code)))

    @app.post(
        "/Transaction/balancecheck",
        tags=["Transaction"],
        responses={**_ok(schemas.BalanceApproved | schemas.Decline), **_STANDARD_RESPONSES},
        openapi_extra=schemas.request_body(schemas.CardRequest),
    )
    async def balancecheck(request: Request) -> Response:
        user = await authenticate(request)
        fields = await read_body(request)
        ref = fields.card_ref()
        fields.check()
        assert ref is not None
        return json_response(ledger.balance(user.username, ref))

    async def load(request: Request, *, sale: bool) -> Response:
        user = await authenticate(request)
        fields = await read_body(request)
        ref, amount, store_id, pos_ref = movement(fields)
        return await idempotent(
            request,
            user,
            fields,
            lambda idem, owner: ledger.load(
                user.username,
                user.stores,
                ref,
                amount,
                store_id,
                pos_ref,
                sale=sale,
                idem=idem,
                owner=owner,
                max_amount=user.max_amount,
            ),
        )

    @app.post(
        "/Transaction/sellnewcard",
        tags=["Transaction"],
        responses={**_ok(schemas.LoadApproved | schemas.Decline), **_IDEMPOTENT_RESPONSES},
        openapi_extra=schemas.request_body(schemas.LoadRequest),
    )
    async def sellnewcard(request: Request) -> Response:
        return await load(request, sale=True)

    @app.post(
        "/Transaction/reload",
        tags=["Transaction"],
        responses={**_ok(schemas.LoadApproved | schemas.Decline), **_IDEMPOTENT_RESPONSES},
        openapi_extra=schemas.request_body(schemas.LoadRequest),
    )
    async def reload(request: Request) -> Response:
        return await load(request, sale=False)

    @app.post(
        "/Transaction/radeem",
        tags=["Transaction"],
        responses={**_ok(schemas.RedeemApproved | schemas.Decline), **_IDEMPOTENT_RESPONSES},
        openapi_extra=schemas.request_body(schemas.RedeemRequest),
    )
    async def radeem(request: Request) -> Response:
        user = await authenticate(request)
        fields = await read_body(request)
        partial = fields.boolean("acceptpartialamount") or False
        ref, amount, store_id, pos_ref = movement(fields)
        return await idempotent(
            request,
            user,
            fields,
            lambda idem, owner: ledger.redeem(
                user.username,
                user.stores,
                ref,
                amount,
                store_id,
                pos_ref,
                accept_partial=partial,
                idem=idem,
                owner=owner,
                max_amount=user.max_amount,
            ),
        )

    @app.patch(
        "/Transaction/changestatus",
        tags=["Transaction"],
        responses={**_ok(schemas.StatusApproved | schemas.Decline), **_IDEMPOTENT_RESPONSES},
        openapi_extra=schemas.request_body(schemas.ChangeStatusRequest),
    )
    async def changestatus(request: Request) -> Response:
        user = await authenticate(request)
        fields = await read_body(request)
        ref = fields.card_ref()
        active = fields.boolean("status", required=True)
        reason = fields.text(
            "reason", required=True, max_length=200, example='"card reported lost"', free_text=True
        )
        if reason is not None and not reason.strip():
            fields.fail("reason", "reason must not be blank")
        fields.check()
        assert ref is not None and active is not None and reason is not None
        return await idempotent(
            request,
            user,
            fields,
            lambda idem, owner: ledger.change_status(
                user.username, ref, active, reason, idem=idem, owner=owner
            ),
        )

    @app.get(
        "/Batch/{storeid}",
        tags=["Batch"],
        responses={**_ok(schemas.BatchEnvelope), **_STANDARD_RESPONSES},
    )
    async def list_batches(
        storeid: StoreId,
        request: Request,
        status: Literal["open", "closed", "all"] = Query("all"),
        since_text: str | None = Query(
            None, alias="from", pattern=DATE.pattern, description="YYYY-MM-DD, inclusive"
        ),
        until_text: str | None = Query(
            None, alias="to", pattern=DATE.pattern, description="YYYY-MM-DD, inclusive"
        ),
        limit: int = Query(100, ge=1, le=1000),
        # true or false in any letter case (as .NET sends "True"); not FastAPI's yes/1/on.
        includetransactions: str = Query(
            "true", pattern=r"^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"
        ),
    ) -> Response:
        user = await authenticate(request)
        store_id = path_guid(storeid)
        since, until = query_date(since_text, "from"), query_date(until_text, "to")
        if since and until and since > until:
            raise InvalidRequest({"from": ["from must not be after to"]})
        # Up to 1,000 batches with their transactions: too long to hold the event loop.
        async with listings:
            text = await run_in_threadpool(
                lambda: ledger.batches(
                    user.stores,
                    store_id,
                    status=status,
                    since=since,
                    until=until,
                    limit=limit,
                    transactions=includetransactions.lower() == "true",
                )
            )
        return json_response(text)

    @app.post(
        "/Batch/batch/{storeid}",
        tags=["Batch"],
        responses={**_ok(schemas.BatchEnvelope | schemas.Decline), **_IDEMPOTENT_RESPONSES},
        openapi_extra=schemas.request_body(schemas.CloseBatchRequest, required=False),
    )
    async def close_batch(request: Request, storeid: StoreId) -> Response:
        user = await authenticate(request)
        fields = await read_body(request, required=False)
        store_id = path_guid(storeid)
        expected_count = fields.integer("expectedcount")
        expected_amount = fields.money("expectedamount")
        fields.check()
        return await idempotent(
            request,
            user,
            fields,
            lambda idem, owner: ledger.close_batch(
                user.stores,
                store_id,
                expected_count=expected_count,
                expected_amount=expected_amount,
                idem=idem,
                owner=owner,
            ),
        )

    for method, path, endpoint in (
        ("PUT", "/Auth/verify", verify),
        ("POST", "/v1/Token", token),
        ("POST", "/Transaction/balancecheck", balancecheck),
        ("POST", "/Transaction/sellnewcard", sellnewcard),
        ("POST", "/Transaction/reload", reload),
        ("POST", "/Transaction/radeem", radeem),
        ("PATCH", "/Transaction/changestatus", changestatus),
    ):
        direct[(method, path)] = _direct(app, endpoint)
    return app
