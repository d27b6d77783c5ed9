"""The SQLite schema of the ledger, and the migrations that bring an older database up to it.

A PostgreSQL store brings its own DDL for the same tables; the rule modules see only them.
"""

from __future__ import annotations

import hashlib
import sqlite3

SCHEMA_VERSION = "4"


class SchemaMismatch(RuntimeError):
    """The database was made by another version of giftcard_toolkit than this one."""

    def __init__(self, where: str, found: str) -> None:
        newer = found.isdigit() and int(found) > int(SCHEMA_VERSION)
        advice = (
            "it was made by a newer giftcard_toolkit: upgrade this one "
            "(pip install -U giftcard_toolkit) before serving it"
            if newer
            else "open it once with the giftcard_toolkit that made it, or restore a backup "
            "of this version's"
        )
        super().__init__(
            f"{where} holds a ledger of schema version {found}; this giftcard_toolkit reads "
            f"version {SCHEMA_VERSION}: {advice}. Nothing was changed."
        )
        self.found = found


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


def migrate(conn: sqlite3.Connection) -> None:
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
