"""The ledger's SQLite store: connections, transactions, and the writer thread.

Writers are serialised by an in-process lock (no busy-wait storms under load) and by
SQLite's own write lock across processes (the ``admin`` CLI may write while a server runs):
each write is one ``BEGIN IMMEDIATE`` transaction. The server hands its writes to
:meth:`SqliteStorage.submit`: one writer thread runs whatever is queued as one
transaction, each write in its own savepoint, and commits once (group commit). Every write
still succeeds or fails alone, and no answer is given before the commit that makes it
durable (``synchronous=FULL``), but concurrent requests share the fsync instead of
queueing for one each.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from giftcard_toolkit.server.ledger.records import WriterStopped
from giftcard_toolkit.server.ledger.schema import SCHEMA, SCHEMA_VERSION, SchemaMismatch, migrate
from giftcard_toolkit.server.ledger.storage import MetaTable

T = TypeVar("T")
_Job = tuple[Callable[[], Any], "Future[Any]"]
# How many queued writes may share one commit (one fsync) in the writer thread.
GROUP_COMMIT_MAX = 64
# A write waiting longer than this (seconds, queued or running) means the writer thread is
# stuck: ``healthy()`` says so (``GET /Health`` answers 503). Read at each call: patchable.
WRITER_STALL_AFTER = 10.0
log = logging.getLogger("giftcard_toolkit.server.ledger")


class SqliteStorage(MetaTable):
    """One SQLite database file: a connection per thread, and one writer thread."""

    shared = False  # one server process writes it (see Storage.shared)

    def __init__(self, path: str | Path, *, durable: bool = True) -> None:
        self.path = Path(path)
        self._durable = durable
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._all_connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._writer_down = False  # the writer stopped on an error: submit starts a new one
        # Every submitted write not answered yet, by when it was submitted (oldest first).
        self._waiting: dict[Future[Any], float] = {}
        self._waiting_lock = threading.Lock()
        conn = self.connection()
        conn.execute("PRAGMA journal_mode=WAL")
        with self._write_lock:
            found = self._stored_version(conn)
            if found is not None and found.isdigit() and int(found) > int(SCHEMA_VERSION):
                conn.close()
                raise SchemaMismatch(str(self.path), found)
            conn.executescript(SCHEMA)
            if self.meta("secret") is None:  # a new database: made at this version
                self.set_meta("schema_version", SCHEMA_VERSION)
            migrate(conn)

    @staticmethod
    def _stored_version(conn: sqlite3.Connection) -> str | None:
        """The schema version a database says it has (None: new, or older than versions)."""
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:  # no meta table: a new database
            return None
        return None if row is None else str(row[0])

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit: each statement outside a transaction sees
        one snapshot)."""
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
        store opened."""
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
        conn = self.connection()
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
        conn = self.connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

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
            self.connection().execute("SELECT 1 FROM meta LIMIT 1").fetchall()
        except sqlite3.Error:
            return False
        return True
