"""Finance's month end: journal entries, breakage recognised as the standards say, and the
balances owed to a state as unclaimed property.

Gift cards are a liability until spent. A sale or reload takes cash and owes its value
(debit ``cash``, credit ``gift_card_liability``); a redemption pays the debt in goods (debit
``gift_card_liability``, credit ``revenue``); what will never be spent, the breakage,
becomes income (debit ``gift_card_liability``, credit ``breakage_income``). ASC 606 / IFRS
15 recognise breakage in proportion to the redemptions when the chain can estimate it from
its own history (``breakage="proportional"``, with :func:`breakage_rate`), otherwise once
redemption has become remote (``"remote"``: a balance idle for ``dormant_days``); never for
balances a state's unclaimed-property law claims (give ``rules=`` and ``jurisdictions=``).

Everything follows :mod:`analytics`' rules (its docstring): a card's liability lives at its
**home store** (where it was sold); cash and revenue at the store where the customer paid
or spent (the till), so a card spent away from home moves between the two stores through
``interstore_clearing``, which nets to zero across the chain; periods, ``as_of`` and ``tz``
as there. Money is exact (``Decimal``); breakage is rounded to the cent on its running total,
so no cent is lost or made by rounding, and every store's entry balances on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, Final

import polars as pl

from giftcard_toolkit.analysis import analytics

# The analyses' own time, store and card rules (private there), shared rather than written
# twice: a journal and the liability it must agree with read the data the same way.
from giftcard_toolkit.analysis.analytics import (
    _CARD_KEY,
    ALL_STORES,
    ALL_STORES_NAME,
    ENGINE,
    Frame,
    Stores,
    _bounds,
    _card_key,
    _check_every,
    _chosen,
    _exact_cards,
    _follow,
    _held,
    _joined,
    _period_of,
    _periods,
    _read,
    _warn_partial,
    _window,
)
from giftcard_toolkit.analysis.frames import MONEY
from giftcard_toolkit.rules import JURISDICTION, JURISDICTION_EXAMPLE

CASH, LIABILITY, REVENUE, BREAKAGE_INCOME, CLEARING = (
    "cash",
    "gift_card_liability",
    "revenue",
    "breakage_income",
    "interstore_clearing",
)
ACCOUNTS: Final = (CASH, LIABILITY, REVENUE, BREAKAGE_INCOME, CLEARING)
LOADS, REDEMPTIONS, BREAKAGE = "sales and reloads", "redemptions", "breakage"
ENTRIES: Final = (LOADS, REDEMPTIONS, BREAKAGE)
METHODS: Final = (None, "proportional", "remote")
# A rate is a share of loaded value, kept to 4 places (12.34%): the figure the memo shows is
# the one the journal used.
RATE_PLACES = Decimal("0.0001")
CENT = Decimal("0.01")
# The example unclaimed-property rules shipped with the package (an example, not legal advice).
EXAMPLE_RULES = Path(__file__).with_name("unclaimed-rules-example.csv")

_MEMOS = {
    (LOADS, CASH): "cash taken here for gift cards sold and reloaded",
    (LOADS, LIABILITY): "value loaded on this store's cards (sales and reloads), owed until spent",
    (LOADS, CLEARING): "cards of one store reloaded at another (nets to zero across the chain)",
    (REDEMPTIONS, LIABILITY): "this store's cards redeemed, wherever they were spent",
    (REDEMPTIONS, REVENUE): "gift cards redeemed here for goods",
    (REDEMPTIONS, CLEARING): "cards of one store redeemed at another (nets to zero across the "
    "chain)",
}
_JOURNAL_SCHEMA: dict[str, Any] = {
    "period_start": pl.Date,
    "period_end": pl.Date,
    "store_id": pl.String,
    "store_name": pl.String,
    "entry": pl.String,
    "account": pl.String,
    "debit": MONEY,
    "credit": MONEY,
    "memo": pl.String,
}


class NotEnoughHistory(ValueError):
    """The chain's history cannot estimate its breakage rate yet: nothing was guessed."""


class RulesProblem(ValueError):
    """An unclaimed-property rules table, or the stores' jurisdictions, cannot be used."""


# ------------------------------------------------------------------ breakage rate


def horizon_days(horizon_months: int) -> int:
    """A horizon in days, at 365 days a year (24 months: 730 days)."""
    return horizon_months * 365 // 12


@dataclass(frozen=True)
class BreakageRate:
    """The share of loaded value never redeemed, as the chain's matured cohorts show it.

    A cohort is the cards first sold in one calendar month (in ``tz``); it has **matured**
    once ``horizon_months`` (``horizon_days``) have passed since the month ended: what was
    loaded on its cards within that time and not redeemed within it is its breakage.
    ``min_cohorts`` matured cohorts (a year of sales: every season) are needed for an
    estimate; fewer and :attr:`enough` is false, and ``journal(breakage="proportional")``
    refuses. ``stores``: one row per home store and the chain (``store_id == "*"``):
    ``cohorts`` (matured), ``waiting`` (not yet), ``loaded``, ``never_redeemed``, ``rate``,
    ``low`` / ``high`` (about 95% sure the rate is between: two standard errors of the
    cohorts' spread), ``late`` (the share of loaded value redeemed in the horizon's last
    fifth or so, e.g. its last 146 of 730 days: well above 0.01 means redemptions had not
    stopped, and the rate overstates breakage), ``enough``, ``first_estimate`` (when
    enough cohorts will have matured, if sales go on monthly). ``cohorts``: the matured
    cohorts used, per store and chain.
    """

    horizon_months: int
    min_cohorts: int
    as_of: date | None  # the last day the estimate knows (in tz; None: no data)
    stores: pl.DataFrame
    cohorts: pl.DataFrame

    @property
    def rate(self) -> Decimal | None:
        """The chain's rate (also when not :attr:`enough`: then indicative only)."""
        return self._row(ALL_STORES).get("rate")

    @property
    def enough(self) -> bool:
        """Whether every store (and so the chain) has enough matured cohorts."""
        return not self.stores.is_empty() and bool(self.stores["enough"].all())

    def of(self, store: str) -> Decimal | None:
        """The rate of a store (id or name), or of the chain (``"*"``)."""
        return self._row(store).get("rate")

    def _row(self, store: str) -> dict[str, Any]:
        key = store.casefold()
        for row in self.stores.iter_rows(named=True):
            if key in (row["store_id"].casefold(), row["store_name"].casefold()):
                return row
        return {}

    def check(self, store_ids: Iterable[str] | None = None) -> None:
        """Raise :class:`NotEnoughHistory`, in words, unless the stores (all by default)
        have enough matured cohorts."""
        rows = self.stores.filter(pl.col("store_id") != ALL_STORES)
        if store_ids is not None:
            rows = rows.filter(pl.col("store_id").is_in(list(store_ids)))
        short = rows.filter(~pl.col("enough"))
        if self.stores.is_empty() or not short.is_empty():
            names = ", ".join(short["store_name"].to_list()) or "the chain"
            raise NotEnoughHistory(
                f"Breakage cannot be recognised in proportion to redemptions yet: {names} "
                f"lack(s) matured cohorts. {self}. Nothing was guessed: use "
                "breakage='remote' (recognise balances once redemption is remote) or "
                "breakage=None, or give rate= from another source (e.g. an audited estimate)."
            )

    def __str__(self) -> str:
        if self.stores.is_empty():
            return "No cards were sold in the data: there is no breakage rate to estimate"
        chain = self._row(ALL_STORES)
        days = horizon_days(self.horizon_months)
        rule = (
            f"a month's cohort matures {days} days ({self.horizon_months} months) after the "
            f"month ends; {self.min_cohorts} matured cohorts are needed"
        )
        known = f"as of {self.as_of}" if self.as_of else ""
        if not chain["enough"]:
            first = chain["first_estimate"]
            when = f"; the first estimate is possible on {first}" if first else ""
            found = (
                f"the chain has {chain['cohorts']} (rate so far {_pct(chain['rate'])}, "
                "indicative only)"
                if chain["cohorts"]
                else "the chain has none yet"
            )
            return f"Breakage rate {known}: not enough history ({rule}; {found}{when})"
        parts = [
            f"{row['store_name']} {_pct(row['rate'])}"
            + ("" if row["enough"] else f" (only {row['cohorts']} cohorts: not enough)")
            for row in self.stores.iter_rows(named=True)
            if row["store_id"] != ALL_STORES
        ]
        late = chain["late"]
        caution = (
            f". Caution: {_pct(late)} of loaded value was still redeemed in the horizon's "
            f"last {_tail(horizon_days(self.horizon_months))} days, so redemptions had not "
            "stopped and the rate may overstate breakage"
            if late is not None and late > Decimal("0.01")
            else ""
        )
        return (
            f"Breakage rate {known}: {_pct(chain['rate'])} of loaded value is never redeemed "
            f"(about 95% sure: {_pct(chain['low'])} to {_pct(chain['high'])}), from "
            f"{chain['cohorts']} matured cohorts ({rule}). By home store: "
            + "; ".join(parts)
            + caution
        )


def _tail(days: int) -> int:
    """The horizon's late days, whose redemptions say whether they had stopped: the longest
    whole division of the horizon up to a quarter of it (a curve on this step is cheap)."""
    return max(d for d in range(1, days // 4 + 1) if days % d == 0) if days >= 4 else days


def _pct(share: Decimal | None) -> str:
    return "n/a" if share is None else f"{share * 100:.2f}%"


def _months_later(first: date, months: int) -> date:
    year, month = divmod(first.month - 1 + months, 12)
    return date(first.year + year, month + 1, 1)


def breakage_rate(
    txs: Frame,
    as_of: date | datetime | None = None,
    horizon_months: int = 24,
    *,
    min_cohorts: int = 12,
    tz: str = "UTC",
) -> BreakageRate:
    """The expected share of loaded value never redeemed, from the chain's matured monthly
    cohorts (see :class:`BreakageRate` for what "matured" means and what comes back).

    Built on ``analytics.redemption_curve`` (by month of sale, each card at its home
    store). ``as_of``: what was known at the end of that day (default: the data's end).
    """
    if not isinstance(horizon_months, int) or horizon_months < 1:
        raise ValueError(f"horizon_months={horizon_months!r}: give a whole number of months")
    if not isinstance(min_cohorts, int) or min_cohorts < 2:
        raise ValueError(f"min_cohorts={min_cohorts!r}: give 2 or more (12: a year of sales)")
    window = _window(tz, as_of=as_of)
    days = horizon_days(horizon_months)
    tail = _tail(days)
    curve = analytics.redemption_curve(
        txs, days, tail, cohort="1mo", as_of=as_of, tz=tz, by="store"
    )
    last = _bounds(txs, window).collect(engine=ENGINE).item(0, "last")
    known = window.stop(last) if last is not None else None
    empty = pl.DataFrame(schema=_RATE_STORE_SCHEMA)
    day = window.day(known - timedelta(microseconds=1)) if known is not None else None
    if curve.is_empty() or known is None:
        return BreakageRate(horizon_months, min_cohorts, day, empty, _cohort_frame([]))
    cohorts = curve.filter(pl.col("days") == 0).select("store_id", "store_name", "cohort_start")
    ends = curve.filter(pl.col("days").is_in([days, days - tail])).pivot(
        "days",
        index=["store_id", "store_name", "cohort_start", "cohort_end", "cards"],
        values=["loaded", "redeemed"],
    )
    matured_rows = []
    for row in ends.iter_rows(named=True):
        matured_on = row["cohort_end"] + timedelta(days=1 + days)
        if row.get(f"loaded_{days}") is None or window.midnight(matured_on) > known:
            continue
        loaded, redeemed = row[f"loaded_{days}"], row[f"redeemed_{days}"]
        matured_rows.append(
            {
                "store_id": row["store_id"],
                "store_name": row["store_name"],
                "cohort_start": row["cohort_start"],
                "cohort_end": row["cohort_end"],
                "matured_on": matured_on,
                "cards": row["cards"],
                "loaded": loaded,
                "redeemed": redeemed,
                "never_redeemed": loaded - redeemed,
                "late": redeemed - (row.get(f"redeemed_{days - tail}") or Decimal(0)),
            }
        )
    matured = _cohort_frame(matured_rows)
    stores = [
        _rate_row(
            store_id,
            group["store_name"][0],
            matured.filter(pl.col("store_id") == store_id),
            sorted(group["cohort_start"].to_list()),
            min_cohorts,
            days,
        )
        for (store_id,), group in cohorts.group_by("store_id", maintain_order=True)
    ]
    frame = pl.DataFrame(stores, schema=_RATE_STORE_SCHEMA).sort("store_id")
    return BreakageRate(horizon_months, min_cohorts, day, frame, matured.drop("late"))


_COHORT_SCHEMA: dict[str, Any] = {
    "store_id": pl.String,
    "store_name": pl.String,
    "cohort_start": pl.Date,
    "cohort_end": pl.Date,
    "matured_on": pl.Date,
    "cards": pl.Int64,
    "loaded": MONEY,
    "redeemed": MONEY,
    "never_redeemed": MONEY,
    "late": MONEY,
}
_SHARE = pl.Decimal(10, 4)
_RATE_STORE_SCHEMA: dict[str, Any] = {
    "store_id": pl.String,
    "store_name": pl.String,
    "cohorts": pl.Int64,
    "waiting": pl.Int64,
    "loaded": MONEY,
    "never_redeemed": MONEY,
    "rate": _SHARE,
    "low": _SHARE,
    "high": _SHARE,
    "late": _SHARE,
    "enough": pl.Boolean,
    "first_estimate": pl.Date,
}


def _cohort_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema=_COHORT_SCHEMA)
    return frame.with_columns(
        pl.when(pl.col("loaded") > 0)
        .then(pl.col("never_redeemed").cast(pl.Float64) / pl.col("loaded").cast(pl.Float64))
        .round(4)
        .alias("rate")
    ).sort("store_id", "cohort_start")


def _share(part: Decimal, whole: Decimal) -> Decimal | None:
    return (part / whole).quantize(RATE_PLACES, ROUND_HALF_EVEN) if whole else None


def _rate_row(
    store_id: str,
    store_name: str,
    matured: pl.DataFrame,
    all_cohorts: list[date],
    min_cohorts: int,
    days: int,
) -> dict[str, Any]:
    """A store's (or the chain's) estimate from its matured cohorts: a ratio estimator
    (never redeemed over loaded, by value) with its standard error over the cohorts."""
    n = matured.height
    loaded = sum(matured["loaded"].to_list(), Decimal(0))
    never = sum(matured["never_redeemed"].to_list(), Decimal(0))
    rate = _share(never, loaded)
    low = high = None
    if rate is not None and n >= 2:
        ratio = float(never / loaded)
        spread = sum(
            (float(y) - ratio * float(x)) ** 2
            for x, y in zip(matured["loaded"], matured["never_redeemed"], strict=True)
        )
        error = math.sqrt(spread / (n * (n - 1))) / (float(loaded) / n)
        low = Decimal(max(0.0, ratio - 2 * error)).quantize(RATE_PLACES)
        high = Decimal(min(1.0, ratio + 2 * error)).quantize(RATE_PLACES)
    late = _share(sum(matured["late"].to_list(), Decimal(0)), loaded)
    enough = n >= min_cohorts
    first_estimate = None
    if not enough and all_cohorts:
        month = _months_later(all_cohorts[0], min_cohorts - 1)
        if len(all_cohorts) >= min_cohorts:
            month = all_cohorts[min_cohorts - 1]
        first_estimate = _months_later(month, 1) + timedelta(days=days)
    return {
        "store_id": store_id,
        "store_name": store_name,
        "cohorts": n,
        "waiting": len(all_cohorts) - n,
        "loaded": loaded,
        "never_redeemed": never,
        "rate": rate,
        "low": low,
        "high": high,
        "late": late,
        "enough": enough,
        "first_estimate": first_estimate,
    }


# ---------------------------------------------------------------------- journal


@_exact_cards
def journal(
    txs: Frame,
    every: str = "1mo",
    as_of: date | datetime | None = None,
    breakage: str | None = "proportional",
    stores: Stores = None,
    tz: str = "UTC",
    *,
    rate: BreakageRate | Decimal | str | None = None,
    horizon_months: int = 24,
    min_cohorts: int = 12,
    dormant_days: int = 365,
    rules: pl.DataFrame | str | Path | None = None,
    jurisdictions: Any = None,
) -> pl.DataFrame:
    """The gift card journal: per period (``every``) and store, its entries' lines.

    Entries (column ``entry``): ``sales and reloads`` (debit ``cash`` at the till, credit
    ``gift_card_liability`` at the card's home store), ``redemptions`` (debit
    ``gift_card_liability`` at home, credit ``revenue`` at the till), with
    ``interstore_clearing`` between the two stores when they differ (it nets to zero across
    the chain), and ``breakage`` (debit ``gift_card_liability``, credit ``breakage_income``,
    at home; the other way round where recognised breakage is reversed). Every store's
    entry balances; ``liability closing + breakage recognised so far`` is what the cards
    hold (``analytics.liability``).

    ``breakage``: ``None`` recognises none; ``"remote"`` a card's balance once it has been
    idle ``dormant_days`` (reversed if it is used again); ``"proportional"`` (ASC 606 /
    IFRS 15) ``rate / (1 - rate)`` of each redemption, so that by the time the expected
    redemptions have happened the expected breakage (``rate`` of what was loaded) is
    recognised. The rate is each home store's own, as :func:`breakage_rate` knew it at each
    period's end (``horizon_months``, ``min_cohorts``): a period before enough cohorts had
    matured recognises none, and the first one that can catches up; a change of estimate
    likewise, so each period's lines are those a month-by-month close posted. Without enough
    matured cohorts at ``as_of`` it refuses (:class:`NotEnoughHistory`) unless ``rate`` (a
    :class:`BreakageRate`, or a share for every store and period) is given. Recognised
    breakage never exceeds what a store's cards hold.

    ``rules`` and ``jurisdictions`` (as for :func:`unclaimed`) leave out of breakage the
    stores whose unspent balances a state's unclaimed-property law claims (not exempt): the
    standards forbid recognising those as income. ``stores=`` keeps those stores' lines.
    The journal starts at the data's first transaction: pass each card's whole history.
    Columns: ``period_start``, ``period_end``, ``store_id``, ``store_name``, ``entry``,
    ``account``, ``debit``, ``credit`` (money; the other one null), ``memo``.
    """
    _check_every(every)
    if breakage not in METHODS:
        raise ValueError(
            f"breakage={breakage!r}: give 'proportional' (in proportion to redemptions, with "
            "an estimated rate), 'remote' (balances idle dormant_days), or None (none)"
        )
    window = _window(tz, as_of=as_of)
    chosen = _chosen(txs, stores)
    lf = _read(txs, window.cut)
    follow = _follow(txs, window.cut)
    per_card = _held(follow.rows(lf, "home_store_id", "home_store_name", "opening_balance", "gap"))
    moves = _joined(lf, per_card, "home_store_id")
    flows = moves.group_by("home_store_id", "store_id", _period_of(window, every), "type").agg(
        pl.col("amount").sum().cast(MONEY)
    )
    homes = per_card.group_by("home_store_id", "home_store_name").agg(
        pl.col("opening_balance").sum().cast(MONEY).alias("opening"),
        pl.col("gap").sum(),
    )
    names = lf.group_by("store_id").agg(pl.col("store_name").first())
    queries = [flows, homes, names, _bounds(txs, window)]
    if breakage == "remote":
        queries.append(_dormancy_starts(lf, per_card, window, every, dormant_days))
    flows_df, homes_df, names_df, bounds_df, *more = pl.collect_all(queries, engine=ENGINE)
    _warn_partial(homes_df.select("gap"))
    first, last = bounds_df.row(0)
    if first is None:
        return pl.DataFrame(schema=_JOURNAL_SCHEMA)
    stop = window.stop(last)
    periods = _periods(
        window.day(first), window.day(stop - timedelta(microseconds=1)), every, window
    )
    lines = _flow_lines(flows_df)
    if breakage is not None:
        owed = _escheat_stores(rules, jurisdictions, homes_df) if rules is not None else set()
        balances = _home_balances(flows_df, homes_df, periods)
        if breakage == "remote":
            recognised = _remote(balances, more[0], stop)
            memo = f"balances of cards idle {dormant_days} days or more"
        else:
            if rate is None:
                rate = breakage_rate(txs, as_of, horizon_months, min_cohorts=min_cohorts, tz=tz)
            wanted = set(homes_df["home_store_id"]) - owed
            if chosen is not None:
                wanted &= set(chosen["store_id"])
            recognised = _proportional(balances, _rates(rate, wanted, periods, stop, window))
            memo = "in proportion to redemptions"
        lines = pl.concat([lines, _breakage_lines(recognised, owed, memo)])
    names_df = pl.concat(
        [
            names_df,
            homes_df.select(
                pl.col("home_store_id").alias("store_id"),
                pl.col("home_store_name").alias("store_name"),
            ),
        ]
    ).unique("store_id", keep="first")
    out = (
        lines.filter(pl.col("amount") != 0)
        .join(periods.select("period_start", "period_end"), on="period_start")
        .join(names_df, on="store_id", how="left")
        .with_columns(
            pl.when(pl.col("amount") > 0).then(pl.col("amount")).cast(MONEY).alias("debit"),
            pl.when(pl.col("amount") < 0).then(-pl.col("amount")).cast(MONEY).alias("credit"),
            pl.col("entry").replace_strict(ENTRIES, range(3), return_dtype=pl.Int8).alias("_e"),
            pl.col("account").replace_strict(ACCOUNTS, range(5), return_dtype=pl.Int8).alias("_a"),
        )
    )
    if chosen is not None:
        out = out.filter(pl.col("store_id").is_in(chosen["store_id"].to_list()))
    return out.sort("period_start", "store_id", "_e", "_a").select(*_JOURNAL_SCHEMA)


def _flow_lines(flows: pl.DataFrame) -> pl.DataFrame:
    """Signed lines (debit +, credit -) of the sales, reloads and redemptions: ``flows`` is
    money per home store, till store, period and type."""
    loads = flows.filter(pl.col("type") != "redeem")
    redeems = flows.filter(pl.col("type") == "redeem")
    away = pl.col("home_store_id") != pl.col("store_id")

    def at(frame: pl.DataFrame, store: str, entry: str, account: str, sign: int) -> pl.DataFrame:
        return frame.select(
            "period_start",
            pl.col(store).alias("store_id"),
            pl.lit(entry).alias("entry"),
            pl.lit(account).alias("account"),
            (pl.col("amount") * sign).alias("amount"),
        )

    parts = [
        at(loads, "store_id", LOADS, CASH, 1),
        at(loads, "home_store_id", LOADS, LIABILITY, -1),
        # The till took the cash for another store's card: it owes it to the home store.
        at(loads.filter(away), "home_store_id", LOADS, CLEARING, 1),
        at(loads.filter(away), "store_id", LOADS, CLEARING, -1),
        at(redeems, "home_store_id", REDEMPTIONS, LIABILITY, 1),
        at(redeems, "store_id", REDEMPTIONS, REVENUE, -1),
        # The till gave goods for another store's card: the home store owes it their value.
        at(redeems.filter(away), "home_store_id", REDEMPTIONS, CLEARING, -1),
        at(redeems.filter(away), "store_id", REDEMPTIONS, CLEARING, 1),
    ]
    return (
        pl.concat(parts)
        .group_by("period_start", "store_id", "entry", "account")
        .agg(pl.col("amount").sum().cast(MONEY))
        .with_columns(
            pl.struct("entry", "account")
            .map_elements(lambda k: _MEMOS[(k["entry"], k["account"])], return_dtype=pl.String)
            .alias("memo")
        )
    )


def _home_balances(flows: pl.DataFrame, homes: pl.DataFrame, periods: pl.DataFrame) -> pl.DataFrame:
    """Per home store and period: what its cards hold at the period's end (``held``) and
    the redemptions of its cards so far (``redeemed``), every period present."""
    signed = pl.when(pl.col("type") == "redeem").then(-pl.col("amount")).otherwise("amount")
    per = flows.group_by("home_store_id", "period_start").agg(
        signed.sum().alias("change"),
        pl.col("amount").filter(pl.col("type") == "redeem").sum().alias("redeemed"),
    )
    return (
        homes.select("home_store_id", "opening")
        .join(periods.select("period_start", "_to"), how="cross")
        .join(per, on=["home_store_id", "period_start"], how="left")
        .sort("home_store_id", "period_start")
        .with_columns(
            (pl.col("change").fill_null(0).cum_sum().over("home_store_id") + pl.col("opening"))
            .cast(MONEY)
            .alias("held"),
            pl.col("redeemed").fill_null(0).cum_sum().over("home_store_id").cast(MONEY),
        )
        .select("home_store_id", "period_start", "_to", "held", "redeemed")
    )


def _dormancy_starts(
    lf: pl.LazyFrame, per_card: pl.LazyFrame, window: Any, every: str, dormant_days: int
) -> pl.LazyFrame:
    """When cards' balances become remote and stop being so, per home store and period:
    ``+balance`` in the period at whose end its card has first been idle ``dormant_days``
    (``starts``: that instant), ``-balance`` in the period the card is used again. A balance
    counts at a period's end ``e`` when ``starts <= e`` and no transaction came before ``e``
    since (the rule of ``analytics.breakage``)."""
    if not isinstance(dormant_days, int) or dormant_days < 1:
        raise ValueError(f"dormant_days={dormant_days!r}: give a whole number of days, e.g. 365")
    idle = pl.duration(days=dormant_days)
    # Sorted by card and time, a card's next transaction is the next row (when it is the
    # same card's): cheaper than a window over cards. Transactions of one instant are taken
    # in the server's order (their place in the batch), whatever the rows' order. Cards are
    # sorted by their key (a number, when it can be), which keeps each card's rows together
    # as its text does, and sorts far faster.
    key = _card_key(per_card)
    same_card = pl.col(_CARD_KEY).shift(-1) == pl.col(_CARD_KEY)
    spans = (
        lf.select(key, "at", "position", "new_balance")
        .sort(_CARD_KEY, "at", "position")
        .with_columns(pl.when(same_card).then(pl.col("at").shift(-1)).alias("next_at"))
        .filter(
            (pl.col("new_balance") > 0)
            & (pl.col("next_at").is_null() | (pl.col("next_at") - pl.col("at") >= idle))
        )
    )
    spans = spans.join(per_card.select(_CARD_KEY, "home_store_id"), on=_CARD_KEY).with_columns(
        (pl.col("at") + idle).alias("starts"),
        (pl.col("at") + idle - pl.duration(microseconds=1)).alias("before"),
    )
    return pl.concat(
        [
            spans.select(
                "home_store_id",
                _period_of(window, every, "before"),
                pl.col("new_balance").alias("amount"),
                "starts",
            ),
            spans.filter(pl.col("next_at").is_not_null()).select(
                "home_store_id",
                _period_of(window, every, "next_at"),
                (-pl.col("new_balance")).alias("amount"),
                "starts",
            ),
        ]
    )


def _remote(balances: pl.DataFrame, events: pl.DataFrame, stop: datetime) -> pl.DataFrame:
    """Breakage recognised so far per home store and period (``recognised``), remote rule."""
    known = events.filter(pl.col("starts") <= stop).group_by("home_store_id", "period_start")
    totals = known.agg(pl.col("amount").sum())
    return (
        balances.join(totals, on=["home_store_id", "period_start"], how="left")
        .sort("home_store_id", "period_start")
        .with_columns(
            pl.col("amount")
            .fill_null(0)
            .cum_sum()
            .over("home_store_id")
            .cast(MONEY)
            .alias("recognised"),
            pl.lit(None, dtype=_SHARE).alias("rate"),
        )
        .select("home_store_id", "period_start", "recognised", "rate")
    )


def _rates(
    rate: BreakageRate | Decimal | str,
    wanted: set[str],
    periods: pl.DataFrame,
    stop: datetime,
    window: Any,
) -> pl.DataFrame:
    """Per home store and period, the rate known at the period's end (null: no estimate
    yet, or a store left out)."""
    ends = [min(to, stop) for to in periods["_to"]]
    starts = periods["period_start"].to_list()
    rows: list[tuple[str, date, Decimal | None]] = []
    if isinstance(rate, BreakageRate):
        rate.check(wanted)
        for store_id in sorted(wanted):
            cohorts = rate.cohorts.filter(pl.col("store_id") == store_id).sort("matured_on")
            matured = [window.midnight(d) for d in cohorts["matured_on"]]
            loaded, never = cohorts["loaded"].to_list(), cohorts["never_redeemed"].to_list()
            for start, end in zip(starts, ends, strict=True):
                n = sum(1 for m in matured if m <= end)
                known = n >= rate.min_cohorts
                share = _share(sum(never[:n], Decimal(0)), sum(loaded[:n], Decimal(0)))
                rows.append((store_id, start, share if known else None))
    else:
        share = _given_rate(rate)
        rows = [(store_id, start, share) for store_id in sorted(wanted) for start in starts]
    return pl.DataFrame(
        rows,
        schema={"home_store_id": pl.String, "period_start": pl.Date, "rate": _SHARE},
        orient="row",
    )


def _given_rate(rate: Decimal | str | float) -> Decimal:
    try:
        share = Decimal(str(rate))
    except ArithmeticError:
        share = Decimal("NaN")
    if not share.is_finite() or not 0 <= share < 1:
        raise ValueError(
            f"rate={rate!r}: give the share of loaded value never redeemed, from 0 to below "
            "1 (e.g. Decimal('0.12') for 12%), or a BreakageRate from breakage_rate()"
        )
    return share.quantize(RATE_PLACES, ROUND_HALF_EVEN)


def _proportional(balances: pl.DataFrame, rates: pl.DataFrame) -> pl.DataFrame:
    """Breakage recognised so far per home store and period: ``rate / (1 - rate)`` of the
    store's cards' redemptions so far, to the cent, never more than its cards hold."""
    rows = balances.join(rates, on=["home_store_id", "period_start"], how="left")
    recognised = []
    for held, redeemed, share in rows.select("held", "redeemed", "rate").iter_rows():
        if share is None or share == 0 or redeemed == 0:
            recognised.append(Decimal("0.00"))
        else:
            due = (redeemed * share / (1 - share)).quantize(CENT, ROUND_HALF_EVEN)
            recognised.append(min(due, held))
    return rows.select(
        "home_store_id",
        "period_start",
        pl.Series("recognised", recognised, dtype=MONEY),
        "rate",
    )


def _breakage_lines(recognised: pl.DataFrame, owed: set[str], how: str) -> pl.DataFrame:
    """The breakage entry's lines: each period's change of the breakage recognised so far."""
    change = (
        recognised.filter(~pl.col("home_store_id").is_in(list(owed)))
        .sort("home_store_id", "period_start")
        .with_columns(
            (
                pl.col("recognised")
                - pl.col("recognised").shift(1, fill_value=0).over("home_store_id")
            )
            .cast(MONEY)
            .alias("amount")
        )
    )
    rated = (
        pl.when(pl.col("rate").is_not_null())
        .then(pl.format(" (rate {}%)", (pl.col("rate") * 100).cast(pl.Decimal(10, 2))))
        .otherwise(pl.lit(""))
    )
    memo = (
        pl.when(pl.col("amount") >= 0)
        .then(pl.lit(f"breakage recognised: {how}"))
        .otherwise(pl.lit(f"breakage reversed (cards spent after all): {how}"))
        + rated
    )
    base = change.select(
        "period_start",
        pl.col("home_store_id").alias("store_id"),
        pl.lit(BREAKAGE).alias("entry"),
        "amount",
        memo.alias("memo"),
    )
    return pl.concat(
        [
            base.with_columns(pl.lit(LIABILITY).alias("account")),
            base.with_columns(pl.lit(BREAKAGE_INCOME).alias("account"), -pl.col("amount")),
        ]
    ).select("period_start", "store_id", "entry", "account", pl.col("amount").cast(MONEY), "memo")


# ------------------------------------------------------------- unclaimed property


_RULES_SCHEMA: dict[str, Any] = {
    "jurisdiction": pl.String,
    "name": pl.String,
    "dormancy_years": pl.Int64,
    "exempt": pl.Boolean,
    "note": pl.String,
}
_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}


def read_rules(source: pl.DataFrame | str | Path = EXAMPLE_RULES) -> pl.DataFrame:
    """An unclaimed-property rules table, checked: one row per jurisdiction (ISO 3166,
    ``US-NY``) with ``dormancy_years`` (after how many years without use a balance is
    presumed abandoned and owed to the state) and ``exempt`` (true: gift cards are exempt
    there, so nothing is owed); ``name`` and ``note`` optional. From a CSV file (lines
    starting with ``#`` are comments) or a DataFrame. Every problem is named at once in a
    :class:`RulesProblem`. The shipped ``EXAMPLE_RULES`` is an example, not legal advice.
    """
    if isinstance(source, pl.DataFrame):
        table, where = source.cast(pl.String), "the rules table"
    else:
        path = Path(source)
        if not path.is_file():
            raise RulesProblem(f"no rules file {path}: give a CSV file or a DataFrame")
        table = pl.read_csv(path, infer_schema=False, comment_prefix="#")
        where = str(path)
    missing = [c for c in ("jurisdiction", "dormancy_years", "exempt") if c not in table.columns]
    if missing:
        raise RulesProblem(
            f"{where} needs the columns jurisdiction, dormancy_years, exempt (missing: "
            f"{', '.join(missing)}; it has {', '.join(table.columns)})"
        )
    problems, rows, seen = [], [], set()
    for number, row in enumerate(table.iter_rows(named=True), start=1):
        code = (row["jurisdiction"] or "").strip().upper()
        flag = (row["exempt"] or "").strip().lower()
        years = (row["dormancy_years"] or "").strip()
        if not JURISDICTION.match(code):
            problems.append(
                f"row {number}: jurisdiction {row['jurisdiction']!r} is not an ISO 3166 code "
                f"such as {JURISDICTION_EXAMPLE}"
            )
        elif code in seen:
            problems.append(f"row {number}: {code} is given twice")
        seen.add(code)
        if flag not in _TRUE | _FALSE:
            problems.append(f"row {number}: exempt must be true or false (got {row['exempt']!r})")
        exempt = flag in _TRUE
        if not exempt and not (years.isdigit() and int(years) > 0):
            problems.append(
                f"row {number}: dormancy_years must be a whole number of years above 0 for a "
                f"jurisdiction that is not exempt (got {row['dormancy_years']!r})"
            )
        rows.append(
            {
                "jurisdiction": code,
                "name": row.get("name"),
                "dormancy_years": int(years) if years.isdigit() else None,
                "exempt": exempt,
                "note": row.get("note"),
            }
        )
    if problems:
        raise RulesProblem(f"{where}: " + "; ".join(problems) + ". Nothing was computed.")
    return pl.DataFrame(rows, schema=_RULES_SCHEMA)


def _store_jurisdictions(jurisdictions: Any, homes: pl.DataFrame) -> dict[str, str]:
    """Each home store's (``home_store_id``, ``home_store_name``) jurisdiction, by id, from
    ``Store`` objects or a mapping of store id or name to code; refuses in words a store
    with none."""
    if jurisdictions is None:
        raise RulesProblem(
            "say where each store trades: jurisdictions=session.stores (the server reports "
            "each store's jurisdiction) or a mapping such as {'Riverside Mall': 'US-TX'}"
        )
    if isinstance(jurisdictions, Mapping):
        given = {str(k).casefold(): str(v).strip().upper() for k, v in jurisdictions.items()}
    else:
        given = {}
        for store in jurisdictions:
            code = str(getattr(store, "jurisdiction", "") or "").strip().upper()
            for key in (getattr(store, "id", ""), getattr(store, "name", "")):
                if key:
                    given[str(key).casefold()] = code
    found: dict[str, str] = {}
    missing = []
    for store_id, name in homes.select("home_store_id", "home_store_name").unique().iter_rows():
        found_code = given.get(store_id.casefold()) or given.get(str(name).casefold())
        if found_code:
            found[store_id] = found_code
        else:
            missing.append(f"{name} ({store_id})")
    if missing:
        raise RulesProblem(
            f"no jurisdiction for {', '.join(sorted(missing))}: set it on the server "
            "('giftcard-toolkit admin set-jurisdiction --store GUID --jurisdiction US-NY') "
            "or give it in jurisdictions=; nothing was computed"
        )
    return found


def _rules_for(
    rules: pl.DataFrame | str | Path, jurisdictions: Any, homes: pl.DataFrame
) -> pl.DataFrame:
    """Per home store (``home_store_id``), its jurisdiction's rule; refuses a store whose
    jurisdiction the table lacks."""
    table = read_rules(rules)
    where = _store_jurisdictions(jurisdictions, homes)
    names = dict(homes.select("home_store_id", "home_store_name").iter_rows())
    known = set(table["jurisdiction"])
    lacking = sorted({code for code in where.values() if code not in known})
    if lacking:
        stores = ", ".join(
            sorted(f"{names[s]} ({code})" for s, code in where.items() if code in lacking)
        )
        raise RulesProblem(
            f"the rules table has no row for {', '.join(lacking)} (the jurisdiction of "
            f"{stores}): add one (jurisdiction, dormancy_years, exempt); nothing was computed"
        )
    return pl.DataFrame({"home_store_id": list(where), "jurisdiction": list(where.values())}).join(
        table.select("jurisdiction", "dormancy_years", "exempt"), on="jurisdiction"
    )


def _escheat_stores(rules: Any, jurisdictions: Any, homes: pl.DataFrame) -> set[str]:
    """The home stores whose unspent balances a state claims (jurisdiction not exempt)."""
    found = _rules_for(rules, jurisdictions, homes)
    return set(found.filter(~pl.col("exempt"))["home_store_id"])


def unclaimed(
    txs: Frame,
    as_of: date | datetime,
    rules: pl.DataFrame | str | Path,
    *,
    jurisdictions: Any = None,
    stores: Stores = None,
    tz: str = "UTC",
) -> pl.DataFrame:
    """The balances presumed abandoned at the end of ``as_of``: owed to a state as
    unclaimed property, not the chain's to keep or recognise as breakage.

    A card's balance is presumed abandoned once its card has not been used for its
    jurisdiction's ``dormancy_years`` (``rules``: see :func:`read_rules`), counted from its
    last transaction, in ``tz``; an exempt jurisdiction claims nothing. A card's
    jurisdiction is its home store's: ``jurisdictions`` is the stores as the server lists
    them (``session.stores``: ``/Auth/verify`` reports each store's) or a mapping of store
    id or name to code. Which state is owed in the end follows the priority rules (the
    owner's address, else the issuer's state of incorporation): with counsel's word, map
    every store to that state. Follows cards (``stores=``: home stores). Columns:
    ``store_id``, ``store_name`` (the home store), ``jurisdiction``, ``card_ref``,
    ``card_last4``, ``sold_at``, ``last_used``, ``due`` (the day the balance became
    reportable), ``balance``; by jurisdiction, store, then due day.
    """
    window = _window(tz, as_of=as_of)
    if window.as_of is None:
        raise ValueError("as_of: give the day (or moment) the unclaimed balances are as of")
    held = analytics.cards(txs, as_of=as_of, stores=stores, tz=tz).filter(pl.col("balance") > 0)
    homes = held.select("home_store_id", "home_store_name").unique()
    if held.is_empty():
        homes = pl.DataFrame(schema={"home_store_id": pl.String, "home_store_name": pl.String})
    found = _rules_for(rules, jurisdictions, homes)
    local = pl.col("last_used").dt.convert_time_zone(window.zone.key)
    due = local.dt.offset_by(pl.format("{}y", pl.col("dormancy_years")))
    columns: dict[str, Any] = {
        "store_id": pl.String,
        "store_name": pl.String,
        "jurisdiction": pl.String,
        "card_ref": pl.String,
        "card_last4": pl.String,
        "sold_at": held.schema["sold_at"],
        "last_used": held.schema["last_used"],
        "due": pl.Date,
        "balance": MONEY,
    }
    out = (
        held.join(found, on="home_store_id")
        .filter(~pl.col("exempt"))
        .with_columns(due.alias("_due"))
        .filter(pl.col("_due").dt.convert_time_zone("UTC") <= window.as_of)
        .select(
            pl.col("home_store_id").alias("store_id"),
            pl.col("home_store_name").alias("store_name"),
            "jurisdiction",
            "card_ref",
            "card_last4",
            "sold_at",
            "last_used",
            pl.col("_due").dt.date().alias("due"),
            "balance",
        )
    )
    return out.cast(columns).sort("jurisdiction", "store_name", "due", "card_ref")  # type: ignore[arg-type]


# ----------------------------------------------------------------- for finance


def roll_forward(lines: pl.DataFrame, by: str | None = None) -> pl.DataFrame:
    """The liability account period by period, from a :func:`journal` of the whole history:
    ``opening`` + ``loaded`` (sales and reloads) - ``redeemed`` - ``breakage`` (recognised
    in the period) = ``closing``; ``cards_hold`` = ``closing`` + breakage recognised so far,
    what the cards themselves hold (``analytics.liability``). The chain's rows
    (``store_id == "*"``), and with ``by="store"`` each home store's before them. Columns:
    ``period_start``, ``period_end``, ``store_id``, ``store_name``, ``opening``,
    ``loaded``, ``redeemed``, ``breakage``, ``closing``, ``cards_hold``.
    """
    if by not in (None, "store"):
        raise ValueError(f"by={by!r}: give by='store' for each store's rows too, or leave it out")
    owed = lines.filter(pl.col("account") == LIABILITY).with_columns(
        (pl.col("credit").fill_null(0) - pl.col("debit").fill_null(0)).alias("owed")
    )

    def part(entry: str, sign: int) -> pl.Expr:
        return (pl.col("owed").filter(pl.col("entry") == entry).sum() * sign).cast(MONEY)

    per = owed.group_by("period_start", "period_end", "store_id", "store_name").agg(
        part(LOADS, 1).alias("loaded"),
        part(REDEMPTIONS, -1).alias("redeemed"),
        part(BREAKAGE, -1).alias("breakage"),
    )
    grid = (
        lines.select("period_start", "period_end")
        .unique()
        .join(lines.select("store_id", "store_name").unique(), how="cross")
    )
    sums = ["loaded", "redeemed", "breakage"]
    per = grid.join(per, on=["period_start", "period_end", "store_id", "store_name"], how="left")
    per = per.with_columns(pl.col(sums).fill_null(0).cast(MONEY))
    total = (
        per.group_by("period_start", "period_end")
        .agg(pl.col(sums).sum())
        .with_columns(
            pl.lit(ALL_STORES).alias("store_id"), pl.lit(ALL_STORES_NAME).alias("store_name")
        )
    )
    parts = [total.select(per.columns).cast(dict(per.schema))]  # type: ignore[arg-type]
    if by == "store":
        parts.append(per)
    net = pl.col("loaded") - pl.col("redeemed") - pl.col("breakage")
    return (
        pl.concat(parts)
        .sort("store_id", "period_start")
        .with_columns(
            net.cum_sum().over("store_id").cast(MONEY).alias("closing"),
            pl.col("breakage").cum_sum().over("store_id").alias("_so_far"),
        )
        .with_columns(
            (pl.col("closing") - net).cast(MONEY).alias("opening"),
            (pl.col("closing") + pl.col("_so_far")).cast(MONEY).alias("cards_hold"),
        )
        .select(
            "period_start",
            "period_end",
            "store_id",
            "store_name",
            "opening",
            *sums,
            "closing",
            "cards_hold",
        )
        .sort(pl.col("store_id") != ALL_STORES, "store_id", "period_start")
    )


def to_csv(
    lines: pl.DataFrame,
    path: str | Path | None = None,
    *,
    accounts: Mapping[str, str] | None = None,
) -> str | None:
    """A :func:`journal` in the shape a general ledger imports (ERPNext's Journal Entry,
    NetSuite, QuickBooks, Xero, Dynamics all take it): one journal per period and store
    (``journal``, dated its last day, ``date``), one line per account with the period's net
    ``debit`` or ``credit`` (never both, never zero: what importers require), the store as
    the ``location`` dimension (``location_id``: its id), and a ``memo``. ``accounts`` maps
    the toolkit's account names to the ledger's own codes (every one used must be mapped).
    Written to ``path``, or returned as text without it.
    """
    used = set(lines["account"].unique())
    if accounts is not None:
        unmapped = sorted(used - set(accounts))
        if unmapped:
            raise ValueError(
                f"accounts= maps no code for {', '.join(unmapped)}: give one for each of "
                f"{', '.join(sorted(used))}"
            )
    net = pl.col("debit").fill_null(0).sum() - pl.col("credit").fill_null(0).sum()
    out = (
        lines.group_by("period_start", "period_end", "store_id", "store_name", "account")
        .agg(net.cast(MONEY).alias("net"))
        .filter(pl.col("net") != 0)
        .with_columns(pl.col("account").replace_strict(ACCOUNTS, range(5)).alias("_a"))
        .sort("period_end", "store_name", "store_id", "_a")
        .select(
            pl.format(
                "GC-{}-{}",
                pl.col("period_end").dt.strftime("%Y%m%d"),
                pl.col("store_id").str.slice(0, 8),
            ).alias("journal"),
            pl.col("period_end").alias("date"),
            pl.col("account").replace_strict(accounts) if accounts else pl.col("account"),
            pl.when(pl.col("net") > 0).then(pl.col("net")).alias("debit"),
            pl.when(pl.col("net") < 0).then(-pl.col("net")).alias("credit"),
            pl.col("store_name").alias("location"),
            pl.col("store_id").alias("location_id"),
            pl.format(
                "Gift cards {} to {}: {}",
                pl.col("period_start"),
                pl.col("period_end"),
                pl.col("account").replace_strict(_ACCOUNT_WORDS),
            ).alias("memo"),
        )
    )
    return out.write_csv(path) if path is not None else out.write_csv()


_ACCOUNT_WORDS = {
    CASH: "cash taken for cards sold and reloaded",
    LIABILITY: "gift card liability (loaded, less redeemed and breakage)",
    REVENUE: "gift cards redeemed for goods",
    BREAKAGE_INCOME: "breakage recognised",
    CLEARING: "due between stores for cards used away from home",
}
