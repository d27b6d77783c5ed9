"""What analysts ask of the batches: volumes, liability, redemption, breakage, anomalies.

Every function takes frames of ``frames.TRANSACTION_SCHEMA`` / ``frames.BATCH_SCHEMA``,
eager or lazy (``frames.scan(path)`` of a synced dataset), and returns a new DataFrame, the
same for both; the work is polars expressions, not Python loops, run on the streaming
engine. Money stays ``Decimal(18, 2)``; shares are floats (they are ratios, not money).

A card is followed by ``card_ref`` (the server's pseudonym). Where a server sends none,
``card_last4`` stands in, which merges cards that share their last four digits: results
that follow cards are then approximate, and say so nowhere else, so prefer servers that
send ``cardref`` (the embedded one does).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Final

import polars as pl

from giftcard_toolkit.analysis.frames import MONEY

Frame = pl.DataFrame | pl.LazyFrame
ALL_STORES = "*"
# Every query runs on polars' streaming engine: over a scanned dataset (``frames.scan``)
# memory stays flat as the data grows; an eager frame gives the very same answer.
ENGINE: Final = "streaming"

# Cards as exact integer codes (the categorical's physical id): grouping and sorting
# millions of rows by an integer is many times cheaper than by a string.
_CARD = pl.coalesce("card_ref", "card_last4").cast(pl.Categorical).to_physical().alias("card")
_SIGNED = pl.when(pl.col("type") == "redeem").then(-pl.col("amount")).otherwise(pl.col("amount"))


def _lazy(frame: Frame) -> pl.LazyFrame:
    return frame.lazy() if isinstance(frame, pl.DataFrame) else frame


def _money_sum(expr: pl.Expr) -> pl.Expr:
    return expr.sum().fill_null(0).cast(MONEY)


def _of_type(kind: str) -> pl.Expr:
    return pl.col("type") == kind


def daily_summary(txs: Frame, tz: str = "UTC") -> pl.DataFrame:
    """Per store and day (in ``tz``): count and amount of sales, reloads and redemptions,
    and the net (sales + reloads - redemptions)."""
    return (
        _lazy(txs)
        .with_columns(pl.col("at").dt.convert_time_zone(tz).dt.date().alias("day"))
        .group_by("store_id", "store_name", "day")
        .agg(
            (_of_type("sale").sum().cast(pl.Int64)).alias("sales"),
            _money_sum(pl.col("amount").filter(_of_type("sale"))).alias("sales_amount"),
            (_of_type("reload").sum().cast(pl.Int64)).alias("reloads"),
            _money_sum(pl.col("amount").filter(_of_type("reload"))).alias("reloads_amount"),
            (_of_type("redeem").sum().cast(pl.Int64)).alias("redemptions"),
            _money_sum(pl.col("amount").filter(_of_type("redeem"))).alias("redemptions_amount"),
            _money_sum(_SIGNED).alias("net"),
        )
        .sort("store_id", "day")
        .collect(engine=ENGINE)
    )


def _cards(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Per card: its home store (where it was first seen: for a card sold in the window,
    the store that sold it), what it held before that first transaction, and its last
    balance and use. No sort of the whole frame: each is picked by ``arg_min``/``arg_max``."""
    first, last = pl.col("at").arg_min(), pl.col("at").arg_max()
    return lf.group_by("card").agg(
        pl.col("store_id").get(first).alias("home_store_id"),
        pl.col("store_name").get(first).alias("home_store_name"),
        pl.col("previous_balance").get(first).alias("opening"),
        pl.col("new_balance").get(last).alias("balance"),
        pl.col("at").max().alias("last_used"),
    )


def liability(txs: Frame, every: str = "1d") -> pl.DataFrame:
    """Outstanding balance (what the cards still hold) at the end of each period.

    Per card's home store (where it was sold), and in total (``store_id == "*"``). The
    window's opening liability is what its cards held before their first transaction in
    it (``previous_balance``); a card with no transaction in the window is not seen, so
    for the whole liability pass the whole history (``frames.fetch`` does by default).
    Columns: ``period`` (start of the period), ``store_id``, ``store_name``, ``liability``.
    """
    lf = _lazy(txs).select("store_id", "store_name", "at", "previous_balance", "new_balance", _CARD)
    cards = _cards(lf)
    opening = cards.group_by("home_store_id").agg(_money_sum(pl.col("opening")))
    changes = (
        lf.join(cards.select("card", "home_store_id", "home_store_name"), on="card")
        .group_by(
            "home_store_id", "home_store_name", pl.col("at").dt.truncate(every).alias("period")
        )
        .agg(_money_sum(pl.col("new_balance") - pl.col("previous_balance")).alias("change"))
    )
    bounds = lf.select(pl.col("at").min().alias("first"), pl.col("at").max().alias("last"))
    collected, opening_df, bounds_df = pl.collect_all([changes, opening, bounds], engine=ENGINE)
    if collected.is_empty():
        return pl.DataFrame(
            schema={
                "period": pl.Datetime("us", "UTC"),
                "store_id": pl.String,
                "store_name": pl.String,
                "liability": MONEY,
            }
        )
    periods = pl.datetime_range(
        bounds_df["first"].dt.truncate(every)[0],
        bounds_df["last"].dt.truncate(every)[0],
        interval=every,
        time_zone="UTC",
        eager=True,
    ).alias("period")
    stores = collected.select("home_store_id", "home_store_name").unique()
    per_store = (
        stores.join(periods.to_frame(), how="cross")
        .join(collected, on=["home_store_id", "home_store_name", "period"], how="left")
        .join(opening_df, on="home_store_id", how="left")
        .sort("home_store_id", "period")
        .select(
            "period",
            pl.col("home_store_id").alias("store_id"),
            pl.col("home_store_name").alias("store_name"),
            (
                pl.col("change").fill_null(0).cum_sum().over("home_store_id")
                + pl.col("opening").fill_null(0)
            )
            .cast(MONEY)
            .alias("liability"),
        )
    )
    total = per_store.group_by("period").agg(_money_sum(pl.col("liability")).alias("liability"))
    total = total.select(
        "period",
        pl.lit(ALL_STORES).alias("store_id"),
        pl.lit("All stores").alias("store_name"),
        "liability",
    )
    return pl.concat([per_store, total]).sort("store_id", "period")


def redemption_curve(txs: Frame, horizon_days: int = 84, step_days: int = 7) -> pl.DataFrame:
    """By activation week: the share of loaded value redeemed within N days of activation.

    A card's activation is its ``sale``; loads are its sale and reloads. For each cohort
    (cards activated in one ISO week) and N in 0, ``step_days``, ... ``horizon_days``:
    ``share = redeemed within N days / loaded within N days``. Cohorts younger than N days
    at the end of the data get no value for N (their curve is not known that far yet).
    """
    lf = _lazy(txs).with_columns(_CARD)
    activation = (
        lf.filter(_of_type("sale")).group_by("card").agg(pl.col("at").min().alias("activated"))
    )
    data_end = lf.select(pl.col("at").max().alias("data_end"))
    per_tx = (
        lf.join(activation, on="card", how="inner")
        .with_columns(
            pl.col("activated").dt.truncate("1w").dt.date().alias("activation_week"),
            ((pl.col("at") - pl.col("activated")).dt.total_seconds() / 86400).alias("age"),
        )
        .filter(pl.col("age") <= horizon_days)
        # The first N of the grid whose window holds the transaction (age <= N).
        .with_columns(((pl.col("age") / step_days).ceil() * step_days).cast(pl.Int64).alias("days"))
    )
    cohort = per_tx.group_by("activation_week").agg(
        pl.col("card").n_unique().cast(pl.Int64).alias("cards"),
        pl.col("activated").max().alias("youngest"),
    )
    per_step = per_tx.group_by("activation_week", "days").agg(
        _money_sum(pl.col("amount").filter(~_of_type("redeem"))).alias("loaded"),
        _money_sum(pl.col("amount").filter(_of_type("redeem"))).alias("redeemed"),
    )
    grid = pl.LazyFrame(
        {"days": list(range(0, horizon_days + 1, step_days))}, schema={"days": pl.Int64}
    )
    return (
        cohort.join(grid, how="cross")
        .join(per_step, on=["activation_week", "days"], how="left")
        .sort("activation_week", "days")
        .with_columns(
            pl.col(name).fill_null(0).cum_sum().over("activation_week").cast(MONEY)
            for name in ("loaded", "redeemed")
        )
        .join(data_end, how="cross")
        .filter(
            (pl.col("data_end") - pl.col("youngest")).dt.total_seconds() / 86400 >= pl.col("days")
        )
        .select(
            "activation_week",
            "days",
            "cards",
            "loaded",
            "redeemed",
            pl.when(pl.col("loaded") > 0)
            .then(pl.col("redeemed").cast(pl.Float64) / pl.col("loaded").cast(pl.Float64))
            .alias("share"),
        )
        .sort("activation_week", "days")
        .collect(engine=ENGINE)
    )


BREAKAGE_BUCKETS = [
    (0, 30, "0-30 days"),
    (31, 90, "31-90 days"),
    (91, 180, "91-180 days"),
    (181, 365, "181-365 days"),
    (366, None, "over 365 days"),
]


def breakage(txs: Frame, as_of: date | datetime, dormant_days: int = 365) -> pl.DataFrame:
    """Balances by how long their cards have been idle, and the estimated breakage.

    The rule: a balance whose card has had no transaction for ``dormant_days`` or more
    as of ``as_of`` is presumed never to be redeemed and counts in full as breakage;
    any younger balance counts nothing. Cards holding nothing are left out. Columns:
    ``idle`` (bucket), ``cards``, ``balance``, ``breakage``, in bucket order.
    """
    moment = (
        as_of
        if isinstance(as_of, datetime)
        else datetime(as_of.year, as_of.month, as_of.day, 23, 59, 59, tzinfo=UTC)
    )
    idle_days = (pl.lit(moment) - pl.col("last_used")).dt.total_days()
    bucket = pl.lit(BREAKAGE_BUCKETS[-1][2])
    for low, high, name in reversed(BREAKAGE_BUCKETS[:-1]):
        bucket = (
            pl.when(pl.col("idle_days").is_between(low, high)).then(pl.lit(name)).otherwise(bucket)
        )
    order = pl.Enum([name for _, _, name in BREAKAGE_BUCKETS])
    cards = (
        _cards(_lazy(txs).filter(pl.col("at") <= moment).with_columns(_CARD))
        .filter(pl.col("balance") > 0)
        .with_columns(idle_days.alias("idle_days"))
        .with_columns(bucket.cast(order).alias("idle"))
    )
    summary = cards.group_by("idle").agg(
        pl.len().cast(pl.Int64).alias("cards"),
        _money_sum(pl.col("balance")).alias("balance"),
        _money_sum(pl.col("balance").filter(pl.col("idle_days") >= dormant_days)).alias("breakage"),
    )
    every_bucket = pl.LazyFrame(
        {"idle": [name for _, _, name in BREAKAGE_BUCKETS]}, schema={"idle": order}
    )
    return (
        every_bucket.join(summary, on="idle", how="left")
        .select(
            "idle",
            pl.col("cards").fill_null(0),
            pl.col("balance").fill_null(0).cast(MONEY),
            pl.col("breakage").fill_null(0).cast(MONEY),
        )
        .sort("idle")
        .collect(engine=ENGINE)
    )


def anomalies(
    txs: Frame,
    *,
    cross_store_minutes: int = 60,
    max_redeems_per_hour: int = 4,
    cycle_hours: int = 24,
    min_cycles: int = 2,
    cycle_ratio: float = 0.9,
) -> pl.DataFrame:
    """Transactions worth a look, each with a ``reason``:

    * ``redeemed at another store soon after sale``: a redeem within
      ``cross_store_minutes`` of the card's sale, at a store other than the selling one;
    * ``many redemptions in an hour``: the card's redeem count within the hour up to this
      one exceeds ``max_redeems_per_hour``;
    * ``reload-redeem cycling``: on a card, ``min_cycles`` or more reloads each followed
      (within ``cycle_hours``) by a redeem of at least ``cycle_ratio`` of the reload.

    A transaction flagged for several reasons appears once per reason.
    """
    full = _lazy(txs).with_row_index("row")
    columns = list(_lazy(txs).collect_schema().names())
    # Flags are found on a narrow frame ordered by card and time; the flagged rows are then
    # looked up in the full one (so no sort ever moves the string columns).
    narrow = full.select("row", _CARD, "type", "at", "amount", "store_id").sort("card", "at", "row")

    def same_card(offset: int) -> pl.Expr:
        return pl.col("card").shift(offset) == pl.col("card")

    def flag(frame: pl.LazyFrame, reason: str) -> pl.LazyFrame:
        return frame.select("row", pl.lit(reason).alias("reason"))

    sales = narrow.filter(_of_type("sale")).select(
        "card", pl.col("store_id").alias("sale_store"), pl.col("at").alias("sold_at")
    )
    redeems = narrow.filter(_of_type("redeem"))
    cross_store = redeems.join(sales, on="card", how="inner").filter(
        (pl.col("store_id") != pl.col("sale_store"))
        & (pl.col("at") >= pl.col("sold_at"))
        & (pl.col("at") - pl.col("sold_at") <= pl.duration(minutes=cross_store_minutes))
    )
    # More than K redeems in (t - 1h, t] exactly when the K-th redeem before this one, on
    # the same card, is less than an hour older.
    k = max_redeems_per_hour
    rapid = redeems.filter(
        same_card(k) & (pl.col("at") - pl.col("at").shift(k) < pl.duration(hours=1))
    )
    followed = (
        _of_type("reload")
        & same_card(-1)
        & (pl.col("type").shift(-1) == "redeem")
        & (pl.col("at").shift(-1) - pl.col("at") <= pl.duration(hours=cycle_hours))
        & (
            pl.col("amount").shift(-1).cast(pl.Float64)
            >= pl.col("amount").cast(pl.Float64) * cycle_ratio
        )
    )
    cycling = (
        narrow.with_columns(followed.fill_null(False).alias("starts_cycle"))
        .with_columns(
            (pl.col("starts_cycle") | (pl.col("starts_cycle").shift(1) & same_card(1)))
            .fill_null(False)
            .alias("in_cycle"),
            pl.col("starts_cycle").sum().over("card").alias("cycles"),
        )
        .filter(pl.col("in_cycle") & (pl.col("cycles") >= min_cycles))
    )
    flags = pl.concat(
        [
            flag(cross_store, "redeemed at another store soon after sale"),
            flag(rapid, "many redemptions in an hour"),
            flag(cycling, "reload-redeem cycling"),
        ]
    )
    return (
        flags.join(full, on="row", how="inner")
        .select(*columns, "reason")
        .sort("at", "host_ref", "reason")
        .collect(engine=ENGINE)
    )


def reconcile(batches: Frame, txs: Frame) -> pl.DataFrame:
    """Per batch, the totals the server reported beside those recomputed from its
    transactions, with ``matches`` false where any differ."""
    computed = (
        _lazy(txs)
        .group_by("store_id", "batch_id")
        .agg(
            pl.len().cast(pl.Int64).alias("computed_count"),
            _money_sum(pl.col("amount").filter(_of_type("sale"))).alias("computed_sold"),
            _money_sum(pl.col("amount").filter(_of_type("reload"))).alias("computed_reloaded"),
            _money_sum(pl.col("amount").filter(_of_type("redeem"))).alias("computed_redeemed"),
            _money_sum(_SIGNED).alias("computed_net"),
        )
    )
    pairs = [
        ("transaction_count", "computed_count"),
        ("sold", "computed_sold"),
        ("reloaded", "computed_reloaded"),
        ("redeemed", "computed_redeemed"),
        ("net", "computed_net"),
    ]
    return (
        _lazy(batches)
        .join(computed, on=["store_id", "batch_id"], how="left")
        .with_columns(
            pl.col("computed_count").fill_null(0),
            *[pl.col(c).fill_null(0).cast(MONEY) for _, c in pairs[1:]],
        )
        .with_columns(
            pl.all_horizontal([pl.col(r) == pl.col(c) for r, c in pairs]).alias("matches"),
            (pl.col("net") - pl.col("computed_net")).cast(MONEY).alias("net_difference"),
        )
        .select(
            "store_id",
            "store_name",
            "batch_id",
            "status",
            "opened_at",
            *[name for pair in pairs for name in pair],
            "net_difference",
            "matches",
        )
        .sort("store_id", "opened_at")
        .collect(engine=ENGINE)
    )
