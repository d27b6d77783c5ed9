"""The demo data set (contract §3): three stores, its users, and two years of a chain's trade.

Everything is a function of the seed number and the anchor date, so notebooks and their
outputs are reproducible. The anchor may also be a moment (a ``datetime``, what ``serve``
passes when no ``--as-of`` is given): the anchor day's trade then stops at that moment, so a
demo anchored to today holds nothing later than now. The history is made by the ledger's
own operations (each with the clock set to the moment it happened), so the demo books obey
the same rules as live ones; they are built in one transaction, which keeps seeding to a
second or two.

Ordinary trade has the shapes that finance's analyses look for: more sales at weekends and
before the holidays, most cards spent within weeks of their sale and fewer as they age, and
some never spent at all (more of them at the airport, whose buyers are travellers) — so
breakage, dormancy and cohort curves show real shapes. A card is spent mostly at the store
that sold it, and never on the day it was sold, so the anomaly rules stay quiet on ordinary
trade. Besides it, the history holds a few stories for analysts to find: a card sold at one
store and spent at another within the hour, a card redeemed many times in an hour,
reload-and-redeem cycling, and some cards blocked as lost (one of them found again).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from pathlib import Path

from giftcard_toolkit.cards import AesGcmCardCipher, Card
from giftcard_toolkit.server.auth import hash_password
from giftcard_toolkit.server.ledger import (
    CardRef,
    IssuedCard,
    Ledger,
    Store,
    demo_card_key,
    new_card_number,
)
from giftcard_toolkit.server.ledger.postgres import is_postgres_url

DEFAULT_AS_OF = date(2026, 9, 30)
HISTORY_DAYS = 730  # two years: deep enough for breakage, dormancy and cohort analyses
STORY_OFFSET = HISTORY_DAYS - 90  # the planted stories happen in the last 90 days
DEMO_USERS = {
    "demo": "demo-password",
    "clerk": "clerk-password",
    "analyst": "analyst-password",  # read only (role analyst)
}


@dataclass(frozen=True)
class _StoreProfile:
    name: str
    address: str
    cards: int  # the store's card stock (about three-quarters of it gets sold)
    sales_a_day: float  # on an ordinary weekday outside the holidays
    never_spent: float  # the share of its cards bought and never used (breakage)
    # Three states with different unclaimed-property rules (data/unclaimed-rules-example.csv).
    jurisdiction: str = ""


_STORES = [
    _StoreProfile("Downtown Flagship", "12 Market Street, Springfield", 2800, 2.6, 0.05, "US-NY"),
    _StoreProfile(
        "Riverside Mall", "400 River Road, Unit 23, Springfield", 2300, 2.1, 0.09, "US-TX"
    ),
    _StoreProfile(
        "Airport Kiosk", "Terminal B, Springfield Regional Airport", 1400, 1.3, 0.30, "US-CA"
    ),
]
_SALE_AMOUNTS = [
    Decimal(a) for a in ("10", "15", "20", "25", "25", "50", "50", "75", "100", "35.50")
]
# Trade by weekday (Monday first) and by month: weekends and the holidays sell most cards;
# January redeems the holidays' cards.
_WEEKDAY = (0.8, 0.8, 0.85, 0.9, 1.1, 1.5, 1.3)
_SALES_MONTH = {11: 1.3, 12: 2.2, 1: 0.7, 2: 0.8}
_REDEEMS_MONTH = {12: 1.2, 1: 1.5}
CARD_STOCK_COLUMNS = ["card_number", "security_code", "store_id", "sold"]


class NotADemoDatabase(ValueError):
    """``--seed demo`` was pointed at a database that holds real (non-demo) data."""


@dataclass(frozen=True, repr=False)
class DemoCard(Card):
    """A card of the demo stock: number, security code, its store, and whether it was sold."""

    store_id: str = ""
    sold: bool = False

    def __repr__(self) -> str:
        return f"DemoCard({self.masked!r}, store_id={self.store_id!r}, sold={self.sold})"

    __str__ = __repr__


@dataclass
class DemoData:
    """What a demo database holds that a caller needs to use it."""

    seed_number: int
    as_of: date
    stores: list[Store]
    users: dict[str, str]
    card_key: str
    card_stock: list[DemoCard] = field(repr=False)
    # The stores each user may act for, by user name (store ids, in the stores' order).
    grants: dict[str, list[str]] = field(default_factory=dict)

    def grant_text(self, username: str) -> str:
        """Which stores ``username`` may act for, in words: "all 3 stores" or their names."""
        granted = self.grants.get(username, [])
        if granted and len(granted) == len(self.stores):
            return f"all {len(granted)} stores"
        names = {store.id: store.name for store in self.stores}
        return ", ".join(repr(names.get(store_id, store_id)) for store_id in granted) or "none"


@dataclass(frozen=True)
class Shape:
    """What a seeded chain looks like: its stores, and how many days of history it has."""

    stores: tuple[_StoreProfile, ...] = tuple(_STORES)
    days: int = HISTORY_DAYS

    def __str__(self) -> str:
        return f"{len(self.stores)} stores x {self.days} days"


DEMO = Shape()


def chain(stores: int, days: int = 365) -> Shape:
    """A chain of ``stores`` stores and ``days`` days of history, with the demo's shapes of
    trade: its stores are flagships, malls and airport kiosks in turn, numbered, each with
    card stock for about three-quarters of it to be sold (``serve --seed chain``)."""
    if stores < len(_STORES):
        raise ValueError(f"a chain has at least {len(_STORES)} stores (its stories use three)")
    if days < 90:
        raise ValueError("a chain has at least 90 days of history (its stories use the last 90)")
    profiles = []
    for index in range(stores):
        kind, number = _STORES[index % len(_STORES)], index // len(_STORES) + 1
        sold = kind.sales_a_day * days * 1.13  # weekdays and months average out to about this
        profiles.append(
            _StoreProfile(
                f"{kind.name} {number}",
                f"{kind.address} (branch {number})",
                int(sold / 0.75) + 10,
                kind.sales_a_day,
                kind.never_spent,
                kind.jurisdiction,
            )
        )
    return Shape(tuple(profiles), days)


@dataclass(frozen=True)
class _Plan:
    stores: list[Store]
    profiles: tuple[_StoreProfile, ...]
    cards: list[IssuedCard]
    secret: bytes


def _plan(seed_number: int, shape: Shape = DEMO) -> _Plan:
    """The stores and card stock of a seed: pure, so a reopened demo can recompute them."""
    rng = random.Random(f"giftcard-demo-plan-{seed_number}")
    stores = [
        Store(
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            profile.name,
            profile.address,
            profile.jurisdiction,
        )
        for profile in shape.stores
    ]
    seen: set[str] = set()
    cards: list[IssuedCard] = []
    for store, profile in zip(stores, shape.stores, strict=True):
        made = 0
        while made < profile.cards:
            number = new_card_number(rng)
            if number in seen:
                continue
            seen.add(number)
            cards.append(IssuedCard(number, f"{rng.randrange(10000):04d}", store.id))
            made += 1
    secret = hashlib.sha256(f"giftcard-toolkit demo secret {seed_number}".encode()).digest()
    return _Plan(stores, shape.stores, cards, secret)


def demo_stores(seed_number: int = 0) -> list[Store]:
    """The demo's stores for a seed, without building its database."""
    return list(_plan(seed_number).stores)


_Step = tuple[int, int, "Callable[[], None]"]  # second of the day, tie-break, action


class _SetClock:
    """The seed's clock: history happens at the moments the seed says."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class _History:
    """Replays two years of trade through the ledger's own operations."""

    def __init__(
        self,
        ledger: Ledger,
        plan: _Plan,
        seed_number: int,
        as_of: date,
        until: datetime | None = None,
        days: int = HISTORY_DAYS,
    ) -> None:
        self.ledger = ledger
        self.days = days
        self.plan = plan
        self.as_of = as_of
        self.until = until  # the anchor day's trade stops here (None: the whole day)
        self.tz: tzinfo = ledger.tz
        self.rng = random.Random(f"giftcard-demo-history-{seed_number}")
        cipher = ledger.card_cipher
        assert cipher is not None
        self.cipher = cipher
        self.all_stores = frozenset(s.id for s in plan.stores)
        self.stock = {s.id: [c for c in plan.cards if c.store_id == s.id] for s in plan.stores}
        self.balances: dict[str, Decimal] = {}  # sold cards' balances, by number
        self.blocked: set[str] = set()
        self.profiles = dict(zip((s.id for s in plan.stores), plan.profiles, strict=True))
        self.sold_today: list[tuple[str, str]] = []
        # The days customers come back with their cards: (store, card, what they do).
        self.visits: dict[date, list[tuple[str, str, str]]] = {}
        self.clock = _SetClock(datetime.combine(as_of, time(0), self.tz))

    def ref(self, number: str) -> CardRef:
        return CardRef(encrypted=self.cipher.encrypt(number))

    def user_for(self, store_id: str) -> str:
        first = self.plan.stores[0].id
        return "clerk" if store_id == first and self.rng.random() < 0.3 else "demo"

    def sell(self, store_id: str, amount: Decimal) -> str | None:
        if not self.stock[store_id]:
            return None
        card = self.stock[store_id].pop(0)
        body = json.loads(
            self.ledger.load(
                self.user_for(store_id),
                self.all_stores,
                self.ref(card.number),
                amount,
                store_id,
                f"POS-{self.rng.randrange(1, 9)}",
                sale=True,
            )
        )
        if body["statuscode"] == "000000":
            self.balances[card.number] = Decimal(str(body["balance"]))
            self.sold_today.append((store_id, card.number))
            return card.number
        return None

    def reload(self, number: str, store_id: str, amount: Decimal) -> None:
        body = json.loads(
            self.ledger.load(
                self.user_for(store_id),
                self.all_stores,
                self.ref(number),
                amount,
                store_id,
                "POS-1",
                sale=False,
            )
        )
        if body["statuscode"] == "000000":
            self.balances[number] = Decimal(str(body["balance"]))

    def redeem(self, number: str, store_id: str, amount: Decimal, partial: bool) -> None:
        body = json.loads(
            self.ledger.redeem(
                self.user_for(store_id),
                self.all_stores,
                self.ref(number),
                amount,
                store_id,
                "POS-1",
                accept_partial=partial,
            )
        )
        if body["statuscode"] in ("000000", "000001"):
            self.balances[number] = Decimal(str(body["newbalance"]))

    def block(self, number: str, active: bool, reason: str) -> None:
        self.ledger.change_status("demo", self.ref(number), active, reason)
        (self.blocked.discard if active else self.blocked.add)(number)

    def spendable(self) -> list[str]:
        return [n for n, b in self.balances.items() if b > 0 and n not in self.blocked]

    def money(self, low: int, high: int) -> Decimal:
        return Decimal(self.rng.randrange(low * 100, high * 100)) / 100

    def ordinary_steps(self, day: date) -> list[_Step]:
        """The day's new sales, and the visits of customers who bought a card earlier."""
        steps: list[_Step] = []
        weekday = _WEEKDAY[day.weekday()]
        for store in self.plan.stores:
            sales = self.profiles[store.id].sales_a_day * weekday * _SALES_MONTH.get(day.month, 1)
            for _ in range(self.count(sales)):
                steps.append((self.opening_hours(), len(steps), self._sale(store.id)))
        for store_id, number, kind in self.visits.pop(day, []):
            steps.append((self.opening_hours(), len(steps), self._visit(store_id, number, kind)))
        return steps

    def opening_hours(self) -> int:
        return self.rng.randrange(8 * 3600, 21 * 3600)

    def count(self, rate: float) -> int:
        """A day's number of events of a kind that happens ``rate`` times a day on average."""
        expected = rate * self.rng.uniform(0.5, 1.5)
        return int(expected) + (self.rng.random() < expected % 1)

    def plan_visits(self, day: date, store_id: str, number: str) -> None:
        """When the buyer of a card sold on ``day`` comes back, and what they do then.

        Visits are days apart, the first typically within three weeks and some many months
        later (a long tail); most are at the selling store. A share of cards is never used
        (the store's ``never_spent``), and a last visit may leave a remainder: both are the
        chain's breakage.
        """
        if self.rng.random() < self.profiles[store_id].never_spent:
            return
        when = day
        visits = self.rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
        for visit in range(visits):
            when += timedelta(days=1 + int(self.rng.lognormvariate(math.log(18), 1.1)))
            kind = "reload" if self.rng.random() < 0.12 else "redeem"
            if visit == visits - 1:  # the last visit spends, and mostly spends it all
                kind = "spend the rest" if self.rng.random() < 0.8 else "redeem"
            where = store_id
            if self.rng.random() < 0.08:
                where = self.rng.choice(self.plan.stores).id
            self.visits.setdefault(when, []).append((where, number, kind))

    def _sale(self, store_id: str) -> Callable[[], None]:
        return lambda: None if self.sell(store_id, self.rng.choice(_SALE_AMOUNTS)) else None

    def _visit(self, store_id: str, number: str, kind: str) -> Callable[[], None]:
        def step() -> None:
            if number in self.blocked or self.balances.get(number, Decimal(0)) <= 0:
                return  # lost, or spent already
            if kind == "reload":
                self.reload(number, store_id, self.rng.choice(_SALE_AMOUNTS[:6]))
            elif kind == "spend the rest":
                self.redeem(number, store_id, self.balances[number], False)
            else:
                self.redeem(number, store_id, self.money(3, 60), self.rng.random() < 0.8)

        return step

    def story_steps(self, day_index: int) -> list[_Step]:
        """A few patterns the anomaly detectors should find (see the module docstring)."""
        a, b, c = (s.id for s in self.plan.stores[:3])
        card: dict[str, str | None] = {}

        def sell(store_id: str, amount: str) -> Callable[[], None]:
            return lambda: card.update(number=self.sell(store_id, Decimal(amount)))

        def then(action: Callable[[str], None]) -> Callable[[], None]:
            def step() -> None:
                number = card.get("number")
                if number:  # the story's sale went through
                    action(number)

            return step

        def at(hour: int, minute: int) -> int:
            return hour * 3600 + minute * 60

        steps: list[tuple[int, Callable[[], None]]] = []
        if day_index == 30:  # sold at one store, spent at another 20 minutes later
            steps = [
                (at(10, 5), sell(a, "100")),
                (at(10, 25), then(lambda n: self.redeem(n, c, Decimal("99.50"), False))),
            ]
        elif day_index == 55:  # many redemptions of one card within an hour
            steps = [(at(14, 0), sell(b, "100"))] + [
                (at(14, m), then(lambda n: self.redeem(n, b, Decimal("9.99"), False)))
                for m in (10, 18, 25, 33, 41, 50)
            ]
        elif day_index == 75:  # reload, redeem, reload, redeem...
            steps = [(at(11, 0), sell(c, "20"))]
            for hour in range(12, 16):
                steps.append((at(hour, 0), then(lambda n: self.reload(n, c, Decimal("200")))))
                steps.append(
                    (at(hour, 30), then(lambda n: self.redeem(n, c, Decimal("200"), False)))
                )
        elif day_index in (20, 40, 60, 70):  # cards reported lost; one found again later
            steps = [(at(9, 15), self._block_one)]
        elif day_index == 65:
            steps = [(at(16, 45), self._unblock_one)]
        # Negative tie-breaks: at the same second a story step goes before ordinary trade.
        return [
            (second, order - len(steps), action) for order, (second, action) in enumerate(steps)
        ]

    def _block_one(self) -> None:
        candidates = sorted(self.spendable())
        if candidates:
            self.block(self.rng.choice(candidates), False, "customer reported the card lost")

    def _unblock_one(self) -> None:
        if self.blocked:
            self.block(sorted(self.blocked)[0], True, "card found by the customer")

    def play_day(self, day: date, steps: list[_Step], until: datetime | None = None) -> None:
        """Apply a day's steps in time order, each at its own second (none after ``until``)."""
        midnight = datetime.combine(day, time(0), self.tz)
        for second, _, action in sorted(steps, key=lambda step: (step[0], step[1])):
            self.clock.now = midnight + timedelta(seconds=second, microseconds=0)
            if until is not None and self.clock.now > until:
                break
            action()

    def close_day(self, day: date) -> None:
        for store_id, number in self.sold_today:
            self.plan_visits(day, store_id, number)
        self.sold_today.clear()
        self.clock.now = datetime.combine(day, time(23, 45), self.tz)
        for store in self.plan.stores:
            self.ledger.close_batch(self.all_stores, store.id)

    def run(self) -> None:
        real_clock = self.ledger.clock
        self.ledger.clock = self.clock
        try:
            days = self.days
            first = self.as_of - timedelta(days=days - 1)
            for index in range(days):
                day = first + timedelta(days=index)
                until = self.until if day == self.as_of else None
                steps = self.ordinary_steps(day) + self.story_steps(index - (days - 90))
                self.play_day(day, steps, until)
                if day != self.as_of:  # the anchor date's batches stay open
                    self.close_day(day)
        finally:
            self.ledger.clock = real_clock


def _demo_data(plan: _Plan, seed_number: int, as_of: date, ledger: Ledger) -> DemoData:
    with ledger.read() as conn:
        sold_refs = {r[0] for r in conn.execute("SELECT cardref FROM cards WHERE state != 'stock'")}
    stock = [
        DemoCard(
            c.number,
            c.security_code,
            store_id=c.store_id,
            sold=ledger.card_ref(c.number) in sold_refs,
        )
        for c in plan.cards
    ]
    grants: dict[str, list[str]] = {}
    for name in DEMO_USERS:
        record = ledger.user_record(name)
        granted = record[1] if record is not None else frozenset()
        grants[name] = [s.id for s in plan.stores if s.id in granted]
    return DemoData(
        seed_number,
        as_of,
        plan.stores,
        dict(DEMO_USERS),
        demo_card_key(seed_number),
        stock,
        grants,
    )


def _anchor(as_of: date, tz: tzinfo) -> tuple[date, datetime | None]:
    """(the anchor date, the moment its trade stops): a ``datetime`` anchor is a moment."""
    if isinstance(as_of, datetime):
        moment = as_of.replace(tzinfo=tz) if as_of.tzinfo is None else as_of.astimezone(tz)
        return moment.date(), moment
    return as_of, None


def seed_demo(
    ledger: Ledger, seed_number: int = 0, as_of: date = DEFAULT_AS_OF, shape: Shape = DEMO
) -> DemoData:
    """Fill an empty database with the demo data set; answers what a caller needs of it.

    ``as_of`` is the anchor date (its batches stay open), or a ``datetime``: then the anchor
    day's trade stops at that moment (``serve`` with no ``--as-of`` passes now). ``shape``
    makes a chain of another size (:func:`chain`).
    """
    as_of, until = _anchor(as_of, ledger.tz)
    plan = _plan(seed_number, shape)
    if ledger.meta("kind") is not None or ledger.stores():
        raise NotADemoDatabase(f"{ledger.where} is not empty; seed a new database")
    with ledger.write():
        ledger.set_meta("kind", "demo")
        ledger.set_meta("seed_number", str(seed_number))
        ledger.set_meta("as_of", as_of.isoformat())
        ledger.set_meta("shape", str(shape))
        ledger.set_meta("card_key", demo_card_key(seed_number))
        for store in plan.stores:
            ledger.add_store(store.name, store.address, store.id, store.jurisdiction)
        everywhere = [s.id for s in plan.stores]
        ledger.put_user("demo", hash_password(DEMO_USERS["demo"]), everywhere)
        ledger.put_user("clerk", hash_password(DEMO_USERS["clerk"]), everywhere[:1])
        analyst = hash_password(DEMO_USERS["analyst"])
        ledger.put_user("analyst", analyst, everywhere, role="analyst")
        ledger.add_cards(plan.cards)
        if ledger.card_cipher is None:
            ledger.card_cipher = AesGcmCardCipher.from_base64(demo_card_key(seed_number))
        _History(ledger, plan, seed_number, as_of, until, shape.days).run()
    return _demo_data(plan, seed_number, as_of, ledger)


def open_demo(
    path: str | Path,
    seed_number: int = 0,
    as_of: date = DEFAULT_AS_OF,
    shape: Shape = DEMO,
    **ledger_options: object,
) -> tuple[Ledger, DemoData]:
    """Open the demo database at ``path``, seeding it first if it is new.

    An existing demo database of the same seed number and shape is reopened as it is (live
    changes kept). A database with real data, another seed or shape, is refused untouched.
    """
    plan = _plan(seed_number, shape)
    if is_postgres_url(path):
        ledger = Ledger(path, new_secret=plan.secret, **ledger_options)  # type: ignore[arg-type]
        stored = {key: ledger.meta(key) for key in ("kind", "seed_number", "shape")}
        existed = stored["kind"] is not None or bool(ledger.stores())
        if existed:
            try:
                _refuse_unless_demo(ledger.where, stored, seed_number, shape)
            except NotADemoDatabase:
                ledger.close()
                raise
    else:
        path = Path(path)
        existed = path.exists() and path.stat().st_size > 0
        if existed:
            _refuse_unless_demo(path, _sqlite_meta(path), seed_number, shape)
        ledger = Ledger(path, new_secret=plan.secret, **ledger_options)  # type: ignore[arg-type]
    try:
        if not existed or ledger.meta("kind") is None:
            return ledger, seed_demo(ledger, seed_number, as_of, shape)
        stored_as_of = date.fromisoformat(
            ledger.meta("as_of") or _anchor(as_of, ledger.tz)[0].isoformat()
        )
        for store in plan.stores:  # a demo made before stores had a jurisdiction
            if (known := ledger.store(store.id)) is not None and not known.jurisdiction:
                ledger.set_jurisdiction(store.id, store.jurisdiction)
        if ledger.user_record("analyst") is None:  # a demo made before the analyst existed
            everywhere = [s.id for s in ledger.stores()]
            analyst = hash_password(DEMO_USERS["analyst"])
            ledger.put_user("analyst", analyst, everywhere, role="analyst")
        return ledger, _demo_data(plan, seed_number, stored_as_of, ledger)
    except BaseException:
        ledger.close()
        raise


def _sqlite_meta(path: Path) -> dict[str, str | None]:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error:
        raise NotADemoDatabase(
            f"{path} exists but is not a giftcard_toolkit database; choose another --db path"
        ) from None


def _refuse_unless_demo(
    path: str | Path, rows: dict[str, str | None], seed_number: int, shape: Shape
) -> None:
    if rows.get("kind") != "demo":
        raise NotADemoDatabase(
            f"{path} holds real (non-demo) data; --seed demo refuses to touch it. "
            "Choose another --db path for the demo."
        )
    if rows.get("seed_number") != str(seed_number):
        raise NotADemoDatabase(
            f"{path} is a demo database of seed {rows.get('seed_number')}, not {seed_number}; "
            "delete it or choose another --db path"
        )
    made = rows.get("shape") or str(DEMO)  # demos made before chains had the demo's shape
    if made != str(shape):
        raise NotADemoDatabase(
            f"{path} is a demo database of {made}, not {shape}; delete it or choose another "
            "--db path"
        )


def write_card_stock(cards: list[DemoCard], path: str | Path) -> Path:
    """The demo card stock as CSV (columns: card_number, security_code, store_id, sold)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CARD_STOCK_COLUMNS)
        for card in cards:
            writer.writerow(
                [card.number, card.security_code, card.store_id, "true" if card.sold else "false"]
            )
    return path


def read_card_stock(path: str | Path) -> list[DemoCard]:
    with Path(path).open(newline="") as handle:
        return [
            DemoCard(
                row["card_number"],
                row["security_code"],
                store_id=row["store_id"],
                sold=row["sold"].strip().lower() == "true",
            )
            for row in csv.DictReader(handle)
        ]
