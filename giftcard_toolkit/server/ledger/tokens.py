"""How a request reaches its card: a token (given for the card's security code, with a
lockout after too many wrong codes) or encrypted card data; and the balance check, which
only reads the card it reaches."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from giftcard_toolkit.cards import CardDecryptError
from giftcard_toolkit.server.ledger.books import Books
from giftcard_toolkit.server.ledger.idempotency import Operations
from giftcard_toolkit.server.ledger.records import (
    DESCRIPTIONS,
    Body,
    CardRef,
    Decline,
    decline_body,
    dumps,
    from_cents,
    ts,
)
from giftcard_toolkit.server.ledger.storage import Conn, Row

TOKEN_LIFETIME = timedelta(minutes=10)
LOCKOUT_WINDOW = timedelta(minutes=15)
LOCKOUT_DURATION = timedelta(minutes=15)
LOCKOUT_ATTEMPTS = 5


def expired(card: Row, now: datetime) -> bool:
    return card["expires_at"] is not None and card["expires_at"] <= ts(now)


class Tokens:
    """Card references resolved to cards; tokens issued and security codes checked."""

    def __init__(self, books: Books, operations: Operations) -> None:
        self.books = books
        self.operations = operations

    def resolve(self, conn: Conn, username: str, ref: CardRef, now: datetime) -> Row:
        """The card a request names, or the contract's decline for why it can't be used."""
        if ref.token is not None:
            token_hash = hashlib.sha256(ref.token.encode()).hexdigest()
            # One statement, so a read outside a transaction still sees one snapshot.
            row = conn.execute(
                "SELECT c.*, t.username AS token_user, t.expires_at AS token_expires "
                "FROM tokens t JOIN cards c ON c.id = t.card_id WHERE t.token_hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None or row["token_user"] != username or row["token_expires"] <= ts(now):
                raise Decline("100007")
            return row
        cipher = self.books.card_cipher
        if cipher is None or ref.encrypted is None:
            raise Decline("100009")
        try:
            number = cipher.decrypt(ref.encrypted)
        except (CardDecryptError, ValueError):
            raise Decline("100009") from None
        row = conn.execute(
            "SELECT * FROM cards WHERE lookup = ?", (self.books.card_lookup(number),)
        ).fetchone()
        if row is None:
            raise Decline("100001")
        return row

    def card_identity(self, username: str, ref: CardRef) -> str | None:
        """The ``cardref`` of the card a request names, or None if it names none usable.

        Idempotency compares requests by the card, not by the token or ciphertext that
        named it: those change between attempts (tokens expire, AES-GCM nonces are fresh).
        """
        try:
            card = self.resolve(self.books.storage.connection(), username, ref, self.books.now())
        except Decline:
            return None
        return str(card["cardref"])

    def unresolved_answer(self, username: str, ref: CardRef) -> str | None:
        """The decline for a request naming a card that cannot be resolved (a token
        unknown or expired, a ciphertext that does not decrypt to a known card), or None
        if the card resolves after all. Nothing is applied."""
        try:
            self.resolve(self.books.storage.connection(), username, ref, self.books.now())
        except Decline as decline:
            return dumps(decline_body(decline.code, **decline.extra))
        return None

    def tokenize(self, username: str, number: str, security_code: str) -> str:
        """``POST /v1/Token`` for an already normalised card number and code."""
        books = self.books

        def operation(conn: Conn, now: datetime) -> Body:
            lookup = books.card_lookup(number)
            card = conn.execute(
                "SELECT id, code_hash, locked_until FROM cards WHERE lookup = ?", (lookup,)
            ).fetchone()
            if card is None:
                return decline_body("100001")
            if card["locked_until"] is not None and card["locked_until"] > ts(now):
                return decline_body("100014")
            if not hmac.compare_digest(card["code_hash"], books.code_hash(lookup, security_code)):
                # Commits (no Decline raised): failures must count even though we decline.
                conn.execute(
                    "INSERT INTO code_failures(card_id, at) VALUES (?, ?)", (card["id"], ts(now))
                )
                since = max(ts(now - LOCKOUT_WINDOW), card["locked_until"] or "")
                failures = conn.execute(
                    "SELECT count(*) FROM code_failures WHERE card_id = ? AND at > ?",
                    (card["id"], since),
                ).fetchone()[0]
                if failures >= LOCKOUT_ATTEMPTS:
                    conn.execute(
                        "UPDATE cards SET locked_until = ? WHERE id = ?",
                        (ts(now + LOCKOUT_DURATION), card["id"]),
                    )
                    conn.execute("DELETE FROM code_failures WHERE card_id = ?", (card["id"],))
                return decline_body("100008")
            conn.execute("DELETE FROM code_failures WHERE card_id = ?", (card["id"],))
            conn.execute("DELETE FROM tokens WHERE expires_at <= ?", (ts(now),))
            expires = now + TOKEN_LIFETIME
            while True:  # a token drawn twice is drawn again
                token = "".join(secrets.choice("0123456789") for _ in range(16))
                inserted = conn.execute(
                    "INSERT INTO tokens(token_hash, card_id, username, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(token_hash) DO NOTHING",
                    (
                        hashlib.sha256(token.encode()).hexdigest(),
                        card["id"],
                        username,
                        ts(now),
                        ts(expires),
                    ),
                ).rowcount
                if inserted:
                    break
            return {
                "statuscode": "000000",
                "description": DESCRIPTIONS["000000"],
                "token": token,
                "exp": books.time_text(ts(expires)),
            }

        return self.operations.run(operation)

    def balance(self, username: str, ref: CardRef) -> str:
        """``POST /Transaction/balancecheck``."""
        now = self.books.now()
        try:
            card = self.resolve(self.books.storage.connection(), username, ref, now)
        except Decline as decline:
            return dumps(decline_body(decline.code, **decline.extra))
        usable = card["state"] == "active" and not expired(card, now)
        time_text = self.books.time_text
        return dumps(
            {
                "statuscode": "000000",
                "description": DESCRIPTIONS["000000"],
                "cardending": card["last4"],
                "balance": from_cents(card["balance_cents"]),
                "status": usable,
                "activated": time_text(card["activated_at"]),
                "lastused": time_text(card["last_used_at"]),
                "expire": time_text(card["expires_at"]),
                "cardref": card["cardref"],
            }
        )
