"""The six analyses written by hand in DuckDB SQL, as an analyst would, with the toolkit's rules.

The baseline of ``bench_frames.py`` and the oracle of ``tests/test_analytics_duckdb.py``: each
function answers what the ``analytics`` call named in its docstring answers with its
defaults (all stores, UTC days, no window), in the same columns, types and row order, so
that the two compare with ``assert_frame_equal``. The rules written again here:

* a card is ``coalesce(card_ref, card_last4)``; its transactions are ordered by
  ``(at, position)`` (time, then place in the batch: the server's order when times tie);
* its first transaction gives what it held at the start (``previous_balance``), its last
  its balance; its activation is its first sale;
* days are UTC days; every day from the data's first to its last has a row; the last day
  is not ``complete`` (the data ends within it).

``txs`` and ``batches`` name tables, views or ``read_parquet(...)`` expressions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import duckdb
import polars as pl

CARD = "coalesce(card_ref, card_last4)"
# What a card holds now or held before: picked by the server's order of its transactions.
ORDER = '("at", position)'
ORDER_BY = '"at", position'  # the same, in a window's ORDER BY
MONEY = "DECIMAL(18, 2)"


def connect(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that counts days in UTC, as the toolkit's default ``tz``."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if threads is not None:
        con.execute(f"SET threads = {threads}")
    return con


def _frame(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame:
    return con.sql(sql).pl()


def daily_summary(con: duckdb.DuckDBPyConnection, txs: str) -> pl.DataFrame:
    """``analytics.daily_summary(txs)``: per store and UTC day, every day from the data's
    first to its last, zeros where a store did nothing."""
    return _frame(
        con,
        f"""
        WITH flows AS (
            SELECT store_id, "at"::DATE AS day,
                   count(*) FILTER (type = 'sale') AS sales,
                   coalesce(sum(amount) FILTER (type = 'sale'), 0) AS sales_amount,
                   count(*) FILTER (type = 'reload') AS reloads,
                   coalesce(sum(amount) FILTER (type = 'reload'), 0) AS reloads_amount,
                   count(*) FILTER (type = 'redeem') AS redemptions,
                   coalesce(sum(amount) FILTER (type = 'redeem'), 0) AS redemptions_amount,
                   sum(CASE WHEN type = 'redeem' THEN -amount ELSE amount END) AS net
            FROM {txs} GROUP BY ALL
        ),
        stores AS (SELECT DISTINCT store_id, store_name FROM {txs}),
        days AS (
            SELECT unnest(generate_series(min(day), max(day), INTERVAL 1 DAY))::DATE AS day
            FROM flows
        )
        SELECT s.store_id, s.store_name, d.day,
               coalesce(f.sales, 0) AS sales,
               coalesce(f.sales_amount, 0)::{MONEY} AS sales_amount,
               coalesce(f.reloads, 0) AS reloads,
               coalesce(f.reloads_amount, 0)::{MONEY} AS reloads_amount,
               coalesce(f.redemptions, 0) AS redemptions,
               coalesce(f.redemptions_amount, 0)::{MONEY} AS redemptions_amount,
               coalesce(f.net, 0)::{MONEY} AS net
        FROM stores s CROSS JOIN days d
        LEFT JOIN flows f ON f.store_id = s.store_id AND f.day = d.day
        ORDER BY s.store_id, d.day
        """,
    )


def liability(con: duckdb.DuckDBPyConnection, txs: str) -> pl.DataFrame:
    """``analytics.liability(txs)``: the chain's outstanding balance at the end of each UTC
    day: what the cards held before their first transaction, plus every change since."""
    return _frame(
        con,
        f"""
        WITH opening AS (
            SELECT sum(opening) AS opening FROM (
                SELECT arg_min(previous_balance, {ORDER}) AS opening
                FROM {txs} GROUP BY {CARD}
            )
        ),
        changes AS (
            SELECT "at"::DATE AS day, sum(new_balance - previous_balance) AS change
            FROM {txs} GROUP BY ALL
        ),
        span AS (SELECT min("at") AS first, max("at") AS last FROM {txs}),
        days AS (
            SELECT unnest(generate_series(first::DATE, last::DATE, INTERVAL 1 DAY))::DATE AS day
            FROM span
        )
        SELECT d.day AS period_start, d.day AS period_end,
               (d.day + 1)::TIMESTAMPTZ <= (SELECT last FROM span) + INTERVAL 1 MICROSECOND
                   AS complete,
               '*' AS store_id, 'All stores' AS store_name,
               ((SELECT opening FROM opening)
                + sum(coalesce(c.change, 0)) OVER (ORDER BY d.day))::{MONEY} AS liability
        FROM days d LEFT JOIN changes c USING (day)
        ORDER BY d.day
        """,
    )


def redemption_curve(
    con: duckdb.DuckDBPyConnection, txs: str, horizon_days: int = 84, step_days: int = 7
) -> pl.DataFrame:
    """``analytics.redemption_curve(txs)``: per weekly cohort of sale (from Monday), the
    loads and redemptions within N days of each card's sale, cumulative, and their share;
    N only once the cohort's youngest card is N days old at the data's end."""
    return _frame(
        con,
        f"""
        WITH sold AS (
            SELECT {CARD} AS card, min("at") FILTER (type = 'sale') AS sold_at
            FROM {txs} GROUP BY ALL HAVING sold_at IS NOT NULL
        ),
        cohorts AS (
            SELECT date_trunc('week', sold_at::DATE)::DATE AS cohort_start,
                   count(*) AS cards, max(sold_at) AS youngest
            FROM sold GROUP BY ALL
        ),
        aged AS (
            SELECT date_trunc('week', s.sold_at::DATE)::DATE AS cohort_start, t.type, t.amount,
                   ((epoch_us(t."at") - epoch_us(s.sold_at)) // 1000000) / 86400 AS age
            FROM {txs} t JOIN sold s ON {CARD} = s.card
        ),
        steps AS (
            SELECT cohort_start, (ceil(age / {step_days}) * {step_days})::BIGINT AS days,
                   coalesce(sum(amount) FILTER (type <> 'redeem'), 0) AS loaded,
                   coalesce(sum(amount) FILTER (type = 'redeem'), 0) AS redeemed
            FROM aged WHERE age <= {horizon_days} GROUP BY ALL
        ),
        grid AS (SELECT unnest(range(0, {horizon_days + 1}, {step_days})) AS days),
        known AS (SELECT max("at") AS known FROM {txs}),
        curve AS (
            SELECT c.cohort_start, g.days, c.cards, c.youngest,
                   sum(coalesce(s.loaded, 0)) OVER w AS loaded,
                   sum(coalesce(s.redeemed, 0)) OVER w AS redeemed
            FROM cohorts c CROSS JOIN grid g
            LEFT JOIN steps s ON s.cohort_start = c.cohort_start AND s.days = g.days
            WINDOW w AS (PARTITION BY c.cohort_start ORDER BY g.days)
        )
        SELECT '*' AS store_id, 'All stores' AS store_name, cohort_start,
               (cohort_start + INTERVAL 6 DAY)::DATE AS cohort_end, days, cards,
               loaded::{MONEY} AS loaded, redeemed::{MONEY} AS redeemed,
               CASE WHEN loaded > 0 THEN redeemed::DOUBLE / loaded::DOUBLE END AS share
        FROM curve
        WHERE ((epoch_us((SELECT known FROM known)) - epoch_us(youngest)) // 1000000) / 86400
              >= days
        ORDER BY cohort_start, days
        """,
    )


BUCKETS = ["0-30 days", "31-90 days", "91-180 days", "181-365 days", "over 365 days"]


def breakage(
    con: duckdb.DuckDBPyConnection, txs: str, as_of: str, dormant_days: int = 365
) -> pl.DataFrame:
    """``analytics.breakage(txs, as_of)`` (``as_of`` an instant, e.g. the last transaction's
    time, as an ISO text): cards holding money, by days idle at the microsecond after
    ``as_of``; breakage is what those idle ``dormant_days`` or more hold."""
    buckets = ", ".join(f"('{name}', {i})" for i, name in enumerate(BUCKETS))
    return _frame(
        con,
        f"""
        WITH per_card AS (
            SELECT arg_max(new_balance, {ORDER}) AS balance, max("at") AS last_used
            FROM {txs} WHERE "at" <= '{as_of}'::TIMESTAMPTZ GROUP BY {CARD}
        ),
        idle AS (
            SELECT balance,
                   (epoch_us('{as_of}'::TIMESTAMPTZ) + 1 - epoch_us(last_used))
                       // 86400000000 AS idle_days
            FROM per_card WHERE balance > 0
        ),
        bucketed AS (
            SELECT CASE WHEN idle_days <= 30 THEN '0-30 days'
                        WHEN idle_days <= 90 THEN '31-90 days'
                        WHEN idle_days <= 180 THEN '91-180 days'
                        WHEN idle_days <= 365 THEN '181-365 days'
                        ELSE 'over 365 days' END AS idle,
                   count(*) AS cards, sum(balance) AS balance,
                   coalesce(sum(balance) FILTER (idle_days >= {dormant_days}), 0) AS breakage
            FROM idle GROUP BY ALL
        ),
        buckets(idle, n) AS (VALUES {buckets})
        SELECT '*' AS store_id, 'All stores' AS store_name, b.idle,
               coalesce(x.cards, 0) AS cards,
               coalesce(x.balance, 0)::{MONEY} AS balance,
               coalesce(x.breakage, 0)::{MONEY} AS breakage
        FROM buckets b LEFT JOIN bucketed x USING (idle)
        ORDER BY b.n
        """,
    )


def anomalies(con: duckdb.DuckDBPyConnection, txs: str) -> pl.DataFrame:
    """``analytics.anomalies(txs)``: the flagged transactions (all their columns) and why:
    a redeem at another store within 60 minutes of the card's sale; a card's 5th redeem
    within an hour; two or more reload-then-redeem (>= 90 %, within 24 h) cycles on a card
    (the reload and the redeem both flagged). Oldest first. The rules run on the few
    columns they read, the flagged rows are then found by their ``host_ref``."""
    return _frame(
        con,
        f"""
        WITH t AS (
            SELECT host_ref, {CARD} AS card, type, "at", position, amount, store_id
            FROM {txs}
        ),
        cross_store AS (
            SELECT r.host_ref, 'redeemed at another store soon after sale' AS reason
            FROM t r JOIN t s ON s.card = r.card AND s.type = 'sale'
            WHERE r.type = 'redeem' AND r.store_id <> s.store_id
              AND r."at" >= s."at" AND r."at" - s."at" <= INTERVAL 60 MINUTE
        ),
        rapid AS (
            SELECT host_ref, 'many redemptions in an hour' AS reason FROM (
                SELECT host_ref, "at",
                       lag("at", 4) OVER (PARTITION BY card ORDER BY {ORDER_BY}) AS fifth_back
                FROM t WHERE type = 'redeem'
            ) WHERE "at" - fifth_back < INTERVAL 1 HOUR
        ),
        followed AS (
            SELECT host_ref, card, "at", position, coalesce(
                type = 'reload' AND lead(type) OVER w = 'redeem'
                AND lead("at") OVER w - "at" <= INTERVAL 24 HOUR
                AND lead(amount) OVER w::DOUBLE >= amount::DOUBLE * 0.9, false) AS starts
            FROM t WINDOW w AS (PARTITION BY card ORDER BY {ORDER_BY})
        ),
        cycling AS (
            SELECT host_ref, 'reload-redeem cycling' AS reason FROM (
                SELECT host_ref, starts, sum(starts::INT) OVER (PARTITION BY card) AS cycles,
                       coalesce(lag(starts) OVER (PARTITION BY card ORDER BY {ORDER_BY}), false)
                           AS after_start
                FROM followed
            ) WHERE (starts OR after_start) AND cycles >= 2
        ),
        flags AS (
            SELECT * FROM cross_store UNION ALL SELECT * FROM rapid
            UNION ALL SELECT * FROM cycling
        )
        SELECT x.*, f.reason FROM {txs} x JOIN flags f USING (host_ref)
        ORDER BY "at", host_ref, reason
        """,
    )


def reconcile(con: duckdb.DuckDBPyConnection, batches: str, txs: str) -> pl.DataFrame:
    """``analytics.reconcile(batches, txs)``: each batch's reported totals beside those of
    its transactions, and whether all match."""
    return _frame(
        con,
        f"""
        WITH computed AS (
            SELECT store_id, batch_id, count(*) AS computed_count,
                   coalesce(sum(amount) FILTER (type = 'sale'), 0) AS computed_sold,
                   coalesce(sum(amount) FILTER (type = 'reload'), 0) AS computed_reloaded,
                   coalesce(sum(amount) FILTER (type = 'redeem'), 0) AS computed_redeemed,
                   sum(CASE WHEN type = 'redeem' THEN -amount ELSE amount END) AS computed_net
            FROM {txs} GROUP BY ALL
        )
        SELECT b.store_id, b.store_name, b.batch_id, b.status, b.opened_at,
               b.transaction_count, coalesce(c.computed_count, 0) AS computed_count,
               b.sold, coalesce(c.computed_sold, 0)::{MONEY} AS computed_sold,
               b.reloaded, coalesce(c.computed_reloaded, 0)::{MONEY} AS computed_reloaded,
               b.redeemed, coalesce(c.computed_redeemed, 0)::{MONEY} AS computed_redeemed,
               b.net, coalesce(c.computed_net, 0)::{MONEY} AS computed_net,
               (b.net - coalesce(c.computed_net, 0))::{MONEY} AS net_difference,
               b.transaction_count = coalesce(c.computed_count, 0)
               AND b.sold = coalesce(c.computed_sold, 0)
               AND b.reloaded = coalesce(c.computed_reloaded, 0)
               AND b.redeemed = coalesce(c.computed_redeemed, 0)
               AND b.net = coalesce(c.computed_net, 0) AS matches
        FROM {batches} b LEFT JOIN computed c USING (store_id, batch_id)
        ORDER BY b.store_id, b.opened_at, b.batch_id
        """,
    )


# ------------------------------------------------------------------ side by side

NAMES = (
    "daily summary",
    "liability",
    "redemption curve",
    "breakage",
    "anomalies",
    "reconciliation",
)


def duckdb_calls(
    con: duckdb.DuckDBPyConnection, txs: str, batches: str, as_of: str
) -> dict[str, Callable[[], pl.DataFrame]]:
    """Every analysis in SQL, by name (``NAMES``), to be called."""
    return {
        "daily summary": lambda: daily_summary(con, txs),
        "liability": lambda: liability(con, txs),
        "redemption curve": lambda: redemption_curve(con, txs),
        "breakage": lambda: breakage(con, txs, as_of),
        "anomalies": lambda: anomalies(con, txs),
        "reconciliation": lambda: reconcile(con, batches, txs),
    }


def toolkit_calls(
    txs: pl.DataFrame | pl.LazyFrame, batches: pl.DataFrame | pl.LazyFrame, as_of: datetime
) -> dict[str, Callable[[], pl.DataFrame]]:
    """Every analysis by the toolkit, by name, as ``duckdb_calls`` asks them."""
    from giftcard_toolkit import analytics

    return {
        "daily summary": lambda: analytics.daily_summary(txs),
        "liability": lambda: analytics.liability(txs),
        "redemption curve": lambda: analytics.redemption_curve(txs),
        "breakage": lambda: analytics.breakage(txs, as_of),
        "anomalies": lambda: analytics.anomalies(txs),
        "reconciliation": lambda: analytics.reconcile(batches, txs),
    }


def answers(calls: dict[str, Callable[[], pl.DataFrame]]) -> dict[str, pl.DataFrame]:
    return {name: call() for name, call in calls.items()}


# Each answer's rows in one order whatever an engine's order of equal keys.
_KEYS = {
    "daily summary": ["store_id", "day"],
    "liability": ["store_id", "period_start"],
    "redemption curve": ["store_id", "cohort_start", "days"],
    "breakage": ["store_id", "idle"],
    "anomalies": ["at", "host_ref", "reason"],
    "reconciliation": ["store_id", "opened_at", "batch_id"],
}


def differences(ours: dict[str, pl.DataFrame], theirs: dict[str, pl.DataFrame]) -> dict[str, str]:
    """Where two sets of answers differ (by analysis: what differs); empty when the same
    rows, columns and values (money to the cent) are in both."""
    from polars.testing import assert_frame_equal

    found = {}
    for name, mine in ours.items():
        other = theirs[name]
        try:
            if other.columns != mine.columns:
                raise AssertionError(f"columns {other.columns} != {mine.columns}")
            other = other.cast(dict(mine.schema))  # type: ignore[arg-type]
            keys = _KEYS[name]
            assert_frame_equal(
                mine.sort(keys, maintain_order=True),
                other.sort(keys, maintain_order=True),
                check_exact=True,
            )
        except AssertionError as failed:
            found[name] = str(failed)
    return found
