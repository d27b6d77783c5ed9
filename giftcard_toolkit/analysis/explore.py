"""An explorer for analysts: a few widgets driving a figure and the table behind it.

    from giftcard_toolkit import explore
    explore.explorer("history/")          # a dataset written by frames.sync
    explore.explorer((batches, txs))      # frames in memory
    explore.explorer(client)              # fetched with frames.fetch

Every number comes from :mod:`~giftcard_toolkit.analysis.analytics` (no measure is computed
twice over): each aggregate is computed once per source, for all stores (``by="store"``),
and cached, so moving a control only filters and reshapes small frames, never the
transactions. Flows (sales, reloads, redemptions, net) count where they happened, the other
measures at each card's home store (see the analytics module).

The date range keeps the periods it touches, whole (a week that starts before the range is
shown in full), so a range running from a period's first day to a period's last day gives
the very numbers of ``analytics.summary(..., since=, until=)``. Breakage is as at the end of
the data; for the redemption curve, the range chooses the cohorts.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from giftcard_toolkit.analysis import analytics, frames

GRAINS = {"day": "1d", "week": "1w", "month": "1mo"}
TABLE_ROWS = 200  # rows of the table shown; exports hold all of them
ROW_CHOICES = 1000  # rows offered in the row picker
OK_COLOUR, BAD_COLOUR = "#17692a", "#a10000"
# What the picked period's transactions show: no card_ref (a stable pseudonym of the card).
SHOWN_TRANSACTION_COLUMNS = (
    "at",
    "store_name",
    "type",
    "card_last4",
    "amount",
    "previous_balance",
    "new_balance",
    "batch_id",
    "host_ref",
    "username",
)


@dataclass(frozen=True)
class Measure:
    """A measure: which analytics function gives it (``family``), its value column, and
    the column its periods (the x axis) are read from."""

    family: str
    column: str
    x: str
    unit: str = "USD"


MEASURES = {
    "sales": Measure("flow", "sales_amount", "period_start"),
    "reloads": Measure("flow", "reloads_amount", "period_start"),
    "redemptions": Measure("flow", "redemptions_amount", "period_start"),
    "net": Measure("flow", "net", "period_start"),
    "outstanding liability": Measure("liability", "liability", "period_end"),
    "breakage": Measure("breakage", "breakage", "idle"),
    "redemption curve": Measure("curve", "share", "days", unit="share"),
}
_SUMS = {
    "flow": ["sales", "sales_amount", "reloads", "reloads_amount"]
    + ["redemptions", "redemptions_amount", "net"],
    "liability": ["liability"],
    "breakage": ["cards", "balance", "breakage"],
}
_KEYS = {
    "flow": ["period_start", "period_end", "complete"],
    "liability": ["period_start", "period_end", "complete"],
    "breakage": ["idle"],
}


class ExplorerProblem(ValueError):
    """Something about the choice or the data, said in words for the output area."""


def _transactions_of(source: Any, tz: str) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(batches, transactions) of a dataset path, a pair of frames, or a client."""
    if isinstance(source, str | Path):
        from giftcard_toolkit.analysis import dataset

        try:
            return dataset.scan(source)
        except (dataset.DatasetError, OSError) as failed:
            raise ExplorerProblem(
                f"{source} is not a dataset the explorer can read ({failed}). Give the folder "
                "written by frames.sync(client, path), or a (batches, transactions) pair."
            ) from None
    if isinstance(source, tuple) and len(source) == 2:
        batches, txs = source
        return batches.lazy(), txs.lazy()
    if hasattr(source, "batches"):
        batches, txs = frames.fetch(source, progress=False)  # type: ignore[misc]
        return batches.lazy(), txs.lazy()
    raise ExplorerProblem(
        f"cannot explore a {type(source).__name__}: give a dataset path written by "
        "frames.sync, a (batches, transactions) pair of frames, or a client"
    )


def _html_table(frame: pl.DataFrame, limit: int = TABLE_ROWS) -> str:
    """A small HTML table of ``frame`` (its first ``limit`` rows), values as text."""
    head = "".join(f"<th style='padding:2px 8px'>{html.escape(c)}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td style='padding:2px 8px'>{html.escape('' if v is None else str(v))}</td>"
            for v in row
        )
        + "</tr>"
        for row in frame.head(limit).iter_rows()
    )
    more = (
        f"<p>First {limit} of {frame.height} rows (the exports hold all).</p>"
        if frame.height > limit
        else ""
    )
    return f"<table style='border-collapse:collapse'><tr>{head}</tr>{rows}</table>{more}"


def _say(box: widgets.HTML, text: str, good: bool | None = None) -> None:
    colour = "inherit" if good is None else (OK_COLOUR if good else BAD_COLOUR)
    box.value = f"<p style='color:{colour}'>{html.escape(text)}</p>" if text else ""


class Explorer(widgets.VBox):
    """The explorer's widget: its controls are attributes (``stores``, ``all_stores``,
    ``since``, ``until``, ``measure``, ``grain``, ``compare``, ``row``, ``folder``), and
    so are its results (``table``: the frame shown; ``figure``; ``picked``: the picked
    row's transactions)."""

    def __init__(
        self, batches: pl.LazyFrame, txs: pl.LazyFrame, *, tz: str = "UTC", exports: bool = True
    ) -> None:
        self._txs = txs
        self._tz = tz
        self._cache: dict[tuple[Any, ...], pl.DataFrame] = {}
        known, bounds = pl.collect_all(
            [
                pl.concat(
                    [batches.select("store_id", "store_name"), txs.select("store_id", "store_name")]
                ).unique(),
                txs.select(
                    pl.col("at").dt.convert_time_zone(tz).dt.date().min().alias("first"),
                    pl.col("at").dt.convert_time_zone(tz).dt.date().max().alias("last"),
                ),
            ],
            engine=analytics.ENGINE,
        )
        self.known_stores = known.unique("store_id", keep="first").sort("store_name", "store_id")
        self.first_day, self.last_day = bounds.row(0)
        self.table = pl.DataFrame()
        self.figure: Figure | None = None
        self.picked = pl.DataFrame()

        names = self.known_stores["store_name"].to_list()
        options = [  # by name; the id only where two stores share a name
            (name if names.count(name) == 1 else f"{name} ({sid})", sid)
            for sid, name in self.known_stores.iter_rows()
        ]
        self.all_stores = widgets.Checkbox(value=True, description="all stores", indent=False)
        self.stores = widgets.SelectMultiple(
            options=options,
            rows=min(6, max(2, len(options))),
            description="stores",
            layout=widgets.Layout(width="max-content", min_width="20em"),
        )
        self.since = widgets.DatePicker(value=self.first_day, description="from")
        self.until = widgets.DatePicker(value=self.last_day, description="to")
        self.measure = widgets.Dropdown(options=list(MEASURES), description="measure")
        self.grain = widgets.ToggleButtons(options=list(GRAINS), value="week", description="by")
        self.compare = widgets.Checkbox(value=False, description="compare stores", indent=False)
        self.message = widgets.HTML()
        self.message.add_class("gc-explore-message")
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.image.add_class("gc-explore-figure")
        self.table_view = widgets.HTML(layout=widgets.Layout(max_height="320px", overflow="auto"))
        self.row = widgets.Dropdown(description="show row", options=[("(pick a row)", None)])
        self.transactions_view = widgets.HTML(
            layout=widgets.Layout(max_height="320px", overflow="auto")
        )
        self.folder = widgets.Text(value="explorer-exports", description="export to")
        self.export_button = widgets.Button(description="export figure and table", icon="")
        self.export_status = widgets.HTML()
        for control in (self.all_stores, self.stores, self.since, self.until, self.measure):
            control.observe(self._changed, "value")
        for control in (self.grain, self.compare):
            control.observe(self._changed, "value")
        self.row.observe(self._picked, "value")
        self.stores.observe(self._stores_picked, "value")
        named = {"all-stores": self.all_stores, "stores": self.stores, "since": self.since}
        named |= {"until": self.until, "measure": self.measure, "grain": self.grain}
        named |= {"compare": self.compare, "row": self.row, "table": self.table_view}
        for name, control in named.items():  # for pages' tests and styles: gc-explore-<name>
            control.add_class(f"gc-explore-{name}")
        self.export_button.on_click(lambda _: self.export())
        controls = widgets.VBox(
            [
                widgets.HBox([self.all_stores, self.stores]),
                widgets.HBox([self.since, self.until]),
                widgets.HBox([self.measure, self.compare]),
                self.grain,
            ]
        )
        export_row = widgets.HBox([self.folder, self.export_button, self.export_status])
        super().__init__(
            [
                controls,
                self.message,
                self.image,
                self.table_view,
                self.row,
                self.transactions_view,
                *([export_row] if exports else []),  # a page for many (the dashboard) writes none
            ]
        )
        self.add_class("gc-explorer")
        self._changed()

    # ------------------------------------------------------------ aggregates

    def _aggregate(self, key: tuple[Any, ...], compute: Callable[[], pl.DataFrame]) -> pl.DataFrame:
        """``compute()``, once per ``key`` for this source."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def _per_store(self, family: str, every: str) -> pl.DataFrame:
        """The family's rows for every store and the total, computed once per grain."""
        txs, tz = self._txs, self._tz
        if family == "flow":
            return self._aggregate(
                ("flow", every), lambda: analytics.summary(txs, every, tz=tz, by="store")
            )
        if family == "liability":
            return self._aggregate(
                ("liability", every), lambda: analytics.liability(txs, every, tz=tz, by="store")
            )
        return self._aggregate(("breakage",), lambda: analytics.breakage(txs, tz=tz, by="store"))

    def _curve(self, every: str, chosen: list[str] | None) -> pl.DataFrame:
        """The redemption curve (cohorts of ``every``) of every store and the total, computed
        once per grain; the chosen stores' own total is added up from their rows."""
        per_store = self._aggregate(
            ("curve", every),
            lambda: analytics.redemption_curve(self._txs, cohort=every, tz=self._tz, by="store"),
        )
        if chosen is None:
            return per_store
        rows = per_store.filter(pl.col("store_id").is_in(chosen))
        return pl.concat([self._curve_total(rows, chosen), rows])

    def _curve_total(self, rows: pl.DataFrame, chosen: list[str]) -> pl.DataFrame:
        """The chosen stores' curve from their own rows, as ``redemption_curve(stores=)``
        gives it. Shares do not add up, so the sums do and the share is taken anew; a cohort's
        N is known for the stores together only where it is known for each store that sold
        to that cohort (every store has N = 0, so those are counted there)."""
        keys = ["cohort_start", "cohort_end", "days"]
        selling = (
            rows.filter(pl.col("days") == 0).group_by("cohort_start").agg(pl.len().alias("selling"))
        )
        known = (
            rows.group_by(keys)
            .agg(pl.len().alias("stores"))
            .join(selling, on="cohort_start")
            .filter(pl.col("stores") == pl.col("selling"))
        )
        stores = self.known_stores.filter(pl.col("store_id").is_in(chosen))
        sums = ["cards", "loaded", "redeemed"]
        total = analytics._split(rows.drop("share"), keys, sums, None, stores)
        known_rows = total.join(known.select(keys), on=keys, how="semi")
        return known_rows.with_columns(analytics.REDEEMED_SHARE)

    # ---------------------------------------------------------------- choice

    def _chosen(self) -> list[str] | None:
        """The chosen store ids (None: all); stores without transactions are said."""
        if self.all_stores.value:
            return None
        chosen = list(self.stores.value)
        if not chosen:
            raise ExplorerProblem(
                "No store is selected: pick one or more stores, or tick 'all stores'."
            )
        return chosen

    def _range(self) -> tuple[date | None, date | None]:
        since, until = self.since.value, self.until.value
        if since is not None and until is not None and since > until:
            raise ExplorerProblem(
                f"The range starts ({since}) after it ends ({until}): swap the dates."
            )
        return since, until

    def compute(self) -> pl.DataFrame:
        """The table for the controls' current values (from the cached aggregates)."""
        if self.first_day is None:
            raise ExplorerProblem("This data holds no transactions: there is nothing to show.")
        measure = MEASURES[self.measure.value]
        every = GRAINS[self.grain.value]
        chosen = self._chosen()
        since, until = self._range()
        if measure.family == "curve":
            frame = self._curve(every, chosen)
        else:
            frame = self._per_store(measure.family, every)
        have = set(frame["store_id"].to_list())
        if chosen is not None:
            empty = [sid for sid in chosen if sid not in have]
            if empty:
                names = self.known_stores.filter(pl.col("store_id").is_in(empty))
                listed = ", ".join(f"{n} ({s})" for s, n in names.iter_rows())
                raise ExplorerProblem(
                    f"No transactions at {listed} in this data: pick other stores."
                    if measure.family == "flow"
                    else f"No cards of {listed} (as home store) in this data: pick other stores."
                )
        frame = self._within(frame, measure, since, until)
        if measure.family != "curve":
            frame = self._scoped(frame, measure.family, chosen)
        else:  # the total row, or (compare) the stores' own
            is_total = pl.col("store_id") == analytics.ALL_STORES
            frame = frame.filter(~is_total if self.compare.value else is_total)
        if frame.is_empty():
            raise ExplorerProblem(
                f"No data from {since} to {until} for this choice: widen the range (the data "
                f"runs from {self.first_day} to {self.last_day})."
            )
        return frame

    def _within(
        self, frame: pl.DataFrame, measure: Measure, since: date | None, until: date | None
    ) -> pl.DataFrame:
        """The periods (or cohorts) the range touches, whole."""
        if measure.family == "breakage":
            return frame
        start, end = (
            ("cohort_start", "cohort_end")
            if measure.family == "curve"
            else ("period_start", "period_end")
        )
        if since is not None:
            frame = frame.filter(pl.col(end) >= since)
        if until is not None:
            frame = frame.filter(pl.col(start) <= until)
        return frame

    def _scoped(self, frame: pl.DataFrame, family: str, chosen: list[str] | None) -> pl.DataFrame:
        """Per store rows (compare) or the total rows of the chosen stores, as analytics
        sums them (the same rows ``stores=chosen`` gives)."""
        if chosen is None:
            keep = analytics.ALL_STORES
            if self.compare.value:
                return frame.filter(pl.col("store_id") != keep)
            return frame.filter(pl.col("store_id") == keep)
        rows = frame.filter(pl.col("store_id").is_in(chosen))
        if self.compare.value:
            return rows
        stores = self.known_stores.filter(pl.col("store_id").is_in(chosen))
        return analytics._split(rows, _KEYS[family], _SUMS[family], None, stores)

    # --------------------------------------------------------------- drawing

    def draw(self, table: pl.DataFrame) -> Figure:
        """The figure of ``table``: one line per store shown (or per cohort, for the
        redemption curve of one total)."""
        measure = MEASURES[self.measure.value]
        # Fixed margins, not a layout engine: it would draw the figure twice on every change.
        fig = Figure(figsize=(9, 4))
        fig.subplots_adjust(left=0.11, right=0.98, top=0.86, bottom=0.2)
        ax = fig.add_subplot()
        if measure.family == "curve" and not self.compare.value:
            groups = table.group_by("cohort_start", maintain_order=True)
            series = [(f"cohort of {key[0]}", part) for key, part in groups]
        elif measure.family == "curve":
            # One line per store: its oldest cohort in the range (known the furthest).
            first = pl.col("cohort_start") == pl.col("cohort_start").min().over("store_id")
            groups = table.filter(first).group_by("store_name", maintain_order=True)
            series = [(str(key[0]), part) for key, part in groups]
        else:
            groups = table.group_by("store_name", maintain_order=True)
            series = [(str(key[0]), part) for key, part in groups]
        for label, part in series:
            xs = (
                [str(x) for x in part[measure.x]]
                if measure.family == "breakage"
                else part[measure.x].to_list()
            )
            ys = part[measure.column].cast(pl.Float64).to_numpy()  # floats for plotting only
            ax.plot(xs, ys, marker="o" if part.height < 40 else None, label=label)
        title = f"{self.measure.value.capitalize()}"
        if measure.family in ("flow", "liability"):
            title += f" by {self.grain.value}"
            ax.set_xlabel("start of period" if measure.family == "flow" else "end of period")
            fig.autofmt_xdate()
        elif measure.family == "breakage":
            title += " by time since the card was last used (as at the end of the data)"
            ax.set_xlabel("time since the card was last used")
        else:
            title += f", cohorts by {self.grain.value} of activation"
            ax.set_xlabel("days since activation")
        scope = ", ".join(sorted(set(table["store_name"].to_list())))
        ax.set_title(f"{title} ({self._tz})\n{scope}")
        if measure.unit == "share":
            ax.set_ylabel("share of loaded value redeemed")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
        else:
            ax.set_ylabel(f"{self.measure.value} (USD)")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"${v:,.0f}"))
        if 1 < len(series) <= 12:
            ax.legend(loc="upper left", fontsize="small")  # "best" searches: slow
        return fig

    @staticmethod
    def png(fig: Figure) -> bytes:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        return buffer.getvalue()

    def _stores_picked(self, change: Any) -> None:
        """Picking stores means those stores, not all."""
        if change["new"]:
            self.all_stores.value = False

    def _changed(self, _change: Any = None) -> None:
        """Recompute the view; any problem is said in the message area, never raised."""
        try:
            table = self.compute()
            fig = self.draw(table)
        except Exception as failed:  # noqa: BLE001 (a widget callback: say it, never raise)
            self._show_problem(failed)
            return
        self.table, self.figure = table, fig
        self.image.value = self.png(fig)
        self.table_view.value = _html_table(table)
        _say(self.message, "")
        self._offer_rows()

    def _show_problem(self, failed: Exception) -> None:
        text = (
            str(failed)
            if isinstance(failed, ExplorerProblem)
            else (
                f"This choice could not be shown ({type(failed).__name__}: {failed}); "
                "change a control to try another."
            )
        )
        _say(self.message, text, good=False)
        self.table, self.figure = pl.DataFrame(), None
        self.image.value = b""
        self.table_view.value = ""
        self.row.options = [("(pick a row)", None)]

    # ------------------------------------------------------------- row pick

    def _offer_rows(self) -> None:
        """The table's period rows, for picking one (flows and liability have periods)."""
        if "period_start" not in self.table.columns:
            self.row.options = [("(rows of periods only: sales ... liability)", None)]
            return
        rows = self.table.select("period_start", "period_end", "store_id", "store_name")
        first = "(pick a row)"
        if rows.height > ROW_CHOICES:  # a page would carry every label on every change
            first = f"(pick one of the first {ROW_CHOICES} rows; narrow the range for others)"
            rows = rows.head(ROW_CHOICES)
        self.row.options = [(first, None)] + [
            (f"{start} to {end}, {name}", (start, end, sid))
            for start, end, sid, name in rows.iter_rows()
        ]
        self.row.value = None

    def transactions(self, start: date, end: date, store_id: str) -> pl.DataFrame:
        """The transactions of one period (both ends inclusive, in the explorer's time zone)
        at a store (``"*"``: the chosen stores), cards shown by their last four only."""
        stores = [store_id] if store_id != analytics.ALL_STORES else self._chosen()
        found = analytics.transactions(
            self._txs, stores=stores, since=start, until=end, tz=self._tz
        )
        return found.select(SHOWN_TRANSACTION_COLUMNS)

    def _picked(self, change: Any) -> None:
        if change["new"] is None:
            self.picked = pl.DataFrame()
            self.transactions_view.value = ""
            return
        start, end, store_id = change["new"]
        try:
            self.picked = self.transactions(start, end, store_id)
        except Exception as failed:  # noqa: BLE001 (a widget callback: say it, never raise)
            _say(self.transactions_view, f"These transactions cannot be shown: {failed}", False)
            return
        where = "these stores" if store_id == analytics.ALL_STORES else store_id
        heading = (
            f"<p>{self.picked.height} transaction(s) at {html.escape(where)}, {start} to {end}:</p>"
        )
        self.transactions_view.value = heading + _html_table(self.picked)

    # --------------------------------------------------------------- export

    def export(self, folder: str | Path | None = None) -> list[Path]:
        """Write the figure (PNG) and table (CSV, Parquet) into ``folder`` (default: the
        export box's); returns the files, and says where they went."""
        target = Path(folder if folder is not None else self.folder.value).expanduser()
        if self.figure is None or self.table.is_empty():
            _say(self.export_status, "Nothing to export: choose something that shows.", False)
            return []
        stem = f"{self.measure.value.replace(' ', '-')}-by-{self.grain.value}"
        try:
            target.mkdir(parents=True, exist_ok=True)
            files = [target / f"{stem}.png", target / f"{stem}.csv", target / f"{stem}.parquet"]
            files[0].write_bytes(self.png(self.figure))
            self.table.write_csv(files[1])
            self.table.write_parquet(files[2])
        except OSError as failed:
            _say(
                self.export_status,
                f"Cannot write into {target} ({failed.strerror}): choose another folder.",
                False,
            )
            return []
        _say(self.export_status, f"Written: {', '.join(f.name for f in files)} in {target}", True)
        return files


def explorer(source: Any, *, tz: str = "UTC", exports: bool = True) -> widgets.Widget:
    """The explorer over ``source``: a dataset path written by ``frames.sync``, a
    ``(batches, transactions)`` pair of frames, or a client (fetched with ``frames.fetch``).
    A source that cannot be read gives a widget saying why. ``exports=False`` leaves out
    the export buttons (a page served to many must not write on its machine)."""
    try:
        batches, txs = _transactions_of(source, tz)
        return Explorer(batches, txs, tz=tz, exports=exports)
    except ExplorerProblem as problem:
        box = widgets.HTML()
        _say(box, str(problem), good=False)
        box.add_class("gc-explore-message")
        return box
