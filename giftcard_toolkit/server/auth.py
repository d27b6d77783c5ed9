"""Users, their passwords and their store grants: HTTP Basic authentication for the server.

Passwords are stored as salted scrypt hashes (``hashlib.scrypt``), never in plain text.
Checking one costs tens of milliseconds on purpose, so credentials that verified are kept
in memory for a short while under a keyed digest (never the password itself); a POS
sends the same header on every request, and each one must not pay the scrypt price.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from giftcard_toolkit.server.ledger import Ledger

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
CACHE_SECONDS = 60.0
REALM = 'Basic realm="giftcard"'


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


class Authenticator:
    """Checks Basic credentials against the ledger's users, with a short verified cache."""

    def __init__(self, ledger: Ledger, cache_seconds: float = CACHE_SECONDS) -> None:
        self._ledger = ledger
        self._cache_seconds = cache_seconds
        self._cache_key = secrets.token_bytes(32)
        self._cache: dict[bytes, tuple[float, User]] = {}
        self._lock = threading.Lock()

    def _digest(self, header: str) -> bytes:
        return hmac.new(self._cache_key, header.encode(), hashlib.sha256).digest()

    def cached(self, header: str | None) -> User | None:
        """The user for a header verified within the cache period (cheap; no scrypt)."""
        if not header:
            return None
        entry = self._cache.get(self._digest(header))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def authenticate(self, header: str | None) -> User | None:
        """The user for an ``Authorization`` header, or None (missing, malformed or wrong)."""
        user = self.cached(header)
        if user is not None or header is None:
            return user
        credentials = parse_basic(header)
        if credentials is None:
            return None
        username, password = credentials
        record = self._ledger.user_record(username)
        stored = record[0] if record else _DUMMY_HASH
        if not verify_password(password, stored) or record is None:
            return None
        user = User(username, record[1])
        with self._lock:
            now = time.monotonic()
            if len(self._cache) > 10_000:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[self._digest(header)] = (now + self._cache_seconds, user)
        return user
