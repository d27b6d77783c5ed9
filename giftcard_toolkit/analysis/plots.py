"""Figures over the analytics: each function returns a titled ``matplotlib.figure.Figure``.

Figures are made with the object-oriented API (no global pyplot state), so they work on
any backend, render headless, and show inline in Jupyter. Money reaches matplotlib as
floats only here, at the display edge; the frames keep it as ``Decimal``.

Each figure has a name (``fig.get_label()``, e.g. ``daily-volume``) and a description of
what it shows, for readers who cannot see it (:func:`alt_text`). Shown in Jupyter, both go
into the output's metadata (``image/png`` ``alt``, and ``giftcard_toolkit`` ``figure``),
where the reports of ``giftcard-toolkit demo`` find them for the PNG's file name and the
HTML's alt text.

Each takes the analyses' keywords (``stores``, ``since``, ``until``, ``tz``; see
``analytics``) and says in its title which stores and days it shows; a period the data does
not cover whole (the current week) is shaded, so a partial period is not read as a fall.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from giftcard_toolkit.analysis import analytics
from giftcard_toolkit.analysis.analytics import Stores

When = date | datetime | None

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


def _scope(frame: pl.DataFrame, days: list[Any]) -> str:
    """Which stores (the total row's name) and which days a figure shows."""
    totals = frame.filter(pl.col("store_id") == analytics.ALL_STORES)["store_name"]
    stores = totals[0] if totals.len() else analytics.ALL_STORES_NAME
    return f"{stores}, {_span(days)}"


def _shade_incomplete(ax, frame: pl.DataFrame) -> bool:  # type: ignore[no-untyped-def]
    """Shade the periods of ``frame`` that the data does not cover whole (from half a day
    before the first day to half a day after the last: a day's bar or point is centred)."""
    partial = frame.filter(~pl.col("complete")).select("period_start", "period_end").unique()
    half = timedelta(hours=12)
    for n, (start, end) in enumerate(partial.sort("period_start").iter_rows()):
        label = "incomplete period (partial data)" if n == 0 else "_partial"
        first, last = (datetime.combine(day, time()) for day in (start, end))
        ax.axvspan(first - half, last + half, color="#dddddd", zorder=0, label=label)
    return bool(partial.height)


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


def daily_volume(
    txs: pl.DataFrame,
    tz: str = "UTC",
    *,
    stores: Stores = None,
    since: When = None,
    until: When = None,
) -> Figure:
    """Sales, reloads and redemptions per day (where they happened), in dollars."""
    daily = analytics.summary(txs, "1d", tz=tz, stores=stores, since=since, until=until)
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    days = daily["period_start"].to_list()
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
    partial = _shade_incomplete(ax, daily)
    scope = _scope(daily, days)
    ax.set_title(f"Daily volume: value loaded (bars) and redeemed (line)\n{scope} ({tz})")
    ax.set_xlabel("day")
    ax.set_ylabel("amount (USD)")
    _dollars(ax.yaxis)
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    loaded = daily.select(pl.sum("sales_amount") + pl.sum("reloads_amount")).item()
    return _described(
        fig,
        "daily-volume",
        f"Bar and line chart of daily gift card volume, {scope}: value "
        "loaded each day as bars (sales, with reloads stacked on top) and value redeemed as "
        f"a line. In all, {_usd(loaded)} loaded and "
        f"{_usd(daily['redemptions_amount'].sum())} redeemed."
        + (" The shaded last day is not over yet in the data." if partial else ""),
    )


def liability(
    txs: pl.DataFrame,
    every: str = "1d",
    *,
    stores: Stores = None,
    since: When = None,
    until: When = None,
    as_of: When = None,
    tz: str = "UTC",
) -> Figure:
    """Outstanding balance at the end of each period: one line per home store and the
    total, as :func:`analytics.liability` with ``by="store"``."""
    frame = analytics.liability(
        txs, every, as_of=as_of, tz=tz, stores=stores, by="store", since=since, until=until
    )
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for (store_id, name), part in frame.group_by("store_id", "store_name", maintain_order=True):
        total = store_id == analytics.ALL_STORES
        ax.plot(
            part["period_end"].to_list(),
            _floats(part["liability"]),
            label=name,
            linewidth=2.5 if total else 1.2,
            color="black" if total else None,
        )
    partial = _shade_incomplete(ax, frame)
    scope = _scope(frame, frame["period_end"].to_list())
    ax.set_title(f"Outstanding gift card liability, by home store\n{scope} ({tz})")
    ax.set_xlabel("end of period")
    ax.set_ylabel("liability (USD)")
    _dollars(ax.yaxis)
    ax.legend(loc="best")
    fig.autofmt_xdate()
    total = frame.filter(pl.col("store_id") == analytics.ALL_STORES).sort("period_start")
    stores_shown = frame.filter(pl.col("store_id") != analytics.ALL_STORES)["store_id"].n_unique()
    end = f", which ends at {_usd(total['liability'][-1])}" if total.height else ""
    return _described(
        fig,
        "liability",
        f"Line chart of outstanding gift card liability (what the cards still hold) at the "
        f"end of each period, {scope}: one line for each of {stores_shown} home store(s) and "
        f"a thick black line for their total{end}."
        + (" The shaded last period is not over yet in the data." if partial else ""),
    )


def redemption_curve(
    txs: pl.DataFrame,
    horizon_days: int = 84,
    step_days: int = 7,
    *,
    cohort: str = "1w",
    stores: Stores = None,
    since: When = None,
    until: When = None,
    tz: str = "UTC",
) -> Figure:
    """Heatmap: share of loaded value redeemed, by cohort of activation (rows) and days
    since activation (columns); blank where a cohort is too young to tell."""
    curve = analytics.redemption_curve(
        txs, horizon_days, step_days, cohort=cohort, tz=tz, stores=stores, since=since, until=until
    )
    total = curve.filter(pl.col("store_id") == analytics.ALL_STORES)
    cohorts = sorted(set(total["cohort_start"].to_list()))
    days = list(range(0, horizon_days + 1, step_days))
    grid = np.full((len(cohorts), len(days)), np.nan)
    for start, day, share in total.select("cohort_start", "days", "share").iter_rows():
        if share is not None:
            grid[cohorts.index(start), days.index(day)] = share
    unit = "month" if cohort == "1mo" else "week"
    fig = Figure(figsize=(10, max(3.0, 0.3 * len(cohorts) + 1.5)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(days)), [str(d) for d in days])
    ax.set_yticks(range(len(cohorts)), [c.isoformat() for c in cohorts])
    scope = _scope(curve, cohorts)
    ax.set_title(f"Share of loaded value redeemed, by {unit} of activation\n{scope} ({tz})")
    ax.set_xlabel("days since activation")
    ax.set_ylabel(f"{unit} of activation")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("share redeemed")
    bar.formatter = FuncFormatter(lambda value, _: f"{value:.0%}")
    bar.update_ticks()
    return _described(
        fig,
        "redemption-curve",
        f"Heatmap of the share of loaded value redeemed, cards of {scope.split(', ')[0]}, "
        f"with one row per {unit} of activation ({len(cohorts)} {unit}(s), {_span(cohorts)}) "
        f"and one column per {step_days} days since activation (0 to {horizon_days}); "
        "brighter cells mean more of the value was spent, blank cells are not known yet.",
    )


def breakage(
    txs: pl.DataFrame,
    as_of: When = None,
    dormant_days: int = 365,
    *,
    stores: Stores = None,
    tz: str = "UTC",
) -> Figure:
    """Balances by how long their card has been idle (bars), and the part of each counted
    as breakage under the ``dormant_days`` rule (dark), as :func:`analytics.breakage`."""
    table = analytics.breakage(txs, as_of, dormant_days, tz=tz, stores=stores)
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    names = [str(name) for name in table["idle"].to_list()]
    balances, broken = _floats(table["balance"]), _floats(table["breakage"])
    ax.bar(names, balances, color="#9ecae1", label="outstanding balance")
    ax.bar(names, broken, color="#08519c", label=f"breakage (idle {dormant_days}+ days)")
    for x, (value, cards) in enumerate(zip(balances, table["cards"].to_list(), strict=True)):
        ax.annotate(f"{cards:,} cards", (x, value), ha="center", va="bottom", fontsize="small")
    if as_of is None:
        last = txs.lazy().select(pl.col("at").max()).collect().item()
        day = last.astimezone(ZoneInfo(tz)).date() if last is not None else None
    else:
        day = as_of.date() if isinstance(as_of, datetime) else as_of
    shown = day.isoformat() if day is not None else "no data"
    scope = table["store_name"][0] if table.height else analytics.ALL_STORES_NAME
    ax.set_title(
        f"Balances by time since the card was last used, as of {shown}\n"
        f"cards of {scope} (home stores)"
    )
    ax.set_xlabel("time since the card was last used")
    ax.set_ylabel("balance (USD)")
    _dollars(ax.yaxis)
    # Room above the tallest bar (often the oldest bucket, on the right) for its count and
    # the legend, so neither hides the other.
    ax.set_ylim(top=ax.get_ylim()[1] * 1.2)
    ax.legend(loc="upper left")
    parts = ", ".join(
        f"{name} {_usd(value)} on {cards:,} cards"
        for name, value, cards in table.select("idle", "balance", "cards").iter_rows()
    )
    return _described(
        fig,
        "breakage",
        f"Bar chart of outstanding balances on the cards of {scope} as of {shown} by how "
        f"long their card has been idle: {parts}. The dark part of each bar counts as "
        f"breakage under a {dormant_days}-day rule: {_usd(table['breakage'].sum())} in all.",
    )


def anomalies(
    txs: pl.DataFrame,
    flagged: pl.DataFrame | None = None,
    *,
    stores: Stores = None,
    since: When = None,
    until: When = None,
    tz: str = "UTC",
) -> Figure:
    """Every transaction as a faint dot over time (amount), flagged ones marked by reason;
    ``stores`` and the window choose the transactions (and flags) shown."""
    window: dict[str, Any] = {"stores": stores, "since": since, "until": until, "tz": tz}
    flagged = analytics.anomalies(txs, **window) if flagged is None else flagged
    shown = analytics.transactions(txs, **window)
    if stores is not None or since is not None or until is not None:
        flagged = flagged.join(shown.select("store_id", "host_ref"), on=["store_id", "host_ref"])
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(
        shown["at"].to_list(), _floats(shown["amount"]), s=4, color="#bbbbbb", label="transactions"
    )
    for (reason,), part in flagged.group_by("reason", maintain_order=True):
        ax.scatter(
            part["at"].to_list(),
            _floats(part["amount"]),
            s=40,
            marker="x",
            label=f"{reason} ({part.height})",
        )
    names = sorted(set(shown["store_name"].to_list()))
    where = analytics.ALL_STORES_NAME if stores is None else "Stores: " + ", ".join(names)
    ax.set_title(f"Anomalies on the timeline\n{where}, {_span(shown['at'].to_list())}")
    ax.set_xlabel("time (UTC)")
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
        f"Scatter chart of every transaction's amount over time at {where} ({shown.height:,} "
        f"grey dots, {_span(shown['at'].to_list())}), with the {flagged.height:,} flagged "
        f"ones marked by reason: {reasons or 'none'}.",
    )
