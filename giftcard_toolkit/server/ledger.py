"""The money logic of the GiftCard server, on SQLite.

Every operation of the contract that reads or changes a card lives here and answers with the
contract's response body (a dict whose money values are ``Decimal``): approvals and declines
alike, so that the HTTP layer (``app``) only authenticates, validates and serialises.

How money stays right:

* Balances are integer cents in ``cards.balance_cents`` (``CHECK >= 0``); every movement
  appends a ``ledger`` row in the same ``BEGIN IMMEDIATE`` transaction that changes the
  balance, so a card's balance always equals the signed sum of its ledger rows.
* Each movement goes into the store's open batch (opened on demand, at most one per store by
  a partial unique index). A batch's totals are computed from its rows, never stored, so they
  cannot drift. Closing a batch is a write transaction too, so a movement is either before
  the close (in the closed batch) or after it (in the next one), never both, never neither.
* Writers are serialised by an in-process lock (no busy-wait storms under load) and by
  SQLite's own write lock across processes (the ``admin`` CLI may write while a server runs).
* The server hands its writes to :meth:`Ledger.submit`: one writer thread runs whatever is
  queued as one transaction, each write in its own savepoint, and commits once (group
  commit). Every write still succeeds or fails alone, and no answer is given before the
  commit that makes it durable (``synchronous=FULL``), but concurrent requests share the
  fsync instead of queueing for one each.
* Idempotency records are written in the same transaction as the movement they answer, so a
  crash can never leave a movement without its record or a record without its movement.

The database never holds a card number or security code: cards are found by a keyed HMAC of
the number (``lookup``), shown by their last four digits, and followed across transactions by
``cardref``, a second keyed HMAC truncated to 16 hex characters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import queue
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import simplejson

from giftcard_toolkit.cards import (
    AesGcmCardCipher,
    CardCipher,
    CardDecryptError,
    luhn_check_digit,
    mask,
)
from giftcard_toolkit.rules import JURISDICTION, JURISDICTION_EXAMPLE, is_money_amount

Clock = Callable[[], datetime]
Body = dict[str, Any]
T = TypeVar("T")
_Job = tuple[Callable[[], Any], "Future[Any]"]
# How many queued writes may share one commit (one fsync) in the writer thread.
GROUP_COMMIT_MAX = 64
# A write waiting longer than this (seconds, queued or running) means the writer thread is
# stuck: ``healthy()`` says so (``GET /Health`` answers 503). Read at each call: patchable.
WRITER_STALL_AFTER = 10.0
log = logging.getLogger("giftcard_toolkit.server.ledger")

TOKEN_LIFETIME = timedelta(minutes=10)
LOCKOUT_WINDOW = timedelta(minutes=15)
LOCKOUT_DURATION = timedelta(minutes=15)
LOCKOUT_ATTEMPTS = 5
CARD_LIFETIME_YEARS = 5
IDEMPOTENCY_TTL = timedelta(hours=24)
# A reservation older than this, or left by an earlier server process, is abandoned (its
# request died before it could commit anything) and may be taken over by a retry.
IDEMPOTENCY_STALE_AFTER = timedelta(seconds=60)
SCHEMA_VERSION = "4"
# What each role may do (contract: "Roles and limits"); an analyst may only read.
ROLES = ("clerk", "analyst")
WRITE_ROLES = frozenset({"clerk"})
# Declines saying the request's card could not be read: no answer is kept for its key.
UNRESOLVED_CARD = ("100007", "100009")

CENT = Decimal("0.01")


def utc_now() -> datetime:
    return datetime.now(UTC)


def _check_jurisdiction(jurisdiction: str) -> None:
    if jurisdiction and not JURISDICTION.match(jurisdiction):
        raise ValueError(
            f"jurisdiction {jurisdiction!r} is not an ISO 3166 code: give a country or a "
            f"subdivision in capitals, e.g. {JURISDICTION_EXAMPLE} (or nothing)"
        )


def _ts(moment: datetime) -> str:
    """How times are stored: UTC, fixed width, so text order is time order."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _years_later(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year + years, day=28)


def to_cents(amount: Decimal) -> int:
    return int(amount * 100)


def from_cents(cents: int) -> Decimal:
    return (Decimal(cents) / 100).quantize(CENT)


def amount_problem(amount: Decimal) -> bool:
    """True when ``amount`` is not a positive, finite money amount with at most 2 decimals."""
    return not is_money_amount(amount)


def check_user_limit(username: str, amount: Decimal, max_amount: Decimal | None) -> None:
    """Decline (``100012``, naming the limit) a movement over the user's own limit."""
    if max_amount is not None and amount > max_amount:
        raise Decline(
            "100012",
            description=f"Over limit: {amount:,.2f} is over user {username}'s own limit of "
            f"{max_amount:,.2f} per sale, reload or redemption; a user with a higher limit "
            "must approve it",
        )


@dataclass(frozen=True)
class Limits:
    """Per-movement and per-card limits (contract status ``100012``)."""

    max_load: Decimal = Decimal("500.00")
    max_balance: Decimal = Decimal("2000.00")


@dataclass(frozen=True)
class Store:
    id: str
    name: str
    address: str
    jurisdiction: str = ""  # where it trades (``rules.JURISDICTION``); "" when not set


class UserRecord(NamedTuple):
    """What authenticating a user needs: the password hash, the stores, the role, the limit."""

    password_hash: str
    stores: frozenset[str]
    role: str = "clerk"
    max_amount: Decimal | None = None  # the user's own limit per movement; None: none


@dataclass(frozen=True)
class Account:
    """A user as ``admin list-users`` shows it: never the password hash."""

    username: str
    role: str
    stores: tuple[str, ...]
    max_amount: Decimal | None


@dataclass(frozen=True)
class IssuedCard:
    """A card created into a store's stock; the only place its number and code exist."""

    number: str
    security_code: str
    store_id: str

    def __repr__(self) -> str:
        return f"IssuedCard({mask(self.number)!r}, store_id={self.store_id!r})"


@dataclass(frozen=True)
class CardRef:
    """How a request names its card: exactly one of the two is set."""

    token: str | None = None
    encrypted: str | None = None


@dataclass(frozen=True)
class Idempotency:
    """An ``Idempotency-Key`` as the ledger keys it: per user and endpoint."""

    username: str
    endpoint: str
    key: str
    request_hash: str  # the body by the card it names, or as sent when no card resolves
    sent_hash: str  # the body as sent (token digested): still matches once it expired
    resolved: bool = True  # whether request_hash names the card itself


@dataclass(frozen=True)
class Reservation:
    """The answer to :meth:`Ledger.reserve`: go ahead, replay, or refuse."""

    outcome: str  # "new" | "replay" | "mismatch" | "in_flight"
    response: str | None = None
    owner: str | None = None


class Decline(Exception):
    """A contract decline raised inside a transaction; rolled back, then answered."""

    def __init__(self, code: str, **extra: Any) -> None:
        super().__init__(code)
        self.code = code
        self.extra = extra


class WriterStopped(RuntimeError):
    """The writer thread could not give this write an answer: it stopped on an unexpected
    error (or, in the HTTP layer, did not commit in time). The write may have been applied
    or not; a retry with the same ``Idempotency-Key`` is applied once either way."""


DESCRIPTIONS = {
    "000000": "Success",
    "000001": "Partially approved",
    "100001": "Card not found",
    "100002": "Card not active",
    "100003": "Card expired",
    "100004": "Card already activated",
    "100005": "Insufficient balance",
    "100006": "Invalid amount",
    "100007": "Token unknown, expired or not yours",
    "100008": "Wrong security code",
    "100009": "Encrypted card data could not be read",
    "100010": "Store unknown or not granted to this user",
    "100012": "Over limit",
    "100013": "Batch totals differ from the expected ones",
    "100014": "Too many wrong security codes: card locked for 15 minutes",
    "100015": "Card already in the requested status",
    "100016": "No open batch to close",
    "100017": "Not permitted for this user's role",
    "999999": "System error",
}


def decline_body(code: str, **extra: Any) -> Body:
    return {"statuscode": code, "description": DESCRIPTIONS[code], "status": False, **extra}


SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stores (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, address TEXT NOT NULL DEFAULT '',
    jurisdiction TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'clerk' CHECK (role IN ('clerk', 'analyst')),
    max_amount_cents INTEGER CHECK (max_amount_cents > 0));
CREATE TABLE IF NOT EXISTS grants (
    username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    store_id TEXT NOT NULL REFERENCES stores(id),
    PRIMARY KEY (username, store_id));
CREATE TABLE IF NOT EXISTS cards (
    id INTEGER PRIMARY KEY,
    lookup TEXT NOT NULL UNIQUE,
    cardref TEXT NOT NULL,
    last4 TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    stock_store_id TEXT NOT NULL REFERENCES stores(id),
    state TEXT NOT NULL DEFAULT 'stock' CHECK (state IN ('stock', 'active', 'inactive')),
    balance_cents INTEGER NOT NULL DEFAULT 0 CHECK (balance_cents >= 0),
    activated_at TEXT, last_used_at TEXT, expires_at TEXT, locked_until TEXT);
CREATE TABLE IF NOT EXISTS code_failures (
    card_id INTEGER NOT NULL REFERENCES cards(id), at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS code_failures_card ON code_failures(card_id, at);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    card_id INTEGER NOT NULL REFERENCES cards(id),
    username TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tokens_expiry ON tokens(expires_at);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    store_id TEXT NOT NULL REFERENCES stores(id),
    status TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    opened_at TEXT NOT NULL,
    closed_at TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS one_open_batch_per_store ON batches(store_id)
    WHERE status = 'open';
CREATE INDEX IF NOT EXISTS batches_store ON batches(store_id, opened_at);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY,
    card_id INTEGER NOT NULL REFERENCES cards(id),
    store_id TEXT NOT NULL REFERENCES stores(id),
    batch_id INTEGER NOT NULL REFERENCES batches(id),
    type TEXT NOT NULL CHECK (type IN ('sale', 'reload', 'redeem')),
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    previous_cents INTEGER NOT NULL,
    new_cents INTEGER NOT NULL CHECK (new_cents >= 0),
    pos_ref TEXT,
    at TEXT NOT NULL,
    username TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_batch ON ledger(batch_id, id);
CREATE INDEX IF NOT EXISTS ledger_card ON ledger(card_id);
CREATE TABLE IF NOT EXISTS status_changes (
    id INTEGER PRIMARY KEY,
    card_id INTEGER NOT NULL REFERENCES cards(id),
    active INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL,
    username TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    username TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    sent_hash TEXT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    owner TEXT,
    response TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (username, endpoint, key));
CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency(created_at);
"""


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database made by an earlier version up to this schema, one version at a time."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(idempotency)")}
    if "sent_hash" not in columns:
        _migrate_to_2(conn)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(users)")}
    if "role" not in columns:
        _migrate_to_3(conn)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(stores)")}
    if "jurisdiction" not in columns:
        _migrate_to_4(conn)


def _set_version(conn: sqlite3.Connection, version: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (version,))


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    # Version 1 kept the compared body itself (a token in clear when it named no card);
    # version 2 keeps its digest, which for a resolved card is the digest of that text.
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ALTER TABLE idempotency ADD COLUMN sent_hash TEXT")
    for key, body in conn.execute("SELECT rowid, request_hash FROM idempotency").fetchall():
        digest = hashlib.sha256(str(body).encode()).hexdigest()
        conn.execute("UPDATE idempotency SET request_hash = ? WHERE rowid = ?", (digest, key))
    _set_version(conn, "2")
    conn.execute("COMMIT")


def _migrate_to_3(conn: sqlite3.Connection) -> None:
    # Version 3 gives each user a role and an optional limit of its own; the users there
    # were keep what they could do: clerks without a limit of their own.
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'clerk' "
        "CHECK (role IN ('clerk', 'analyst'))"
    )
    conn.execute(
        "ALTER TABLE users ADD COLUMN max_amount_cents INTEGER CHECK (max_amount_cents > 0)"
    )
    _set_version(conn, "3")
    conn.execute("COMMIT")


def _migrate_to_4(conn: sqlite3.Connection) -> None:
    # Version 4 gives each store a jurisdiction (for unclaimed-property rules); the stores
    # there were have none until an administrator sets it (``admin set-jurisdiction``).
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ALTER TABLE stores ADD COLUMN jurisdiction TEXT NOT NULL DEFAULT ''")
    _set_version(conn, "4")
    conn.execute("COMMIT")


# Made once: simplejson.dumps with options builds a new encoder at every call.
_ENCODER = simplejson.JSONEncoder(use_decimal=True, separators=(",", ":"))


def dumps(body: Body) -> str:
    """JSON text of a response body, money as exact decimal numbers."""
    return _ENCODER.encode(body)


class Ledger:
    """One gift card database: its cards, stores, users, batches and money movements."""

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
        self.path = Path(path)
        self.clock = clock
        self.tz = tz
        self.limits = limits or Limits()
        self._durable = durable
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._all_connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # Identifies this process's idempotency reservations (see IDEMPOTENCY_STALE_AFTER).
        self._instance = uuid.uuid4().hex
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._writer_down = False  # the writer stopped on an error: submit starts a new one
        # Every submitted write not answered yet, by when it was submitted (oldest first).
        self._waiting: dict[Future[Any], float] = {}
        self._waiting_lock = threading.Lock()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        with self._write_lock:
            conn.executescript(SCHEMA)
            if self.meta("secret") is None:
                self.set_meta("secret", (new_secret or secrets.token_bytes(32)).hex())
                self.set_meta("schema_version", SCHEMA_VERSION)
            _migrate(conn)
        self._secret = bytes.fromhex(self.meta("secret") or "")
        stored_key = self.meta("card_key")
        self.card_cipher = card_cipher
        if self.card_cipher is None and stored_key:
            self.card_cipher = AesGcmCardCipher.from_base64(stored_key)

    # ------------------------------------------------------------------ plumbing

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'NORMAL'}")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._connections_lock:
                self._all_connections.append(conn)
        return conn

    def close(self) -> None:
        """Stop the writer thread (after what is queued) and close every connection this
        ledger opened."""
        with self._writer_lock:
            writer, self._writer = self._writer, None
            if writer is not None and not self._writer_down:
                self._jobs.put(None)
            self._writer_down = False
        if writer is not None:
            # Outside the lock: a writer stopping on an error takes it to fail what is queued.
            writer.join()
        with self._connections_lock:
            for conn in self._all_connections:
                conn.close()
            self._all_connections.clear()
        self._local = threading.local()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error.

        Nested calls in the same thread join the outer transaction.
        """
        conn = self._conn()
        if getattr(self._local, "in_write", False):
            yield conn  # nested: part of the caller's transaction (the demo seed uses this)
            return
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            self._local.in_write = True
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._local.in_write = False

    def submit(self, write: Callable[[], T]) -> Future[T]:
        """Run ``write`` (a ledger call that writes) in the writer thread; its future holds the
        answer once the transaction that holds it has committed (group commit, see above).

        A writer thread that stopped on an unexpected error is replaced here (logged at
        ERROR); the writes it held were answered :class:`WriterStopped`."""
        future: Future[T] = Future()
        with self._writer_lock:
            writer = self._writer
            if writer is None or self._writer_down or not writer.is_alive():
                if writer is not None:
                    log.error("the ledger writer thread had stopped; starting a new one")
                self._writer = threading.Thread(
                    target=self._write_loop, name="giftcard-ledger-writer", daemon=True
                )
                self._writer_down = False
                self._writer.start()
            with self._waiting_lock:
                self._waiting[future] = time.monotonic()
            self._jobs.put((write, future))
        future.add_done_callback(self._answered)
        return future

    def _answered(self, future: Future[Any]) -> None:
        with self._waiting_lock:
            self._waiting.pop(future, None)

    def _write_loop(self) -> None:
        group: list[_Job] = []
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                group = [job]
                stop = False
                while len(group) < GROUP_COMMIT_MAX:
                    try:
                        queued = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if queued is None:
                        stop = True
                        break
                    group.append(queued)
                self._commit_group(group)
                group = []
                if stop:
                    return
        except BaseException as exc:  # a bug, or a BaseException out of a write
            self._writer_failed(group, exc)

    def _writer_failed(self, group: list[_Job], exc: BaseException) -> None:
        """The writer thread's last act after an unexpected error: take no more writes (the
        next :meth:`submit` starts a new writer) and answer its group, and every write
        queued behind it, :class:`WriterStopped`, so that no caller waits forever."""
        log.error(
            "the ledger writer thread stopped on an unexpected error (%s: %s); "
            "its writes are answered WriterStopped",
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        stranded: list[_Job] = []
        with self._writer_lock:
            if self._writer is threading.current_thread():
                self._writer_down = True
            while True:
                try:
                    queued = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if queued is not None:
                    stranded.append(queued)
        for _, future in [*group, *stranded]:
            error = WriterStopped(
                "the ledger's writer thread stopped on an unexpected error before it "
                "answered this write"
            )
            error.__cause__ = exc
            with suppress(InvalidStateError):  # answered already, or cancelled unstarted
                future.set_exception(error)

    def _commit_group(self, group: list[_Job]) -> None:
        outcomes: list[tuple[Future[Any], bool, Any]] = []
        try:
            with self.write() as conn:
                for write, future in group:
                    if not future.set_running_or_notify_cancel():
                        continue  # its request went away before it started: never applied
                    conn.execute("SAVEPOINT job")
                    try:
                        outcomes.append((future, True, write()))
                    except Exception as exc:
                        conn.execute("ROLLBACK TO job")
                        outcomes.append((future, False, exc))
                    conn.execute("RELEASE job")
        except Exception as exc:  # the transaction failed: nothing of the group was applied
            for _, future in group:
                if future.running() or (
                    not future.done() and future.set_running_or_notify_cancel()
                ):
                    future.set_exception(exc)
            return
        for future, ok, value in outcomes:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several queries."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._conn().execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def healthy(self) -> bool:
        """False when the database cannot be read, or the writer thread has stopped on an
        error (until the next write starts a new one), or is stuck: a submitted write has
        waited more than ``WRITER_STALL_AFTER`` seconds for its answer."""
        writer = self._writer
        if writer is not None and (self._writer_down or not writer.is_alive()):
            return False
        with self._waiting_lock:
            oldest = next(iter(self._waiting.values()), None)
        if oldest is not None and time.monotonic() - oldest > WRITER_STALL_AFTER:
            return False
        try:
            self._conn().execute("SELECT 1 FROM meta LIMIT 1").fetchall()
        except sqlite3.Error:
            return False
        return True

    def _hmac(self, purpose: str, text: str) -> str:
        return hmac.new(self._secret, f"{purpose}:{text}".encode(), hashlib.sha256).hexdigest()

    def card_lookup(self, number: str) -> str:
        return self._hmac("lookup", number)

    def card_ref(self, number: str) -> str:
        """The contract's ``cardref``: stable per card, the number not recoverable from it."""
        return self._hmac("cardref", number)[:16]

    def _code_hash(self, lookup: str, code: str) -> str:
        return self._hmac("code", f"{lookup}:{code}")

    def time_text(self, stored: str | None) -> str | None:
        """A stored UTC time as the contract shows it: ISO 8601 in the server's zone."""
        if stored is None or self.tz is UTC:
            return stored  # stored times are UTC ISO 8601 already
        return _parse_ts(stored).astimezone(self.tz).isoformat()

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the ledger's clock must return timezone-aware datetimes")
        return now

    # ---------------------------------------------------------------- management

    def add_store(
        self, name: str, address: str = "", store_id: str | None = None, jurisdiction: str = ""
    ) -> Store:
        _check_jurisdiction(jurisdiction)
        store = Store((store_id or str(uuid.uuid4())).lower(), name, address, jurisdiction)
        with self.write() as conn:
            conn.execute(
                "INSERT INTO stores(id, name, address, jurisdiction) VALUES (?, ?, ?, ?)",
                (store.id, store.name, store.address, store.jurisdiction),
            )
        return store

    def set_jurisdiction(self, store_id: str, jurisdiction: str) -> Store:
        """Say where a store trades (``""``: not set); answers the store as it now is."""
        _check_jurisdiction(jurisdiction)
        with self.write() as conn:
            changed = conn.execute(
                "UPDATE stores SET jurisdiction = ? WHERE id = ?", (jurisdiction, store_id)
            ).rowcount
        found = self.store(store_id)
        if not changed or found is None:
            raise ValueError(f"no store {store_id!r}: see 'admin stores'")
        return found

    def stores(self) -> list[Store]:
        rows = self._conn().execute(
            "SELECT id, name, address, jurisdiction FROM stores ORDER BY name, id"
        )
        return [Store(r["id"], r["name"], r["address"], r["jurisdiction"]) for r in rows]

    def store(self, store_id: str) -> Store | None:
        row = (
            self._conn()
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
        with self.write() as conn:
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
        conn = self._conn()
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
        with self.read() as conn:
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
        return int(self._conn().execute("SELECT count(*) FROM users").fetchone()[0])

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
        with self.write():
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
        with self.write() as conn:
            for card in cards:
                if self.store(card.store_id) is None:
                    raise ValueError(f"store {card.store_id} does not exist; add it first")
                lookup = self.card_lookup(card.number)
                inserted = conn.execute(
                    "INSERT INTO cards(lookup, cardref, last4, code_hash, stock_store_id) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(lookup) DO NOTHING",
                    (
                        lookup,
                        self.card_ref(card.number),
                        card.number[-4:],
                        self._code_hash(lookup, card.security_code),
                        card.store_id,
                    ),
                ).rowcount
                if inserted:
                    added.append(card)
        return added

    # -------------------------------------------------------------- idempotency

    def reserve(self, idem: Idempotency) -> Reservation:
        """Claim an ``Idempotency-Key`` before its request is applied.

        ``new``: go ahead and pass the reservation's owner to the operation; ``replay``: the
        stored response; ``mismatch``: the key was used with another body (422);
        ``unresolved``: another body, but this one names no card the ledger can resolve, so
        it may be the same request (answer the card's decline, store nothing);
        ``in_flight``: the first request with this key is still being applied (409).
        """
        now = self._now()
        owner = f"{self._instance}:{uuid.uuid4().hex}"
        with self.write() as conn:
            conn.execute(
                "DELETE FROM idempotency WHERE created_at < ?", (_ts(now - IDEMPOTENCY_TTL),)
            )
            row = conn.execute(
                "SELECT request_hash, sent_hash, state, owner, response, created_at "
                "FROM idempotency WHERE username = ? AND endpoint = ? AND key = ?",
                (idem.username, idem.endpoint, idem.key),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO idempotency(username, endpoint, key, request_hash, sent_hash,"
                    " state, owner, created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                    (
                        idem.username,
                        idem.endpoint,
                        idem.key,
                        idem.request_hash,
                        idem.sent_hash,
                        owner,
                        _ts(now),
                    ),
                )
                return Reservation("new", owner=owner)
            same = row["sent_hash"] == idem.sent_hash or (
                idem.resolved and row["request_hash"] == idem.request_hash
            )
            if not same:
                # A card that cannot be resolved may be the very card of the first request
                # (its token expired since): that is no proof of a different body.
                return Reservation("mismatch" if idem.resolved else "unresolved")
            if row["state"] == "done":
                return Reservation("replay", response=row["response"])
            abandoned = not str(row["owner"]).startswith(self._instance) or (
                _parse_ts(row["created_at"]) < now - IDEMPOTENCY_STALE_AFTER
            )
            if not abandoned:
                return Reservation("in_flight")
            conn.execute(
                "UPDATE idempotency SET owner = ?, created_at = ? "
                "WHERE username = ? AND endpoint = ? AND key = ?",
                (owner, _ts(now), idem.username, idem.endpoint, idem.key),
            )
            return Reservation("new", owner=owner)

    def _run(
        self,
        operation: Callable[[sqlite3.Connection, datetime], Body],
        idem: Idempotency | None = None,
        owner: str | None = None,
    ) -> str:
        """Run one write operation; answer its response as JSON text.

        A :class:`Decline` rolls the operation back; the decline is the answer. With an
        idempotency reservation, the answer is stored in the same transaction.
        """
        now = self._now()
        with self.write() as conn:
            conn.execute("SAVEPOINT operation")
            try:
                body = operation(conn, now)
            except Decline as decline:
                conn.execute("ROLLBACK TO operation")
                body = decline_body(decline.code, **decline.extra)
            conn.execute("RELEASE operation")
            text = dumps(body)
            if idem is not None and body.get("statuscode") in UNRESOLVED_CARD:
                # Nothing was applied and nothing can be judged about the card: keep no
                # answer, so the same key, sent again with a fresh token, is applied once.
                conn.execute(
                    "DELETE FROM idempotency WHERE username = ? AND endpoint = ? AND key = ? "
                    "AND owner = ? AND state = 'pending'",
                    (idem.username, idem.endpoint, idem.key, owner),
                )
            elif idem is not None:
                stored = conn.execute(
                    "UPDATE idempotency SET state = 'done', response = ?, owner = NULL "
                    "WHERE username = ? AND endpoint = ? AND key = ? AND owner = ?",
                    (text, idem.username, idem.endpoint, idem.key, owner),
                ).rowcount
                if stored != 1:
                    # Our reservation was taken over as abandoned: let the other one win.
                    raise IdempotencyLost(idem.key)
        return text

    # ----------------------------------------------------------------- cards

    def _resolve(
        self, conn: sqlite3.Connection, username: str, ref: CardRef, now: datetime
    ) -> sqlite3.Row:
        """The card a request names, or the contract's decline for why it can't be used."""
        if ref.token is not None:
            token_hash = hashlib.sha256(ref.token.encode()).hexdigest()
            # One statement, so a read outside a transaction still sees one snapshot.
            row = conn.execute(
                "SELECT c.*, t.username AS token_user, t.expires_at AS token_expires "
                "FROM tokens t JOIN cards c ON c.id = t.card_id WHERE t.token_hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None or row["token_user"] != username or row["token_expires"] <= _ts(now):
                raise Decline("100007")
            return row
        if self.card_cipher is None or ref.encrypted is None:
            raise Decline("100009")
        try:
            number = self.card_cipher.decrypt(ref.encrypted)
        except (CardDecryptError, ValueError):
            raise Decline("100009") from None
        row = conn.execute(
            "SELECT * FROM cards WHERE lookup = ?", (self.card_lookup(number),)
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
            card = self._resolve(self._conn(), username, ref, self._now())
        except Decline:
            return None
        return str(card["cardref"])

    def unresolved_answer(self, username: str, ref: CardRef) -> str | None:
        """The decline for a request naming a card that cannot be resolved (a token
        unknown or expired, a ciphertext that does not decrypt to a known card), or None
        if the card resolves after all. Nothing is applied."""
        try:
            self._resolve(self._conn(), username, ref, self._now())
        except Decline as decline:
            return dumps(decline_body(decline.code, **decline.extra))
        return None

    def _granted_store(
        self, conn: sqlite3.Connection, stores: frozenset[str], store_id: str
    ) -> sqlite3.Row:
        row = None
        if store_id in stores:
            row = conn.execute("SELECT * FROM stores WHERE id = ?", (store_id,)).fetchone()
        if row is None:
            raise Decline("100010")
        return row

    def tokenize(self, username: str, number: str, security_code: str) -> str:
        """``POST /v1/Token`` for an already normalised card number and code."""

        def operation(conn: sqlite3.Connection, now: datetime) -> Body:
            lookup = self.card_lookup(number)
            card = conn.execute(
                "SELECT id, code_hash, locked_until FROM cards WHERE lookup = ?", (lookup,)
            ).fetchone()
            if card is None:
                return decline_body("100001")
            if card["locked_until"] is not None and card["locked_until"] > _ts(now):
                return decline_body("100014")
            if not hmac.compare_digest(card["code_hash"], self._code_hash(lookup, security_code)):
                # Commits (no Decline raised): failures must count even though we decline.
                conn.execute(
                    "INSERT INTO code_failures(card_id, at) VALUES (?, ?)", (card["id"], _ts(now))
                )
                since = max(_ts(now - LOCKOUT_WINDOW), card["locked_until"] or "")
                failures = conn.execute(
                    "SELECT count(*) FROM code_failures WHERE card_id = ? AND at > ?",
                    (card["id"], since),
                ).fetchone()[0]
                if failures >= LOCKOUT_ATTEMPTS:
                    conn.execute(
                        "UPDATE cards SET locked_until = ? WHERE id = ?",
                        (_ts(now + LOCKOUT_DURATION), card["id"]),
                    )
                    conn.execute("DELETE FROM code_failures WHERE card_id = ?", (card["id"],))
                return decline_body("100008")
            conn.execute("DELETE FROM code_failures WHERE card_id = ?", (card["id"],))
            conn.execute("DELETE FROM tokens WHERE expires_at <= ?", (_ts(now),))
            expires = now + TOKEN_LIFETIME
            while True:
                token = "".join(secrets.choice("0123456789") for _ in range(16))
                try:
                    conn.execute(
                        "INSERT INTO tokens(token_hash, card_id, username, created_at, expires_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (
                            hashlib.sha256(token.encode()).hexdigest(),
                            card["id"],
                            username,
                            _ts(now),
                            _ts(expires),
                        ),
                    )
                    break
                except sqlite3.IntegrityError:
                    continue
            return {
                "statuscode": "000000",
                "description": DESCRIPTIONS["000000"],
                "token": token,
                "exp": self.time_text(_ts(expires)),
            }

        return self._run(operation)

    def balance(self, username: str, ref: CardRef) -> str:
        """``POST /Transaction/balancecheck``."""
        now = self._now()
        try:
            card = self._resolve(self._conn(), username, ref, now)
        except Decline as decline:
            return dumps(decline_body(decline.code, **decline.extra))
        usable = card["state"] == "active" and not self._expired(card, now)
        return dumps(
            {
                "statuscode": "000000",
                "description": DESCRIPTIONS["000000"],
                "cardending": card["last4"],
                "balance": from_cents(card["balance_cents"]),
                "status": usable,
                "activated": self.time_text(card["activated_at"]),
                "lastused": self.time_text(card["last_used_at"]),
                "expire": self.time_text(card["expires_at"]),
                "cardref": card["cardref"],
            }
        )

    @staticmethod
    def _expired(card: sqlite3.Row, now: datetime) -> bool:
        return card["expires_at"] is not None and card["expires_at"] <= _ts(now)

    def _open_batch(self, conn: sqlite3.Connection, store_id: str, now: datetime) -> int:
        row = conn.execute(
            "SELECT id FROM batches WHERE store_id = ? AND status = 'open'", (store_id,)
        ).fetchone()
        if row is not None:
            return int(row[0])
        cursor = conn.execute(
            "INSERT INTO batches(store_id, status, opened_at) VALUES (?, 'open', ?)",
            (store_id, _ts(now)),
        )
        return int(cursor.lastrowid or 0)

    def _move(
        self,
        conn: sqlite3.Connection,
        *,
        card: sqlite3.Row,
        store: sqlite3.Row,
        kind: str,
        cents: int,
        new_cents: int,
        pos_ref: str | None,
        username: str,
        now: datetime,
        activate: bool = False,
    ) -> int:
        """Apply one money movement: the balance, its ledger row, its batch. Returns hostRef."""
        if activate:
            expires = _years_later(now, CARD_LIFETIME_YEARS)
            updated = conn.execute(
                "UPDATE cards SET state = 'active', balance_cents = ?, activated_at = ?, "
                "last_used_at = ?, expires_at = ? WHERE id = ? AND state = 'stock' "
                "AND balance_cents = ?",
                (new_cents, _ts(now), _ts(now), _ts(expires), card["id"], card["balance_cents"]),
            ).rowcount
        else:
            updated = conn.execute(
                "UPDATE cards SET balance_cents = ?, last_used_at = ? "
                "WHERE id = ? AND balance_cents = ?",
                (new_cents, _ts(now), card["id"], card["balance_cents"]),
            ).rowcount
        if updated != 1:  # cannot happen under the write lock; refuse rather than guess
            raise RuntimeError("card changed during its own transaction")
        batch_id = self._open_batch(conn, store["id"], now)
        cursor = conn.execute(
            "INSERT INTO ledger(card_id, store_id, batch_id, type, amount_cents, previous_cents,"
            " new_cents, pos_ref, at, username) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                card["id"],
                store["id"],
                batch_id,
                kind,
                cents,
                card["balance_cents"],
                new_cents,
                pos_ref,
                _ts(now),
                username,
            ),
        )
        return int(cursor.lastrowid or 0)

    def _store_fields(self, store: sqlite3.Row) -> Body:
        return {
            "franchiseeid": store["id"],
            "storename": store["name"],
            "storeaddress": store["address"],
        }

    def load(
        self,
        username: str,
        stores: frozenset[str],
        ref: CardRef,
        amount: Decimal,
        store_id: str,
        pos_ref: str | None,
        *,
        sale: bool,
        idem: Idempotency | None = None,
        owner: str | None = None,
        max_amount: Decimal | None = None,
    ) -> str:
        """``sellnewcard`` (``sale=True``: activate a stock card) or ``reload``;
        ``max_amount`` is the user's own limit (None: the server's limits only)."""

        def operation(conn: sqlite3.Connection, now: datetime) -> Body:
            if amount_problem(amount):
                raise Decline("100006")
            store = self._granted_store(conn, stores, store_id)
            card = self._resolve(conn, username, ref, now)
            if sale and card["state"] != "stock":
                raise Decline("100004")
            if not sale:
                if card["state"] != "active":
                    raise Decline("100002")
                if self._expired(card, now):
                    raise Decline("100003")
            max_balance_cents = to_cents(self.limits.max_balance)
            if amount > self.limits.max_load or amount > self.limits.max_balance:
                raise Decline("100012")
            cents = to_cents(amount)
            new_cents = card["balance_cents"] + cents
            if new_cents > max_balance_cents:
                raise Decline("100012")
            check_user_limit(username, amount, max_amount)
            host_ref = self._move(
                conn,
                card=card,
                store=store,
                kind="sale" if sale else "reload",
                cents=cents,
                new_cents=new_cents,
                pos_ref=pos_ref,
                username=username,
                now=now,
                activate=sale,
            )
            return {
                "statuscode": "000000",
                "description": DESCRIPTIONS["000000"],
                "hostRef": str(host_ref),
                "cardno": mask(card["last4"]),
                "balance": from_cents(new_cents),
                "status": True,
                **self._store_fields(store),
                "datetimereloaded": self.time_text(_ts(now)),
            }

        return self._run(operation, idem, owner)

    def redeem(
        self,
        username: str,
        stores: frozenset[str],
        ref: CardRef,
        amount: Decimal,
        store_id: str,
        pos_ref: str | None,
        *,
        accept_partial: bool = False,
        idem: Idempotency | None = None,
        owner: str | None = None,
        max_amount: Decimal | None = None,
    ) -> str:
        """``radeem``: never below zero; the whole balance when partial approval is allowed.
        ``max_amount`` is the user's own limit on the amount asked (None: none)."""

        def operation(conn: sqlite3.Connection, now: datetime) -> Body:
            if amount_problem(amount):
                raise Decline("100006")
            store = self._granted_store(conn, stores, store_id)
            card = self._resolve(conn, username, ref, now)
            if card["state"] != "active":
                raise Decline("100002")
            if self._expired(card, now):
                raise Decline("100003")
            check_user_limit(username, amount, max_amount)
            previous = card["balance_cents"]
            code = "000000"
            if amount > from_cents(previous):
                if not accept_partial or previous == 0:
                    raise Decline("100005", balance=from_cents(previous))
                code, cents = "000001", previous
            else:
                cents = to_cents(amount)
            host_ref = self._move(
                conn,
                card=card,
                store=store,
                kind="redeem",
                cents=cents,
                new_cents=previous - cents,
                pos_ref=pos_ref,
                username=username,
                now=now,
            )
            return {
                "statuscode": code,
                "description": DESCRIPTIONS[code],
                "hostRef": str(host_ref),
                "cardno": mask(card["last4"]),
                "approvedbalance": from_cents(cents),
                "previousbalance": from_cents(previous),
                "newbalance": from_cents(previous - cents),
                "status": True,
                **self._store_fields(store),
                "datetimeradeemed": self.time_text(_ts(now)),
            }

        return self._run(operation, idem, owner)

    def change_status(
        self,
        username: str,
        ref: CardRef,
        active: bool,
        reason: str,
        *,
        idem: Idempotency | None = None,
        owner: str | None = None,
    ) -> str:
        """``changestatus``: block (``active=False``) or unblock a sold card; balance kept."""

        def operation(conn: sqlite3.Connection, now: datetime) -> Body:
            card = self._resolve(conn, username, ref, now)
            if card["state"] == "stock":
                raise Decline("100002")
            if (card["state"] == "active") == active:
                raise Decline("100015")
            conn.execute(
                "UPDATE cards SET state = ? WHERE id = ?",
                ("active" if active else "inactive", card["id"]),
            )
            conn.execute(
                "INSERT INTO status_changes(card_id, active, reason, at, username) "
                "VALUES (?, ?, ?, ?, ?)",
                (card["id"], int(active), reason, _ts(now), username),
            )
            return {
                "statuscode": "000000",
                "description": DESCRIPTIONS["000000"],
                "card": mask(card["last4"]),
                "balance": from_cents(card["balance_cents"]),
                "status": active,
            }

        return self._run(operation, idem, owner)

    # ---------------------------------------------------------------- batches

    def _batch_bodies(
        self, conn: sqlite3.Connection, rows: list[sqlite3.Row], transactions: bool
    ) -> list[Body]:
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        marks = ",".join("?" * len(ids))
        totals: dict[int, dict[str, tuple[int, int]]] = {i: {} for i in ids}
        for r in conn.execute(
            f"SELECT batch_id, type, count(*), sum(amount_cents) FROM ledger "
            f"WHERE batch_id IN ({marks}) GROUP BY batch_id, type",
            ids,
        ):
            totals[r[0]][r[1]] = (r[2], r[3])
        listed: dict[int, list[Body]] = {i: [] for i in ids}
        if transactions:
            for t in conn.execute(
                f"SELECT l.*, c.last4, c.cardref FROM ledger l JOIN cards c ON c.id = l.card_id "
                f"WHERE l.batch_id IN ({marks}) ORDER BY l.batch_id, l.at, l.id",
                ids,
            ):
                listed[t["batch_id"]].append(
                    {
                        "hostRef": str(t["id"]),
                        "type": t["type"],
                        "cardno": mask(t["last4"]),
                        "cardref": t["cardref"],
                        "amount": from_cents(t["amount_cents"]),
                        "previousbalance": from_cents(t["previous_cents"]),
                        "newbalance": from_cents(t["new_cents"]),
                        "posref": t["pos_ref"],
                        "datetime": self.time_text(t["at"]),
                        "username": t["username"],
                    }
                )
        bodies = []
        for r in rows:
            sums = totals[r["id"]]
            sold, reloaded, redeemed = (
                sums.get(k, (0, 0))[1] for k in ("sale", "reload", "redeem")
            )
            body: Body = {
                "batchid": str(r["id"]),
                "status": r["status"],
                "opened": self.time_text(r["opened_at"]),
                "closed": self.time_text(r["closed_at"]),
                "transactioncount": sum(c for c, _ in sums.values()),
                "soldamount": from_cents(sold),
                "reloadedamount": from_cents(reloaded),
                "redeemedamount": from_cents(redeemed),
                "netamount": from_cents(sold + reloaded - redeemed),
            }
            if transactions:
                body["transactions"] = listed[r["id"]]
            bodies.append(body)
        return bodies

    def _local_day_start(self, day: date) -> str:
        return _ts(datetime(day.year, day.month, day.day, tzinfo=self.tz))

    def batches(
        self,
        stores: frozenset[str],
        store_id: str,
        *,
        status: str = "all",
        since: date | None = None,
        until: date | None = None,
        limit: int = 100,
        transactions: bool = True,
    ) -> str:
        """``GET /Batch/{storeid}``: newest first, filtered on the opening date (server zone)."""
        with self.read() as conn:
            try:
                store = self._granted_store(conn, stores, store_id)
            except Decline as decline:
                return dumps(decline_body(decline.code, franchiseeid=store_id, batches=[]))
            where, params = ["store_id = ?"], [store_id]
            if status != "all":
                where.append("status = ?")
                params.append(status)
            if since is not None:
                where.append("opened_at >= ?")
                params.append(self._local_day_start(since))
            if until is not None:
                where.append("opened_at < ?")
                params.append(self._local_day_start(until + timedelta(days=1)))
            rows = conn.execute(
                f"SELECT * FROM batches WHERE {' AND '.join(where)} "
                "ORDER BY opened_at DESC, id DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
            bodies = self._batch_bodies(conn, rows, transactions)
        return dumps(self._batch_envelope(store, bodies))

    def _batch_envelope(self, store: sqlite3.Row, bodies: list[Body]) -> Body:
        return {
            "statuscode": "000000",
            "description": DESCRIPTIONS["000000"],
            "franchiseeid": store["id"],
            "storename": store["name"],
            "batches": bodies,
        }

    def close_batch(
        self,
        stores: frozenset[str],
        store_id: str,
        *,
        expected_count: int | None = None,
        expected_amount: Decimal | None = None,
        idem: Idempotency | None = None,
        owner: str | None = None,
    ) -> str:
        """``POST /Batch/batch/{storeid}``: settle the open batch, if the totals agree."""

        def operation(conn: sqlite3.Connection, now: datetime) -> Body:
            store = self._granted_store(conn, stores, store_id)
            return self._close(conn, store, now, expected_count, expected_amount)

        return self._run(operation, idem, owner)

    def _close(
        self,
        conn: sqlite3.Connection,
        store: sqlite3.Row,
        now: datetime,
        expected_count: int | None = None,
        expected_amount: Decimal | None = None,
    ) -> Body:
        row = conn.execute(
            "SELECT * FROM batches WHERE store_id = ? AND status = 'open'", (store["id"],)
        ).fetchone()
        if row is None:
            raise Decline("100016")
        (current,) = self._batch_bodies(conn, [row], transactions=False)
        if current["transactioncount"] == 0:
            raise Decline("100016")
        count_differs = expected_count is not None and expected_count != current["transactioncount"]
        amount_differs = expected_amount is not None and expected_amount != current["netamount"]
        if count_differs or amount_differs:
            raise Decline(
                "100013",
                batchid=current["batchid"],
                transactioncount=current["transactioncount"],
                netamount=current["netamount"],
            )
        conn.execute(
            "UPDATE batches SET status = 'closed', closed_at = ? WHERE id = ?",
            (_ts(now), row["id"]),
        )
        closed = conn.execute("SELECT * FROM batches WHERE id = ?", (row["id"],)).fetchall()
        return self._batch_envelope(store, self._batch_bodies(conn, closed, transactions=True))

    # ------------------------------------------------------------- invariants

    def check_invariants(self) -> list[str]:
        """Every way the books could be wrong; empty when they are right (tests use this)."""
        problems: list[str] = []
        with self.read() as conn:
            for r in conn.execute(
                "SELECT c.id, c.balance_cents, coalesce(sum(CASE l.type WHEN 'redeem' "
                "THEN -l.amount_cents ELSE l.amount_cents END), 0) AS total FROM cards c "
                "LEFT JOIN ledger l ON l.card_id = c.id GROUP BY c.id "
                "HAVING c.balance_cents != total"
            ):
                problems.append(f"card {r[0]}: balance {r[1]} != ledger sum {r[2]}")
            for r in conn.execute(
                "SELECT id FROM ledger WHERE new_cents != previous_cents + CASE type "
                "WHEN 'redeem' THEN -amount_cents ELSE amount_cents END"
            ):
                problems.append(f"ledger row {r[0]}: previous/new balance disagree")
            for r in conn.execute(
                "SELECT l.id FROM ledger l JOIN batches b ON b.id = l.batch_id "
                "WHERE b.store_id != l.store_id"
            ):
                problems.append(f"ledger row {r[0]} is in another store's batch")
            opened = conn.execute(
                "SELECT store_id, count(*) FROM batches WHERE status = 'open' GROUP BY store_id "
                "HAVING count(*) > 1"
            ).fetchall()
            problems.extend(f"store {r[0]} has {r[1]} open batches" for r in opened)
        return problems


class IdempotencyLost(RuntimeError):
    """Our idempotency reservation was taken over; the operation was rolled back."""


def new_card_number(rand: Any) -> str:
    """A random 16-digit Luhn-valid card number in the toolkit's 6006 range."""
    partial = "6006" + "".join(str(rand.randrange(10)) for _ in range(11))
    return partial + luhn_check_digit(partial)


def demo_card_key(seed_number: int) -> str:
    """The demo server's card key (base64), derived from the seed number (contract §3)."""
    return base64.b64encode(
        hashlib.sha256(f"giftcard-toolkit demo card key {seed_number}".encode()).digest()
    ).decode()
