"""Analytics on small hand-made frames whose answers are worked out here, and on the demo."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import polars as pl
import pytest

from giftcard_toolkit import GiftCardClient, analytics, frames
from giftcard_toolkit.server import running

A, B = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"
NAMES = {A: "Alpha", B: "Beta"}
D = Decimal


def _txs(rows: list[tuple]) -> pl.DataFrame:
    """(store, card, type, amount, previous, new, 'MM-DD HH:MM') rows as a frame."""
    records = []
    for n, (store, card, kind, amount, previous, new, when) in enumerate(rows):
        records.append(
            {
                "store_id": store,
                "store_name": NAMES[store],
                "batch_id": store[:1] + "1",
                "host_ref": f"{n:04d}",
                "type": kind,
                "card_last4": card[-4:],
                "card_ref": f"ref-{card}",
                "amount": D(amount),
                "previous_balance": D(previous),
                "new_balance": D(new),
                "pos_ref": None,
                "at": datetime.strptime(f"2026-{when}", "%Y-%m-%d %H:%M").replace(tzinfo=UTC),
                "username": "demo",
            }
        )
    frame = pl.DataFrame(
        records,
        schema_overrides={
            "amount": frames.MONEY,
            "previous_balance": frames.MONEY,
            "new_balance": frames.MONEY,
        },
    )
    return frames.conform(frame, frames.TRANSACTION_SCHEMA)


# c1: sold at Alpha, spent at Beta 20 minutes later.
# c2: sold at Alpha, then five redemptions within 40 minutes the next morning.
# c3: sold at Beta, then reload 200 / redeem 200 / reload 200 / redeem 190.
STORY = _txs(
    [
        (A, "c0001", "sale", "100", "0", "100", "01-05 10:00"),
        (B, "c0001", "redeem", "30", "100", "70", "01-05 10:20"),
        (A, "c0002", "sale", "50", "0", "50", "01-05 12:00"),
        *[
            (A, "c0002", "redeem", "5", str(50 - 5 * i), str(45 - 5 * i), f"01-06 09:{10 * i:02d}")
            for i in range(5)
        ],
        (B, "c0003", "sale", "20", "0", "20", "01-06 08:00"),
        (B, "c0003", "reload", "200", "20", "220", "01-06 12:00"),
        (B, "c0003", "redeem", "200", "220", "20", "01-06 12:30"),
        (B, "c0003", "reload", "200", "20", "220", "01-06 13:00"),
        (B, "c0003", "redeem", "190", "220", "30", "01-06 13:30"),
    ]
)


def test_daily_summary():
    summary = analytics.daily_summary(STORY)
    got = {(r["store_name"], r["day"].day): r for r in summary.iter_rows(named=True)}
    assert got["Alpha", 5]["sales"] == 2 and got["Alpha", 5]["sales_amount"] == D("150")
    assert got["Alpha", 5]["net"] == D("150")
    assert got["Beta", 5]["redemptions"] == 1 and got["Beta", 5]["net"] == D("-30")
    assert got["Alpha", 6]["redemptions"] == 5 and got["Alpha", 6]["redemptions_amount"] == 25
    beta6 = got["Beta", 6]
    assert (beta6["sales"], beta6["reloads"], beta6["redemptions"]) == (1, 2, 2)
    assert (beta6["reloads_amount"], beta6["redemptions_amount"], beta6["net"]) == (
        D("400"),
        D("390"),
        D("30"),
    )
    assert summary["net"].dtype == frames.MONEY


def test_daily_summary_days_follow_the_time_zone():
    late = _txs([(A, "c0009", "sale", "10", "0", "10", "01-06 03:00")])
    assert analytics.daily_summary(late)["day"][0] == date(2026, 1, 6)
    assert analytics.daily_summary(late, tz="America/New_York")["day"][0] == date(2026, 1, 5)


def test_liability_per_home_store_and_total():
    got = {
        (r["store_id"], r["period"].day): r["liability"]
        for r in analytics.liability(STORY).iter_rows(named=True)
    }
    # Day 5: c1 100-30 and c2 50 are Alpha's (sold there): 120. Beta has sold nothing yet.
    assert got[A, 5] == D("120") and got[B, 5] == 0 and got[analytics.ALL_STORES, 5] == 120
    # Day 6: c2 -25 at Alpha; c3 sold at Beta ends at 30.
    assert got[A, 6] == D("95") and got[B, 6] == D("30") and got[analytics.ALL_STORES, 6] == 125


def test_liability_counts_what_cards_held_before_the_window():
    window = STORY.filter(pl.col("at") >= datetime(2026, 1, 6, tzinfo=UTC))
    total = analytics.liability(window).filter(pl.col("store_id") == analytics.ALL_STORES)
    # c2 came in holding 50 and spent 25; c3 ends at 30. c1 is not in the window at all.
    assert total["liability"].to_list() == [D("55")]


def test_redemption_curve():
    curve_data = _txs(
        [
            (A, "d0001", "sale", "100", "0", "100", "02-02 10:00"),
            (A, "d0001", "redeem", "40", "100", "60", "02-05 10:00"),
            (A, "d0001", "redeem", "60", "60", "0", "02-11 10:00"),
            (B, "d0002", "sale", "10", "0", "10", "02-22 10:00"),
        ]
    )
    curve = analytics.redemption_curve(curve_data, horizon_days=14, step_days=7)
    first = curve.filter(pl.col("activation_week") == date(2026, 2, 2))
    assert first["days"].to_list() == [0, 7, 14]
    assert first["share"].to_list() == [0.0, 0.4, 1.0]
    assert first["loaded"].to_list() == [D("100")] * 3
    young = curve.filter(pl.col("activation_week") == date(2026, 2, 16))
    assert young["days"].to_list() == [0], "a cohort too young for day 7 has no value there"


def test_breakage_by_idle_bucket():
    table = analytics.breakage(STORY, as_of=date(2026, 1, 6), dormant_days=1)
    rows = {r["idle"]: r for r in table.iter_rows(named=True)}
    assert list(rows) == [name for _, _, name in analytics.BREAKAGE_BUCKETS]
    recent = rows["0-30 days"]
    # c1 holds 70 and was last used 1.6 days before: dormant by the 1-day rule.
    assert (recent["cards"], recent["balance"], recent["breakage"]) == (3, D("125"), D("70"))
    assert rows["over 365 days"]["cards"] == 0
    strict = analytics.breakage(STORY, as_of=date(2026, 1, 6))
    assert strict["breakage"].sum() == 0, "nothing is a year old"


def test_anomalies_find_each_story_and_nothing_else():
    flagged = analytics.anomalies(STORY)
    reasons = {}
    for row in flagged.iter_rows(named=True):
        reasons.setdefault(row["reason"], []).append((row["card_last4"], row["type"]))
    assert reasons["redeemed at another store soon after sale"] == [("0001", "redeem")]
    assert reasons["many redemptions in an hour"] == [("0002", "redeem")]
    assert reasons["reload-redeem cycling"] == [
        ("0003", t) for t in ("reload", "redeem", "reload", "redeem")
    ]
    assert set(flagged.columns) == set(frames.TRANSACTION_SCHEMA) | {"reason"}


def test_anomaly_thresholds_are_parameters():
    assert (
        analytics.anomalies(STORY, max_redeems_per_hour=5)
        .filter(pl.col("reason") == "many redemptions in an hour")
        .is_empty()
    )
    assert (
        analytics.anomalies(STORY, cross_store_minutes=10)
        .filter(pl.col("reason").str.contains("another store"))
        .is_empty()
    )
    assert (
        analytics.anomalies(STORY, min_cycles=3)
        .filter(pl.col("reason") == "reload-redeem cycling")
        .is_empty()
    )


def test_reconcile_flags_a_batch_whose_totals_differ():
    batches = frames.conform(
        pl.DataFrame(
            [
                {
                    "store_id": A,
                    "store_name": "Alpha",
                    "batch_id": "a1",
                    "status": "closed",
                    "opened_at": datetime(2026, 1, 5, tzinfo=UTC),
                    "closed_at": None,
                    "transaction_count": 7,
                    "sold": D("150"),
                    "reloaded": D("0"),
                    "redeemed": D("25"),
                    "net": D("125"),
                },
                {
                    "store_id": B,
                    "store_name": "Beta",
                    "batch_id": "b1",
                    "status": "closed",
                    "opened_at": datetime(2026, 1, 5, tzinfo=UTC),
                    "closed_at": None,
                    "transaction_count": 6,
                    "sold": D("20"),
                    "reloaded": D("400"),
                    "redeemed": D("420"),
                    "net": D("0"),
                },
            ],
            schema_overrides={k: frames.MONEY for k in ("sold", "reloaded", "redeemed", "net")},
        ),
        frames.BATCH_SCHEMA,
    )
    result = {r["batch_id"]: r for r in analytics.reconcile(batches, STORY).iter_rows(named=True)}
    assert result["a1"]["matches"] is True and result["a1"]["net_difference"] == 0
    beta = result["b1"]
    assert beta["matches"] is True
    tampered = batches.with_columns(
        pl.when(pl.col("batch_id") == "b1")
        .then(pl.lit(D("1")))
        .otherwise(pl.col("net"))
        .cast(frames.MONEY)
        .alias("net")
    )
    beta = {r["batch_id"]: r for r in analytics.reconcile(tampered, STORY).iter_rows(named=True)}[
        "b1"
    ]
    assert beta["matches"] is False and beta["net_difference"] == D("1")
    assert beta["computed_net"] == 0 and beta["computed_count"] == 6


# ---------------------------------------------------------------- demo data


@pytest.fixture(scope="module")
def demo():
    with running() as srv, GiftCardClient(srv.url, srv.username, srv.password) as gc:
        batches, txs = frames.fetch(gc)
        balances = sum((gc.balance(c).balance for c in srv.card_stock if c.sold), D(0))
        yield batches, txs, balances


def test_liability_today_equals_the_cards_balances(demo):
    _, txs, balances = demo
    total = analytics.liability(txs).filter(pl.col("store_id") == analytics.ALL_STORES)
    assert total["liability"][-1] == balances
    assert total["liability"].dtype == frames.MONEY


def test_demo_batches_reconcile(demo):
    batches, txs, _ = demo
    assert analytics.reconcile(batches, txs)["matches"].all()


def test_demo_anomalies_include_the_planted_stories(demo):
    _, txs, _ = demo
    reasons = set(analytics.anomalies(txs)["reason"])
    assert reasons == {
        "redeemed at another store soon after sale",
        "many redemptions in an hour",
        "reload-redeem cycling",
    }


def test_demo_daily_summary_matches_the_batches(demo):
    batches, txs, _ = demo
    summary = analytics.daily_summary(txs)
    assert summary["net"].sum() == batches["net"].sum()
    assert summary["sales"].sum() == txs.filter(pl.col("type") == "sale").height


def test_demo_breakage_sums_to_the_liability(demo):
    _, txs, balances = demo
    table = analytics.breakage(txs, as_of=date(2026, 9, 30), dormant_days=60)
    assert table["balance"].sum() == balances
    assert 0 < table["breakage"].sum() < balances


def test_demo_redemption_curve_is_cumulative_and_bounded(demo):
    _, txs, _ = demo
    curve = analytics.redemption_curve(txs)
    assert curve["share"].drop_nulls().is_between(0, 1).all(), "no card spends more than it got"
    for _, cohort in curve.group_by("activation_week"):
        ordered = cohort.sort("days")
        assert ordered["loaded"].is_sorted() and ordered["redeemed"].is_sorted()
    weeks = curve["activation_week"].n_unique()
    assert weeks >= 13, "90 days of sales make at least 13 weekly cohorts"
