"""The seam between the ledger's rules and the database that keeps them.

The rule modules (``money``, ``tokens``, ``idempotency``, ``batches``, ``admin``) know the
tables and write portable SQL: ``?`` placeholders, ``INSERT ... ON CONFLICT ... DO
NOTHING``, ``RETURNING id``, ``SAVEPOINT``. They never open a connection or a transaction
themselves and never name a database module: they ask a :class:`Storage` for one, and read
rows by column name or position. Everything particular to one database lives behind it:
connecting, the schema and its migrations, how a write transaction is begun and committed
(SQLite's ``BEGIN IMMEDIATE`` and its writer thread with group commit, in ``sqlite``), how
writers of the same rows are kept apart, and the placeholder style.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Row(Protocol):
    """One result row, read by column name (``row["balance_cents"]``) or position."""

    def __getitem__(self, key: int | str, /) -> Any: ...


class Cursor(Protocol):
    """What a statement answers: its rows, or how many rows it changed."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A connection as the rules use it: statements with ``?`` placeholders."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


class Storage(Protocol):
    """What a database backend provides the ledger's rules.

    ``write`` is one transaction that no other writer of the same rows can interleave with
    (committed on success, rolled back on error); called again inside one in the same
    thread, it joins it. ``submit`` runs a write where the backend runs its writes and
    answers once it is durable. ``connection`` runs single statements outside a transaction
    (each sees one snapshot).
    """

    #: Whether several server processes may use the database at once (PostgreSQL), so that
    #: another process's idempotency reservation is not proof that its request died.
    shared: bool

    def write(self) -> AbstractContextManager[Conn]: ...

    def read(self) -> AbstractContextManager[Conn]: ...

    def connection(self) -> Conn: ...

    def submit(self, write: Callable[[], T]) -> Future[T]: ...

    def meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...


class MetaTable:
    """``meta`` and ``set_meta`` over a backend's ``connection()``: one portable statement
    each, shared by the backends (they inherit it)."""

    def connection(self) -> Conn:
        raise NotImplementedError

    def meta(self, key: str) -> str | None:
        row = self.connection().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.connection().execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
