"""What analysts ask of the batches: cards, volumes, liability, redemption, breakage, anomalies.

Every function takes frames of ``frames.TRANSACTION_SCHEMA`` / ``frames.BATCH_SCHEMA``,
eager or lazy (``frames.scan(path)`` of a synced dataset), and returns a new DataFrame, the
same for both; the heavy work is polars expressions, not Python loops, run on the streaming
engine, and only the small aggregates are finished eagerly. Money stays ``Decimal(18, 2)``;
shares are floats (they are ratios, not money).

A card is followed by ``card_ref`` (the server's pseudonym). Where a server sends none,
``card_last4`` stands in, which merges cards that share their last four digits: results
that follow cards are then approximate, so prefer servers that send ``cardref`` (the
embedded one does).

The same keywords mean the same everywhere:

* ``stores=``: store ids or names (or ``Store`` objects), to keep some stores. Measures that
  follow cards (``cards``, ``liability``, ``breakage``, ``redemption_curve``,
  ``cross_store``) count a card at its **home store**: where it was sold, or, with no sale
  in the data, where it was first seen. Flows (``summary``, ``daily_summary``,
  ``anomalies``) count a transaction at the store where it happened. Never filter the
  transactions to a store before a card-following measure: it would see only part of each
  card's history (a card sold here and spent elsewhere would look unspent).
* ``by="store"``: one row per store and a total row (``store_id == "*"``); without it, the
  total rows only (all stores, or those of ``stores=``).
* ``tz=``: days, weeks (from Monday) and months are counted in this time zone (IANA name).
* ``since=`` / ``until=``: a window, both ends inclusive. A date is a whole day in ``tz``
  (``until=date(2026, 8, 31)`` runs to the end of August 31st); a datetime is that instant
  (naive ones are read in ``tz``). Card-following measures still read each card's history
  from its start, to know its state when the window opens.
* ``as_of=``: what was known at that moment: later transactions are ignored. A date means
  the end of that day in ``tz``. Without it, the data's last transaction is "now".
* ``every=``: ``"1d"``, ``"1w"``, ``"1mo"`` (also ``"1q"``, ``"1y"``). Each period is labelled
  by ``period_start`` and ``period_end`` (dates in ``tz``, both inclusive), and ``complete``
  is false for a period the data (or the window) does not cover whole, such as the current
  week: compare it with others only knowing that.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from giftcard_toolkit.analysis import cardstate
from giftcard_toolkit.analysis.frames import MONEY, TIME

Frame = pl.DataFrame | pl.LazyFrame
Stores = str | Iterable[Any] | None
_Measure = TypeVar("_Measure", bound=Callable[..., Any])
ALL_STORES = "*"
ALL_STORES_NAME = "All stores"
PERIODS: Final = ("1d", "1w", "1mo", "1q", "1y")
# Every query runs on polars' streaming engine: over a scanned dataset (``frames.scan``)
# memory stays flat as the data grows; an eager frame gives the very same answer.
ENGINE: Final = "streaming"

# A card: its reference, else its last four digits. Grouped by its hash (see ``_card_rows``):
# turning millions of them into categorical codes first costs more than the grouping saves.
_CARD = cardstate.CARD
_SIGNED = pl.when(pl.col("type") == "redeem").then(-pl.col("amount")).otherwise(pl.col("amount"))
# The server's order of a card's transactions: time, then place in the batch (``position``),
# so that a card's first and last never depend on the rows' order when times tie. One
# integer (time in microseconds, shifted past any position), picked by min_by / max_by: in
# 64 bits when a frame in memory allows it (times from 2020 to 2037, positions under 8,192),
# which polars picks by about 10 % faster than by the 128 bits any data fits in.
_AT_US = pl.col("at").dt.epoch("us")
_ORDER_EPOCH_US = 1_577_836_800_000_000  # 2020-01-01T00:00:00Z
_POSITION_BITS = 13
_TIME_BITS = 62 - _POSITION_BITS  # an order under 2**62: room for the home key's flag
_HOME = pl.col("home_key").arg_min()
_STORE_COLUMNS: dict[str, Any] = {"store_id": pl.String, "store_name": pl.String}
_PERIOD_COLUMNS: dict[str, Any] = {
    "period_start": pl.Date,
    "period_end": pl.Date,
    "complete": pl.Boolean,
}


def _lazy(frame: Frame) -> pl.LazyFrame:
    return frame.lazy() if isinstance(frame, pl.DataFrame) else frame


def _money_sum(expr: pl.Expr) -> pl.Expr:
    return expr.sum().fill_null(0).cast(MONEY)


def _of_type(kind: str) -> pl.Expr:
    return pl.col("type") == kind


# ------------------------------------------------------------------ time rules


@dataclass(frozen=True)
class _Window:
    """A question's time rules as UTC instants; every end is exclusive (the first instant
    after), so that a date's whole day is in, to the microsecond."""

    zone: ZoneInfo
    since: datetime | None
    until: datetime | None
    as_of: datetime | None

    @property
    def cut(self) -> datetime | None:
        """Transactions at or after this are not read."""
        ends = [t for t in (self.until, self.as_of) if t is not None]
        return min(ends) if ends else None

    def stop(self, last: datetime) -> datetime:
        """Where what is shown ends: the window's end, or what is known (``as_of``, else
        just after the last transaction ``last``), whichever comes first."""
        known = self.as_of if self.as_of is not None else last + timedelta(microseconds=1)
        return min(known, self.until) if self.until is not None else known

    def day(self, instant: datetime) -> date:
        return instant.astimezone(self.zone).date()

    def midnight(self, day: date) -> datetime:
        return datetime.combine(day, time(), self.zone).astimezone(UTC)


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"tz={tz!r} is not a time zone: give an IANA name such as 'UTC' or 'America/New_York'"
        ) from None


def _instant(name: str, value: date | datetime, window: _Window, after: bool) -> datetime:
    """``value`` as a UTC instant: a date's start (or, ``after``, the instant after its
    end) in the window's zone; a datetime as it is (or the microsecond after it)."""
    if isinstance(value, datetime):
        moment = (value if value.tzinfo else value.replace(tzinfo=window.zone)).astimezone(UTC)
        return moment + timedelta(microseconds=1) if after else moment
    if isinstance(value, date):
        return window.midnight(value + timedelta(days=1) if after else value)
    raise TypeError(f"{name}={value!r}: give a date (a whole day in tz) or a datetime (an instant)")


def _window(
    tz: str,
    since: date | datetime | None = None,
    until: date | datetime | None = None,
    as_of: date | datetime | None = None,
) -> _Window:
    window = _Window(_zone(tz), None, None, None)
    window = _Window(
        window.zone,
        None if since is None else _instant("since", since, window, after=False),
        None if until is None else _instant("until", until, window, after=True),
        None if as_of is None else _instant("as_of", as_of, window, after=True),
    )
    if window.since is not None and window.until is not None and window.since >= window.until:
        raise ValueError(f"since={since!r} is after until={until!r}: the window is empty")
    return window


def _check_every(every: str, name: str = "every") -> None:
    if every not in PERIODS:
        raise ValueError(
            f"{name}={every!r}: give '1d' (days), '1w' (weeks, from Monday), '1mo' "
            "(months), '1q' (quarters) or '1y' (years)"
        )


def _check_by(by: str | None) -> None:
    if by not in (None, "store"):
        raise ValueError(
            f"by={by!r}: give by='store' for one row per store and a total row, or leave it "
            "out for the total only"
        )


def _local_day(window: _Window, column: str = "at") -> pl.Expr:
    """The day (in the window's zone) of a UTC time column."""
    moment = pl.col(column)
    if window.zone.key != "UTC":
        moment = moment.dt.convert_time_zone(window.zone.key)
    return moment.dt.date()


def _period_of(window: _Window, every: str, column: str = "at") -> pl.Expr:
    day = _local_day(window, column)
    return (day if every == "1d" else day.dt.truncate(every)).alias("period_start")


def _bounds(txs: Frame, window: _Window) -> pl.LazyFrame:
    """The first and last transaction known (before ``as_of``), whatever the window: the
    data's own span, which says whether a period has ended."""
    lf = _lazy(txs)
    if window.as_of is not None:
        lf = lf.filter(pl.col("at") < window.as_of)
    return lf.select(pl.col("at").min().alias("first"), pl.col("at").max().alias("last"))


def _periods(first: date, last: date, every: str, window: _Window) -> pl.DataFrame:
    """The periods from the one holding day ``first`` to the one holding ``last``, with
    their bounds as instants (``_from``, ``_to``: exclusive) for the ``complete`` flags."""
    bounds = pl.Series([first, last]).dt.truncate(every)
    starts = pl.date_range(bounds[0], bounds[1], interval=every, eager=True).alias("period_start")
    following = starts.dt.offset_by(every)
    return pl.DataFrame(
        [
            starts,
            following.dt.offset_by("-1d").alias("period_end"),
            pl.Series("_from", [window.midnight(d) for d in starts], dtype=TIME),
            pl.Series("_to", [window.midnight(d) for d in following], dtype=TIME),
        ]
    )


# ---------------------------------------------------------------------- stores


def _store_pairs(frame: Frame) -> pl.LazyFrame:
    """Every store (``store_id``, ``store_name``) in the frame, in order."""
    return _lazy(frame).select("store_id", "store_name").unique().sort("store_id", "store_name")


def _store_list(frame: Frame) -> pl.DataFrame:
    """``_store_pairs`` collected."""
    return _store_pairs(frame).collect(engine=ENGINE)


def _chosen(frame: Frame, stores: Stores) -> pl.DataFrame | None:
    """The stores (``store_id``, ``store_name``) that ``stores`` names, by id or name in
    any letter case; None for all. A name matching no store in the data is an error."""
    if stores is None:
        return None
    wanted = [stores] if isinstance(stores, str) else list(stores)
    wanted = [str(getattr(store, "id", store)) for store in wanted]
    if not wanted:
        raise ValueError("stores=[] keeps no store: leave stores out for all, or name some")
    known = _store_list(frame)
    keys = {w.casefold() for w in wanted}
    hit = pl.col("store_id").str.to_lowercase().is_in(keys) | pl.col(
        "store_name"
    ).str.to_lowercase().is_in(keys)
    found = known.filter(hit)
    spelled = {s.casefold() for s in found["store_id"].to_list() + found["store_name"].to_list()}
    missing = [w for w in wanted if w.casefold() not in spelled]
    if missing:
        listed = ", ".join(f"{name} ({sid})" for sid, name in known.iter_rows()) or "none"
        raise ValueError(
            f"stores={missing!r}: no such store in these transactions (they hold: {listed}); "
            "give store ids or names"
        )
    return found


def _total_name(chosen: pl.DataFrame | None) -> str:
    if chosen is None:
        return ALL_STORES_NAME
    return "Stores: " + ", ".join(sorted(set(chosen["store_name"].to_list())))


def _keep(frame: pl.DataFrame, chosen: pl.DataFrame | None) -> pl.DataFrame:
    return (
        frame
        if chosen is None
        else frame.filter(pl.col("store_id").is_in(chosen["store_id"].to_list()))
    )


def _stores(
    txs: Frame,
    found: pl.DataFrame,
    chosen: pl.DataFrame | None,
    by: str | None,
    listed: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The stores to give rows to: the chosen ones, or with ``by="store"`` every store in
    the data (``listed``, when already known; with zeros where a store has nothing), else
    just those ``found``."""
    if chosen is not None:
        return chosen
    if by == "store":
        return listed if listed is not None else _store_list(txs)
    return found.select("store_id", "store_name").unique().sort("store_id", "store_name")


def _split(
    per_store: pl.DataFrame,
    keys: list[str],
    sums: list[str],
    by: str | None,
    chosen: pl.DataFrame | None,
) -> pl.DataFrame:
    """The total rows (``store_id == "*"``) of ``per_store`` over ``keys``, and, with
    ``by="store"``, the store rows before them; in the frame's own column order."""
    columns = per_store.columns
    total = (
        per_store.group_by(keys)
        .agg(pl.col(sums).sum())
        .with_columns(
            pl.lit(ALL_STORES).alias("store_id"), pl.lit(_total_name(chosen)).alias("store_name")
        )
    )
    parts = [total.select(columns).cast(dict(per_store.schema))]  # type: ignore[arg-type]
    if by == "store":
        parts.append(per_store)
    return pl.concat(parts).sort("store_id", *keys)


# ------------------------------------------------------------------------ cards


# A card is grouped by its 64-bit hash, not its text: a quarter of the time (10M
# transactions, 1M cards: 0.27 against 0.70 s for a count; the lazy redemption curve in half
# the time), and the key its transactions are then joined on (``_CARD_KEY``; null for no
# card, as the text's null matches nothing). Exact: each card's rows also carry a second,
# independent hash (``_CHECK``), and a group whose rows differ in it holds two cards that
# share the first (``_shared``); the measure is then done again by the cards' text
# (``_SharedHash``, ``_exact_cards``). Two cards are taken for one only if they share both.
_CARD_KEY = "_card_key"
_HASHED_CARD = pl.when(pl.col("card").is_not_null()).then(pl.col("card").hash())
_CHECK = pl.col("card").hash(seed=0x5EED)
_CARDS_BY_TEXT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "cards_by_text", default=False
)


class _SharedHash(Exception):
    """Two cards share a hash: the measure must group them by their text."""


def _exact_cards(measure: _Measure) -> _Measure:
    """``measure`` (one that follows cards), done again with the cards grouped by their
    text when two of them share a hash (``_SharedHash``, raised before any warning)."""

    @functools.wraps(measure)
    def exactly(*args: Any, **kwargs: Any) -> Any:
        try:
            return measure(*args, **kwargs)
        except _SharedHash:
            token = _CARDS_BY_TEXT.set(True)
            try:
                return measure(*args, **kwargs)
            finally:
                _CARDS_BY_TEXT.reset(token)

    return cast(_Measure, exactly)


# ``_card_rows``' aggregates, read from a card's state (``cardstate.STATE_SCHEMA``). The
# stores a card was used at do not add up over parts of its history: it has none.
_FROM_STATE: dict[str, pl.Expr] = {
    "card_ref": pl.col("card_ref"),
    "card_last4": pl.col("card_last4"),
    "home_store_id": pl.col("home_store_id"),
    "home_store_name": pl.col("home_store_name"),
    "_home_amount": pl.col("home_amount"),
    "_sold": pl.col("home_sale"),
    "sold_at": pl.when(pl.col("home_sale")).then(pl.col("home_at")),
    "loaded": pl.col("loaded"),
    "redeemed": pl.col("redeemed"),
    "balance": pl.col("balance"),
    "last_used": pl.col("last_at"),
    "transactions": pl.col("transactions"),
    "opening_balance": pl.col("opening_balance"),
    "_moved": pl.col("moved"),
}


def _card_rows(lf: pl.LazyFrame, *names: str, states: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """Per card (``_CARD_KEY``), the columns ``names`` of :func:`cards` (and ``gap``,
    ``part_way``), and ``_shared`` (two cards share this key: to be added up by the
    measure and given to ``_warn_partial``, or held by ``_held``). Only what they need is
    aggregated, and only with plain aggregations (a first or last picked by
    ``min_by``/``max_by`` of the server's order, sums, counts: no sort of the whole
    frame); what is derived from those comes after the grouping, on one row a card, which
    keeps polars on its fast grouping path.

    Given the cards' ``states`` (``cardstate``: one row a card, kept with a dataset), the
    same columns are read from them, and ``lf`` is not read at all."""
    order, home = pl.col("order"), pl.col("home_key")
    parts: dict[str, pl.Expr] = {
        "card_ref": pl.col("card_ref").first(),
        "card_last4": pl.col("card_last4").first(),
        "home_store_id": pl.col("store_id").min_by(home),
        "home_store_name": pl.col("store_name").min_by(home),
        "_home_amount": pl.col("amount").min_by(home),
        "_sold": _of_type("sale").any(),  # its home is a sale exactly when it has one
        "sold_at": pl.col("at").filter(_of_type("sale")).min(),  # the home sale's time
        "loaded": pl.when(_of_type("redeem")).then(0).otherwise(pl.col("amount")).sum(),
        "redeemed": pl.when(_of_type("redeem")).then(pl.col("amount")).otherwise(0).sum(),
        "balance": pl.col("new_balance").max_by(order),
        "last_used": pl.col("at").max(),
        "transactions": pl.len().cast(pl.Int64),
        "stores_used": pl.col("store_id").n_unique().cast(pl.Int64),
        "opening_balance": pl.col("previous_balance").min_by(order),
        "_moved": (pl.col("new_balance") - pl.col("previous_balance")).sum(),
    }
    derived: dict[str, tuple[tuple[str, ...], pl.Expr]] = {
        "sold_amount": (
            ("_sold", "_home_amount"),
            pl.when(pl.col("_sold")).then(pl.col("_home_amount")),
        ),
        "loaded": (("loaded",), pl.col("loaded").fill_null(0).cast(MONEY)),
        "redeemed": (("redeemed",), pl.col("redeemed").fill_null(0).cast(MONEY)),
        # Signs of a partial history (see ``_warn_partial``).
        "gap": (
            ("_moved", "balance", "opening_balance"),
            pl.col("_moved") != pl.col("balance") - pl.col("opening_balance"),
        ),
        "part_way": (
            ("_sold", "opening_balance"),
            ~pl.col("_sold") & (pl.col("opening_balance") != 0),
        ),
    }
    needed = dict.fromkeys(
        part for name in names for part in (derived[name][0] if name in derived else (name,))
    )
    by_text = _CARDS_BY_TEXT.get()
    key = (pl.col("card") if by_text else _HASHED_CARD).alias(_CARD_KEY)
    if states is not None:  # one row a card already: two share a key if it is repeated
        shared = pl.lit(False) if by_text else _HASHED_CARD.is_duplicated()
        grouped = states.with_columns(_CARD).select(
            key, *(_FROM_STATE[name].alias(name) for name in needed), shared.alias("_shared")
        )
    else:
        shared = pl.lit(False) if by_text else _CHECK.min() != _CHECK.max()
        grouped = lf.group_by(key).agg(
            *(parts[name].alias(name) for name in needed), shared.alias("_shared")
        )
    return grouped.select(
        _CARD_KEY,
        *(derived[name][1].alias(name) if name in derived else pl.col(name) for name in names),
        "_shared",
    )


_CARD_COLUMNS = (
    "card_ref",
    "card_last4",
    "home_store_id",
    "home_store_name",
    "sold_at",
    "sold_amount",
    "loaded",
    "redeemed",
    "balance",
    "last_used",
    "transactions",
    "stores_used",
    "opening_balance",
)


class PartialHistoryWarning(UserWarning):
    """A card-following measure was given only part of some cards' histories."""


def _warn_partial(counts: pl.DataFrame) -> pl.DataFrame:
    """Say so when cards' histories are incomplete (``counts`` of cards with a ``gap`` or
    coming in ``part_way``): a measure that follows cards then draws wrong conclusions (a
    card spent elsewhere looks idle) without any error. Returns ``counts`` without them.
    First, raises ``_SharedHash`` if ``counts`` has cards that share a hash (``_shared``)."""
    if "_shared" in counts.columns:
        if counts["_shared"].sum():
            raise _SharedHash
        counts = counts.drop("_shared")
    found = counts.select(pl.col(c).sum() for c in ("gap", "part_way") if c in counts.columns)
    gaps, part_way = (
        int(found[c].item()) if c in found.columns else 0 for c in ("gap", "part_way")
    )
    advice = (
        " Measures that follow cards need each card's whole history: pass the whole frame "
        "(frames.fetch without since=, or frames.scan of a synced dataset) and choose stores "
        "with stores= or by='store'."
    )
    if gaps:
        message = (
            f"{gaps:,} card(s) have transactions missing from the middle of their history "
            "here (a balance before a transaction differs from the one after the card's "
            "previous): were the transactions filtered to some stores?"
        )
        warnings.warn(message + advice, PartialHistoryWarning, stacklevel=3)
    if part_way:
        message = (
            f"{part_way:,} card(s) come in part-way through their life (no sale, a balance "
            "before their first transaction here): were the transactions filtered to some "
            "stores, or cut at a start date? Cards not used since are not seen at all."
        )
        warnings.warn(message + advice, PartialHistoryWarning, stacklevel=3)
    return counts.drop(found.columns)


# What a card-following measure reads of each transaction.
_FOLLOW_CARDS = (
    "store_id",
    "store_name",
    "type",
    "at",
    "previous_balance",
    "new_balance",
    "card",
    "order",
    "home_key",
)


def _order_columns(txs: Frame) -> list[pl.Expr]:
    """Each transaction's ``order`` and ``home_key``: in 64 bits for a frame in memory whose
    times and positions all fit them (a look at their ranges: 10 ms for 10M rows), else in
    128 (over a scan that look would be a second read, costing what it saves).

    A card's home transaction is its first sale, else its first transaction: the smallest
    home key (a sale's key is its order; any other's is its order pushed past every sale's).
    """
    narrow = False
    if isinstance(txs, pl.DataFrame):
        first, last, low, high = txs.select(
            _AT_US.min().alias("first"),
            _AT_US.max().alias("last"),
            pl.col("position").min().alias("low"),
            pl.col("position").max().alias("high"),
        ).row(0)
        narrow = first is None or (
            first >= _ORDER_EPOCH_US
            and last - _ORDER_EPOCH_US < 1 << _TIME_BITS
            and (low is None or (low >= 0 and high < 1 << _POSITION_BITS))
        )
    if narrow:
        order = (_AT_US - _ORDER_EPOCH_US) * (1 << _POSITION_BITS) + pl.col("position")
        home = order + pl.when(_of_type("sale")).then(0).otherwise(1 << 62).cast(pl.Int64)
    else:  # as the cards' states order them
        order = cardstate.order(pl.col("at"), pl.col("position"))
        home = cardstate.home_key(order, _of_type("sale"))
    return [order.alias("order"), home.alias("home_key")]


def _read(txs: Frame, cut: datetime | None) -> pl.LazyFrame:
    """The transactions known before ``cut``, each with its ``card``, its place in the
    server's ``order`` and its ``home_key``."""
    lf = _lazy(txs)
    if cut is not None:
        lf = lf.filter(pl.col("at") < cut)
    return lf.with_columns(_CARD, *_order_columns(txs))


def _homes_needed(chosen: pl.DataFrame | None, by: str | None) -> bool:
    """Whether a card-following measure must find each card's home store: only to give
    rows per store or keep some stores; the chain's total is the same without."""
    return by == "store" or chosen is not None


def _as_home(chosen: pl.DataFrame | None) -> list[pl.Expr]:
    """The home store columns of every card when only the total is asked for."""
    return [
        pl.lit(ALL_STORES).alias("home_store_id"),
        pl.lit(_total_name(chosen)).alias("home_store_name"),
    ]


# A card-following measure over a scanned history of more transactions than this reads it
# in parts of cards (each card wholly in one part, chosen by a hash of it), one part after
# the other, and adds up the parts' aggregates (sums and counts over cards, and maxima):
# the table of one row a card, which grows with the history, is then never held whole.
_CARD_PART_ROWS = 20_000_000
# A frame in memory of more transactions than this is read in parts of cards too, each part
# a filter of the frame (a pass over memory, no copy): the frame is held already, so what a
# measure adds to it (its grouping of the cards: about 1.5 GB for 10M transactions in one
# part, 0.5 GB in three) is kept to a fraction of it, for a little more time.
_CARD_PART_ROWS_IN_MEMORY = 4_000_000


def _card_parts(txs: Frame) -> int:
    """How many parts of cards a card-following measure reads ``txs`` in: one per
    ``_CARD_PART_ROWS_IN_MEMORY`` transactions of a frame in memory, one per
    ``_CARD_PART_ROWS`` of a scan (its row count comes from its files' metadata)."""
    if isinstance(txs, pl.DataFrame):
        return max(1, -(-txs.height // _CARD_PART_ROWS_IN_MEMORY))
    rows = txs.select(pl.len()).collect(engine=ENGINE).item()
    return max(1, -(-rows // _CARD_PART_ROWS))


@dataclass
class _Follow:
    """Where a card-following measure finds each card's row: grouped from the
    transactions ``txs``, read in ``parts`` parts of cards (see ``_card_parts``); or read
    from the card ``states`` a dataset keeps (``cardstate``), in one part."""

    txs: Frame
    states: pl.LazyFrame | None = None

    @functools.cached_property
    def parts(self) -> int:
        return 1 if self.states is not None else _card_parts(self.txs)

    def rows(self, part: pl.LazyFrame, *names: str) -> pl.LazyFrame:
        """``_card_rows`` of ``part`` (its transactions; unread with ``states``)."""
        return _card_rows(part, *names, states=self.states)


def _follow(txs: Frame, cut: datetime | None, *names: str) -> _Follow:
    """How to follow the cards of ``txs`` known before ``cut``: by the states of its cards
    when ``txs`` is a scan of a whole dataset that keeps them (``frames.scan(path)``),
    ``cut`` leaves none of its transactions out and ``names`` are all known to them; else
    by grouping its transactions. The two give the same rows."""
    states = cardstate.attached(txs)
    if states is None or "stores_used" in names:
        return _Follow(txs)
    if cut is not None:
        last = states.select(pl.col("last_at").max()).collect(engine=ENGINE).item()
        if last is not None and last >= cut:
            return _Follow(txs)
    return _Follow(txs, states)


def _in_parts(
    lf: pl.LazyFrame, parts: int, folder: str | None = None, by: pl.Expr | None = None
) -> list[pl.LazyFrame]:
    """``lf`` (with its ``card``) as ``parts`` frames of whole cards, by a hash of the card:
    each part a filter of ``lf`` (read again for each part), or, given a ``folder``, its
    own Parquet files there, written in one read of ``lf`` (worth it when the parts are
    many: each then reads its own rows only). ``by``: the card's hash, if ``lf`` has it
    (else found from ``card``; a missing card's rows go to the first part)."""
    part_of = (_HASHED_CARD.fill_null(0) if by is None else by) % parts
    if parts == 1:
        return [lf]
    if folder is None:
        return [lf.filter(part_of == part) for part in range(parts)]
    return cardstate.in_parts(lf, part_of, parts, Path(folder))


def _add_parts(
    found: list[pl.DataFrame], keys: list[str], maxima: Iterable[str] = ()
) -> pl.DataFrame:
    """The parts' aggregates added up per ``keys``: each other column summed (those of
    ``maxima``: their maximum), in the parts' own types."""
    if len(found) == 1:
        return found[0]
    whole = pl.concat(found)
    values = [name for name in whole.columns if name not in keys]
    largest = set(maxima)
    return (
        whole.group_by(keys)
        .agg(pl.col(name).max() if name in largest else pl.col(name).sum() for name in values)
        .cast({name: whole.schema[name] for name in values})
        .select(whole.columns)
    )


def _held(per_card: pl.LazyFrame) -> pl.LazyFrame:
    """A part's cards (``per_card``, from ``_card_rows``: one row for every card of the
    part, none left out), computed once and held, keyed by the ``_card_key`` that
    ``_joined`` joins them on.

    Held, because a measure both joins them back to the part's transactions and aggregates
    them: left lazy, each use would group the transactions again (polars shares a subplan
    between outputs only when their columns agree, and here they never do: the join needs
    a card's sale, the counts its gap). One row a card is little beside the transactions.
    Raises ``_SharedHash`` (the measure is then done again by the cards' text) when two of
    the cards share a hash, before anything is joined or filtered; ``_shared`` stays (all
    false), so that a measure adds up held cards as it adds up any others."""
    held = per_card.collect(engine=ENGINE)
    if held["_shared"].any():
        raise _SharedHash
    return held.lazy()


def _card_key(cards: pl.LazyFrame) -> pl.Expr:
    """A transaction's ``_card_key`` for joining it to ``cards`` (given by ``_held``)."""
    by_text = cards.collect_schema()[_CARD_KEY] == pl.String
    return (pl.col("card") if by_text else _HASHED_CARD).alias(_CARD_KEY)


def _joined(txs: pl.LazyFrame, cards: pl.LazyFrame, *columns: str) -> pl.LazyFrame:
    """Each of ``txs`` (transactions of the part whose cards ``_held`` gave, or of fewer)
    with its card's ``columns`` from ``cards`` (those rows, or some of them)."""
    return (
        txs.with_columns(_card_key(cards))
        .join(cards.select(_CARD_KEY, *columns), on=_CARD_KEY)
        .drop(_CARD_KEY)
    )


def _collect_parts(
    lf: pl.LazyFrame,
    parts: int,
    per_part: Callable[[pl.LazyFrame], list[pl.LazyFrame]],
    once: list[pl.LazyFrame],
) -> tuple[list[list[pl.DataFrame]], list[pl.DataFrame]]:
    """The frames of ``per_part`` (given a part's transactions), each as the list of its
    parts, and those of ``once`` (over all): all in one collect for one part, else
    ``once`` first, then part after part."""
    if parts == 1:
        found = pl.collect_all([*per_part(lf), *once], engine=ENGINE)
        split = len(found) - len(once)
        return [[frame] for frame in found[:split]], found[split:]
    whole = pl.collect_all(once, engine=ENGINE)
    by_part = [pl.collect_all(per_part(part), engine=ENGINE) for part in _in_parts(lf, parts)]
    return [list(frames) for frames in zip(*by_part, strict=True)], whole


@_exact_cards
def cards(
    txs: Frame,
    as_of: date | datetime | None = None,
    *,
    stores: Stores = None,
    tz: str = "UTC",
) -> pl.DataFrame:
    """One row per card, as of the end of ``as_of``: the base of every card-following
    measure, for questions no ready analysis answers (the most used cards, July's cards
    and how much of them is spent...).

    ``stores=`` keeps the cards whose home store it names. Columns:
    ``card_ref``, ``card_last4`` (the card, never its number); ``home_store_id``,
    ``home_store_name`` (where it was sold, or first seen if no sale is in the data);
    ``sold_at``, ``sold_amount`` (its sale; null with no sale in the data); ``loaded`` (sale
    and reloads), ``redeemed``; ``balance`` (after its last transaction); ``last_used``;
    ``transactions`` (count); ``stores_used`` (distinct stores it was used at);
    ``opening_balance`` (what it held before its first transaction in the data: 0 for a card
    sold in it; ``balance == opening_balance + loaded - redeemed``). Sorted by home store,
    then sale time, then ``card_ref``.
    """
    window = _window(tz, as_of=as_of)
    lf = _read(txs, window.cut)
    chosen = _chosen(txs, stores)
    # Held (and so checked for cards sharing a hash) before any is left out.
    follow = _follow(txs, window.cut, *_CARD_COLUMNS)
    rows = _held(follow.rows(lf, *_CARD_COLUMNS, "gap", "part_way")).drop(_CARD_KEY)
    if chosen is not None:
        rows = rows.filter(pl.col("home_store_id").is_in(chosen["store_id"].to_list()))
    found = rows.sort("home_store_id", "sold_at", "card_ref", "card_last4", nulls_last=True)
    result = found.collect(engine=ENGINE)
    return _warn_partial(result)


# ------------------------------------------------------------------------ flows


def transactions(
    txs: Frame,
    *,
    stores: Stores = None,
    since: date | datetime | None = None,
    until: date | datetime | None = None,
    tz: str = "UTC",
) -> pl.DataFrame:
    """The transactions that happened at ``stores`` within the window: for looking at
    flows. Never feed the result to a card-following measure (it holds only part of each
    card's history); pass it the whole frame with ``stores=`` instead. Columns: the
    transaction frame's columns, oldest first."""
    within = _within(_lazy(txs), _chosen(txs, stores), _window(tz, since, until))
    return within.sort("at", "host_ref").collect(engine=ENGINE)


def _within(lf: pl.LazyFrame, chosen: pl.DataFrame | None, window: _Window) -> pl.LazyFrame:
    """The rows of ``lf`` that happened at the chosen stores within the window."""
    if chosen is not None:
        lf = lf.filter(pl.col("store_id").is_in(chosen["store_id"].to_list()))
    if window.since is not None:
        lf = lf.filter(pl.col("at") >= window.since)
    if window.until is not None:
        lf = lf.filter(pl.col("at") < window.until)
    return lf


_FLOW_SUMS = [
    "sales",
    "sales_amount",
    "reloads",
    "reloads_amount",
    "redemptions",
    "redemptions_amount",
    "net",
]


def summary(
    txs: Frame,
    every: str = "1d",
    *,
    tz: str = "UTC",
    stores: Stores = None,
    by: str | None = None,
    since: date | datetime | None = None,
    until: date | datetime | None = None,
    as_of: date | datetime | None = None,
) -> pl.DataFrame:
    """Sales, reloads and redemptions per period (``every``, counted in ``tz``).

    A flow: each transaction counts at the store where it happened (``stores=``,
    ``by="store"``) and in the period it happened. Every period from the first to the last
    is there, with zeros where nothing happened. Columns: ``period_start``, ``period_end``
    (dates, inclusive), ``complete`` (false for a period the data or the window covers only
    part of: the current week, a window starting mid-month); ``store_id``, ``store_name``
    (``"*"`` for the total row); ``sales``, ``reloads``, ``redemptions`` (counts);
    ``sales_amount``, ``reloads_amount``, ``redemptions_amount`` (money); ``net`` (sales +
    reloads - redemptions: what the cards gained).
    """
    _check_every(every)
    _check_by(by)
    window = _window(tz, since, until, as_of)
    lf = _lazy(txs)
    if window.cut is not None:
        lf = lf.filter(pl.col("at") < window.cut)
    if window.since is not None:
        lf = lf.filter(pl.col("at") >= window.since)
    chosen = _chosen(txs, stores)
    flows = lf.group_by("store_id", "store_name", _period_of(window, every)).agg(
        _of_type("sale").sum().cast(pl.Int64).alias("sales"),
        _money_sum(pl.when(_of_type("sale")).then(pl.col("amount"))).alias("sales_amount"),
        _of_type("reload").sum().cast(pl.Int64).alias("reloads"),
        _money_sum(pl.when(_of_type("reload")).then(pl.col("amount"))).alias("reloads_amount"),
        _of_type("redeem").sum().cast(pl.Int64).alias("redemptions"),
        _money_sum(pl.when(_of_type("redeem")).then(pl.col("amount"))).alias("redemptions_amount"),
        _money_sum(_SIGNED).alias("net"),
    )
    # Every store in the data, for rows per store: when the flows hold every transaction,
    # their stores are those (no second read of the stores); else read in the same pass.
    every_transaction = window.cut is None and window.since is None
    all_stores = by == "store" and chosen is None
    queries = [flows, _bounds(txs, window)]
    if all_stores and not every_transaction:
        queries.append(_store_pairs(txs))
    flows_df, bounds_df, *listed = pl.collect_all(queries, engine=ENGINE)
    if all_stores and every_transaction:
        listed = [_store_list(flows_df)]
    first, last = bounds_df.row(0)
    columns = {**_PERIOD_COLUMNS, **_STORE_COLUMNS}
    start = window.since if window.since is not None else first
    if first is None or start >= window.stop(last):
        return pl.DataFrame(schema={**columns, **flows_df.select(_FLOW_SUMS).schema})
    stop = window.stop(last)
    periods = _periods(
        window.day(start), window.day(stop - timedelta(microseconds=1)), every, window
    )
    # A flow's period is whole when the data (or window) covers it from start to end.
    whole = pl.col("_to") <= stop
    if window.since is not None:
        whole &= pl.col("_from") >= window.since
    periods = periods.with_columns(whole.alias("complete"))
    per_store = (
        _stores(txs, flows_df, chosen, by, *listed)
        .join(periods, how="cross")
        .join(flows_df.drop("store_name"), on=["store_id", "period_start"], how="left")
        .with_columns(pl.col(_FLOW_SUMS).fill_null(0))
        .with_columns(pl.col("^.*_amount$", "net").cast(MONEY))
        .select(*columns, *_FLOW_SUMS)
    )
    return _split(per_store, list(_PERIOD_COLUMNS), _FLOW_SUMS, by, chosen)


def daily_summary(
    txs: Frame,
    tz: str = "UTC",
    *,
    stores: Stores = None,
    since: date | datetime | None = None,
    until: date | datetime | None = None,
) -> pl.DataFrame:
    """:func:`summary` per store and day (in ``tz``), without total rows, each day
    labelled ``day``: columns ``store_id``, ``store_name``, ``day``, ``sales``,
    ``sales_amount``, ``reloads``, ``reloads_amount``, ``redemptions``,
    ``redemptions_amount``, ``net``."""
    per_day = summary(txs, "1d", tz=tz, stores=stores, by="store", since=since, until=until)
    return (
        per_day.filter(pl.col("store_id") != ALL_STORES)
        .select("store_id", "store_name", pl.col("period_start").alias("day"), *_FLOW_SUMS)
        .sort("store_id", "day")
    )


# ------------------------------------------------------------- following cards


@_exact_cards
def liability(
    txs: Frame,
    every: str = "1d",
    *,
    as_of: date | datetime | None = None,
    tz: str = "UTC",
    stores: Stores = None,
    by: str | None = None,
    since: date | datetime | None = None,
    until: date | datetime | None = None,
) -> pl.DataFrame:
    """Outstanding balance (what the cards still hold) at the end of each period.

    Follows cards: each counts at its home store (``stores=``, ``by="store"``), from its
    whole history, whatever the window. The value of a period is as at the end of its
    ``period_end`` day in ``tz`` (for an incomplete period: at the end of the data, or of
    ``as_of`` / ``until``). What a card held before its first transaction in the data
    (``previous_balance``) counts from the start, so a history fetched from some date on
    still starts right; a card with no transaction in it at all is not seen, so pass the
    whole history (``frames.fetch`` does by default). Columns: ``period_start``,
    ``period_end`` (dates, inclusive), ``complete`` (false when the period had not ended
    where the data or window stops), ``store_id``, ``store_name`` (``"*"`` for the total),
    ``liability``.
    """
    _check_every(every)
    _check_by(by)
    window = _window(tz, since, until, as_of)
    lf = _read(txs, window.cut).select(*_FOLLOW_CARDS)
    chosen = _chosen(txs, stores)
    change = _money_sum(pl.col("new_balance") - pl.col("previous_balance")).alias("change")
    homes = _homes_needed(chosen, by)
    follow = _follow(txs, window.cut)
    parts = follow.parts

    def per_part(part: pl.LazyFrame) -> list[pl.LazyFrame]:
        """A part's opening balances per home store, and with ``homes`` its changes."""
        if homes:
            per_card = follow.rows(
                part, "home_store_id", "home_store_name", "opening_balance", "gap", "part_way"
            )
            per_card = _held(per_card)
        else:
            per_card = follow.rows(part, "opening_balance", "gap", "part_way").with_columns(
                _as_home(chosen)
            )
        opening = per_card.group_by("home_store_id", "home_store_name").agg(
            _money_sum(pl.col("opening_balance")).alias("opening"),
            pl.col("gap", "part_way", "_shared").sum(),
        )
        if not homes:
            return [opening]
        changes = (
            _joined(part, per_card, "home_store_id")
            .group_by("home_store_id", _period_of(window, every))
            .agg(change)
        )
        return [opening, changes]

    once = [_bounds(txs, window)]
    if not homes:  # the chain's total: no card's home store is needed, nor a second read
        changes = (
            lf.group_by(_period_of(window, every)).agg(change).with_columns(_as_home(chosen)[0])
        )
        once.append(changes)
    in_parts, whole = _collect_parts(lf, parts, per_part, once)
    bounds_df = whole[0]
    opening_df = _add_parts(in_parts[0], ["home_store_id", "home_store_name"])
    changes_df = _add_parts(in_parts[1], ["home_store_id", "period_start"]) if homes else whole[1]
    first, last = bounds_df.row(0)
    opening_df = _warn_partial(opening_df)
    columns: dict[str, Any] = {**_PERIOD_COLUMNS, **_STORE_COLUMNS, "liability": MONEY}
    if first is None or (window.since is not None and window.since >= window.stop(last)):
        return pl.DataFrame(schema=columns)
    stop = window.stop(last)
    periods = _periods(
        window.day(first), window.day(stop - timedelta(microseconds=1)), every, window
    )
    found = opening_df.rename({"home_store_id": "store_id", "home_store_name": "store_name"})
    per_store = (
        _stores(txs, found, chosen, by)
        .join(periods, how="cross")
        .join(
            changes_df.rename({"home_store_id": "store_id"}),
            on=["store_id", "period_start"],
            how="left",
        )
        .join(found.drop("store_name"), on="store_id", how="left")
        .sort("store_id", "period_start")
        .with_columns(
            (
                pl.col("change").fill_null(0).cum_sum().over("store_id")
                + pl.col("opening").fill_null(0)
            )
            .cast(MONEY)
            .alias("liability"),
            (pl.col("_to") <= stop).alias("complete"),
        )
    )
    if window.since is not None:
        per_store = per_store.filter(pl.col("_to") > window.since)
    per_store = per_store.select(*columns)
    return _split(per_store, list(_PERIOD_COLUMNS), ["liability"], by, chosen)


# The redemption curve's share: redeemed / loaded (a float, null when nothing was loaded);
# the explorer takes it anew for the sums of several stores' rows.
REDEEMED_SHARE = (
    pl.when(pl.col("loaded") > 0)
    .then(pl.col("redeemed").cast(pl.Float64) / pl.col("loaded").cast(pl.Float64))
    .alias("share")
)


@_exact_cards
def redemption_curve(
    txs: Frame,
    horizon_days: int = 84,
    step_days: int = 7,
    *,
    cohort: str = "1w",
    as_of: date | datetime | None = None,
    tz: str = "UTC",
    stores: Stores = None,
    by: str | None = None,
    since: date | datetime | None = None,
    until: date | datetime | None = None,
) -> pl.DataFrame:
    """By cohort of activation: the share of loaded value redeemed within N days.

    Follows cards: a card's activation is its sale, its cohort the week (``cohort="1w"``,
    from Monday) or month (``"1mo"``) of that sale in ``tz``, and it counts at its home
    store (the selling one). ``since`` / ``until`` choose the cohorts by sale time; each
    card is then followed to the end of the data (or ``as_of``). Loads are its sale and
    reloads. For each N in 0, ``step_days``, ... ``horizon_days``:
    ``share = redeemed within N days / loaded within N days``; a cohort whose youngest
    card is not N days old at the end of the data has no row for N (not known yet).
    Columns: ``store_id``, ``store_name`` (``"*"`` for the total), ``cohort_start``,
    ``cohort_end`` (dates, inclusive), ``days`` (N), ``cards`` (in the cohort), ``loaded``,
    ``redeemed`` (money, cumulative to N), ``share`` (float, null when nothing was loaded).
    """
    _check_every(cohort, "cohort")
    _check_by(by)
    window = _window(tz, since, until, as_of)
    lf = _read(txs, window.as_of).select(
        "store_id",
        "store_name",
        "type",
        "at",
        "amount",
        "previous_balance",
        "new_balance",
        "card",
        "order",
        "home_key",
    )
    chosen = _chosen(txs, stores)
    activated = pl.col("sold_at")
    in_window = activated.is_not_null()
    if window.since is not None:
        in_window &= activated >= window.since
    if window.until is not None:
        in_window &= activated < window.until
    homes = _homes_needed(chosen, by)
    follow = _follow(txs, window.as_of)
    parts = follow.parts

    def per_part(part: pl.LazyFrame) -> list[pl.LazyFrame]:
        """A part's loaded and redeemed per cohort and age, and its cohorts' cards."""
        if homes:
            per_card = follow.rows(part, "home_store_id", "home_store_name", "sold_at", "gap")
        else:  # the chain's total: a card's sale, not its home store
            per_card = follow.rows(part, "sold_at", "gap").with_columns(_as_home(chosen))
        per_card = (
            _held(per_card)
            .filter(in_window)
            .with_columns(_period_of(window, cohort, "sold_at").alias("cohort_start"))
        )
        per_tx = (
            _joined(part, per_card, "home_store_id", "sold_at", "cohort_start")
            .with_columns(((pl.col("at") - activated).dt.total_seconds() / 86400).alias("age"))
            .filter(pl.col("age") <= horizon_days)
            # The first N of the grid whose window holds the transaction (age <= N).
            .with_columns(
                ((pl.col("age") / step_days).ceil() * step_days).cast(pl.Int64).alias("days")
            )
            .group_by("home_store_id", "cohort_start", "days")
            .agg(
                _money_sum(pl.when(~_of_type("redeem")).then(pl.col("amount"))).alias("loaded"),
                _money_sum(pl.when(_of_type("redeem")).then(pl.col("amount"))).alias("redeemed"),
            )
        )
        cohorts = per_card.group_by("home_store_id", "home_store_name", "cohort_start").agg(
            pl.len().cast(pl.Int64).alias("cards"),
            activated.max().alias("youngest"),
            pl.col("gap").sum(),
        )
        return [per_tx, cohorts]

    data_end = lf.select(pl.col("at").max())
    in_parts, (end_df,) = _collect_parts(lf, parts, per_part, [data_end])
    steps_df = _add_parts(in_parts[0], ["home_store_id", "cohort_start", "days"])
    cohorts_df = _add_parts(
        in_parts[1], ["home_store_id", "home_store_name", "cohort_start"], maxima=["youngest"]
    )
    cohorts_df = _warn_partial(cohorts_df)
    columns: dict[str, Any] = {
        **_STORE_COLUMNS,
        "cohort_start": pl.Date,
        "cohort_end": pl.Date,
        "days": pl.Int64,
        "cards": pl.Int64,
        "loaded": MONEY,
        "redeemed": MONEY,
    }
    if cohorts_df.is_empty():
        return pl.DataFrame(schema={**columns, "share": pl.Float64})
    known = window.as_of if window.as_of is not None else end_df.item()
    cohorts_df = cohorts_df.rename({"home_store_id": "store_id", "home_store_name": "store_name"})
    grid = pl.DataFrame(
        {"days": list(range(0, horizon_days + 1, step_days))}, schema={"days": pl.Int64}
    )
    per_store = (
        _keep(cohorts_df, chosen)
        .join(grid, how="cross")
        .join(
            steps_df.rename({"home_store_id": "store_id"}),
            on=["store_id", "cohort_start", "days"],
            how="left",
        )
        .sort("store_id", "cohort_start", "days")
        .with_columns(
            pl.col(name).fill_null(0).cum_sum().over("store_id", "cohort_start").cast(MONEY)
            for name in ("loaded", "redeemed")
        )
        .with_columns(
            pl.col("cohort_start").dt.offset_by(cohort).dt.offset_by("-1d").alias("cohort_end")
        )
    )
    # A row is known when the cohort's youngest card (in that store, or in any) is N days old.
    youngest = per_store.select("store_id", "cohort_start", "youngest").unique()
    youngest = pl.concat(
        [
            youngest,
            youngest.group_by("cohort_start")
            .agg(pl.lit(ALL_STORES).alias("store_id"), pl.col("youngest").max())
            .select(youngest.columns),
        ]
    ).unique()  # once each: with the total's cards only, the store rows are the total's
    keys = ["cohort_start", "cohort_end", "days"]
    return (
        _split(per_store.select(*columns), keys, ["cards", "loaded", "redeemed"], by, chosen)
        .join(youngest, on=["store_id", "cohort_start"])
        .filter((pl.lit(known) - pl.col("youngest")).dt.total_seconds() / 86400 >= pl.col("days"))
        .select(
            *columns,
            REDEEMED_SHARE,
        )
        .sort("store_id", "cohort_start", "days")
    )


BREAKAGE_BUCKETS = [
    (0, 30, "0-30 days"),
    (31, 90, "31-90 days"),
    (91, 180, "91-180 days"),
    (181, 365, "181-365 days"),
    (366, None, "over 365 days"),
]
_BUCKET = pl.Enum([name for _, _, name in BREAKAGE_BUCKETS])


@_exact_cards
def breakage(
    txs: Frame,
    as_of: date | datetime | None = None,
    dormant_days: int = 365,
    *,
    tz: str = "UTC",
    stores: Stores = None,
    by: str | None = None,
) -> pl.DataFrame:
    """Balances by how long their cards have been idle, and the estimated breakage.

    The rule: a balance whose card has had no transaction for ``dormant_days`` or more
    at the end of ``as_of`` (a date: the end of that day in ``tz``; default: the last
    transaction) is presumed never to be redeemed and counts in full as breakage; any
    younger balance counts nothing. Follows cards: each counts at its home store
    (``stores=``, ``by="store"``), from its whole history. Cards holding nothing are left
    out. Columns: ``store_id``, ``store_name`` (``"*"`` for the total), ``idle`` (bucket of
    days since the card's last use), ``cards``, ``balance`` (what they hold),
    ``breakage`` (the part counted as breakage), in bucket order.
    """
    _check_by(by)
    window = _window(tz, as_of=as_of)
    lf = _read(txs, window.cut).select(*_FOLLOW_CARDS)
    chosen = _chosen(txs, stores)
    follow = _follow(txs, window.cut)
    parts = follow.parts
    # Idle as at the end of ``as_of``, else as at the last transaction (of every card: found
    # first when the cards are read in parts).
    if window.as_of is not None:
        moment = pl.lit(window.as_of)
    elif parts == 1:
        moment = pl.col("last_used").max()
    else:
        moment = pl.lit(lf.select(pl.col("at").max()).collect(engine=ENGINE).item(), dtype=TIME)
    idle_days = (moment - pl.col("last_used")).dt.total_days()
    bucket = pl.lit(BREAKAGE_BUCKETS[-1][2])
    for low, high, name in reversed(BREAKAGE_BUCKETS[:-1]):
        bucket = pl.when(idle_days.is_between(low, high)).then(pl.lit(name)).otherwise(bucket)
    holding = pl.col("balance") > 0
    wanted = ["balance", "last_used", "gap", "part_way"]
    homes = _homes_needed(chosen, by)

    def per_part(part: pl.LazyFrame) -> list[pl.LazyFrame]:
        """A part's cards and balances per home store and bucket."""
        if homes:
            per_card = follow.rows(part, "home_store_id", "home_store_name", *wanted)
        else:  # the chain's total: a card's balance and last use, not its home store
            per_card = follow.rows(part, *wanted).with_columns(_as_home(chosen))
        per_store = (
            per_card.with_columns(bucket.cast(_BUCKET).alias("idle"), idle_days.alias("idle_days"))
            .group_by("home_store_id", "home_store_name", "idle")
            .agg(
                holding.sum().cast(pl.Int64).alias("cards"),
                _money_sum(pl.col("balance").filter(holding)).alias("balance"),
                _money_sum(
                    pl.col("balance").filter(holding & (pl.col("idle_days") >= dormant_days))
                ).alias("breakage"),
                pl.col("gap", "part_way", "_shared").sum(),
            )
            .rename({"home_store_id": "store_id", "home_store_name": "store_name"})
        )
        return [per_store]

    (in_parts,), _ = _collect_parts(lf, parts, per_part, [])
    per_store = _warn_partial(_add_parts(in_parts, ["store_id", "store_name", "idle"]))
    buckets = pl.DataFrame(
        {"idle": [name for _, _, name in BREAKAGE_BUCKETS]}, schema={"idle": _BUCKET}
    )
    sums = ["cards", "balance", "breakage"]
    rows = (
        _stores(txs, per_store, chosen, by)
        .join(buckets, how="cross")
        .join(per_store.drop("store_name"), on=["store_id", "idle"], how="left")
        .with_columns(pl.col(sums).fill_null(0))
        .with_columns(pl.col("balance", "breakage").cast(MONEY))
    )
    return _split(rows, ["idle"], sums, by, chosen)


@_exact_cards
def cross_store(
    txs: Frame,
    *,
    as_of: date | datetime | None = None,
    tz: str = "UTC",
    stores: Stores = None,
    since: date | datetime | None = None,
    until: date | datetime | None = None,
) -> pl.DataFrame:
    """Redemptions by the card's home store and the store that redeemed them.

    The redemptions in the window (``since`` / ``until``) count; each card's home store
    (where it was sold) comes from its whole history. ``stores=`` keeps cards of those home
    stores. Columns: ``home_store_id``, ``home_store_name``, ``store_id``, ``store_name``
    (where redeemed), ``away`` (true when the two differ), ``redemptions`` (count),
    ``redeemed`` (money), ``share`` (of the home store's redeemed value, float).
    """
    window = _window(tz, since, until, as_of)
    lf = _read(txs, window.cut)
    chosen = _chosen(txs, stores)
    follow = _follow(txs, window.cut)
    homes = _held(follow.rows(lf, "home_store_id", "home_store_name", "gap", "part_way"))
    redeems = lf.filter(_of_type("redeem"))
    if window.since is not None:
        redeems = redeems.filter(pl.col("at") >= window.since)
    pairs = (
        _joined(
            redeems.select("card", "store_id", "store_name", "amount"),
            homes,
            "home_store_id",
            "home_store_name",
        )
        .group_by("home_store_id", "home_store_name", "store_id", "store_name")
        .agg(
            pl.len().cast(pl.Int64).alias("redemptions"),
            _money_sum(pl.col("amount")).alias("redeemed"),
        )
    )
    partial = homes.select(pl.col("gap", "part_way").sum())
    pairs_df, partial_df = pl.collect_all([pairs, partial], engine=ENGINE)
    _warn_partial(partial_df)
    if chosen is not None:
        pairs_df = pairs_df.filter(pl.col("home_store_id").is_in(chosen["store_id"].to_list()))
    home_total = pl.col("redeemed").sum().over("home_store_id").cast(pl.Float64)
    return pairs_df.select(
        "home_store_id",
        "home_store_name",
        "store_id",
        "store_name",
        (pl.col("home_store_id") != pl.col("store_id")).alias("away"),
        "redemptions",
        "redeemed",
        pl.when(home_total > 0)
        .then(pl.col("redeemed").cast(pl.Float64) / home_total)
        .alias("share"),
    ).sort("home_store_id", "store_id")


# ------------------------------------------------------------------- anomalies


# The most transactions ``anomalies`` reads at once (a part of the cards), which its rules
# sort. Finer for a frame in memory, whose parts cost a filter only, and which is held
# beside them (10M rows in memory: a peak of 2.7 GB in parts of 2M, 2.5 GB in parts of 1M,
# 80-120 MB less again in parts of 0.5M, for 0-15 % more time: the step that sets the
# suite's peak, which stays under DuckDB's this way).
_SEQUENCE_PART_ROWS = 5_000_000
_SEQUENCE_PART_ROWS_IN_MEMORY = 500_000


def _flag(frame: pl.LazyFrame, reason: str) -> pl.LazyFrame:
    return frame.select("row", pl.lit(reason).alias("reason"))


@dataclass(frozen=True)
class _Rules:
    """The anomaly rules, which read a card's transactions in order and match its sales."""

    cross_store_minutes: int
    max_redeems_per_hour: int
    cycle_hours: int
    min_cycles: int
    cycle_ratio: float

    def flags(self, part: pl.LazyFrame, lean: bool = False) -> pl.DataFrame:
        """The (``row``, ``reason``) flags of these transactions (whole cards; the columns
        of ``_rule_columns``); ``lean``: sorted by the in-memory engine, whose sort takes
        less than half the streaming one's memory (2M rows: 0.17 against 0.39 GB) for a
        little more time: worth it beside a frame held in memory."""
        ordered = self._ordered(part, lean).lazy()

        def same_card(offset: int) -> pl.Expr:
            return pl.col("card_run").shift(offset) == pl.col("card_run")

        # More than K redeems in (t - 1h, t] exactly when the K-th redeem before this one,
        # on the same card, is less than an hour older.
        k = self.max_redeems_per_hour
        rapid = ordered.filter(_of_type("redeem")).filter(
            same_card(k) & (pl.col("at") - pl.col("at").shift(k) < pl.duration(hours=1))
        )
        followed = (
            _of_type("reload")
            & same_card(-1)
            & (pl.col("type").shift(-1) == "redeem")
            & (pl.col("at").shift(-1) - pl.col("at") <= pl.duration(hours=self.cycle_hours))
            & (pl.col("amount").shift(-1) >= pl.col("amount") * self.cycle_ratio)
        )
        cycling = (
            ordered.with_columns(followed.fill_null(False).alias("starts_cycle"))
            .with_columns(
                (pl.col("starts_cycle") | (pl.col("starts_cycle").shift(1) & same_card(1)))
                .fill_null(False)
                .alias("in_cycle"),
                pl.col("starts_cycle").sum().over("card_run").alias("cycles"),
            )
            .filter(pl.col("in_cycle") & (pl.col("cycles") >= self.min_cycles))
        )
        sales = ordered.filter(_of_type("sale")).select(
            "card_run", pl.col("store_id").alias("sale_store"), pl.col("at").alias("sold_at")
        )
        soon_elsewhere = (
            ordered.filter(_of_type("redeem"))
            .join(sales, on="card_run", how="inner")
            .filter(
                (pl.col("store_id") != pl.col("sale_store"))
                & (pl.col("at") >= pl.col("sold_at"))
                & (
                    pl.col("at") - pl.col("sold_at")
                    <= pl.duration(minutes=self.cross_store_minutes)
                )
            )
        )
        return pl.concat(
            [
                _flag(soon_elsewhere, "redeemed at another store soon after sale"),
                _flag(rapid, "many redemptions in an hour"),
                _flag(cycling, "reload-redeem cycling"),
            ]
        ).collect(engine=ENGINE)

    @staticmethod
    def _ordered(part: pl.LazyFrame, lean: bool) -> pl.DataFrame:
        """``part`` sorted by card, then the server's order, each card's run of rows
        numbered (``card_run``), so that the rules compare and group numbers, not text.

        Sorted by the card's 64-bit hash (``card_hash``), half the time of sorting its text
        (2M rows: 0.27 against 0.58 s), beside its second hash (``card_check``: ``_CHECK``,
        as ``_card_rows`` uses it): a run whose rows differ in it holds two cards that
        share the first, and raises ``_SharedHash`` (the rules are then done again by the
        cards' text, ``card``). A missing card is a run of its own row, as a null card
        equals none.
        """
        card = pl.col("card" if _CARDS_BY_TEXT.get() else "card_hash")
        new_card = (card != card.shift(1)).fill_null(True)
        # Lean, the part is still read by the streaming engine, then sorted: the in-memory
        # engine reading a part of a 10M-row frame took 0.44 GB more, the streaming 0.13.
        unsorted = part.collect(engine=ENGINE).lazy() if lean else part
        ordered = (
            unsorted.sort(card, "at", "position", "row")
            .with_columns(new_card.alias("new_card"))
            .collect(engine="in-memory" if lean else ENGINE)
        )
        if "card_check" in ordered.columns:
            check = pl.col("card_check")
            if ordered.select((~pl.col("new_card") & (check != check.shift(1))).any()).item():
                raise _SharedHash
        return ordered.select(
            pl.exclude("card", "card_hash", "card_check", "new_card"),
            pl.col("new_card").cum_sum().alias("card_run"),
        )


# What the anomaly rules read of each transaction: the amount as the float the cycling rule
# compares (half the bytes of the decimal); the card's hash (``card_hash``), by which they cut
# the cards into parts and sort each part, and its second hash (``card_check``) or, when two
# cards share a hash, its text (``card``).
_RULE_COLUMNS = (
    "row",
    "type",
    "at",
    "position",
    pl.col("amount").cast(pl.Float64),
    "store_id",
)


def _rule_columns(lf: pl.LazyFrame) -> pl.LazyFrame:
    """``lf``'s columns that the anomaly rules read (``card_hash`` given, or found here)."""
    with_card = lf.with_columns(_CARD)
    hashed = (
        with_card
        if "card_hash" in lf.collect_schema()
        else with_card.with_columns(_HASHED_CARD.alias("card_hash"))
    )
    if _CARDS_BY_TEXT.get():
        return hashed.select(*_RULE_COLUMNS, "card_hash", "card")
    return hashed.select(*_RULE_COLUMNS, "card_hash", _CHECK.alias("card_check"))


@_exact_cards
def anomalies(
    txs: Frame,
    *,
    cross_store_minutes: int = 60,
    max_redeems_per_hour: int = 4,
    cycle_hours: int = 24,
    min_cycles: int = 2,
    cycle_ratio: float = 0.9,
    stores: Stores = None,
    since: date | datetime | None = None,
    until: date | datetime | None = None,
    tz: str = "UTC",
) -> pl.DataFrame:
    """Transactions worth a look: the transaction frame's columns and a ``reason``:

    * ``redeemed at another store soon after sale``: a redeem within
      ``cross_store_minutes`` of the card's sale, at a store other than the selling one;
    * ``many redemptions in an hour``: the card's redeem count within the hour up to this
      one exceeds ``max_redeems_per_hour``;
    * ``reload-redeem cycling``: on a card, ``min_cycles`` or more reloads each followed
      (within ``cycle_hours``) by a redeem of at least ``cycle_ratio`` of the reload.

    The rules read each card's whole history; ``stores=`` (where the flagged transaction
    happened) and ``since`` / ``until`` then choose which flags are shown. A transaction
    flagged for several reasons appears once per reason.
    """
    window = _window(tz, since, until)
    full = _lazy(txs).with_row_index("row")
    columns = list(_lazy(txs).collect_schema().names())
    chosen = _chosen(txs, stores)
    rules = _Rules(cross_store_minutes, max_redeems_per_hour, cycle_hours, min_cycles, cycle_ratio)
    # The rules find flags on narrow frames; the flagged rows are then looked up in the full
    # one (so no sort ever moves the other columns). They read a card's transactions sorted
    # by card and the server's order, once for all rules, and in parts of cards (each card
    # wholly in one part: exact) so that a history past memory is never sorted whole. A
    # scanned history's parts are written once to temporary Parquet files (one read of the
    # history, not one per part); a frame in memory is cut by filters, each a pass over
    # memory (at 10M rows, 2.6 s faster than writing the parts).
    in_memory = isinstance(txs, pl.DataFrame)
    narrow = _rule_columns(full)
    rows = full.select(pl.len()).collect(engine=ENGINE).item()
    parts = max(
        1, -(-rows // (_SEQUENCE_PART_ROWS_IN_MEMORY if in_memory else _SEQUENCE_PART_ROWS))
    )
    if in_memory and parts > 1:
        # Each part's filter reads the card's hash, computed once (8 bytes a row), not
        # again from the text for every part.
        hashes = narrow.select("card_hash").collect(engine=ENGINE).to_series()
        narrow = _rule_columns(full.with_columns(hashes))
    written: contextlib.AbstractContextManager[str | None] = (
        contextlib.nullcontext()
        if in_memory or parts == 1
        else tempfile.TemporaryDirectory(prefix="giftcard-anomalies-")
    )
    with written as folder:
        found = [
            rules.flags(part, lean=in_memory).lazy()
            for part in _in_parts(narrow, parts, folder, by=pl.col("card_hash").fill_null(0))
        ]
    return (
        _within(pl.concat(found).join(full, on="row", how="inner"), chosen, window)
        .select(*columns, "reason")
        .sort("at", "host_ref", "reason")
        .collect(engine=ENGINE)
    )


def reconcile(batches: Frame, txs: Frame, *, stores: Stores = None) -> pl.DataFrame:
    """Per batch, the totals the server reported beside those recomputed from its
    transactions, with ``matches`` false where any differ.

    ``stores=`` keeps those stores' batches. Columns: ``store_id``, ``store_name``,
    ``batch_id``, ``status``, ``opened_at``; each reported total beside its recomputed one
    (``transaction_count`` / ``computed_count``, ``sold``, ``reloaded``, ``redeemed``,
    ``net`` / ``computed_*``); ``net_difference`` (reported - computed); ``matches``.
    """
    chosen = _chosen(batches, stores)
    # Counted and summed per batch and type first (plain aggregations: fast), then the
    # types of each batch, a few rows, side by side.
    computed = (
        _lazy(txs)
        .group_by("store_id", "batch_id", "type")
        .agg(pl.len().alias("count"), pl.col("amount").sum())
        .group_by("store_id", "batch_id")
        .agg(
            pl.col("count").sum().cast(pl.Int64).alias("computed_count"),
            *(
                _money_sum(pl.col("amount").filter(_of_type(kind))).alias(f"computed_{name}")
                for kind, name in (("sale", "sold"), ("reload", "reloaded"), ("redeem", "redeemed"))
            ),
            _money_sum(_SIGNED).alias("computed_net"),
        )
    )
    pairs = [
        ("transaction_count", "computed_count"),
        ("sold", "computed_sold"),
        ("reloaded", "computed_reloaded"),
        ("redeemed", "computed_redeemed"),
        ("net", "computed_net"),
    ]
    chosen_batches = _lazy(batches)
    if chosen is not None:
        chosen_batches = chosen_batches.filter(
            pl.col("store_id").is_in(chosen["store_id"].to_list())
        )
    return (
        chosen_batches.join(computed, on=["store_id", "batch_id"], how="left")
        .with_columns(
            pl.col("computed_count").fill_null(0),
            *[pl.col(c).fill_null(0).cast(MONEY) for _, c in pairs[1:]],
        )
        .with_columns(
            pl.all_horizontal([pl.col(r) == pl.col(c) for r, c in pairs]).alias("matches"),
            (pl.col("net") - pl.col("computed_net")).cast(MONEY).alias("net_difference"),
        )
        .select(
            "store_id",
            "store_name",
            "batch_id",
            "status",
            "opened_at",
            *[name for pair in pairs for name in pair],
            "net_difference",
            "matches",
        )
        .sort("store_id", "opened_at")
        .collect(engine=ENGINE)
    )
