"""Administration: stores and where they trade, users with their grants, roles and own
limits, and new cards issued into a store's stock."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from giftcard_toolkit.cards import luhn_check_digit
from giftcard_toolkit.rules import is_money_amount
from giftcard_toolkit.server.ledger.books import Books
from giftcard_toolkit.server.ledger.records import (
    Account,
    Decline,
    IssuedCard,
    Store,
    UserRecord,
    check_jurisdiction,
    from_cents,
    to_cents,
)
from giftcard_toolkit.server.ledger.storage import Conn, Row

# What each role may do (contract: "Roles and limits"); an analyst may only read.
ROLES = ("clerk", "analyst")
WRITE_ROLES = frozenset({"clerk"})


def new_card_number(rand: Any) -> str:
    """A random 16-digit Luhn-valid card number in the toolkit's 6006 range."""
    partial = "6006" + "".join(str(rand.randrange(10)) for _ in range(11))
    return partial + luhn_check_digit(partial)


def demo_card_key(seed_number: int) -> str:
    """The demo server's card key (base64), derived from the seed number (contract §3)."""
    return base64.b64encode(
        hashlib.sha256(f"giftcard-toolkit demo card key {seed_number}".encode()).digest()
    ).decode()


class Admin:
    """The ledger's administration, as ``admin`` (the CLI) and the demo seed use it."""

    def __init__(self, books: Books) -> None:
        self.books = books

    def add_store(
        self, name: str, address: str = "", store_id: str | None = None, jurisdiction: str = ""
    ) -> Store:
        check_jurisdiction(jurisdiction)
        store = Store((store_id or str(uuid.uuid4())).lower(), name, address, jurisdiction)
        with self.books.storage.write() as conn:
            conn.execute(
                "INSERT INTO stores(id, name, address, jurisdiction) VALUES (?, ?, ?, ?)",
                (store.id, store.name, store.address, store.jurisdiction),
            )
        return store

    def set_jurisdiction(self, store_id: str, jurisdiction: str) -> Store:
        """Say where a store trades (``""``: not set); answers the store as it now is."""
        check_jurisdiction(jurisdiction)
        with self.books.storage.write() as conn:
            changed = conn.execute(
                "UPDATE stores SET jurisdiction = ? WHERE id = ?", (jurisdiction, store_id)
            ).rowcount
        found = self.store(store_id)
        if not changed or found is None:
            raise ValueError(f"no store {store_id!r}: see 'admin stores'")
        return found

    def stores(self) -> list[Store]:
        rows = self.books.storage.connection().execute(
            "SELECT id, name, address, jurisdiction FROM stores ORDER BY name, id"
        )
        return [Store(r["id"], r["name"], r["address"], r["jurisdiction"]) for r in rows]

    def store(self, store_id: str) -> Store | None:
        row = (
            self.books.storage.connection()
            .execute("SELECT id, name, address, jurisdiction FROM stores WHERE id = ?", (store_id,))
            .fetchone()
        )
        if row is None:
            return None
        return Store(row["id"], row["name"], row["address"], row["jurisdiction"])

    def put_user(
        self,
        username: str,
        password_hash: str,
        store_ids: list[str],
        *,
        role: str = "clerk",
        max_amount: Decimal | None = None,
    ) -> None:
        """Create or replace a user with these grants, role and own limit per sale, reload
        or redemption (``None``: only the server's limits); the hash comes from ``auth``."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: the roles are {', '.join(ROLES)}")
        if max_amount is not None and not is_money_amount(max_amount):
            raise ValueError(
                f"max amount {max_amount} must be a positive amount with at most 2 decimals"
            )
        limit_cents = None if max_amount is None else to_cents(max_amount)
        with self.books.storage.write() as conn:
            for store_id in store_ids:
                if (
                    conn.execute("SELECT 1 FROM stores WHERE id = ?", (store_id,)).fetchone()
                    is None
                ):
                    raise ValueError(f"store {store_id} does not exist; add it first")
            conn.execute(
                "INSERT INTO users(username, password_hash, role, max_amount_cents) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(username) DO UPDATE SET "
                "password_hash = excluded.password_hash, role = excluded.role, "
                "max_amount_cents = excluded.max_amount_cents",
                (username, password_hash, role, limit_cents),
            )
            conn.execute("DELETE FROM grants WHERE username = ?", (username,))
            conn.executemany(
                "INSERT INTO grants(username, store_id) VALUES (?, ?)",
                [(username, s) for s in store_ids],
            )

    def user_record(self, username: str) -> UserRecord | None:
        """(password hash, granted store ids, role, own limit) of a user, or None."""
        conn = self.books.storage.connection()
        row = conn.execute(
            "SELECT password_hash, role, max_amount_cents FROM users WHERE username = ?",
            (username,),
        ).fetchone()
        if row is None:
            return None
        grants = conn.execute("SELECT store_id FROM grants WHERE username = ?", (username,))
        limit = None if row[2] is None else from_cents(row[2])
        return UserRecord(row[0], frozenset(r[0] for r in grants), row[1], limit)

    def accounts(self) -> list[Account]:
        """Every user, by name: role, granted stores and own limit (never a password hash)."""
        with self.books.storage.read() as conn:
            grants: dict[str, list[str]] = {}
            for name, store_id in conn.execute(
                "SELECT username, store_id FROM grants ORDER BY username, store_id"
            ):
                grants.setdefault(name, []).append(store_id)
            rows = conn.execute(
                "SELECT username, role, max_amount_cents FROM users ORDER BY username"
            ).fetchall()
        return [
            Account(
                r[0],
                r[1],
                tuple(grants.get(r[0], ())),
                None if r[2] is None else from_cents(r[2]),
            )
            for r in rows
        ]

    def user_count(self) -> int:
        return int(
            self.books.storage.connection().execute("SELECT count(*) FROM users").fetchone()[0]
        )

    def issue_cards(
        self,
        store_id: str,
        count: int,
        deliver: Callable[[list[IssuedCard]], None] | None = None,
    ) -> list[IssuedCard]:
        """Create ``count`` new 16-digit Luhn cards with 4-digit codes (from the OS CSPRNG)
        in a store's stock. The returned numbers and codes are stored nowhere else.

        ``deliver`` gets the new cards inside the transaction that adds them, before it
        commits: it should put them somewhere durable (write and fsync a file). If it
        raises, nothing is committed: no card exists whose number was not delivered.
        (Called inside an enclosing :meth:`write`, the commit is that transaction's.)"""
        if count < 1:
            raise ValueError("count must be at least 1")
        rand = secrets.SystemRandom()
        issued: list[IssuedCard] = []
        with self.books.storage.write():
            while len(issued) < count:
                drawn = [new_card_number(rand) for _ in range(count - len(issued))]
                cards = [IssuedCard(n, f"{rand.randrange(10000):04d}", store_id) for n in drawn]
                issued.extend(self.add_cards(cards))  # joins this transaction
            if deliver is not None:
                deliver(issued)
        return issued

    def add_cards(self, cards: list[IssuedCard]) -> list[IssuedCard]:
        """Put cards into their stores' stock; answers those added (a number that exists
        already is skipped)."""
        added: list[IssuedCard] = []
        with self.books.storage.write() as conn:
            for card in cards:
                if self.store(card.store_id) is None:
                    raise ValueError(f"store {card.store_id} does not exist; add it first")
                lookup = self.books.card_lookup(card.number)
                inserted = conn.execute(
                    "INSERT INTO cards(lookup, cardref, last4, code_hash, stock_store_id) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(lookup) DO NOTHING",
                    (
                        lookup,
                        self.books.card_ref(card.number),
                        card.number[-4:],
                        self.books.code_hash(lookup, card.security_code),
                        card.store_id,
                    ),
                ).rowcount
                if inserted:
                    added.append(card)
        return added

    def granted_store(self, conn: Conn, stores: frozenset[str], store_id: str) -> Row:
        """A store the user is granted, or the decline ``100010``."""
        row = None
        if store_id in stores:
            row = conn.execute("SELECT * FROM stores WHERE id = ?", (store_id,)).fetchone()
        if row is None:
            raise Decline("100010")
        return row
