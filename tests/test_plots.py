"""Each plot renders to PNG headless, titled, with labelled axes and money in dollars."""

from __future__ import annotations

import io

import matplotlib
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
