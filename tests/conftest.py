"""Shared fixtures: a live demo server over loopback, a POS on it, a movable clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serverkit import MovableClock, Pos

from giftcard_toolkit.server import running
from giftcard_toolkit.server.runner import RunningServer


@pytest.fixture(scope="module")
def srv() -> Iterator[RunningServer]:
    with running() as server:
        yield server


@pytest.fixture(scope="module")
def pos(srv: RunningServer) -> Iterator[Pos]:
    terminal = Pos(srv)
    yield terminal
    terminal.close()


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()
