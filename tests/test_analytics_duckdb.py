"""The toolkit's analyses and the same analyses written by hand in DuckDB SQL agree.

``tests/benchmark/duckdb_analytics.py`` is the benchmark's baseline; here it is the oracle:
on random small histories (ties in time, cards without ``card_ref``, batches whose reported
totals are off, cards that never sold) both give the same rows, money to the cent.
"""

from __future__ import annotations

import sys
import warnings
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from giftcard_toolkit import frames
from giftcard_toolkit.analysis.analytics import PartialHistoryWarning

sys.path.insert(0, str(Path(__file__).parent / "benchmark"))
import duckdb_analytics as sql  # noqa: E402
from bench_frames import batches_of  # noqa: E402

START = datetime(2025, 3, 3, 9, tzinfo=UTC)
STORES = {"s1": "North", "s2": "South", "s3": "Airport"}
TYPES = ("sale", "reload", "redeem")


@st.composite
def histories(draw: st.DrawFn) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(transactions, batches): a few cards over a few days, times drawn from a small set so
    that many tie; positions numbered per batch in the order drawn."""
    days = draw(st.lists(st.integers(0, 500), min_size=1, max_size=6, unique=True))
    minutes = [0, 10, 45, 59, 61, 600]
    rows = []
    for n in range(draw(st.integers(1, 40))):
        card = draw(st.integers(0, 7))
        store = draw(st.sampled_from(sorted(STORES)))
        at = START + timedelta(
            days=draw(st.sampled_from(days)), minutes=draw(st.sampled_from(minutes))
        )
        rows.append(
            {
                "store_id": store,
                "store_name": STORES[store],
                "batch_id": f"{store}-{at:%Y%m%d}",
                "host_ref": f"{n:04d}",
                "type": "sale" if n == 0 else draw(st.sampled_from(TYPES)),
                "card_last4": f"{card % 3:04d}",
                # Cards 6 and 7 come from a server that sends no cardref.
                "card_ref": None if card >= 6 else f"ref-{card}",
                "amount": Decimal(draw(st.integers(1, 9000))) / 100,
                "previous_balance": Decimal(draw(st.integers(0, 9000))) / 100,
                "new_balance": Decimal(draw(st.integers(0, 9000))) / 100,
                "pos_ref": None,
                "at": at,
                "username": "demo",
            }
        )
    money = {c: frames.MONEY for c in ("amount", "previous_balance", "new_balance")}
    txs = frames.conform(pl.DataFrame(rows, schema_overrides=money), frames.TRANSACTION_SCHEMA)
    # The server's order is (time, place in the batch): a card's two transactions at one
    # instant in two batches at the same place would have none, so none is drawn.
    key = pl.coalesce("card_ref", "card_last4")
    txs = txs.filter(pl.struct(key, "at", "position").is_first_distinct())
    # Shuffled rows: the answers must not depend on the frame's order.
    txs = txs.sample(fraction=1.0, shuffle=True, seed=draw(st.integers(0, 2**32 - 1)))
    return txs, _batches(txs, off=draw(st.booleans()))


def _batches(txs: pl.DataFrame, off: bool) -> pl.DataFrame:
    """The batches of ``txs`` with their true totals (``off``: one reported a cent short),
    and an empty batch."""

    found = batches_of(txs).sort("batch_id")
    if off:
        found = found.with_columns(
            pl.when(pl.int_range(pl.len()) == 0)
            .then(pl.col("net") - Decimal("0.01"))
            .otherwise(pl.col("net"))
            .alias("net")
        )
    empty = found.head(1).with_columns(
        pl.lit("s3-empty").alias("batch_id"),
        pl.lit(0, pl.Int64).alias("transaction_count"),
        *[pl.lit(Decimal(0)).alias(c) for c in ("sold", "reloaded", "redeemed", "net")],
    )
    return frames.conform(pl.concat([found, empty], how="vertical_relaxed"), frames.BATCH_SCHEMA)


@pytest.fixture(scope="module")
def con():
    connection = sql.connect(threads=1)
    yield connection
    connection.close()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(histories())
def test_the_toolkit_and_hand_written_duckdb_sql_agree(con, history):
    txs, batches = history
    as_of = txs["at"].max()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialHistoryWarning)  # random balances have gaps
        ours = sql.answers(sql.toolkit_calls(txs, batches, as_of))
        lazy = sql.answers(sql.toolkit_calls(txs.lazy(), batches.lazy(), as_of))
    con.register("txs", txs)
    con.register("batches", batches)
    try:
        theirs = sql.answers(sql.duckdb_calls(con, "txs", "batches", as_of.isoformat()))
    finally:
        con.unregister("txs")
        con.unregister("batches")
    assert sql.differences(ours, theirs) == {}
    assert sql.differences(ours, lazy) == {}
    # Not vacuous: every analysis answered something (a sale is always drawn).
    assert all(ours[name].height for name in sql.NAMES if name != "anomalies")
    event(f"anomalies flagged: {min(ours['anomalies'].height, 3)}+")


def test_the_comparison_sees_a_cent():
    """The oracle's comparison is strict: a cent off in one row is a difference."""
    day = pl.DataFrame(
        {"store_id": ["s1"], "day": [START.date()], "net": [Decimal("1.00")]},
        schema_overrides={"net": frames.MONEY},
    )
    off = day.with_columns(pl.lit(Decimal("1.01")).cast(frames.MONEY).alias("net"))
    assert "daily summary" in sql.differences({"daily summary": day}, {"daily summary": off})
    assert sql.differences({"daily summary": day}, {"daily summary": day}) == {}


def test_duckdb_over_a_dataset_answers_what_the_toolkit_does_over_its_scan(con, tmp_path):
    """``bench_dataset.py --duckdb`` times DuckDB over the dataset's own Hive files beside
    the toolkit over ``frames.scan``: both must be the same answers to the cent first."""
    from bench_dataset import hive_sql, write_dataset

    path = write_dataset(tmp_path / "dataset", 20_000, chunk=10_000)
    batches, txs = frames.scan(path)
    as_of = txs.select(pl.col("at").max()).collect().item()
    ours = sql.answers(sql.toolkit_calls(txs, batches, as_of))
    theirs = sql.answers(sql.duckdb_calls(con, *hive_sql(path), as_of.isoformat()))
    assert sql.differences(ours, theirs) == {}
    assert ours["liability"].height > 0 and ours["reconciliation"].height > 0
