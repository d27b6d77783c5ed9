"""Shared fixtures: a live demo server over loopback, a POS on it, fresh cards, a clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pgkit import BACKENDS, new_database, postgres_backend, require_postgres
from serverkit import MovableClock, Pos

from giftcard_toolkit.server import running
from giftcard_toolkit.server.runner import RunningServer
from giftcard_toolkit.server.seed import DemoCard


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The server suite (tests/test_server_*.py) runs on both backends: SQLite, and
    PostgreSQL (a database of the session's own PostgreSQL for each server started). A
    module about one backend's own machinery says which in ``SERVER_BACKENDS``."""
    if metafunc.module.__name__.startswith("test_server_") and ("backend" in metafunc.fixturenames):
        backends = getattr(metafunc.module, "SERVER_BACKENDS", BACKENDS)
        only = metafunc.definition.get_closest_marker("backends")
        if only is not None:  # a test about one backend's own files or machinery
            backends = tuple(b for b in backends if b in only.args)
        metafunc.parametrize("backend", backends, scope="module")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "backends(*names): in the server suite, run this test on these backends only "
        "(e.g. a SQLite file's schema migration)",
    )


@pytest.fixture(scope="module")
def backend() -> str:
    """The ledger's database for the servers this module starts (outside the server suite:
    SQLite)."""
    return "sqlite"


@pytest.fixture(scope="module", autouse=True)
def _servers_on_backend(backend: str) -> Iterator[None]:
    if backend == "postgresql":
        with postgres_backend():
            yield
    else:
        yield


@pytest.fixture
def database(backend: str, tmp_path: Path) -> str | Path:
    """A new, empty database of the module's backend for a test to open itself: a SQLite
    path under ``tmp_path``, or a new PostgreSQL database's url."""
    if backend == "postgresql":
        require_postgres()
        return new_database()
    return tmp_path / "giftcards.sqlite"


@pytest.fixture(scope="module")
def srv(_servers_on_backend: None) -> Iterator[RunningServer]:
    """One demo server per test module; its books must balance when the module is done."""
    with running() as server:
        yield server
        assert server.ledger.check_invariants() == []


@pytest.fixture(scope="module")
def pos(srv: RunningServer) -> Iterator[Pos]:
    terminal = Pos(srv)
    yield terminal
    terminal.close()


@pytest.fixture
def fresh_card(pos: Pos) -> DemoCard:
    """An unsold card of the first store that no other test of this module has touched."""
    return pos.fresh_card()


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture(scope="module")
def server(srv: RunningServer) -> RunningServer:
    """The module's demo server, under the name the client-side suites use."""
    return srv


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
