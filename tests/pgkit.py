"""PostgreSQL for the tests: one self-contained PostgreSQL 16 per test session (the
``pgserver`` package: no system install), a new database for each server a test starts."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

BACKENDS = ("sqlite", "postgresql")
_names = itertools.count(1)
_lock = threading.Lock()
_server: dict[str, object] = {}


def pgserver_module() -> Any:
    """The pgserver module, its lock files kept in a folder of this test process's own.

    pgserver keeps them in the user's runtime folder; without XDG_RUNTIME_DIR (CI, root)
    that is a ``runtime-<uid>`` folder left in the temporary folder for good."""
    if "XDG_RUNTIME_DIR" not in os.environ:
        import atexit

        runtime = tempfile.mkdtemp(prefix="giftcard-pg-run-")
        os.environ["XDG_RUNTIME_DIR"] = runtime
        atexit.register(shutil.rmtree, runtime, ignore_errors=True)
    import pgserver

    return pgserver


def require_postgres() -> None:
    """Skip (locally) or fail (CI=true) when psycopg or pgserver is missing."""
    from importlib.util import find_spec

    if find_spec("pgserver") is None or find_spec("psycopg") is None:
        message = (
            "PostgreSQL tests need psycopg and pgserver: .venv/bin/pip install -e '.[test]' "
            "(./dev test does it)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def server_url() -> str:
    """The session's PostgreSQL (started at the first call), as a url of its ``postgres``
    database; it stops when the test process ends."""
    with _lock:
        if "url" not in _server:
            import atexit

            folder = Path(tempfile.mkdtemp(prefix="giftcard-pg-"))
            server = pgserver_module().get_server(folder, cleanup_mode="stop")
            _server.update(url=server.get_uri(), server=server, folder=folder)

            def stop() -> None:
                server.cleanup()
                shutil.rmtree(folder, ignore_errors=True)

            atexit.register(stop)
        return str(_server["url"])


def database_url(name: str, base: str | None = None) -> str:
    head, _, query = (base or server_url()).partition("?")
    return f"{head.rsplit('/', 1)[0]}/{name}?{query}"


def new_database(base: str | None = None) -> str:
    """A new, empty database on the session's PostgreSQL (or on the server of ``base``, a
    url of one of its databases): its url."""
    import psycopg

    base = base or server_url()
    name = f"giftcard_{os.getpid()}_{next(_names)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return database_url(name, base)


@contextmanager
def own_server() -> Iterator[Any]:
    """A PostgreSQL of the caller's own (a pgserver handle), for a test that stops and
    starts it; stopped and deleted when the block ends."""
    require_postgres()
    folder = Path(tempfile.mkdtemp(prefix="giftcard-pg-own-"))
    server = pgserver_module().get_server(folder, cleanup_mode="stop")
    try:
        yield server
    finally:
        # Stopped here: pgserver would look for the process it started, gone after a restart.
        with suppress(subprocess.CalledProcessError):
            _pg_ctl(server, "stop", "-m", "immediate")
        server.cleanup_mode = None
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def stopped(server: Any) -> Iterator[None]:
    """The PostgreSQL of ``server`` (from :func:`own_server`) stopped (``pg_ctl -m fast``:
    its sessions are ended) for the block, then started again as it was."""
    _pg_ctl(server, "stop", "-m", "fast")
    try:
        yield
    finally:  # restart reads the options it was started with from postmaster.opts
        _pg_ctl(server, "restart", "-l", str(server.log))


def _pg_ctl(server: Any, *args: str) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH

    subprocess.run(  # noqa: S603
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(server.pgdata), "-w", *args],
        user=server.system_user,  # pgserver runs PostgreSQL as a user of its own under root
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # not a pipe: the started server would hold it open
        stderr=subprocess.DEVNULL,
        timeout=60,
        check=True,
    )


@contextmanager
def postgres_backend() -> Iterator[None]:
    """Servers started by ``running()`` in the block keep their ledgers in PostgreSQL."""
    from giftcard_toolkit.server import runner

    require_postgres()
    before, runner.database_factory = runner.database_factory, new_database
    try:
        yield
    finally:
        runner.database_factory = before
