"""The demo's history is deep and shaped enough for finance's analyses, and its planted
anomaly stories stand out: ordinary trade raises no flag."""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
import pytest

from giftcard_toolkit import GiftCardClient
from giftcard_toolkit.analysis import analytics, frames
from giftcard_toolkit.server.seed import DEFAULT_AS_OF, HISTORY_DAYS, STORY_OFFSET


@pytest.fixture(scope="module")
def history(srv):
    with GiftCardClient(srv.url, srv.username, srv.password) as client:
        return frames.fetch(client, progress=False)


def story_day(index: int) -> date:
    """The day of a planted story, by its index in the last 90 days (see seed.story_steps)."""
    return DEFAULT_AS_OF - timedelta(days=HISTORY_DAYS - 1) + timedelta(days=STORY_OFFSET + index)


def test_two_years_of_trade_in_one_closed_batch_per_store_and_day(history):
    batches, txs = history
    first, last = txs["at"].min().date(), txs["at"].max().date()
    assert first <= DEFAULT_AS_OF - timedelta(days=2 * 365 - 7), "at least 24 months of history"
    assert last == DEFAULT_AS_OF
    closed = batches.filter(pl.col("status") == "closed")
    per_day = closed.group_by("store_id", pl.col("opened_at").dt.date()).len()
    assert per_day["len"].max() == 1, "one batch per store and day"
    assert batches.filter(pl.col("status") == "open").height == 3


def test_about_three_quarters_of_the_stock_sold(srv, history):
    _, txs = history
    stock = len(srv.card_stock)
    sold = txs.filter(pl.col("type") == "sale").height
    assert stock >= 2000
    assert 0.65 <= sold / stock <= 0.85
    assert sold == sum(card.sold for card in srv.card_stock)


def test_breakage_and_dormancy_buckets_all_hold_cards(history):
    _, txs = history
    buckets = analytics.breakage(txs, DEFAULT_AS_OF, dormant_days=365)
    assert (buckets["cards"] > 0).all(), f"every dormancy bucket holds cards:\n{buckets}"
    # The airport's travellers leave more unspent than the flagship's regulars.
    balances = (
        txs.sort("at")
        .group_by("card_ref")
        .agg(pl.col("new_balance").last(), pl.col("store_name").first())
        .group_by("store_name")
        .agg(pl.col("new_balance").sum().alias("left"), pl.len().alias("cards"))
    )
    left = {r["store_name"]: r["left"] / r["cards"] for r in balances.iter_rows(named=True)}
    assert left["Airport Kiosk"] > left["Downtown Flagship"]


def test_cohorts_span_two_years_with_a_holiday_peak(history):
    _, txs = history
    sales = (
        txs.filter(pl.col("type") == "sale")
        .group_by(pl.col("at").dt.strftime("%Y-%m").alias("month"))
        .len()
        .sort("month")
    )
    assert sales.height >= 24
    by_month = dict(sales.iter_rows())
    ordinary = sorted(by_month.values())[len(by_month) // 2]
    assert by_month["2025-12"] > 1.5 * ordinary, "December sells the most cards"


def test_the_planted_stories_are_all_that_the_anomaly_rules_flag(history):
    _, txs = history
    flagged = analytics.anomalies(txs)
    counts = dict(flagged.group_by("reason").len().iter_rows())
    # Each story, and nothing else: ordinary trade raises no flag.
    assert counts == {
        "redeemed at another store soon after sale": 1,  # one card, spent 20 minutes later
        "many redemptions in an hour": 2,  # the 5th and 6th of six redeems in 50 minutes
        "reload-redeem cycling": 8,  # four reloads, each redeemed within the day
    }
    days = {
        reason: set(part["at"].dt.date().to_list())
        for (reason,), part in flagged.group_by("reason")
    }
    assert days["redeemed at another store soon after sale"] == {story_day(30)}
    assert days["many redemptions in an hour"] == {story_day(55)}
    assert days["reload-redeem cycling"] == {story_day(75)}


def test_a_chain_seed_has_the_stores_and_days_asked(tmp_path):
    from giftcard_toolkit.server import running
    from giftcard_toolkit.server.seed import NotADemoDatabase, chain, open_demo

    shape = chain(5, 100)
    with running(shape=shape) as srv, GiftCardClient(srv.url, srv.username, srv.password) as gc:
        batches, txs = frames.fetch(gc, progress=False)
    names = [s.name for s in srv.stores]
    assert names == [
        "Downtown Flagship 1", "Riverside Mall 1", "Airport Kiosk 1",
        "Downtown Flagship 2", "Riverside Mall 2",
    ]  # fmt: skip
    assert set(txs["store_name"]) == set(names), "every store trades"
    assert txs["at"].min().date() == DEFAULT_AS_OF - timedelta(days=99)
    per_day = batches.group_by("store_id", pl.col("opened_at").dt.date()).len()
    assert per_day["len"].max() == 1 and batches.height <= 5 * 100
    assert sum(c.sold for c in srv.card_stock) == txs.filter(pl.col("type") == "sale").height
    # Reopening a database of one shape as another is refused, and leaves it as it was.
    ledger, _ = open_demo(tmp_path / "chain.sqlite", shape=shape)
    ledger.close()
    before = (tmp_path / "chain.sqlite").read_bytes()
    with pytest.raises(NotADemoDatabase, match="of 5 stores x 100 days, not 3 stores x 730 days"):
        open_demo(tmp_path / "chain.sqlite")
    assert (tmp_path / "chain.sqlite").read_bytes() == before


@pytest.mark.parametrize(
    ("stores", "days", "said"), [(2, 365, "at least 3 stores"), (3, 30, "at least 90 days")]
)
def test_serve_refuses_a_chain_too_small_in_words(stores, days, said, capsys):
    from giftcard_toolkit.cli import main

    with pytest.raises(SystemExit) as refused:
        main(["serve", "--seed", "chain", "--stores", str(stores), "--days", str(days)])
    assert said in str(refused.value) and str(refused.value).startswith("--seed chain: ")
