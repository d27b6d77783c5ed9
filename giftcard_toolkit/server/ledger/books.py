"""What every rule of one ledger shares: its store, its clock and zone, its limits, and the
keys that stand for cards (keyed HMACs of the number, the card cipher)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, tzinfo

from giftcard_toolkit.cards import AesGcmCardCipher, CardCipher
from giftcard_toolkit.server.ledger.records import Clock, Limits, parse_ts
from giftcard_toolkit.server.ledger.storage import Storage


class Books:
    """The shared state of a ledger's concern objects; ``Ledger`` hands it to each."""

    def __init__(
        self,
        storage: Storage,
        *,
        clock: Clock,
        tz: tzinfo,
        limits: Limits,
        card_cipher: CardCipher | None,
        new_secret: bytes | None,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.tz = tz
        self.limits = limits
        if storage.meta("secret") is None:  # a new database: its own key for card lookups
            # Kept only if no other process starting on the same database kept one first.
            storage.connection().execute(
                "INSERT INTO meta(key, value) VALUES ('secret', ?) ON CONFLICT(key) DO NOTHING",
                ((new_secret or secrets.token_bytes(32)).hex(),),
            )
        self._secret = bytes.fromhex(storage.meta("secret") or "")
        stored_key = storage.meta("card_key")
        self.card_cipher = card_cipher
        if self.card_cipher is None and stored_key:
            self.card_cipher = AesGcmCardCipher.from_base64(stored_key)

    def now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the ledger's clock must return timezone-aware datetimes")
        return now

    def time_text(self, stored: str | None) -> str | None:
        """A stored UTC time as the contract shows it: ISO 8601 in the server's zone."""
        if stored is None or self.tz is UTC:
            return stored  # stored times are UTC ISO 8601 already
        return parse_ts(stored).astimezone(self.tz).isoformat()

    def _hmac(self, purpose: str, text: str) -> str:
        return hmac.new(self._secret, f"{purpose}:{text}".encode(), hashlib.sha256).hexdigest()

    def card_lookup(self, number: str) -> str:
        return self._hmac("lookup", number)

    def card_ref(self, number: str) -> str:
        """The contract's ``cardref``: stable per card, the number not recoverable from it."""
        return self._hmac("cardref", number)[:16]

    def code_hash(self, lookup: str, code: str) -> str:
        return self._hmac("code", f"{lookup}:{code}")
