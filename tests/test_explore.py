"""The analysts' explorer, driven from code: every view is the analytics' own numbers,
picking a row shows that period's transactions (masked), exports read back equal, and bad
choices are said in words while the controls stay usable."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from giftcard_toolkit import GiftCardClient, analytics, frames
from giftcard_toolkit.analysis import explore
from giftcard_toolkit.server import running


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo server's history: (client, batches, transactions, dataset path)."""
    with (
        running() as srv,
        GiftCardClient(srv.url, srv.username, srv.password, card_key=srv.card_key) as client,
    ):
        batches, txs = frames.fetch(client, progress=False)
        path = tmp_path_factory.mktemp("explore") / "history"
        frames.sync(client, path, progress=False)
        yield client, batches, txs, path


@pytest.fixture
def ex(demo):
    _, batches, txs, _ = demo
    return explore.explorer((batches, txs))


def stores_of(txs: pl.DataFrame) -> list[str]:
    return sorted(txs["store_id"].unique().to_list())


def direct(txs: pl.DataFrame, measure: str, grain: str, **kw) -> pl.DataFrame:
    """What the analytics function itself gives for a measure and grain."""
    every = explore.GRAINS[grain]
    family = explore.MEASURES[measure].family
    if family == "flow":
        return analytics.summary(txs, every, **kw)
    if family == "liability":
        return analytics.liability(txs, every, **kw)
    if family == "breakage":
        return analytics.breakage(txs, **kw)
    return analytics.redemption_curve(txs, cohort=every, **kw)


@pytest.mark.parametrize("grain", list(explore.GRAINS))
@pytest.mark.parametrize("measure", list(explore.MEASURES))
def test_each_measure_and_grain_is_the_analytics_answer(demo, ex, measure, grain):
    _, _, txs, _ = demo
    ex.measure.value, ex.grain.value = measure, grain
    assert ex.message.value == ""
    assert_frame_equal(ex.table, direct(txs, measure, grain))  # all stores: the total rows

    ex.compare.value = True
    per_store = direct(txs, measure, grain, by="store")
    expected = per_store.filter(pl.col("store_id") != analytics.ALL_STORES)
    assert_frame_equal(ex.table, expected)

    chosen = stores_of(txs)[:2]
    ex.compare.value, ex.all_stores.value, ex.stores.value = False, False, tuple(chosen)
    assert_frame_equal(ex.table, direct(txs, measure, grain, stores=chosen))


@pytest.mark.parametrize("measure", ["sales", "net", "outstanding liability"])
def test_a_range_of_whole_periods_gives_the_windowed_answer(demo, ex, measure):
    _, _, txs, _ = demo
    ex.measure.value, ex.grain.value = measure, "month"
    ex.since.value, ex.until.value = date(2025, 2, 1), date(2025, 4, 30)
    expected = direct(txs, measure, "month", since=date(2025, 2, 1), until=date(2025, 4, 30))
    assert ex.table["period_start"].to_list() == [date(2025, 2, 1), date(2025, 3, 1)] + [
        date(2025, 4, 1)
    ]
    assert_frame_equal(ex.table, expected)


def test_compare_stores_draws_one_line_per_store(demo, ex):
    _, _, txs, _ = demo
    for measure in explore.MEASURES:
        ex.measure.value = measure
        ex.compare.value = False
        lines = ex.figure.axes[0].get_lines()
        if measure != "redemption curve":  # the curve draws a line per cohort
            assert len(lines) == 1
        ex.compare.value = True
        labels = [line.get_label() for line in ex.figure.axes[0].get_lines()]
        names = sorted(txs["store_name"].unique().to_list())
        assert sorted(labels) == names, measure


def test_the_figure_is_a_png_of_the_table_with_its_words(ex):
    ex.measure.value, ex.grain.value = "redemptions", "month"
    assert bytes(ex.image.value).startswith(b"\x89PNG")
    ax = ex.figure.axes[0]
    assert "Redemptions by month" in ax.get_title()
    assert ax.get_xlabel() and "USD" in ax.get_ylabel()
    shown = ax.get_lines()[0].get_ydata()
    assert list(shown) == [float(v) for v in ex.table["redemptions_amount"]]


def test_picking_a_row_shows_exactly_that_periods_transactions_masked(demo, ex):
    _, _, txs, _ = demo
    ex.measure.value, ex.grain.value, ex.compare.value = "sales", "week", True
    label, (start, end, store_id) = ex.row.options[5]
    assert str(start) in label
    ex.row.value = (start, end, store_id)
    day = pl.col("at").dt.date()
    expected = txs.filter((pl.col("store_id") == store_id) & (day >= start) & (day <= end)).sort(
        "at", "host_ref"
    )
    assert ex.picked.height == expected.height > 0
    assert ex.picked["host_ref"].to_list() == expected["host_ref"].to_list()
    assert "card_ref" not in ex.picked.columns
    assert ex.picked["card_last4"].str.len_chars().max() == 4
    assert f"{expected.height} transaction(s)" in ex.transactions_view.value
    # The table's row and the picked transactions agree on the money.
    row = ex.table.filter((pl.col("period_start") == start) & (pl.col("store_id") == store_id))
    sold = ex.picked.filter(pl.col("type") == "sale")["amount"].sum()
    assert row["sales_amount"].item() == Decimal(sold)


def test_picking_a_total_row_shows_the_chosen_stores_transactions(demo, ex):
    _, _, txs, _ = demo
    chosen = stores_of(txs)[1]
    ex.all_stores.value, ex.stores.value, ex.grain.value = False, (chosen,), "day"
    _, (start, end, store_id) = ex.row.options[3]
    assert store_id == analytics.ALL_STORES and start == end
    ex.row.value = (start, end, store_id)
    expected = txs.filter((pl.col("store_id") == chosen) & (pl.col("at").dt.date() == start))
    assert sorted(ex.picked["host_ref"]) == sorted(expected["host_ref"])


def test_exports_read_back_equal(ex, tmp_path):
    ex.measure.value, ex.grain.value, ex.compare.value = "outstanding liability", "week", True
    ex.folder.value = str(tmp_path / "out")
    ex.export_button.click()
    png, csv, parquet = (
        tmp_path / "out" / f"outstanding-liability-by-week.{x}" for x in ("png", "csv", "parquet")
    )
    assert png.read_bytes().startswith(b"\x89PNG")
    assert_frame_equal(pl.read_parquet(parquet), ex.table)
    assert_frame_equal(pl.read_csv(csv, schema=ex.table.schema), ex.table)
    assert "Written" in ex.export_status.value


def test_an_unwritable_export_folder_is_said(ex, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ex.folder.value = str(blocker)
    ex.export_button.click()
    assert "Cannot write into" in ex.export_status.value and "choose another" in (
        ex.export_status.value
    )


def test_a_dataset_a_client_and_frames_show_the_same(demo):
    client, batches, txs, path = demo
    views = [explore.explorer(source) for source in ((batches, txs), str(path), client)]
    for view in views:
        view.measure.value, view.grain.value, view.compare.value = "net", "month", True
    assert_frame_equal(views[1].table, views[0].table)
    assert_frame_equal(views[2].table, views[0].table)


def recovers(ex) -> None:
    """After a bad choice, a good one shows again."""
    ex.all_stores.value = True
    ex.since.value, ex.until.value = ex.first_day, ex.last_day
    assert ex.message.value == "" and ex.table.height > 0 and ex.figure is not None


def test_an_empty_store_selection_is_said_and_the_controls_stay_usable(ex):
    ex.all_stores.value = False
    ex.stores.value = ()
    assert "No store is selected" in ex.message.value
    assert ex.table.is_empty() and ex.image.value == b""
    recovers(ex)


def test_a_range_with_no_data_is_said(ex):
    ex.since.value = ex.last_day + timedelta(days=30)
    ex.until.value = ex.last_day + timedelta(days=60)
    assert "No data from" in ex.message.value and "widen the range" in ex.message.value
    recovers(ex)


def test_a_range_ending_before_it_starts_is_said(ex):
    ex.since.value, ex.until.value = date(2025, 5, 1), date(2025, 4, 1)
    assert "swap the dates" in ex.message.value
    recovers(ex)


def test_a_store_with_no_transactions_is_said(demo):
    _, batches, txs, _ = demo
    quiet = batches.head(1).with_columns(
        pl.lit("quiet-store").alias("store_id"), pl.lit("Quiet Corner").alias("store_name")
    )
    ex = explore.explorer((pl.concat([batches, quiet]), txs))
    ex.all_stores.value, ex.stores.value = False, ("quiet-store",)
    assert "No transactions at Quiet Corner (quiet-store)" in ex.message.value
    ex.measure.value = "outstanding liability"
    assert "No cards of Quiet Corner" in ex.message.value
    recovers(ex)


def test_a_path_that_is_not_a_dataset_is_said(tmp_path):
    shown = explore.explorer(str(tmp_path / "nowhere"))
    assert "is not a dataset the explorer can read" in shown.value
    assert "frames.sync" in shown.value


def test_data_without_transactions_is_said():
    empty = pl.DataFrame(schema=frames.TRANSACTION_SCHEMA)
    ex = explore.explorer((pl.DataFrame(schema=frames.BATCH_SCHEMA), empty))
    assert "holds no transactions" in ex.message.value


def test_an_interaction_reuses_the_aggregates(demo, ex, monkeypatch):
    """Moving stores, dates and compare works on the cached aggregates: the analytics
    are not called again (so the transactions are not read again)."""
    ex.measure.value, ex.grain.value = "sales", "week"
    calls = []
    real = analytics.summary
    monkeypatch.setattr(analytics, "summary", lambda *a, **k: calls.append(1) or real(*a, **k))
    ex.compare.value = True
    ex.all_stores.value, ex.stores.value = False, tuple(stores_of(demo[2])[:1])
    ex.since.value = date(2025, 3, 3)
    ex.grain.value = "day"
    ex.grain.value = "week"
    assert len(calls) == 1  # the new grain, once


def test_the_redemption_curve_of_other_stores_reuses_the_aggregate(demo, ex, monkeypatch):
    """The curve is computed once per grain for every store; choosing stores adds up their
    rows (the answer checked against analytics in the test above), with no new scan."""
    ex.measure.value, ex.grain.value = "redemption curve", "month"
    stores = stores_of(demo[2])
    choices = (stores[:1], stores[1:3], stores)
    expected = [direct(demo[2], "redemption curve", "month", stores=c) for c in choices]
    calls = []
    real = analytics.redemption_curve
    monkeypatch.setattr(
        analytics, "redemption_curve", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    ex.all_stores.value = False
    for chosen, answer in zip(choices, expected, strict=True):
        ex.stores.value = tuple(chosen)
        assert_frame_equal(ex.table, answer)
    ex.compare.value = True
    ex.since.value = date(2025, 3, 3)
    assert calls == []
