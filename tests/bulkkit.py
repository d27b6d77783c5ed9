"""Helpers the bulk suites share: cards from a server's stock no other test of that server
took, sales and balances, bulk files, the ledger's size."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from giftcard_toolkit import GiftCardClient, bulk
from giftcard_toolkit.server.runner import RunningServer
from giftcard_toolkit.server.seed import DemoCard

_taken: dict[str, set[str]] = {}  # card numbers used, by server


def unsold(server: RunningServer, count: int, first_store: bool = False) -> list[DemoCard]:
    """Unsold cards no other test of this server used (``first_store``: the clerk's)."""
    taken = _taken.setdefault(server.url, set())
    cards = [
        c
        for c in server.card_stock
        if not c.sold
        and c.number not in taken
        and (not first_store or c.store_id == server.stores[0].id)
    ][:count]
    assert len(cards) == count, "ran out of unsold demo cards"
    taken.update(c.number for c in cards)
    return cards


def sold(
    server: RunningServer, count: int, amount: str = "10", first_store: bool = False
) -> list[DemoCard]:
    """Cards sold now with ``amount``: their story is known to the cent."""
    cards = unsold(server, count, first_store)
    with GiftCardClient(server.url, server.username or "", server.password or "") as gc:
        for card in cards:
            gc.sell(card, amount, card.store_id)
    return cards


def balances(server: RunningServer, cards: Iterable[Any]) -> list[Decimal]:
    with GiftCardClient(server.url, server.username or "", server.password or "") as gc:
        return [gc.balance(c).balance for c in cards]


def ledger_rows(server: RunningServer) -> int:
    with server.ledger.read() as conn:
        return int(conn.execute("SELECT count(*) FROM ledger").fetchone()[0])


def write(
    path: Path,
    rows: Iterable[Sequence[str]],
    header: Sequence[str] = bulk.COLUMNS,
    encoding: str = "utf-8",
    separator: str = ",",
) -> Path:
    """A bulk file of ``rows`` under ``header``."""
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle, delimiter=separator)
        writer.writerow(header)
        writer.writerows(rows)
    return path
