"""Every figure is named for what it shows and described in words (alt text), the breakage
figure included; in Jupyter both ride along in the output's metadata."""

from __future__ import annotations

import io
from datetime import date

import matplotlib
import pytest
from test_analytics import STORY

from giftcard_toolkit import plots

matplotlib.use("Agg")

FIGURES = {
    "daily-volume": plots.daily_volume,
    "liability": plots.liability,
    "redemption-curve": plots.redemption_curve,
    "anomalies": plots.anomalies,
    "breakage": lambda txs: plots.breakage(txs, as_of=date(2026, 9, 30), dormant_days=60),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_a_figure_has_its_name_and_a_description(name):
    figure = FIGURES[name](STORY)
    assert figure.get_label() == name
    alt = plots.alt_text(figure)
    assert len(alt) > 60 and ("2026-01-0" in alt or "2026-09-30" in alt)
    data, metadata = figure._repr_mimebundle_()
    assert data == {}, "IPython renders the PNG itself"
    assert metadata == {"image/png": {"alt": alt}, "giftcard_toolkit": {"figure": name}}


def test_the_breakage_figure_reads_like_the_others():
    figure = FIGURES["breakage"](STORY)
    ax = figure.axes[0]
    assert ax.get_title().startswith("Balances by time since the card was last used")
    assert ax.get_xlabel() and ax.get_ylabel()
    assert ax.yaxis.get_major_formatter()(1234.0, 0) == "$1,234"
    labels = [t.get_text() for t in ax.get_legend().texts]
    assert labels == ["outstanding balance", "breakage (idle 60+ days)"]
    assert "$125.00" in plots.alt_text(figure) and "60-day rule" in plots.alt_text(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


def test_a_figure_made_elsewhere_is_described_by_its_title():
    from matplotlib.figure import Figure

    figure = Figure()
    figure.add_subplot().set_title("Something else")
    assert plots.alt_text(figure) == "Something else"
