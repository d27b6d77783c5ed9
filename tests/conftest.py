"""Shared fixtures: a live demo server over loopback, a POS on it, fresh cards, a clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serverkit import MovableClock, Pos

from giftcard_toolkit.server import running
from giftcard_toolkit.server.runner import RunningServer
from giftcard_toolkit.server.seed import DemoCard


@pytest.fixture(scope="module")
def srv() -> Iterator[RunningServer]:
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
