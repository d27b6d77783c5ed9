"""The money logic of the GiftCard server: :class:`Ledger`, one object over a concern each.

Every operation of the contract that reads or changes a card lives here and answers with the
contract's response body (a dict whose money values are ``Decimal``): approvals and declines
alike, so that the HTTP layer (``app``) only authenticates, validates and serialises.

The rules, each in its module, over the seam to the database (``storage``):

* ``money``: sales, reloads, redemptions, blocking; a balance always equals its ledger rows.
* ``tokens``: how a request reaches its card (tokens, lockout, encrypted card data).
* ``idempotency``: an ``Idempotency-Key``'s record, written in the same transaction as the
  movement it answers, so a crash never leaves one without the other.
* ``batches``: each movement in its store's open batch; totals computed, never stored.
* ``admin``: stores, users, roles and limits, cards issued into stock.
* ``books``: what they share (clock, zone, limits, the keys that stand for cards);
  ``records``: the small value types, the declines, how answers are written.

Behind the seam: ``sqlite`` (one ``BEGIN IMMEDIATE`` transaction per write, group commit in
a writer thread) and ``schema`` (its DDL and migrations), or ``postgres`` (for several
server processes on one database: serializable transactions, retried on conflicts).

The database never holds a card number or security code: cards are found by a keyed HMAC of
the number (``lookup``), shown by their last four digits, and followed across transactions by
``cardref``, a second keyed HMAC truncated to 16 hex characters.
"""

from __future__ import annotations

from datetime import UTC, tzinfo
from pathlib import Path

from giftcard_toolkit.cards import CardCipher
from giftcard_toolkit.server.ledger.admin import (
    ROLES,
    WRITE_ROLES,
    Admin,
    demo_card_key,
    new_card_number,
)
from giftcard_toolkit.server.ledger.batches import Batches
from giftcard_toolkit.server.ledger.books import Books
from giftcard_toolkit.server.ledger.idempotency import Operations
from giftcard_toolkit.server.ledger.money import Money
from giftcard_toolkit.server.ledger.postgres import PostgresStorage, is_postgres_url, masked_url
from giftcard_toolkit.server.ledger.records import (
    DESCRIPTIONS,
    Account,
    Body,
    CardRef,
    Clock,
    DatabaseUnavailable,
    Decline,
    Idempotency,
    IdempotencyLost,
    IssuedCard,
    Limits,
    Reservation,
    Store,
    UserRecord,
    WriterStopped,
    decline_body,
    dumps,
    from_cents,
    to_cents,
    utc_now,
)
from giftcard_toolkit.server.ledger.schema import SCHEMA_VERSION, SchemaMismatch
from giftcard_toolkit.server.ledger.sqlite import SqliteStorage
from giftcard_toolkit.server.ledger.storage import Storage
from giftcard_toolkit.server.ledger.tokens import Tokens

__all__ = [
    "DESCRIPTIONS",
    "ROLES",
    "SCHEMA_VERSION",
    "SchemaMismatch",
    "WRITE_ROLES",
    "Account",
    "Body",
    "CardRef",
    "Clock",
    "DatabaseUnavailable",
    "Decline",
    "Idempotency",
    "IdempotencyLost",
    "IssuedCard",
    "Ledger",
    "Limits",
    "Reservation",
    "Store",
    "UserRecord",
    "WriterStopped",
    "decline_body",
    "demo_card_key",
    "dumps",
    "from_cents",
    "new_card_number",
    "to_cents",
    "utc_now",
]


class Ledger:
    """One gift card database: its cards, stores, users, batches and money movements.

    Each method is its concern object's own (``ledger.redeem`` is ``Money.redeem``); the
    ledger only builds them over one database (``storage``) and one :class:`Books`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock = utc_now,
        tz: tzinfo = UTC,
        limits: Limits | None = None,
        card_cipher: CardCipher | None = None,
        durable: bool = True,
        new_secret: bytes | None = None,
    ) -> None:
        # A PostgreSQL url (several server processes on one database) or a SQLite file.
        self.storage: Storage
        self.path: Path | None
        if is_postgres_url(path):
            self.path, self.where = None, masked_url(str(path))
            self.storage = PostgresStorage(str(path))
        else:
            self.path = Path(path)
            self.where = str(self.path)
            self.storage = SqliteStorage(self.path, durable=durable)
        storage = self.storage  # the seam: the rules below see only its interface
        self._books = books = Books(
            storage,
            clock=clock,
            tz=tz,
            limits=limits or Limits(),
            card_cipher=card_cipher,
            new_secret=new_secret,
        )
        operations = Operations(books)
        tokens = Tokens(books, operations)
        admin = Admin(books)
        batches = Batches(books, admin, operations)
        money = Money(books, operations, tokens, admin, batches)
        # The database behind the seam: transactions, the writer thread, its settings.
        self.write = storage.write
        self.read = storage.read
        self.submit = storage.submit
        self.meta = storage.meta
        self.set_meta = storage.set_meta
        self.healthy = storage.healthy
        self.close = storage.close
        self.card_lookup = books.card_lookup
        self.card_ref = books.card_ref
        self.time_text = books.time_text
        # The rules, each method its concern's own.
        self.reserve = operations.reserve
        self.tokenize = tokens.tokenize
        self.balance = tokens.balance
        self.card_identity = tokens.card_identity
        self.unresolved_answer = tokens.unresolved_answer
        self.load = money.load
        self.redeem = money.redeem
        self.change_status = money.change_status
        self.check_invariants = money.check_invariants
        self.batches = batches.find
        self.close_batch = batches.close_batch
        self.add_store = admin.add_store
        self.set_jurisdiction = admin.set_jurisdiction
        self.stores = admin.stores
        self.store = admin.store
        self.put_user = admin.put_user
        self.user_record = admin.user_record
        self.accounts = admin.accounts
        self.user_count = admin.user_count
        self.issue_cards = admin.issue_cards
        self.add_cards = admin.add_cards

    @property
    def clock(self) -> Clock:
        return self._books.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:  # the demo seed runs its history on its own clock
        self._books.clock = clock

    @property
    def card_cipher(self) -> CardCipher | None:
        return self._books.card_cipher

    @card_cipher.setter
    def card_cipher(self, cipher: CardCipher | None) -> None:
        self._books.card_cipher = cipher

    @property
    def tz(self) -> tzinfo:
        return self._books.tz

    @property
    def limits(self) -> Limits:
        return self._books.limits
