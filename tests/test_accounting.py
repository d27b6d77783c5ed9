"""Finance's month end: the journal balances and agrees with what the cards hold, breakage is
recognised as the standards say (and recovers a known rate), unclaimed balances are found by
each store's jurisdiction, and what cannot be done is refused in words."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import polars as pl
import pytest

from giftcard_toolkit import GiftCardClient, accounting, analytics, frames
from giftcard_toolkit.cli import main
from giftcard_toolkit.server import Ledger

D = Decimal
A, B, C = (f"{c * 8}-0000-4000-8000-00000000000{n}" for n, c in enumerate("abc", 1))
NAMES = {A: "Alpha", B: "Beta", C: "Gamma"}
START = datetime(2023, 1, 1, tzinfo=UTC)


def frame_of(rows: list[tuple[str, str, str, Decimal, datetime]]) -> pl.DataFrame:
    """A transaction frame from (store, card, type, amount, at) rows, balances followed."""
    balances: dict[str, Decimal] = {}
    records = []
    for n, (store, card, kind, amount, at) in enumerate(sorted(rows, key=lambda r: r[4])):
        before = balances.get(card, D(0))
        after = before - amount if kind == "redeem" else before + amount
        assert after >= 0, "a generator bug: a card spent more than it held"
        balances[card] = after
        records.append(
            {
                "store_id": store,
                "store_name": NAMES[store],
                "batch_id": f"{store[:1]}{at:%Y%m%d}",
                "host_ref": f"{n:07d}",
                "type": kind,
                "card_last4": card[-4:],
                "card_ref": f"ref-{card}",
                "amount": amount,
                "previous_balance": before,
                "new_balance": after,
                "pos_ref": None,
                "at": at,
                "username": "demo",
            }
        )
    money = {c: frames.MONEY for c in ("amount", "previous_balance", "new_balance")}
    return frames.conform(pl.DataFrame(records, schema_overrides=money), frames.TRANSACTION_SCHEMA)


def synthetic_chain(never: dict[str, float], months: int = 36, a_month: int = 120) -> pl.DataFrame:
    """Cards sold over ``months`` from START at each store, a share ``never[store]`` of them
    never used again, the rest spent in full (1 to 3 redemptions, a tenth of them at another
    store, some after a reload) within 150 days. The true breakage rate of a store is so
    ``never[store]`` (by value, in expectation)."""
    rng = random.Random(25)
    rows: list[tuple[str, str, str, Decimal, datetime]] = []
    days = months * 30
    for store, share in never.items():
        for n in range(months * a_month):
            card = f"{store[:1]}{n:07d}"
            sold = START + timedelta(seconds=rng.randrange(days * 86400))
            amount = D(rng.choice([10, 20, 25, 50, 75, 100]))
            rows.append((store, card, "sale", amount, sold))
            if rng.random() < share:
                continue
            at = sold + timedelta(days=rng.randrange(1, 60))
            if rng.random() < 0.1:
                amount += D(20)
                rows.append((store, card, "reload", D(20), at))
            parts = rng.randrange(1, 4)
            cents = [int(amount * 100) // parts] * (parts - 1)
            cents.append(int(amount * 100) - sum(cents))
            for piece in cents:
                at += timedelta(days=rng.randrange(1, 30), seconds=rng.randrange(86400))
                where = (
                    rng.choice([s for s in never if s != store]) if rng.random() < 0.1 else store
                )
                rows.append((where, card, "redeem", D(piece) / 100, at))
    return frame_of(rows)


@pytest.fixture(scope="module")
def demo_txs(srv) -> pl.DataFrame:
    with GiftCardClient(srv.url, srv.username, srv.password) as client:
        return frames.fetch(client, progress=False)[1]


@pytest.fixture(scope="module")
def demo_stores(srv):
    with GiftCardClient(srv.url, srv.username, srv.password) as client:
        return client.verify().stores


@pytest.fixture(scope="module")
def known() -> pl.DataFrame:
    """36 months of sales at three stores whose true breakage rates are 5%, 30% and 12%."""
    return synthetic_chain({A: 0.05, B: 0.30, C: 0.12})


def _sums(lines: pl.DataFrame, *keys: str) -> pl.DataFrame:
    return lines.group_by(*keys).agg(
        pl.col("debit").fill_null(0).sum().alias("debit"),
        pl.col("credit").fill_null(0).sum().alias("credit"),
    )


# ----------------------------------------------------------------- the journal


@pytest.mark.parametrize("method", [None, "remote", "proportional"])
def test_every_period_and_every_stores_entry_balances(demo_txs, known, method):
    for txs in (demo_txs, known):
        rate = D("0.15") if txs is demo_txs and method == "proportional" else None
        lines = accounting.journal(txs, breakage=method, rate=rate, horizon_months=12)
        assert lines.schema["debit"] == frames.MONEY and lines.schema["credit"] == frames.MONEY
        assert not lines.filter(
            pl.col("debit").is_not_null() & pl.col("credit").is_not_null()
        ).height
        per_entry = _sums(lines, "period_start", "store_id", "entry")
        assert per_entry.filter(pl.col("debit") != pl.col("credit")).is_empty()
        # Between stores, what one is owed another owes: clearing nets to zero each period.
        clearing = _sums(lines.filter(pl.col("account") == "interstore_clearing"), "period_start")
        assert clearing.filter(pl.col("debit") != pl.col("credit")).is_empty()


def _liability_account(lines: pl.DataFrame) -> pl.DataFrame:
    """Per store and period end, the liability account's closing balance and the breakage
    recognised so far, summed here from the journal's lines."""
    liability = lines.filter(pl.col("account") == "gift_card_liability").with_columns(
        (pl.col("credit").fill_null(0) - pl.col("debit").fill_null(0)).alias("owed"),
        pl.when(pl.col("entry") == "breakage")
        .then(pl.col("debit").fill_null(0) - pl.col("credit").fill_null(0))
        .otherwise(0)
        .alias("broken"),
    )
    periods = lines.select("period_start").unique()
    stores = lines.select("store_id").unique()
    per = liability.group_by("period_start", "store_id").agg(pl.col("owed", "broken").sum())
    return (
        periods.join(stores, how="cross")
        .join(per, on=["period_start", "store_id"], how="left")
        .sort("store_id", "period_start")
        .select(
            "period_start",
            "store_id",
            pl.col("owed").fill_null(0).cum_sum().over("store_id").alias("closing"),
            pl.col("broken").fill_null(0).cum_sum().over("store_id").alias("so_far"),
        )
    )


@pytest.mark.parametrize("method", [None, "remote", "proportional"])
def test_liability_closing_plus_breakage_so_far_is_what_the_cards_hold(demo_txs, known, method):
    for txs in (demo_txs, known):
        rate = D("0.15") if txs is demo_txs else None
        lines = accounting.journal(txs, breakage=method, rate=rate, horizon_months=12)
        books = _liability_account(lines)
        held = analytics.liability(txs, "1mo", by="store")
        per_store = held.join(books, on=["period_start", "store_id"], how="inner")
        assert per_store.height == held.filter(pl.col("store_id") != "*").height
        assert (per_store["closing"] + per_store["so_far"] == per_store["liability"]).all()
        chain = books.group_by("period_start").agg(pl.col("closing", "so_far").sum())
        total = held.filter(pl.col("store_id") == "*").join(chain, on="period_start")
        assert total.height == held.filter(pl.col("store_id") == "*").height
        assert (total["closing"] + total["so_far"] == total["liability"]).all()
        if method is not None:
            assert books["so_far"].max() > 0, "the test shows breakage at work"


def test_revenue_is_redemptions_and_cash_is_sales_and_reloads_where_they_happened(demo_txs):
    lines = accounting.journal(demo_txs, breakage=None)
    flows = analytics.summary(demo_txs, "1mo", by="store").filter(pl.col("store_id") != "*")
    booked = lines.group_by("period_start", "store_id").agg(
        pl.col("credit").filter(pl.col("account") == "revenue").sum().alias("revenue"),
        pl.col("debit").filter(pl.col("account") == "cash").sum().alias("cash"),
    )
    both = flows.join(booked, on=["period_start", "store_id"], how="left").with_columns(
        pl.col("revenue", "cash").fill_null(0)
    )
    assert both.height == flows.height
    assert (both["revenue"] == both["redemptions_amount"]).all()
    assert (both["cash"] == both["sales_amount"] + both["reloads_amount"]).all()


def test_remote_recognises_the_balances_analytics_counts_as_breakage(demo_txs):
    lines = accounting.journal(demo_txs, breakage="remote", dormant_days=180)
    books = _liability_account(lines)
    for end in [date(2025, 6, 30), date(2025, 12, 31), date(2026, 8, 31)]:
        counted = analytics.breakage(demo_txs, as_of=end, dormant_days=180, by="store")
        per_store = counted.group_by("store_id").agg(pl.col("breakage").sum())
        start = end.replace(day=1)
        for store_id, expected in per_store.iter_rows():
            if store_id == "*":
                continue
            so_far = books.filter(
                (pl.col("period_start") == start) & (pl.col("store_id") == store_id)
            )["so_far"]
            assert so_far.item() == expected, (end, store_id)


def test_a_remote_balance_is_reinstated_when_its_card_comes_back():
    sold, back = datetime(2025, 1, 10, tzinfo=UTC), datetime(2025, 5, 20, tzinfo=UTC)
    txs = frame_of(
        [(A, "c0001", "sale", D("40.00"), sold), (A, "c0001", "redeem", D("15.00"), back)]
    )
    lines = accounting.journal(txs, breakage="remote", dormant_days=90)
    broken = lines.filter(pl.col("account") == "breakage_income")
    assert broken.select("period_start", "debit", "credit").rows() == [
        (date(2025, 4, 1), None, D("40.00")),  # idle 90 days on April 10th
        (date(2025, 5, 1), D("40.00"), None),  # spent after all: reversed
    ]


def test_proportional_rounds_to_the_cent_on_the_running_total():
    # rate 10%: 1/9 of each redemption; 5.00 a month gives 0.5555.. -> 0.56, 0.55, 0.56.
    txs = frame_of(
        [
            (A, "c0001", "sale", D("100.00"), datetime(2025, 1, 2, tzinfo=UTC)),
            *[
                (A, "c0001", "redeem", D("5.00"), datetime(2025, month, 10, tzinfo=UTC))
                for month in (1, 2, 3)
            ],
        ]
    )
    lines = accounting.journal(txs, breakage="proportional", rate=D("0.10"))
    income = lines.filter(pl.col("account") == "breakage_income")["credit"].to_list()
    assert income == [D("0.56"), D("0.55"), D("0.56")]
    assert sum(income) == (D("15.00") / 9).quantize(D("0.01"))
    assert "rate 10.00%" in lines.filter(pl.col("entry") == "breakage")["memo"][0]


def test_proportional_recovers_the_known_breakage_rate(known):
    # A stated tolerance: 3 percentage points, over three times the sampling error of
    # about 3,000 matured cards a store.
    estimate = accounting.breakage_rate(known, horizon_months=12)
    assert estimate.enough, str(estimate)
    for store_id, truth in [(A, 0.05), (B, 0.30), (C, 0.12)]:
        row = estimate.stores.filter(pl.col("store_id") == store_id).row(0, named=True)
        assert abs(float(row["rate"]) - truth) < 0.03, (NAMES[store_id], row["rate"])
        assert row["low"] <= row["rate"] <= row["high"]
        assert row["cohorts"] >= 12
    # The journal then recognises, once every card has been spent or forgotten, what was
    # never spent: within the same 3 points of what was loaded.
    lines = accounting.journal(known, breakage="proportional", horizon_months=12)
    cards = analytics.cards(known)
    for store_id in (A, B, C):
        mine = cards.filter(pl.col("home_store_id") == store_id)
        never = mine.filter(pl.col("redeemed") == 0)["balance"].sum()
        recognised = lines.filter(
            (pl.col("store_id") == store_id) & (pl.col("account") == "breakage_income")
        )
        total = recognised["credit"].fill_null(0).sum() - recognised["debit"].fill_null(0).sum()
        assert abs(total - never) <= mine["loaded"].sum() * D("0.03"), (NAMES[store_id], total)


def test_too_few_matured_cohorts_are_refused_in_words(demo_txs):
    estimate = accounting.breakage_rate(demo_txs)
    assert not estimate.enough
    words = str(estimate)
    assert "not enough history" in words and "first estimate is possible on" in words
    with pytest.raises(accounting.NotEnoughHistory) as refused:
        accounting.journal(demo_txs)
    message = str(refused.value)
    assert "matured cohorts" in message and "breakage='remote'" in message
    assert "Nothing was guessed" in message


def test_the_journal_exports_one_line_per_account_store_and_period(demo_txs, tmp_path):
    lines = accounting.journal(demo_txs, breakage="remote")
    path = tmp_path / "journal.csv"
    accounting.to_csv(lines, path)
    read = pl.read_csv(path, schema_overrides={"debit": pl.String, "credit": pl.String})
    assert read.columns == [
        "journal",
        "date",
        "account",
        "debit",
        "credit",
        "location",
        "location_id",
        "memo",
    ]
    assert read.select("journal", "account").is_duplicated().sum() == 0
    assert read.filter(pl.col("debit").is_null() == pl.col("credit").is_null()).is_empty()
    money = read.with_columns(pl.col("debit", "credit").cast(frames.MONEY).fill_null(0))
    per = money.group_by("journal").agg(pl.col("debit").sum(), pl.col("credit").sum())
    assert per.filter(pl.col("debit") != pl.col("credit")).is_empty()
    codes = {name: str(1000 + n) for n, name in enumerate(accounting.ACCOUNTS)}
    text = accounting.to_csv(lines, accounts=codes)
    assert text is not None and ",1001," in text and "gift_card_liability" not in text
    with pytest.raises(ValueError, match="maps no code for"):
        accounting.to_csv(lines, accounts={"cash": "1000"})


def test_roll_forward_opening_plus_loads_less_redemptions_and_breakage_is_closing(demo_txs):
    lines = accounting.journal(demo_txs, breakage="remote")
    rolled = accounting.roll_forward(lines, by="store")
    sums = rolled["opening"] + rolled["loaded"] - rolled["redeemed"] - rolled["breakage"]
    assert (sums == rolled["closing"]).all()
    chain = rolled.filter(pl.col("store_id") == "*")
    assert chain["closing"][:-1].to_list() == chain["opening"][1:].to_list()
    held = analytics.liability(demo_txs, "1mo", by="store")
    both = rolled.join(held, on=["period_start", "store_id"])
    assert both.height == held.height
    assert (both["cards_hold"] == both["liability"]).all()


# ------------------------------------------------------------ unclaimed property


RULES = pl.DataFrame(
    {
        "jurisdiction": ["US-NY", "US-CA"],
        "dormancy_years": ["3", ""],
        "exempt": ["false", "true"],
    }
)


def test_unclaimed_is_every_non_exempt_balance_idle_past_its_period():
    as_of = date(2026, 6, 30)
    end = datetime(2026, 7, 1, tzinfo=UTC)
    rows = []
    for n, days_idle in enumerate([3 * 365 + 5, 3 * 365 + 1, 3 * 365 - 3, 400, 2000]):
        for store in (A, B):
            card, at = f"{store[:1]}{n:03d}", end - timedelta(days=days_idle)
            rows.append((store, card, "sale", D("30.00"), at - timedelta(days=10)))
            rows.append((store, card, "redeem", D("10.00") * (n % 4), at))
    rows = [r for r in rows if r[3] > 0]
    txs = frame_of(rows)
    where = {"Alpha": "US-NY", B: "us-ca"}
    found = accounting.unclaimed(txs, as_of, RULES, jurisdictions=where)

    # By hand: each card's last transaction and balance; New York's (Alpha's) balances
    # idle three years or more at the end of June 30th; California is exempt.
    expected = []
    last: dict[str, dict] = {}
    for row in txs.sort("at").iter_rows(named=True):
        last[row["card_ref"]] = row
    for ref, row in last.items():
        due = row["at"].replace(year=row["at"].year + 3)
        if row["store_id"] == A and row["new_balance"] > 0 and due <= end:
            expected.append((ref, row["new_balance"], due.date()))
    assert sorted(found.select("card_ref", "balance", "due").rows()) == sorted(expected)
    assert len(expected) >= 2 and set(found["jurisdiction"]) == {"US-NY"}
    assert found.schema["balance"] == frames.MONEY


def test_unclaimed_takes_jurisdictions_as_the_server_reports_them(demo_txs, demo_stores):
    assert {s.name: s.jurisdiction for s in demo_stores} == {
        "Downtown Flagship": "US-NY",
        "Riverside Mall": "US-TX",
        "Airport Kiosk": "US-CA",
    }
    later = date(2029, 12, 31)  # if nobody used the cards again: Texas after 3 years
    found = accounting.unclaimed(
        demo_txs, later, accounting.EXAMPLE_RULES, jurisdictions=demo_stores
    )
    assert set(found["jurisdiction"]) == {"US-TX", "US-NY"}
    assert found.filter(pl.col("jurisdiction") == "US-NY")["due"].max() <= later


def test_a_store_without_a_jurisdiction_or_rule_is_refused_in_words(demo_txs, demo_stores):
    as_of = date(2026, 6, 30)
    with pytest.raises(accounting.RulesProblem, match="say where each store trades"):
        accounting.unclaimed(demo_txs, as_of, accounting.EXAMPLE_RULES)
    with pytest.raises(accounting.RulesProblem, match=r"no jurisdiction for Airport Kiosk \("):
        accounting.unclaimed(
            demo_txs,
            as_of,
            RULES,
            jurisdictions={"Downtown Flagship": "US-NY", "Riverside Mall": "US-NY"},
        )
    no_texas = accounting.read_rules().filter(pl.col("jurisdiction") != "US-TX")
    with pytest.raises(accounting.RulesProblem) as refused:
        accounting.unclaimed(demo_txs, as_of, no_texas, jurisdictions=demo_stores)
    assert "no row for US-TX (the jurisdiction of Riverside Mall" in str(refused.value)
    with pytest.raises(accounting.RulesProblem, match="no row for US-TX"):
        accounting.journal(demo_txs, breakage="remote", rules=no_texas, jurisdictions=demo_stores)


def test_a_bad_rules_table_names_every_problem(tmp_path):
    path = tmp_path / "rules.csv"
    path.write_text(
        "jurisdiction,dormancy_years,exempt\nNew York,5,false\nUS-TX,,false\nUS-CA,,maybe\n"
    )
    with pytest.raises(accounting.RulesProblem) as refused:
        accounting.read_rules(path)
    message = str(refused.value)
    assert "row 1: jurisdiction 'New York' is not an ISO 3166 code" in message
    assert "row 2: dormancy_years must be a whole number" in message
    assert "row 3: exempt must be true or false (got 'maybe')" in message
    assert "Nothing was computed" in message
    example = accounting.read_rules()
    assert example.filter(pl.col("exempt")).height and example.filter(~pl.col("exempt")).height


def test_escheat_stores_recognise_no_breakage(demo_txs, demo_stores):
    lines = accounting.journal(
        demo_txs, breakage="remote", rules=accounting.EXAMPLE_RULES, jurisdictions=demo_stores
    )
    broken = lines.filter(pl.col("entry") == "breakage")
    assert set(broken["store_name"]) == {"Airport Kiosk"}  # California: exempt


# ---------------------------------------------------------- stores' jurisdictions


def test_admin_sets_a_stores_jurisdiction_and_refuses_a_bad_one(tmp_path, capsys):
    db = str(tmp_path / "g.sqlite")
    assert (
        main(["admin", "--db", db, "add-store", "--name", "Main", "--jurisdiction", "us-ny"]) == 0
    )
    store_id = capsys.readouterr().out.split()[1]
    with pytest.raises(SystemExit, match="is not an ISO 3166 code: give a country"):
        main(["admin", "--db", db, "add-store", "--name", "Other", "--jurisdiction", "New York"])
    args = ["admin", "--db", db, "set-jurisdiction", "--store", store_id, "--jurisdiction", "US-TX"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["admin", "--db", db, "stores"]) == 0
    listed = capsys.readouterr().out
    assert f"{store_id}  Main" in listed and listed.rstrip().endswith("US-TX")
    ledger = Ledger(db)
    try:
        assert ledger.store(store_id).jurisdiction == "US-TX"
    finally:
        ledger.close()


def test_a_version_3_database_upgrades_its_stores_without_a_jurisdiction(tmp_path):
    path = tmp_path / "old.sqlite"
    ledger = Ledger(path)
    store_id = ledger.add_store("Main Street", "1 Main St").id
    ledger.close()
    conn = sqlite3.connect(path)
    conn.executescript(
        "ALTER TABLE stores DROP COLUMN jurisdiction;"
        "UPDATE meta SET value = '3' WHERE key = 'schema_version';"
    )
    conn.close()
    upgraded = Ledger(path)
    try:
        assert upgraded.meta("schema_version") == "4"
        assert upgraded.store(store_id).jurisdiction == ""
        assert upgraded.set_jurisdiction(store_id, "US-DE").jurisdiction == "US-DE"
        assert [s.name for s in upgraded.stores()] == ["Main Street"]
    finally:
        upgraded.close()


def test_stores_keeps_those_stores_lines_as_the_whole_journal_has_them(demo_txs):
    whole = accounting.journal(demo_txs, breakage="remote")
    airport = accounting.journal(demo_txs, breakage="remote", stores="airport kiosk")
    assert set(airport["store_name"]) == {"Airport Kiosk"}
    assert airport.equals(whole.filter(pl.col("store_name") == "Airport Kiosk"))


def test_a_remote_balance_is_the_cards_last_whatever_the_rows_order_when_times_tie():
    """A sale and a redeem at one instant (a server that rounds time): the balance that
    goes idle is the one after the redeem the server listed second, however the rows of
    the frame are shuffled."""
    sold, later = datetime(2025, 1, 10, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC)
    txs = frame_of(
        [
            (A, "c0001", "sale", D("50.00"), sold),
            (A, "c0001", "redeem", D("20.00"), sold),
            (A, "c0002", "sale", D("10.00"), later),  # the books run on to June
        ]
    ).with_columns(pl.int_range(pl.len(), dtype=pl.Int32).alias("position"))
    assert txs["type"].to_list()[:2] == ["sale", "redeem"] and txs["new_balance"][1] == 30
    expected = accounting.journal(txs, breakage="remote", dormant_days=90)
    broken = expected.filter(pl.col("account") == "breakage_income")
    assert broken.select("period_start", "credit").rows() == [(date(2025, 4, 1), D("30.00"))]
    for shuffled in (txs.reverse(), txs.sample(fraction=1.0, seed=3, shuffle=True)):
        assert accounting.journal(shuffled, breakage="remote", dormant_days=90).equals(expected)
