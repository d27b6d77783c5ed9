"""The analysts' rules, on small frames whose answers are worked out here: time (an ``as_of``
date is the end of that day in ``tz``; weeks from Monday and months in ``tz``; windows
inclusive; a partial period marked) and stores (flows where they happened, card-following
measures at the card's home store; per-store rows add up to the chain's, for any subset)."""

from __future__ import annotations

import inspect
import warnings
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_analytics import STORY, A, B, cards_by_hand, frame_of

from giftcard_toolkit import analytics, frames
from giftcard_toolkit.models import Store

D = Decimal
NY = "America/New_York"
TOTAL = pl.col("store_id") == analytics.ALL_STORES


def _sale(at: datetime, card: str = "t0001", amount: str = "10", store: str = A) -> dict:
    return {
        "store_id": store,
        "card": card,
        "type": "sale",
        "amount": D(amount),
        "previous_balance": D(0),
        "new_balance": D(amount),
        "at": at,
    }


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# ------------------------------------------------------------------ time rules


def test_an_as_of_date_is_the_end_of_that_day_in_tz():
    # 03:00 UTC on the 6th is 22:00 on the 5th in New York.
    late = frame_of([_sale(_utc(2026, 1, 6, 3))])
    assert analytics.cards(late, as_of=date(2026, 1, 5)).height == 0
    assert analytics.cards(late, as_of=date(2026, 1, 5), tz=NY).height == 1
    # The day's last microsecond is in it; the next day's first is not.
    edge = frame_of(
        [
            _sale(_utc(2026, 1, 5, 23, 59, 59, 999999), "t0001"),
            _sale(_utc(2026, 1, 6), "t0002"),
        ]
    )
    assert analytics.cards(edge, as_of=date(2026, 1, 5))["card_last4"].to_list() == ["0001"]
    # A datetime is that instant, included; a naive one is read in tz.
    at = _utc(2026, 1, 6)
    assert analytics.cards(edge, as_of=at).height == 2
    assert analytics.cards(edge, as_of=datetime(2026, 1, 5, 19), tz=NY).height == 2


def test_weeks_start_on_monday_and_months_end_in_tz():
    # Sunday 8 March 2026, 23:30 in New York (daylight time began that morning) is
    # Monday 03:30 UTC; 1 March 03:00 UTC is still February there.
    txs = frame_of(
        [_sale(_utc(2026, 3, 9, 3, 30), "t0001"), _sale(_utc(2026, 3, 1, 3), "t0002", "20")]
    )
    weeks = analytics.summary(txs, "1w", tz=NY)
    assert weeks.select("period_start", "period_end", "sales").rows() == [
        (date(2026, 2, 23), date(2026, 3, 1), 1),
        (date(2026, 3, 2), date(2026, 3, 8), 1),
    ]
    utc_weeks = analytics.summary(txs, "1w")
    assert utc_weeks.select("period_start", "sales").rows() == [
        (date(2026, 2, 23), 1),
        (date(2026, 3, 2), 0),
        (date(2026, 3, 9), 1),
    ], "every week from the first to the last is there, Mondays, zeros included"
    months = analytics.summary(txs, "1mo", tz=NY)
    assert months.select("period_start", "period_end", "sales_amount").rows() == [
        (date(2026, 2, 1), date(2026, 2, 28), D("20")),
        (date(2026, 3, 1), date(2026, 3, 31), D("10")),
    ]
    liability = analytics.liability(txs, "1mo", tz=NY)
    assert liability.select("period_end", "liability").rows() == [
        (date(2026, 2, 28), D("20")),
        (date(2026, 3, 31), D("30")),
    ]


def test_a_partial_last_period_is_marked():
    # Sales on Monday 5 Jan and Wednesday 14 Jan: the second week has not ended.
    txs = frame_of([_sale(_utc(2026, 1, 5, 12), "t0001"), _sale(_utc(2026, 1, 14, 12), "t0002")])
    for result in (analytics.summary(txs, "1w"), analytics.liability(txs, "1w")):
        assert result.select("period_start", "complete").rows() == [
            (date(2026, 1, 5), True),
            (date(2026, 1, 12), False),
        ]
    # Known to the end of Sunday the 18th: the week is whole.
    whole = analytics.summary(txs, "1w", as_of=date(2026, 1, 18))
    assert whole["complete"].to_list() == [True, True]
    # A window that cuts into a period leaves it partial (a flow saw only part of it).
    cut = analytics.summary(txs, "1mo", since=date(2026, 1, 10), as_of=date(2026, 1, 31))
    assert cut.select("period_start", "complete", "sales").rows() == [(date(2026, 1, 1), False, 1)]


def test_windows_include_both_ends():
    txs = frame_of(
        [
            _sale(_utc(2026, 1, 4, 23, 59), "t0001"),
            _sale(_utc(2026, 1, 5), "t0002"),
            _sale(_utc(2026, 1, 6, 23, 59, 59, 999999), "t0003"),
            _sale(_utc(2026, 1, 7), "t0004"),
        ]
    )
    days = analytics.summary(txs, since=date(2026, 1, 5), until=date(2026, 1, 6))
    assert days.select("period_start", "sales").rows() == [
        (date(2026, 1, 5), 1),
        (date(2026, 1, 6), 1),
    ]
    instants = analytics.summary(txs, since=_utc(2026, 1, 5), until=_utc(2026, 1, 7))
    assert instants["sales"].sum() == 3, "a datetime until includes that instant"
    with pytest.raises(ValueError, match="since=.* is after until="):
        analytics.summary(txs, since=date(2026, 1, 7), until=date(2026, 1, 5))


def test_card_following_measures_read_the_history_before_the_window():
    full = analytics.liability(STORY, by="store")
    window = analytics.liability(STORY, by="store", since=date(2026, 1, 6))
    # Alpha's cards were sold on the 5th: on the 6th they still hold 95, not -25.
    assert window.equals(full.filter(pl.col("period_start") >= date(2026, 1, 6)))
    assert window.filter(pl.col("store_name") == "Alpha")["liability"].to_list() == [D("95")]


def test_liability_at_a_period_end_is_what_the_cards_hold_then():
    for every, tz in (("1d", "UTC"), ("1d", NY), ("1w", NY)):
        periods = analytics.liability(STORY, every, tz=tz, by="store")
        for row in periods.filter(pl.col("complete")).iter_rows(named=True):
            held = analytics.cards(STORY, as_of=row["period_end"], tz=tz)
            if row["store_id"] != analytics.ALL_STORES:
                held = held.filter(pl.col("home_store_id") == row["store_id"])
            assert row["liability"] == held["balance"].sum(), (every, tz, row)


def test_flows_by_store_give_every_store_of_the_data_its_rows_whatever_the_window():
    # Beta sold once, on the 2nd; Alpha on the 1st and the 10th.
    txs = frame_of(
        [
            _sale(_utc(2026, 1, 1, 12), "t0001"),
            _sale(_utc(2026, 1, 2, 12), "t0002", "20", store=B),
            _sale(_utc(2026, 1, 10, 12), "t0003", "30"),
        ]
    )
    whole = analytics.summary(txs, "1w", by="store")
    assert sorted(set(whole["store_name"].to_list())) == ["All stores", "Alpha", "Beta"]
    for window in ({"since": date(2026, 1, 5)}, {"until": date(2026, 1, 1)}):
        flows = analytics.summary(txs, "1w", by="store", **window)
        assert sorted(set(flows["store_name"].to_list())) == ["All stores", "Alpha", "Beta"]
    later = analytics.summary(txs, "1w", by="store", since=date(2026, 1, 5))
    beta = later.filter(pl.col("store_name") == "Beta")
    assert beta.select("period_start", "sales", "sales_amount").rows() == [
        (date(2026, 1, 5), 0, D("0"))
    ], "a store with nothing in the window has its zeros"


# ---------------------------------------------------------------------- stores


def test_flows_count_where_they_happen_cards_at_their_home_store():
    # c1 was sold at Alpha and 30 of it spent at Beta 20 minutes later.
    flows = analytics.summary(STORY, by="store", until=date(2026, 1, 5))
    beta = flows.filter(pl.col("store_name") == "Beta").row(0, named=True)
    assert (beta["redemptions"], beta["redemptions_amount"]) == (1, D("30"))
    held = analytics.liability(STORY, by="store", until=date(2026, 1, 5))
    # Every store of the data has its row: Beta, home of no card yet, holds nothing.
    assert dict(held.select("store_name", "liability").rows()) == {
        "All stores": D("120"),
        "Alpha": D("120"),
        "Beta": D("0"),
    }
    pairs = analytics.cross_store(STORY)
    away = pairs.filter(pl.col("away")).row(0, named=True)
    assert (away["home_store_name"], away["store_name"], away["redeemed"]) == (
        "Alpha",
        "Beta",
        D("30"),
    )
    assert away["share"] == pytest.approx(30 / 55), "of Alpha's cards' 55 redeemed"


def test_stores_by_id_name_any_case_or_store():
    want = analytics.breakage(STORY, date(2026, 1, 6), stores=[A])
    assert want["balance"].sum() == D("95")
    for stores in ("Alpha", "alpha", A.upper(), [Store(id=A, name="Alpha")]):
        got = analytics.breakage(STORY, date(2026, 1, 6), stores=stores)
        assert got["balance"].to_list() == want["balance"].to_list(), stores
    assert set(want["store_name"]) == {"Stores: Alpha"}, "the total says what it totals"


def test_an_unknown_store_is_refused_in_words():
    with pytest.raises(ValueError, match=r"\['Gamma'\]: no such store.*Alpha \(aaaa.*Beta"):
        analytics.liability(STORY, stores=["Alpha", "Gamma"])
    with pytest.raises(ValueError, match="keeps no store"):
        analytics.summary(STORY, stores=[])


def test_filtering_transactions_first_is_caught():
    beta_only = STORY.filter(pl.col("store_name") == "Beta")
    with pytest.warns(analytics.PartialHistoryWarning, match="filtered to some stores"):
        wrong = analytics.breakage(beta_only, date(2026, 1, 6), dormant_days=1)
    right = analytics.breakage(STORY, date(2026, 1, 6), dormant_days=1, stores="Beta")
    assert wrong["breakage"].sum() == D("70"), "c1's 70 counted at Beta, as if idle there"
    assert right["breakage"].sum() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        analytics.breakage(STORY, date(2026, 1, 6), stores="Beta", by="store")
        analytics.liability(STORY, stores="Beta")


def test_bad_keywords_are_refused_in_words():
    with pytest.raises(ValueError, match="every='1m'.*'1mo' \\(months\\)"):
        analytics.summary(STORY, "1m")
    with pytest.raises(ValueError, match="by='stores'.*by='store'"):
        analytics.liability(STORY, by="stores")
    with pytest.raises(ValueError, match="tz='New York' is not a time zone"):
        analytics.summary(STORY, tz="New York")
    with pytest.raises(ValueError, match="cohort='2w': give"):
        analytics.redemption_curve(STORY, cohort="2w")
    with pytest.raises(TypeError, match="as_of='2026-01-05': give a date"):
        analytics.cards(STORY, as_of="2026-01-05")  # type: ignore[arg-type]


def test_redemption_cohorts_by_month():
    txs = frame_of(
        [
            _sale(_utc(2026, 1, 30, 12), "m0001", "100"),
            {
                **_sale(_utc(2026, 2, 2, 12), "m0001", "40"),
                "type": "redeem",
                "previous_balance": D(100),
                "new_balance": D(60),
            },
            _sale(_utc(2026, 2, 3, 12), "m0002", "50", store=B),
            _sale(_utc(2026, 3, 20, 12), "m0003", "50", store=B),
        ]
    )
    curve = analytics.redemption_curve(txs, 7, 7, cohort="1mo", by="store")
    january = curve.filter(TOTAL & (pl.col("cohort_start") == date(2026, 1, 1)))
    assert january.select("cohort_end", "days", "cards", "loaded", "redeemed").rows() == [
        (date(2026, 1, 31), 0, 1, D("100"), D("0")),
        (date(2026, 1, 31), 7, 1, D("100"), D("40")),
    ]
    assert january["share"].to_list() == [0.0, 0.4]
    february = curve.filter(pl.col("cohort_start") == date(2026, 2, 1))
    assert set(february["store_name"]) == {"All stores", "Beta"}


# ---------------------------------------------- subsets add up (property test)

STORE_IDS = [f"{n:08d}-0000-4000-8000-00000000000{n}" for n in range(4)]
BASE = _utc(2025, 1, 1)


@st.composite
def chains(draw) -> pl.DataFrame:
    """A few cards, each sold at some store and then reloaded and redeemed anywhere."""
    records = []
    for n in range(draw(st.integers(1, 10))):
        card, store = f"h{n:04d}", draw(st.integers(0, 3))
        at = BASE + timedelta(hours=draw(st.integers(0, 24 * 300)))
        balance = D(draw(st.integers(100, 10000))) / 100
        records.append({**_sale(at, card, str(balance), STORE_IDS[store])})
        for _ in range(draw(st.integers(0, 5))):
            at += timedelta(hours=draw(st.integers(1, 24 * 120)))
            kind = draw(st.sampled_from(["reload", "redeem"]))
            amount = D(draw(st.integers(1, 10000))) / 100
            if kind == "redeem":
                amount = min(amount, balance)
            if amount == 0:
                continue
            new = balance - amount if kind == "redeem" else balance + amount
            records.append(
                {
                    "store_id": STORE_IDS[draw(st.integers(0, 3))],
                    "card": card,
                    "type": kind,
                    "amount": amount,
                    "previous_balance": balance,
                    "new_balance": new,
                    "at": at,
                }
            )
            balance = new
    for record in records:
        record["store_name"] = f"Store {STORE_IDS.index(record['store_id'])}"
    return frame_of(records)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(txs=chains(), subset=st.sets(st.sampled_from(STORE_IDS), min_size=1))
def test_any_store_subset_adds_up_to_its_stores_rows(txs, subset):
    present = sorted(subset & set(txs["store_id"]))
    if not present:
        return
    as_of = date(2026, 3, 1)
    moment = datetime(2026, 3, 2, tzinfo=UTC)
    by_hand: dict[str, list[tuple[Decimal, datetime]]] = defaultdict(list)
    for card in cards_by_hand(txs, moment).values():
        by_hand[card["home"]].append((card["balance"], card["last_used"]))
    split = analytics.breakage(txs, as_of, dormant_days=90, by="store")
    chosen = analytics.breakage(txs, as_of, dormant_days=90, stores=present)
    rows = split.filter(pl.col("store_id").is_in(present))
    for column in ("cards", "balance", "breakage"):
        per_bucket = rows.group_by("idle").agg(pl.col(column).sum()).sort("idle")[column]
        assert chosen[column].to_list() == per_bucket.to_list(), column
    idle = [(b, moment - last) for s in present for b, last in by_hand[s] if b > 0]
    assert chosen["balance"].sum() == sum((b for b, _ in idle), D(0))
    assert chosen["breakage"].sum() == sum((b for b, d in idle if d.days >= 90), D(0))
    assert split.filter(TOTAL)["breakage"].sum() == split.filter(~TOTAL)["breakage"].sum()

    months = analytics.liability(txs, "1mo", as_of=as_of, by="store")
    months_chosen = analytics.liability(txs, "1mo", as_of=as_of, stores=present)
    summed = (
        months.filter(pl.col("store_id").is_in(present))
        .group_by("period_start")
        .agg(pl.col("liability").sum())
        .sort("period_start")
    )
    assert months_chosen["liability"].to_list() == summed["liability"].to_list()
    last = months_chosen.row(-1, named=True)
    assert last["liability"] == sum((b for s in present for b, _ in by_hand[s]), D(0))


# ----------------------------------------------------------------- docstrings

CALLS = {
    "cards": lambda: analytics.cards(STORY),
    "summary": lambda: analytics.summary(STORY, by="store"),
    "daily_summary": lambda: analytics.daily_summary(STORY),
    "liability": lambda: analytics.liability(STORY),
    "redemption_curve": lambda: analytics.redemption_curve(STORY),
    "breakage": lambda: analytics.breakage(STORY),
    "cross_store": lambda: analytics.cross_store(STORY),
    "anomalies": lambda: analytics.anomalies(STORY),
    "transactions": lambda: analytics.transactions(STORY),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_docstring_lists_its_columns(name):
    doc = inspect.getdoc(getattr(analytics, name)) or ""
    result = CALLS[name]()
    undocumented = [c for c in result.columns if f"``{c}``" not in doc]
    if "transaction frame's columns" in doc:  # anomalies, transactions: named as a whole
        undocumented = [c for c in undocumented if c not in frames.TRANSACTION_SCHEMA]
    assert undocumented == [], f"{name}'s docstring does not explain {undocumented}"


def test_day_ends_follow_the_zone_daylight_time_included():
    # In June, New York's day ends at 04:00 UTC (EDT, UTC-4); in January at 05:00 (EST).
    for day, end in (
        (date(2026, 6, 1), _utc(2026, 6, 2, 4)),
        (date(2026, 1, 5), _utc(2026, 1, 6, 5)),
    ):
        assert end == datetime.combine(day + timedelta(days=1), datetime.min.time(), ZoneInfo(NY))
        txs = frame_of([_sale(end - timedelta(microseconds=1), "z0001"), _sale(end, "z0002")])
        assert analytics.cards(txs, as_of=day, tz=NY)["card_last4"].to_list() == ["0001"]
