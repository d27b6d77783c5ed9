"""A card-following measure read in parts of cards (a scanned history past
``analytics._CARD_PART_ROWS`` transactions, a frame in memory past
``_CARD_PART_ROWS_IN_MEMORY``) gives exactly the single pass's frames."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from contextvars import ContextVar
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from giftcard_toolkit import accounting, analytics, frames

sys.path.insert(0, str(Path(__file__).parent / "benchmark"))
from bench_dataset import write_dataset  # noqa: E402
from bench_frames import synthetic_transactions  # noqa: E402


@pytest.fixture(scope="module")
def history() -> pl.DataFrame:
    return a_history()


def a_history() -> pl.DataFrame:
    """A few thousand cards over four stores and a year, some without ``card_ref``
    (followed by their last four digits, so several merge)."""
    txs = synthetic_transactions(30_000, stores=4, days=365, seed=7)
    return txs.with_columns(
        pl.when(pl.col("card_last4").str.ends_with("7"))
        .then(None)
        .otherwise(pl.col("card_ref"))
        .alias("card_ref")
    )


def _answers(call: Callable[[], pl.DataFrame]) -> tuple[pl.DataFrame, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = call()
    return frame, [str(w.message) for w in caught]


def _same_in_parts(
    monkeypatch: pytest.MonkeyPatch,
    txs: pl.DataFrame,
    call: Callable[[pl.DataFrame | pl.LazyFrame], pl.DataFrame],
    parts: int = 5,
) -> list[str]:
    whole, whole_warnings = _answers(lambda: call(txs))  # in memory: one pass
    monkeypatch.setattr(analytics, "_CARD_PART_ROWS", -(-txs.height // parts))
    monkeypatch.setattr(analytics, "_CARD_PART_ROWS_IN_MEMORY", -(-txs.height // parts))
    assert analytics._card_parts(txs.lazy()) == parts == analytics._card_parts(txs)
    parted, parted_warnings = _answers(lambda: call(txs.lazy()))
    cut, cut_warnings = _answers(lambda: call(txs))  # in memory, cut by filters
    monkeypatch.undo()
    assert analytics._card_parts(txs.lazy()) == 1 == analytics._card_parts(txs)
    assert parted.schema == whole.schema
    assert parted.equals(whole)
    assert parted_warnings == whole_warnings
    assert cut.equals(whole)
    assert cut_warnings == whole_warnings
    assert whole.height > 0
    return whole_warnings


CALLS: dict[str, Callable[[pl.DataFrame | pl.LazyFrame], pl.DataFrame]] = {
    "liability": lambda t: analytics.liability(t),
    "liability by store": lambda t: analytics.liability(t, by="store"),
    "liability monthly, a window": lambda t: analytics.liability(
        t, "1mo", by="store", since=date(2026, 1, 1), until=date(2026, 6, 30), tz="Europe/Paris"
    ),
    "liability of some stores, as of": lambda t: analytics.liability(
        t, "1w", stores=["Store 2", "Store 3"], as_of=date(2026, 5, 15)
    ),
    "redemption curve": lambda t: analytics.redemption_curve(t),
    "redemption curve by store, monthly": lambda t: analytics.redemption_curve(
        t, 120, 10, cohort="1mo", by="store", tz="America/New_York"
    ),
    "redemption curve of a store, a window": lambda t: analytics.redemption_curve(
        t,
        stores="Store 3",
        since=date(2025, 11, 1),
        until=date(2026, 2, 28),
        as_of=date(2026, 6, 1),
    ),
    "breakage": lambda t: analytics.breakage(t),
    "breakage as of, by store": lambda t: analytics.breakage(
        t, date(2026, 7, 1), dormant_days=90, by="store"
    ),
    "breakage of some stores": lambda t: analytics.breakage(
        t, stores=["Store 2", "Store 3"], tz="Asia/Tokyo", dormant_days=30
    ),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_in_parts_of_cards_the_same_frames(monkeypatch, history, name):
    _same_in_parts(monkeypatch, history, CALLS[name])


def test_in_parts_of_cards_the_same_warnings_of_a_partial_history(monkeypatch, history):
    """A history filtered to two stores: the same frames, and the same warnings."""
    some_stores = history.filter(pl.col("store_name").is_in(["Store 2", "Store 3"]))
    warned = [_same_in_parts(monkeypatch, some_stores, call, parts=3) for call in CALLS.values()]
    assert all(warned), "each measure warns of the partial history"


def test_in_parts_of_cards_over_a_scanned_dataset(monkeypatch, tmp_path):
    """``frames.scan`` of a synced dataset (Hive Parquet, by store and month) read in parts
    gives what its loaded frame gives in one pass."""
    path = write_dataset(tmp_path / "dataset", 40_000, chunk=20_000, states=False)
    _, scanned = frames.scan(path)
    _, loaded = frames.load(path)
    monkeypatch.setattr(analytics, "_CARD_PART_ROWS", 9_000)
    assert analytics._card_parts(scanned) == 5
    for name in ("liability by store", "redemption curve", "breakage as of, by store"):
        parted = CALLS[name](scanned)
        assert parted.equals(CALLS[name](loaded)), name


# Every measure that groups transactions by card: those that join each transaction back to
# its card's row (its home store, its sale), and those that only add the cards up.
BY_CARD: dict[str, Callable[[pl.DataFrame | pl.LazyFrame], pl.DataFrame]] = {
    **CALLS,
    "cards": lambda t: analytics.cards(t),
    "cards of some stores": lambda t: analytics.cards(t, stores=["Store 2", "Store 3"]),
    "cross store": lambda t: analytics.cross_store(t),
    "journal, remote breakage": lambda t: accounting.journal(t, breakage="remote"),
}


def _colliding_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every card's hash one of two values: most cards share theirs with others."""
    card = pl.col("card")
    monkeypatch.setattr(
        analytics, "_HASHED_CARD", pl.when(card.is_not_null()).then(card.hash() % 2)
    )


def test_cards_are_grouped_by_their_hash_unless_two_share_one(monkeypatch, history):
    cards = analytics._card_rows(analytics._read(history, None), "sold_at")
    assert analytics._held(cards).collect_schema()["_card_key"] == pl.UInt64
    _colliding_hash(monkeypatch)
    cards = analytics._card_rows(analytics._read(history, None), "sold_at")
    with pytest.raises(analytics._SharedHash):
        analytics._held(cards)
    monkeypatch.setattr(analytics, "_CARDS_BY_TEXT", ContextVar("by_text", default=True))
    cards = analytics._card_rows(analytics._read(history, None), "sold_at")
    assert analytics._held(cards).collect_schema()["_card_key"] == pl.String


@pytest.mark.parametrize("name", list(BY_CARD))
def test_cards_that_share_a_hash_are_never_taken_for_one(monkeypatch, history, name):
    """Grouped by a shared hash, several cards would be one (one home, one sale, one
    balance), and their transactions would join to it: the answer, and its warnings, must
    be those of the cards grouped by their text, in one part or several."""
    hashed, hashed_warnings = _answers(lambda: BY_CARD[name](history))
    _colliding_hash(monkeypatch)
    texts, text_warnings = _answers(lambda: BY_CARD[name](history))
    assert hashed.height > 0
    assert texts.equals(hashed)
    assert text_warnings == hashed_warnings
    monkeypatch.setattr(analytics, "_CARD_PART_ROWS_IN_MEMORY", -(-history.height // 3))
    assert BY_CARD[name](history).equals(hashed)
