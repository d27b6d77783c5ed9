"""Users, their passwords and their store grants: HTTP Basic authentication for the server.

Passwords are stored as salted scrypt hashes (``hashlib.scrypt``), never in plain text.
Checking one costs tens of milliseconds on purpose, so credentials that verified are kept
in memory for a short while under a keyed digest (never the password itself); a POS
sends the same header on every request, and each one must not pay the scrypt price. Nor
must any one request pay it when the entry expires: one in use is checked again in the
background shortly before (see :class:`Authenticator`).

:class:`Throttle` slows password guessing down: after 10 failed authentications for one
username from one client address within 15 minutes, that pair is refused (429) for a
while, longer each time the failures go on; other users and addresses are unaffected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

from giftcard_toolkit.server.ledger import Ledger

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
CACHE_SECONDS = 60.0
# A credential in use is checked again this long before its cache entry expires, in the
# background, while the entry still answers: the requests of a busy till never wait for scrypt.
REFRESH_SECONDS = 15.0
REALM = 'Basic realm="giftcard"'
log = logging.getLogger("giftcard_toolkit.server")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash``, all that is needed to check the password later."""
    if not password:
        raise ValueError("a password must not be empty")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        actual = hashlib.scrypt(
            password.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


# Checked when the user does not exist, so that an unknown name costs as long as a known one.
_DUMMY_HASH = hash_password("not a real password", salt=b"0" * 16)


@dataclass(frozen=True)
class User:
    username: str
    stores: frozenset[str]
    role: str = "clerk"
    max_amount: Decimal | None = None  # the user's own limit per movement (None: none)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(username, password) from an ``Authorization: Basic ...`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        return None
    return username, password


@dataclass
class _Entry:
    """A verified header: until when it is trusted, for whom, and whether it is being
    checked again ahead of that."""

    expires: float
    user: User
    refreshing: bool = False


@dataclass
class _Flight:
    """One uncached check at a time per username; ``holders`` counts who holds or waits."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    holders: int = 0


class Authenticator:
    """Checks Basic credentials against the ledger's users, with a short verified cache.

    A verified header is trusted for ``cache_seconds``. One used in the last
    ``refresh_seconds`` of that is checked again in the background while it still answers,
    so a till sending requests never waits for scrypt, and the old password of a user whose
    password changed is refused at most ``cache_seconds`` later all the same. Uncached
    checks run one at a time per username (single flight): requests that waited for one
    find its answer in the cache instead of running scrypt again. Thread-safe; ``clock``
    (seconds, monotonic) is injectable for tests.
    """

    def __init__(
        self,
        ledger: Ledger,
        cache_seconds: float = CACHE_SECONDS,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= refresh_seconds < cache_seconds:
            raise ValueError("Authenticator needs 0 <= refresh_seconds < cache_seconds")
        self._ledger = ledger
        self._cache_seconds = cache_seconds
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._cache_key = secrets.token_bytes(32)
        self._cache: dict[bytes, _Entry] = {}
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()
        # One thread re-checks for everyone: refreshes never take more than a core from
        # serving. Its thread ends when this object is collected.
        self._refresher = ThreadPoolExecutor(1, thread_name_prefix="giftcard-auth-refresh")

    def _digest(self, header: str) -> bytes:
        return hmac.digest(self._cache_key, header.encode(), "sha256")  # one-shot: in C

    def cached(self, header: str | None) -> User | None:
        """The user for a header verified within the cache period: cheap, never waits for
        scrypt; near the period's end it starts the entry's re-check in the background."""
        if not header:
            return None
        digest = self._digest(header)
        entry = self._cache.get(digest)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.expires:
            return None
        if now >= entry.expires - self._refresh_seconds and not entry.refreshing:
            with self._lock:
                start, entry.refreshing = not entry.refreshing, True
            if start:
                self._refresher.submit(self._refresh, header)
        return entry.user

    def authenticate(self, header: str | None) -> User | None:
        """The user for an ``Authorization`` header, or None (missing, malformed or wrong)."""
        user = self.cached(header)
        if user is not None or header is None:
            return user
        return self._verify(header, ahead=False)

    def _refresh(self, header: str) -> None:
        try:
            self._verify(header, ahead=True)
        except Exception:  # the ledger closed or failed: the entry expires as it would have
            log.warning("re-checking cached credentials failed", exc_info=True)

    def _verify(self, header: str, *, ahead: bool) -> User | None:
        """scrypt, once per username at a time; the cache updated with the outcome.
        ``ahead``: a refresh, needed unless another check renewed the entry meanwhile."""
        credentials = parse_basic(header)
        if credentials is None:
            return None
        username, password = credentials
        digest = self._digest(header)
        with self._flight(username):
            entry = self._cache.get(digest)
            fresh_until = self._clock() + (self._refresh_seconds if ahead else 0)
            if entry is not None and entry.expires > fresh_until:
                return entry.user  # checked by the flight this one waited for
            record = self._ledger.user_record(username)
            stored = record.password_hash if record else _DUMMY_HASH
            if not verify_password(password, stored) or record is None:
                with self._lock:
                    self._cache.pop(digest, None)  # changed or removed since it was cached
                return None
            user = User(username, record.stores, record.role, record.max_amount)
            with self._lock:
                now = self._clock()
                if len(self._cache) > 10_000:
                    self._cache = {k: v for k, v in self._cache.items() if v.expires > now}
                self._cache[digest] = _Entry(now + self._cache_seconds, user)
        return user

    @contextmanager
    def _flight(self, username: str) -> Iterator[None]:
        with self._lock:
            flight = self._flights.get(username)
            if flight is None:
                flight = self._flights[username] = _Flight()
            flight.holders += 1
        try:
            with flight.lock:
                yield
        finally:
            with self._lock:
                flight.holders -= 1
                if not flight.holders:
                    del self._flights[username]


def username_of(header: str | None) -> str | None:
    """The username an ``Authorization: Basic`` header names, or None when it names none."""
    credentials = parse_basic(header)
    return credentials[0] if credentials else None


def printable(text: str, limit: int = 64) -> str:
    """``text`` safe for a log line: no control characters, at most ``limit`` characters."""
    shown = text[:limit].encode("unicode_escape").decode("ascii")
    return shown + ("..." if len(text) > limit else "")


class Refusal(NamedTuple):
    """A pair just refused: for how long, and the how-manieth refusal since it was quiet."""

    seconds: int
    strike: int


@dataclass
class _Failures:
    times: deque[float]  # the last ``limit`` failures
    strikes: int = 0  # throttlings since the pair was last quiet or succeeded
    until: float = 0.0  # refused until then (clock time)
    last: float = field(default=0.0)


class Throttle:
    """Failed authentications per (username, client address), and the pairs refused now.

    ``limit`` failures within ``window`` seconds refuse the pair for ``first_delay``
    seconds; each failure after a refusal ends refuses it again, for twice as long each
    time, up to ``max_delay``. A success forgets the pair; so do ``window`` seconds without
    a failure after its last refusal ended.
    At most ``max_pairs`` pairs are remembered (the least recently failed are forgotten
    first). Thread-safe. ``clock`` is injectable (seconds, monotonic) for tests.
    """

    def __init__(
        self,
        *,
        limit: int = 10,
        window: float = 15 * 60.0,
        first_delay: float = 60.0,
        max_delay: float = 15 * 60.0,
        max_pairs: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0 or first_delay <= 0 or max_delay < first_delay:
            raise ValueError("Throttle needs limit >= 1, window > 0, 0 < first_delay <= max_delay")
        self.limit = limit
        self.window = window
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.max_pairs = max_pairs
        self.clock = clock
        self._pairs: dict[tuple[str, str], _Failures] = {}
        self._refused: dict[tuple[str, str], float] = {}  # pair -> refused until
        self._soonest = math.inf  # no refusal ends before this
        self._lock = threading.Lock()

    @staticmethod
    def _key(username: str, address: str) -> tuple[str, str]:
        if len(username) > 128:  # bound what a hostile client makes us keep
            username = "sha256:" + hashlib.sha256(username.encode("utf-8", "replace")).hexdigest()
        return username, address

    @property
    def refusing(self) -> bool:
        """Whether any pair may be refused now (cheap: checked on every request)."""
        return bool(self._refused)

    @property
    def counting(self) -> bool:
        """Whether any pair has failures on record (a success must then forget its own)."""
        return bool(self._pairs)

    def retry_after(self, username: str, address: str) -> int:
        """Whole seconds until the pair may try again; 0 when it is not refused."""
        if not self._refused:
            return 0
        key = self._key(username, address)
        with self._lock:
            now = self.clock()
            if now >= self._soonest:  # forget the refusals that have ended
                self._refused = {k: t for k, t in self._refused.items() if t > now}
                self._soonest = min(self._refused.values(), default=math.inf)
            until = self._refused.get(key)
        return 0 if until is None else max(1, math.ceil(until - now))

    def failed(self, username: str, address: str) -> Refusal | None:
        """Count a failed authentication; the refusal it starts, if it starts one."""
        key = self._key(username, address)
        now = self.clock()
        with self._lock:
            record = self._pairs.pop(key, None)  # re-inserted last: most recently failed
            if record is None or now >= max(record.until, record.last) + self.window:
                record = _Failures(deque(maxlen=self.limit))
                if len(self._pairs) >= self.max_pairs:
                    self._evict(now)
            self._pairs[key] = record
            record.times.append(now)
            record.last = now
            if not record.strikes and (
                len(record.times) < self.limit or now - record.times[0] > self.window
            ):
                return None  # not (yet) guessing
            if record.until > now:
                return None  # refused already (a request let in before the refusal began)
            delay = min(self.first_delay * 2 ** min(record.strikes, 32), self.max_delay)
            record.strikes += 1
            record.until = now + delay
            self._refused[key] = record.until
            self._soonest = min(self._soonest, record.until)
        return Refusal(max(1, math.ceil(delay)), record.strikes)

    def succeeded(self, username: str, address: str) -> None:
        """A success for the pair: forget its failures."""
        if not self._pairs:
            return
        key = self._key(username, address)
        with self._lock:
            self._pairs.pop(key, None)
            self._refused.pop(key, None)

    def _evict(self, now: float) -> None:
        """Make room (lock held): forget quiet pairs, then the least recently failed."""
        for key, record in list(self._pairs.items()):
            if now >= max(record.until, record.last) + self.window:
                del self._pairs[key]
                self._refused.pop(key, None)
        if len(self._pairs) >= self.max_pairs:  # a tenth at once: no scan at every insert
            for key in list(self._pairs)[: max(1, len(self._pairs) - self.max_pairs * 9 // 10)]:
                del self._pairs[key]
                self._refused.pop(key, None)
