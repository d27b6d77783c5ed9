"""``GiftCardClient`` and ``AsyncGiftCardClient``: the API from Python, safely.

Both clients share one core. Every operation is written once, as a *flow*: a generator
that yields the :class:`~giftcard_toolkit._protocol.Call` objects it needs sent and
receives their parsed results (or their errors, thrown in). The sync client runs flows
with ``httpx.Client``, the async one with ``httpx.AsyncClient``; only the sending loop
(with its retries) is written for each.

Safety with money:

* money-moving calls always carry an ``Idempotency-Key`` (a new UUID unless you give one),
  so a retry after a lost answer can never apply twice;
* only reads and calls with an ``Idempotency-Key`` are retried, after connect errors,
  timeouts, undecodable answers and 502/503/504, with exponential backoff; whatever fails
  on the way ends as :class:`~giftcard_toolkit.errors.TransportError`, which says the call
  may have been applied;
* amounts are ``Decimal``; a float is refused.

Cards: a :class:`~giftcard_toolkit.cards.Card` with a security code is tokenized once and
its token reused until 30 s before it expires; concurrent calls for one card share one
``/v1/Token`` request, and a wrong security code is sent once (never again by this
client), so it cannot lock the card. A ``100007`` decline (token expired or unknown)
re-tokenizes once and retries under the same Idempotency-Key. A card without a security
code travels ``encrypted`` when a card key or cipher is configured. A token is passed as
the :class:`~giftcard_toolkit.models.Token` that ``tokenize()`` returns (or
``Token(value, expires_at)`` for one obtained elsewhere); a plain string is refused before
anything is sent, since card numbers and the API's tokens are both 16 digits.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Future
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import httpx

from giftcard_toolkit import _protocol, errors, models
from giftcard_toolkit._protocol import Call
from giftcard_toolkit.cards import AesGcmCardCipher, Card, CardCipher

log = logging.getLogger("giftcard_toolkit")
T = TypeVar("T")
Flow = Generator[Call[Any], Any, T]
RENEW_BEFORE = timedelta(seconds=30)
CardLike = Card | models.Token


def _env_settings() -> dict[str, Any]:
    """Client settings from GIFTCARD_URL, GIFTCARD_USERNAME, GIFTCARD_PASSWORD and the
    optional GIFTCARD_CARD_KEY."""
    names = ("GIFTCARD_URL", "GIFTCARD_USERNAME", "GIFTCARD_PASSWORD")
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise errors.ConfigurationError(
            f"{', '.join(missing)} not set: export the server's URL and your credentials, "
            "e.g. GIFTCARD_URL=https://giftcard.myposerver.com"
        )
    return {
        "base_url": os.environ["GIFTCARD_URL"],
        "username": os.environ["GIFTCARD_USERNAME"],
        "password": os.environ["GIFTCARD_PASSWORD"],
        "card_key": os.environ.get("GIFTCARD_CARD_KEY") or None,
    }


class _Flights:
    """Calls in flight by key, across threads: a caller arriving while one is in flight
    waits for it and shares its outcome (result or error) instead of sending again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, Future[Any]] = {}

    def run(self, key: str, call: Callable[[], T]) -> T:
        with self._lock:
            shared = self._running.get(key)
            if shared is None:
                mine: Future[Any] = Future()
                self._running[key] = mine
        if shared is not None:
            return shared.result()  # type: ignore[no-any-return]
        try:
            result = call()
        except BaseException as failed:
            mine.set_exception(failed)
            raise
        finally:
            with self._lock:
                del self._running[key]
        mine.set_result(result)
        return result


class _AsyncFlights:
    """:class:`_Flights` for coroutines on one event loop."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[Any]] = {}

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        shared = self._running.get(key)
        if shared is not None:
            return await asyncio.shield(shared)  # type: ignore[no-any-return]
        mine: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._running[key] = mine
        try:
            result = await call()
        except BaseException as failed:
            mine.set_exception(failed)
            mine.exception()  # retrieved: no "never retrieved" warning when none waited
            raise
        finally:
            del self._running[key]
        mine.set_result(result)
        return result


class _Core:
    """What both clients share: settings, the token cache, and every operation's flow."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        card_cipher: CardCipher | None = None,
        card_key: str | None = None,
        attempts: int = 3,
        backoff: float = 0.2,
    ) -> None:
        self._settings = _protocol.Settings.make(base_url, username, password)
        self.username = username
        if card_cipher is None and card_key:
            try:
                card_cipher = AesGcmCardCipher.from_base64(card_key)
            except ValueError as exc:
                raise errors.ConfigurationError(f"GIFTCARD_CARD_KEY: {exc}") from None
        self._cipher = card_cipher
        if attempts < 1:
            raise errors.ConfigurationError("attempts counts sends of one call: at least 1")
        self.attempts = attempts
        self.backoff = backoff
        # Tokens by a keyed digest of number and security code (the key is random per
        # client): the cache never holds a number or code, and a token obtained with the
        # right code is never handed out for a Card carrying a wrong one.
        self._cache_secret = secrets.token_bytes(32)
        # Derived keys are keyed by the credentials: stable for this user on any machine,
        # and no one without the password can test a guessed card number against one.
        self._key_secret = hashlib.sha256(
            b"giftcard_toolkit idempotency keys\0" + self._settings.authorization.encode()
        ).digest()
        self._tokens: dict[str, models.Token] = {}
        self._wrong_codes: dict[str, errors.WrongSecurityCode] = {}
        # The last verify() answer: who these credentials are, their role and own limit.
        self.verification: models.Verification | None = None

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, username={self.username!r})"

    # ----------------------------------------------------------- card flows

    def _card_field(
        self, card: CardLike, refused: str | None = None
    ) -> Flow[tuple[dict[str, str], str]]:
        """(the request's card field, the card masked). ``refused`` is a token the server
        refused (100007): it is forgotten and the card tokenized again."""
        if isinstance(card, models.Token):
            return {"cardtoken": card.token}, "(token)"
        if isinstance(card, str):
            raise errors.InvalidInput(
                "a card is not a plain string (a card number and a token are both 16 digits, "
                "so it could be either): pass Card(number, security_code), or the Token that "
                "tokenize() returned; nothing was sent"
            )
        if not isinstance(card, Card):
            raise errors.InvalidInput(
                "card must be a Card(number, security_code), a demo card, or the Token that "
                f"tokenize() returned, not {type(card).__name__}; nothing was sent"
            )
        if card.security_code:
            key = self._token_key(card)
            if refused is not None:
                cached = self._tokens.get(key)
                if cached is not None and cached.token == refused:
                    del self._tokens[key]
            token = self._fresh_token(key)
            if token is None:
                token = yield _protocol.tokenize(
                    self._settings, card.number, card.security_code, flight=key
                )
            return {"cardtoken": token.token}, card.masked
        if self._cipher is not None:
            return {"encrypted": self._cipher.encrypt(card.number)}, card.masked
        raise errors.ConfigurationError(
            f"card {card.masked} has no security code and no card key is configured: give "
            "Card(number, security_code) or set GIFTCARD_CARD_KEY"
        )

    def derived_key(self, material: str) -> str:
        """A deterministic digest of ``material`` (e.g. a bulk file's row) to build an
        Idempotency-Key from: the same for this user on every run, revealing nothing of
        the material (which may hold a card number)."""
        return hmac.new(self._key_secret, material.encode(), hashlib.sha256).hexdigest()

    def _token_key(self, card: Card) -> str:
        material = f"{card.number}:{card.security_code}".encode()
        return hmac.new(self._cache_secret, material, hashlib.sha256).hexdigest()

    def _fresh_token(self, key: str) -> models.Token | None:
        """The card's cached token while it has 30 s left; raises the card's remembered
        wrong-code decline (a printed code never becomes right: it is never resent)."""
        wrong = self._wrong_codes.get(key)
        if wrong is not None:
            raise wrong
        cached = self._tokens.get(key)
        if cached is not None and cached.expires_at - RENEW_BEFORE > datetime.now(UTC):
            return cached
        return None

    def _keep_token(self, key: str, outcome: models.Token | BaseException) -> models.Token:
        """Remember a tokenization's outcome for the card's later calls; raise a failure."""
        if isinstance(outcome, errors.WrongSecurityCode):
            self._wrong_codes[key] = outcome
        if isinstance(outcome, BaseException):
            raise outcome
        self._tokens[key] = outcome
        return outcome

    def _with_card(
        self, card: CardLike, build: Callable[[dict[str, str], str], Call[T]]
    ) -> Flow[T]:
        """Send a call about a card; on ``100007`` re-tokenize once and send it again.

        The second call keeps the first one's Idempotency-Key: a ``100007`` applied nothing
        and the server keeps no answer for it, while a first attempt that *was* applied
        (its answer lost, its token refused since) is recognised by the card and replayed.
        """
        field, masked = yield from self._card_field(card)
        try:
            result: T = yield build(field, masked)
            return result
        except errors.TokenInvalid:
            if not isinstance(card, Card) or not card.security_code:
                raise
            log.debug("token for %s refused (100007): tokenizing again", masked)
            field, masked = yield from self._card_field(card, refused=field["cardtoken"])
            retried: T = yield build(field, masked)
            return retried

    # ---------------------------------------------------------- operations

    def _health_flow(self) -> Flow[models.Health]:
        return (yield _protocol.health(self._settings))

    def _verify_flow(self) -> Flow[models.Verification]:
        verification: models.Verification = yield _protocol.verify(self._settings)
        self.verification = verification
        return verification

    def _tokenize_flow(self, card: Card) -> Flow[models.Token]:
        if not isinstance(card, Card) or not card.security_code:
            raise errors.InvalidInput("tokenize needs a Card with its 4-digit security code")
        token: models.Token = yield _protocol.tokenize(
            self._settings, card.number, card.security_code
        )
        self._tokens[self._token_key(card)] = token
        return token

    def _balance_flow(self, card: CardLike) -> Flow[models.Balance]:
        return (
            yield from self._with_card(
                card, lambda field, masked: _protocol.balance(self._settings, field, masked)
            )
        )

    def _load_flow(
        self,
        card: CardLike,
        amount: Any,
        store: Any,
        pos_ref: str | None,
        key: str | None,
        *,
        sale: bool,
    ) -> Flow[models.Load]:
        value, store_id = _protocol.money(amount), _protocol.store_id(store)
        key = _protocol.key_or_new(key)
        return (
            yield from self._with_card(
                card,
                lambda field, masked: _protocol.load(
                    self._settings,
                    field,
                    masked,
                    sale=sale,
                    amount=value,
                    store=store_id,
                    pos_ref=pos_ref,
                    key=key,
                ),
            )
        )

    def _redeem_flow(
        self,
        card: CardLike,
        amount: Any,
        store: Any,
        pos_ref: str | None,
        accept_partial: bool,
        key: str | None,
    ) -> Flow[models.Redemption]:
        value, store_id = _protocol.money(amount), _protocol.store_id(store)
        key = _protocol.key_or_new(key)
        return (
            yield from self._with_card(
                card,
                lambda field, masked: _protocol.redeem(
                    self._settings,
                    field,
                    masked,
                    amount=value,
                    store=store_id,
                    pos_ref=pos_ref,
                    accept_partial=accept_partial,
                    key=key,
                ),
            )
        )

    def _status_flow(
        self, card: CardLike, active: bool, reason: str, key: str | None
    ) -> Flow[models.StatusChange]:
        key = _protocol.key_or_new(key)
        return (
            yield from self._with_card(
                card,
                lambda field, masked: _protocol.change_status(
                    self._settings,
                    field,
                    masked,
                    active=active,
                    reason=reason,
                    key=key,
                ),
            )
        )

    def _batches_flow(
        self,
        read: Callable[..., Call[T]],
        store: Any,
        status: str,
        since: date | None,
        until: date | None,
        limit: int,
        transactions: bool,
    ) -> Flow[T]:
        """A store's batches as ``read`` makes them of the answer: ``_protocol.batches``
        (models) or ``_protocol.batches_json`` (the answer as sent)."""
        return (
            yield read(
                self._settings,
                _protocol.store_id(store),
                status=status,
                since=since,
                until=until,
                limit=limit,
                transactions=transactions,
            )
        )

    def _close_flow(
        self, store: Any, expected_count: int | None, expected_amount: Any, key: str | None
    ) -> Flow[models.Batch]:
        amount = (
            None if expected_amount is None else _protocol.money(expected_amount, "expected_amount")
        )
        return (
            yield _protocol.close_batch(
                self._settings,
                _protocol.store_id(store),
                expected_count=expected_count,
                expected_amount=amount,
                key=_protocol.key_or_new(key),
            )
        )

    def _log(self, call: Call[Any], response: httpx.Response, started: float) -> None:
        log.debug(
            "%s -> HTTP %s in %.1f ms",
            call.label,
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )


class GiftCardClient(_Core):
    """The GiftCard API over ``httpx.Client``. Use it as a context manager."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, username, password, **options)
        self._http = httpx.Client(timeout=timeout, transport=transport)
        self._flights = _Flights()

    @classmethod
    def from_env(cls, **options: Any) -> GiftCardClient:
        return cls(**{**_env_settings(), **options})

    def __enter__(self) -> GiftCardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        key = call.flight
        if key is None:
            return self._attempt(call)

        def tokenize() -> Any:
            fresh = self._fresh_token(key)
            if fresh is not None:
                return fresh
            try:
                token = self._attempt(call)
            except errors.GiftCardError as failed:
                return self._keep_token(key, failed)
            return self._keep_token(key, token)  # type: ignore[arg-type]

        return self._flights.run(key, tokenize)  # type: ignore[no-any-return]

    def _attempt(self, call: Call[T]) -> T:
        for attempt in range(self.attempts):
            started = time.perf_counter()
            try:
                response = self._http.send(call.request)
            except httpx.RequestError as exc:
                delay = _protocol.retry_delay(call, attempt, self.attempts, self.backoff, error=exc)
                if delay is None:
                    raise _protocol.transport_error(call, exc, attempt) from None
                log.debug("%s failed (%s): retry in %.2f s", call.label, type(exc).__name__, delay)
                time.sleep(delay)
                continue
            self._log(call, response, started)
            delay = _protocol.retry_delay(call, attempt, self.attempts, self.backoff, response)
            if delay is None:
                return call.parse(response)
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _run(self, flow: Flow[T]) -> T:
        try:
            call = next(flow)
            while True:
                try:
                    result = self._send(call)
                except errors.GiftCardError as exc:
                    call = flow.throw(exc)
                else:
                    call = flow.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def health(self) -> models.Health:
        return self._run(self._health_flow())

    def verify(self) -> models.Verification:
        return self._run(self._verify_flow())

    def tokenize(self, card: Card) -> models.Token:
        return self._run(self._tokenize_flow(card))

    def balance(self, card: CardLike) -> models.Balance:
        return self._run(self._balance_flow(card))

    def sell(
        self,
        card: CardLike,
        amount: Decimal | int | str,
        store: Any,
        pos_ref: str | None = None,
        idempotency_key: str | None = None,
    ) -> models.Load:
        return self._run(self._load_flow(card, amount, store, pos_ref, idempotency_key, sale=True))

    def reload(
        self,
        card: CardLike,
        amount: Decimal | int | str,
        store: Any,
        pos_ref: str | None = None,
        idempotency_key: str | None = None,
    ) -> models.Load:
        return self._run(self._load_flow(card, amount, store, pos_ref, idempotency_key, sale=False))

    def redeem(
        self,
        card: CardLike,
        amount: Decimal | int | str,
        store: Any,
        pos_ref: str | None = None,
        accept_partial: bool = False,
        idempotency_key: str | None = None,
    ) -> models.Redemption:
        return self._run(
            self._redeem_flow(card, amount, store, pos_ref, accept_partial, idempotency_key)
        )

    def change_status(
        self, card: CardLike, active: bool, reason: str, idempotency_key: str | None = None
    ) -> models.StatusChange:
        return self._run(self._status_flow(card, active, reason, idempotency_key))

    def batches(
        self,
        store: Any,
        status: str = "all",
        since: date | None = None,
        until: date | None = None,
        limit: int = 100,
        transactions: bool = True,
    ) -> list[models.Batch]:
        flow = self._batches_flow(
            _protocol.batches, store, status, since, until, limit, transactions
        )
        return self._run(flow)

    def batches_json(
        self,
        store: Any,
        status: str = "all",
        since: date | None = None,
        until: date | None = None,
        limit: int = 100,
        transactions: bool = True,
    ) -> bytes:
        """``batches()``'s answer as the server sent it, for ``frames.from_json`` (read by
        polars in one pass, not object by object); declines and errors raise the same."""
        flow = self._batches_flow(
            _protocol.batches_json, store, status, since, until, limit, transactions
        )
        return self._run(flow)

    def close_batch(
        self,
        store: Any,
        expected_count: int | None = None,
        expected_amount: Decimal | int | str | None = None,
        idempotency_key: str | None = None,
    ) -> models.Batch:
        return self._run(self._close_flow(store, expected_count, expected_amount, idempotency_key))


class AsyncGiftCardClient(_Core):
    """The GiftCard API over ``httpx.AsyncClient``: the same methods, awaited."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        **options: Any,
    ) -> None:
        super().__init__(base_url, username, password, **options)
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, limits=limits)
        self._flights = _AsyncFlights()

    @classmethod
    def from_env(cls, **options: Any) -> AsyncGiftCardClient:
        return cls(**{**_env_settings(), **options})

    async def __aenter__(self) -> AsyncGiftCardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        key = call.flight
        if key is None:
            return await self._attempt(call)

        async def tokenize() -> Any:
            fresh = self._fresh_token(key)
            if fresh is not None:
                return fresh
            try:
                token = await self._attempt(call)
            except errors.GiftCardError as failed:
                return self._keep_token(key, failed)
            return self._keep_token(key, token)  # type: ignore[arg-type]

        return await self._flights.run(key, tokenize)  # type: ignore[no-any-return]

    async def _attempt(self, call: Call[T]) -> T:
        for attempt in range(self.attempts):
            started = time.perf_counter()
            try:
                response = await self._http.send(call.request)
            except httpx.RequestError as exc:
                delay = _protocol.retry_delay(call, attempt, self.attempts, self.backoff, error=exc)
                if delay is None:
                    raise _protocol.transport_error(call, exc, attempt) from None
                log.debug("%s failed (%s): retry in %.2f s", call.label, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            self._log(call, response, started)
            delay = _protocol.retry_delay(call, attempt, self.attempts, self.backoff, response)
            if delay is None:
                return call.parse(response)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _run(self, flow: Flow[T]) -> T:
        try:
            call = next(flow)
            while True:
                try:
                    result = await self._send(call)
                except errors.GiftCardError as exc:
                    call = flow.throw(exc)
                else:
                    call = flow.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def health(self) -> models.Health:
        return await self._run(self._health_flow())

    async def verify(self) -> models.Verification:
        return await self._run(self._verify_flow())

    async def tokenize(self, card: Card) -> models.Token:
        return await self._run(self._tokenize_flow(card))

    async def balance(self, card: CardLike) -> models.Balance:
        return await self._run(self._balance_flow(card))

    async def sell(
        self,
        card: CardLike,
        amount: Decimal | int | str,
        store: Any,
        pos_ref: str | None = None,
        idempotency_key: str | None = None,
    ) -> models.Load:
        return await self._run(
            self._load_flow(card, amount, store, pos_ref, idempotency_key, sale=True)
        )

    async def reload(
        self,
        card: CardLike,
        amount: Decimal | int | str,
        store: Any,
        pos_ref: str | None = None,
        idempotency_key: str | None = None,
    ) -> models.Load:
        return await self._run(
            self._load_flow(card, amount, store, pos_ref, idempotency_key, sale=False)
        )

    async def redeem(
        self,
        card: CardLike,
        amount: Decimal | int | str,
        store: Any,
        pos_ref: str | None = None,
        accept_partial: bool = False,
        idempotency_key: str | None = None,
    ) -> models.Redemption:
        return await self._run(
            self._redeem_flow(card, amount, store, pos_ref, accept_partial, idempotency_key)
        )

    async def change_status(
        self, card: CardLike, active: bool, reason: str, idempotency_key: str | None = None
    ) -> models.StatusChange:
        return await self._run(self._status_flow(card, active, reason, idempotency_key))

    async def batches(
        self,
        store: Any,
        status: str = "all",
        since: date | None = None,
        until: date | None = None,
        limit: int = 100,
        transactions: bool = True,
    ) -> list[models.Batch]:
        flow = self._batches_flow(
            _protocol.batches, store, status, since, until, limit, transactions
        )
        return await self._run(flow)

    async def batches_json(
        self,
        store: Any,
        status: str = "all",
        since: date | None = None,
        until: date | None = None,
        limit: int = 100,
        transactions: bool = True,
    ) -> bytes:
        """``batches()``'s answer as the server sent it, for ``frames.from_json`` (read by
        polars in one pass, not object by object); declines and errors raise the same."""
        flow = self._batches_flow(
            _protocol.batches_json, store, status, since, until, limit, transactions
        )
        return await self._run(flow)

    async def close_batch(
        self,
        store: Any,
        expected_count: int | None = None,
        expected_amount: Decimal | int | str | None = None,
        idempotency_key: str | None = None,
    ) -> models.Batch:
        return await self._run(
            self._close_flow(store, expected_count, expected_amount, idempotency_key)
        )
