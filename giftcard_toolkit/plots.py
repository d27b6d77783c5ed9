"""Figures over the analytics: each function returns a titled ``matplotlib.figure.Figure``.

Figures are made with the object-oriented API (no global pyplot state), so they work on
any backend, render headless, and show inline in Jupyter. Money reaches matplotlib as
floats only here, at the display edge; the frames keep it as ``Decimal``.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from giftcard_toolkit import analytics

_TYPE_COLORS = {"sales": "#2b8cbe", "reloads": "#7bccc4", "redemptions": "#e34a33"}


def _dollars(axis) -> None:  # type: ignore[no-untyped-def]
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"${value:,.0f}"))


def _floats(series: pl.Series) -> np.ndarray:
    return series.cast(pl.Float64).to_numpy()


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
    return fig


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
    return fig


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
    return fig


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
    return fig
