"""Each plot renders to PNG headless, titled, with labelled axes and money in dollars."""

from __future__ import annotations

import io

import matplotlib
import polars as pl
import pytest
from matplotlib.figure import Figure
from test_analytics import STORY

from giftcard_toolkit import analytics, plots

matplotlib.use("Agg")


@pytest.mark.parametrize(
    "make,money_axis",
    [
        (plots.daily_volume, True),
        (plots.liability, True),
        (plots.redemption_curve, False),
        (plots.anomalies, True),
    ],
)
def test_plot_renders_with_title_labels_and_dollars(make, money_axis):
    figure = make(STORY)
    assert isinstance(figure, Figure)
    ax = figure.axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
    if money_axis:
        assert ax.yaxis.get_major_formatter()(1234.0, 0) == "$1,234"


def test_liability_plot_has_a_line_per_store_and_the_total():
    figure = plots.liability(STORY)
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert sorted(labels) == ["All stores", "Alpha", "Beta"]


def test_anomaly_plot_names_each_reason_with_its_count():
    flagged = analytics.anomalies(STORY)
    legend = [t.get_text() for t in plots.anomalies(STORY, flagged).axes[0].get_legend().texts]
    assert "reload-redeem cycling (4)" in legend
    assert "many redemptions in an hour (1)" in legend


def test_a_figure_says_which_stores_and_days_it_shows():
    from datetime import date

    figure = plots.liability(STORY, stores=["Alpha"], since=date(2026, 1, 6))
    title = figure.axes[0].get_title()
    assert "Stores: Alpha, 2026-01-06 (UTC)" in title
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert sorted(labels) == ["Alpha", "Stores: Alpha"]
    whole = plots.daily_volume(STORY, tz="America/New_York").axes[0].get_title()
    assert "All stores, 2026-01-05 to 2026-01-06 (America/New_York)" in whole
    curve = plots.redemption_curve(STORY, cohort="1mo", stores="Beta").axes[0]
    assert "by month of activation" in curve.get_title() and "Stores: Beta" in curve.get_title()
    breakage = plots.breakage(STORY, stores="Beta").axes[0].get_title()
    assert "as of 2026-01-06" in breakage and "Stores: Beta" in breakage


def test_a_partial_last_period_is_shaded_not_read_as_a_fall():
    legend = [t.get_text() for t in plots.daily_volume(STORY).axes[0].get_legend().texts]
    assert "incomplete period (partial data)" in legend
    from datetime import date

    closed = plots.daily_volume(STORY, until=date(2026, 1, 5)).axes[0].get_legend().texts
    assert "incomplete period (partial data)" not in [t.get_text() for t in closed]


def test_the_anomaly_plot_shows_the_chosen_stores_only():
    figure = plots.anomalies(STORY, stores="Beta")
    dots, *flags = figure.axes[0].collections
    assert len(dots.get_offsets()) == STORY.filter(pl.col("store_name") == "Beta").height
    legend = [t.get_text() for t in figure.axes[0].get_legend().texts]
    assert "many redemptions in an hour (1)" not in legend, "that card was spent at Alpha"
    assert "reload-redeem cycling (4)" in legend
