"""Figures over the analytics: each function returns a titled ``matplotlib.figure.Figure``.

Figures are made with the object-oriented API (no global pyplot state), so they work on
any backend, render headless, and show inline in Jupyter. Money reaches matplotlib as
floats only here, at the display edge; the frames keep it as ``Decimal``.

Each figure has a name (``fig.get_label()``, e.g. ``daily-volume``) and a description of
what it shows, for readers who cannot see it (:func:`alt_text`). Shown in Jupyter, both go
into the output's metadata (``image/png`` ``alt``, and ``giftcard_toolkit`` ``figure``),
where the reports of ``giftcard-toolkit demo`` find them for the PNG's file name and the
HTML's alt text.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from giftcard_toolkit.analysis import analytics

_TYPE_COLORS = {"sales": "#2b8cbe", "reloads": "#7bccc4", "redemptions": "#e34a33"}


def _dollars(axis) -> None:  # type: ignore[no-untyped-def]
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"${value:,.0f}"))


def _floats(series: pl.Series) -> np.ndarray:
    return series.cast(pl.Float64).to_numpy()


def _usd(value: Any) -> str:
    return f"${Decimal(str(value or 0)):,.2f}"


def _span(values: list[Any]) -> str:
    days = [v.date() if isinstance(v, datetime) else v for v in values if v is not None]
    if not days:
        return "no days (nothing to show)"
    first, last = min(days), max(days)
    return f"{first.isoformat()} to {last.isoformat()}" if first != last else first.isoformat()


class _Metadata:
    """A figure's ``_repr_mimebundle_``: metadata only, so IPython renders the PNG as usual
    and keeps this beside it (a class, not a closure, so that figures still pickle)."""

    def __init__(self, name: str, alt: str) -> None:
        self.metadata = {"image/png": {"alt": alt}, "giftcard_toolkit": {"figure": name}}

    def __call__(self, include: Any = None, exclude: Any = None) -> tuple[dict[str, Any], Any]:
        return {}, self.metadata


def _described(fig: Figure, name: str, alt: str) -> Figure:
    """Give ``fig`` its name and description; Jupyter keeps both in the output's metadata."""
    fig.set_label(name)
    fig._giftcard_alt = alt  # type: ignore[attr-defined]
    fig._repr_mimebundle_ = _Metadata(name, alt)  # type: ignore[attr-defined]
    return fig


def alt_text(fig: Figure) -> str:
    """What ``fig`` shows, in a sentence or two (its title when it was not made here)."""
    described = getattr(fig, "_giftcard_alt", None)
    if described:
        return str(described)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    return "; ".join(titles) or "a figure"


def daily_volume(txs: pl.DataFrame, tz: str = "UTC") -> Figure:
    """Sales, reloads and redemptions per day, all stores, in dollars."""
    daily = (
        analytics.daily_summary(txs, tz)
        .group_by("day")
        .agg(pl.col("sales_amount", "reloads_amount", "redemptions_amount").sum())
        .sort("day")
    )
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    days = daily["day"].to_list()
    bottom = np.zeros(len(days))
    for kind in ("sales", "reloads"):
        values = _floats(daily[f"{kind}_amount"])
        ax.bar(days, values, bottom=bottom, label=kind, color=_TYPE_COLORS[kind], width=0.8)
        bottom += values
    ax.plot(
        days,
        _floats(daily["redemptions_amount"]),
        color=_TYPE_COLORS["redemptions"],
        label="redemptions",
        linewidth=2,
    )
    ax.set_title("Daily volume: value loaded (bars) and redeemed (line)")
    ax.set_xlabel("day")
    ax.set_ylabel("amount (USD)")
    _dollars(ax.yaxis)
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    loaded = daily.select(pl.sum("sales_amount") + pl.sum("reloads_amount")).item()
    return _described(
        fig,
        "daily-volume",
        f"Bar and line chart of daily gift card volume, all stores, {_span(days)}: value "
        "loaded each day as bars (sales, with reloads stacked on top) and value redeemed as "
        f"a line. In all, {_usd(loaded)} loaded and "
        f"{_usd(daily['redemptions_amount'].sum())} redeemed.",
    )


def liability(txs: pl.DataFrame, every: str = "1d") -> Figure:
    """Outstanding balance over time: one line per store and the total."""
    frame = analytics.liability(txs, every)
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for (store_id, name), part in frame.group_by("store_id", "store_name", maintain_order=True):
        total = store_id == analytics.ALL_STORES
        ax.plot(
            part["period"].to_list(),
            _floats(part["liability"]),
            label=name,
            linewidth=2.5 if total else 1.2,
            color="black" if total else None,
        )
    ax.set_title("Outstanding gift card liability")
    ax.set_xlabel("period")
    ax.set_ylabel("liability (USD)")
    _dollars(ax.yaxis)
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    total = frame.filter(pl.col("store_id") == analytics.ALL_STORES).sort("period")
    stores = frame.filter(pl.col("store_id") != analytics.ALL_STORES)["store_id"].n_unique()
    end = f", which ends at {_usd(total['liability'][-1])}" if total.height else ""
    return _described(
        fig,
        "liability",
        f"Line chart of outstanding gift card liability (what the cards still hold), "
        f"{_span(frame['period'].to_list())}: one line for each of {stores} store(s) and a "
        f"thick black line for all stores{end}.",
    )


def redemption_curve(txs: pl.DataFrame, horizon_days: int = 84, step_days: int = 7) -> Figure:
    """Heatmap: share of loaded value redeemed, by activation week (rows) and days since
    activation (columns); blank where a cohort is too young to tell."""
    curve = analytics.redemption_curve(txs, horizon_days, step_days)
    weeks = sorted(set(curve["activation_week"].to_list()))
    days = list(range(0, horizon_days + 1, step_days))
    grid = np.full((len(weeks), len(days)), np.nan)
    for week, day, share in curve.select("activation_week", "days", "share").iter_rows():
        if share is not None:
            grid[weeks.index(week), days.index(day)] = share
    fig = Figure(figsize=(10, max(3.0, 0.3 * len(weeks) + 1.5)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(days)), [str(d) for d in days])
    ax.set_yticks(range(len(weeks)), [w.isoformat() for w in weeks])
    ax.set_title("Share of loaded value redeemed, by activation week")
    ax.set_xlabel("days since activation")
    ax.set_ylabel("week of activation")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("share redeemed")
    bar.formatter = FuncFormatter(lambda value, _: f"{value:.0%}")
    bar.update_ticks()
    return _described(
        fig,
        "redemption-curve",
        "Heatmap of the share of loaded value redeemed, with one row per week of activation "
        f"({len(weeks)} week(s), {_span(weeks)}) and one column per {step_days} days since "
        f"activation (0 to {horizon_days}); brighter cells mean more of the value was spent, "
        "blank cells are not known yet.",
    )


def breakage(txs: pl.DataFrame, as_of: date | datetime, dormant_days: int = 365) -> Figure:
    """Balances by how long their card has been idle (bars), and the part of each counted
    as breakage under the ``dormant_days`` rule (dark), as :func:`analytics.breakage`."""
    table = analytics.breakage(txs, as_of, dormant_days)
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    names = [str(name) for name in table["idle"].to_list()]
    balances, broken = _floats(table["balance"]), _floats(table["breakage"])
    ax.bar(names, balances, color="#9ecae1", label="outstanding balance")
    ax.bar(names, broken, color="#08519c", label=f"breakage (idle {dormant_days}+ days)")
    for x, (value, cards) in enumerate(zip(balances, table["cards"].to_list(), strict=True)):
        ax.annotate(f"{cards:,} cards", (x, value), ha="center", va="bottom", fontsize="small")
    day = as_of.date() if isinstance(as_of, datetime) else as_of
    ax.set_title(f"Balances by time since the card was last used, as of {day.isoformat()}")
    ax.set_xlabel("time since the card was last used")
    ax.set_ylabel("balance (USD)")
    _dollars(ax.yaxis)
    ax.legend(loc="upper right")
    parts = ", ".join(
        f"{name} {_usd(value)} on {cards:,} cards"
        for name, value, cards in table.select("idle", "balance", "cards").iter_rows()
    )
    return _described(
        fig,
        "breakage",
        f"Bar chart of outstanding balances as of {day.isoformat()} by how long their card "
        f"has been idle: {parts}. The dark part of each bar counts as breakage under a "
        f"{dormant_days}-day rule: {_usd(table['breakage'].sum())} in all.",
    )


def anomalies(txs: pl.DataFrame, flagged: pl.DataFrame | None = None) -> Figure:
    """Every transaction as a faint dot over time (amount), flagged ones marked by reason."""
    flagged = analytics.anomalies(txs) if flagged is None else flagged
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(
        txs["at"].to_list(), _floats(txs["amount"]), s=4, color="#bbbbbb", label="transactions"
    )
    for (reason,), part in flagged.group_by("reason", maintain_order=True):
        ax.scatter(
            part["at"].to_list(),
            _floats(part["amount"]),
            s=40,
            marker="x",
            label=f"{reason} ({part.height})",
        )
    ax.set_title("Anomalies on the timeline")
    ax.set_xlabel("time")
    ax.set_ylabel("amount (USD)")
    _dollars(ax.yaxis)
    ax.legend(loc="upper left", fontsize="small")
    fig.autofmt_xdate()
    reasons = ", ".join(
        f"{reason} ({count})"
        for reason, count in flagged.group_by("reason", maintain_order=True).len().iter_rows()
    )
    return _described(
        fig,
        "anomalies",
        f"Scatter chart of every transaction's amount over time ({txs.height:,} grey dots, "
        f"{_span(txs['at'].to_list())}), with the {flagged.height:,} flagged ones marked by "
        f"reason: {reasons or 'none'}.",
    )
