"""Idempotency-Keys, and the one way a write operation runs: in one transaction with the
record of its key, so a crash never leaves a movement without its record or a record
without its movement."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from giftcard_toolkit.server.ledger.books import Books
from giftcard_toolkit.server.ledger.records import (
    Body,
    Decline,
    Idempotency,
    IdempotencyLost,
    Reservation,
    decline_body,
    dumps,
    parse_ts,
    ts,
)
from giftcard_toolkit.server.ledger.storage import Conn

IDEMPOTENCY_TTL = timedelta(hours=24)
# A reservation older than this, or left by an earlier server process (on a database one
# process serves), is abandoned (its request died before it could commit anything) and may
# be taken over by a retry.
IDEMPOTENCY_STALE_AFTER = timedelta(seconds=60)
# How often expired records are deleted (one is ignored, and replaced, as soon as it expires).
PURGE_EVERY = timedelta(minutes=10)
# Declines saying the request's card could not be read: no answer is kept for its key.
UNRESOLVED_CARD = ("100007", "100009")

Operation = Callable[[Conn, datetime], Body]


class Operations:
    """Runs the ledger's write operations, each applied once per ``Idempotency-Key``."""

    def __init__(self, books: Books) -> None:
        self.books = books
        # Identifies this process's idempotency reservations (see IDEMPOTENCY_STALE_AFTER).
        self._instance = uuid.uuid4().hex
        self._purged_at: datetime | None = None

    def reserve(self, idem: Idempotency) -> Reservation:
        """Claim an ``Idempotency-Key`` before its request is applied.

        ``new``: go ahead and pass the reservation's owner to the operation; ``replay``: the
        stored response; ``mismatch``: the key was used with another body (422);
        ``unresolved``: another body, but this one names no card the ledger can resolve, so
        it may be the same request (answer the card's decline, store nothing);
        ``in_flight``: the first request with this key is still being applied (409).
        """
        now = self.books.now()
        owner = f"{self._instance}:{uuid.uuid4().hex}"
        forgotten = ts(now - IDEMPOTENCY_TTL)
        with self.books.storage.write() as conn:
            if self._purged_at is None or now - self._purged_at >= PURGE_EVERY:
                # Expired records, all of them now and then: a range delete in every write
                # would make concurrent writers on PostgreSQL conflict with each other.
                conn.execute("DELETE FROM idempotency WHERE created_at < ?", (forgotten,))
                self._purged_at = now
            record = (idem.username, idem.endpoint, idem.key)
            claimed = (*record, idem.request_hash, idem.sent_hash, owner, ts(now))
            # Claim first, read only if the key is taken: a read of a key not there yet,
            # then its insert, would make new keys sent side by side conflict on PostgreSQL.
            if self._claim(conn, claimed):
                return Reservation("new", owner=owner)
            row = conn.execute(
                "SELECT request_hash, sent_hash, state, owner, response, created_at "
                "FROM idempotency WHERE username = ? AND endpoint = ? AND key = ?",
                record,
            ).fetchone()
            if row["created_at"] < forgotten:  # expired: as if never sent
                conn.execute(
                    "DELETE FROM idempotency WHERE username = ? AND endpoint = ? AND key = ?",
                    record,
                )
                self._claim(conn, claimed)
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
            # Another process's reservation was left by an earlier server process, unless
            # several serve this database at once: then it may be a request in flight.
            left_behind = not self.books.storage.shared and not str(row["owner"]).startswith(
                self._instance
            )
            abandoned = left_behind or parse_ts(row["created_at"]) < now - IDEMPOTENCY_STALE_AFTER
            if not abandoned:
                return Reservation("in_flight")
            conn.execute(
                "UPDATE idempotency SET owner = ?, created_at = ? "
                "WHERE username = ? AND endpoint = ? AND key = ?",
                (owner, ts(now), idem.username, idem.endpoint, idem.key),
            )
            return Reservation("new", owner=owner)

    @staticmethod
    def _claim(conn: Conn, claimed: tuple[str | None, ...]) -> bool:
        """Insert a pending record for the key; False if the key has one already."""
        return bool(
            conn.execute(
                "INSERT INTO idempotency(username, endpoint, key, request_hash, sent_hash,"
                " state, owner, created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?) "
                "ON CONFLICT(username, endpoint, key) DO NOTHING RETURNING key",
                claimed,
            ).fetchall()
        )

    def run(
        self, operation: Operation, idem: Idempotency | None = None, owner: str | None = None
    ) -> str:
        """Run one write operation; answer its response as JSON text.

        A :class:`Decline` rolls the operation back; the decline is the answer. With an
        idempotency reservation, the answer is stored in the same transaction.
        """
        now = self.books.now()
        with self.books.storage.write() as conn:
            conn.execute("SAVEPOINT operation")
            try:
                body = operation(conn, now)
            except Decline as decline:
                conn.execute("ROLLBACK TO operation")
                body = decline_body(decline.code, **decline.extra)
            # Released here, not left to the commit: a seed runs thousands of operations in
            # one transaction, and savepoints left open nest deeper with each of them.
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
