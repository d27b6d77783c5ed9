"""Money movements: sales, reloads and redemptions, and blocking a card.

Balances are integer cents in ``cards.balance_cents`` (``CHECK >= 0``); every movement
appends a ``ledger`` row in the same write transaction that changes the balance, so a
card's balance always equals the signed sum of its ledger rows (``check_invariants``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from giftcard_toolkit.cards import mask
from giftcard_toolkit.server.ledger.admin import Admin
from giftcard_toolkit.server.ledger.batches import Batches
from giftcard_toolkit.server.ledger.books import Books
from giftcard_toolkit.server.ledger.idempotency import Operations
from giftcard_toolkit.server.ledger.records import (
    DESCRIPTIONS,
    Body,
    CardRef,
    Decline,
    Idempotency,
    amount_problem,
    from_cents,
    to_cents,
    ts,
)
from giftcard_toolkit.server.ledger.storage import Conn, Row
from giftcard_toolkit.server.ledger.tokens import Tokens, expired

CARD_LIFETIME_YEARS = 5
_LEDGER_COLUMNS = (
    "card_id, store_id, batch_id, type, amount_cents, previous_cents, new_cents, pos_ref, at,"
    " username"
)


def years_later(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year + years, day=28)


def check_user_limit(username: str, amount: Decimal, max_amount: Decimal | None) -> None:
    """Decline (``100012``, naming the limit) a movement over the user's own limit."""
    if max_amount is not None and amount > max_amount:
        raise Decline(
            "100012",
            description=f"Over limit: {amount:,.2f} is over user {username}'s own limit of "
            f"{max_amount:,.2f} per sale, reload or redemption; a user with a higher limit "
            "must approve it",
        )


def store_fields(store: Row) -> Body:
    return {
        "franchiseeid": store["id"],
        "storename": store["name"],
        "storeaddress": store["address"],
    }


class Money:
    """The movements of money on cards, each one write operation."""

    def __init__(
        self,
        books: Books,
        operations: Operations,
        tokens: Tokens,
        admin: Admin,
        batches: Batches,
    ) -> None:
        self.books = books
        self.operations = operations
        self.tokens = tokens
        self.admin = admin
        self.batches = batches

    def move(
        self,
        conn: Conn,
        *,
        card: Row,
        store: Row,
        kind: str,
        cents: int,
        new_cents: int,
        pos_ref: str | None,
        username: str,
        now: datetime,
        activate: bool = False,
    ) -> int:
        """Apply one money movement: the balance, its ledger row, its batch. Returns hostRef."""
        if activate:
            expires = years_later(now, CARD_LIFETIME_YEARS)
            updated = conn.execute(
                "UPDATE cards SET state = 'active', balance_cents = ?, activated_at = ?, "
                "last_used_at = ?, expires_at = ? WHERE id = ? AND state = 'stock' "
                "AND balance_cents = ?",
                (new_cents, ts(now), ts(now), ts(expires), card["id"], card["balance_cents"]),
            ).rowcount
        else:
            updated = conn.execute(
                "UPDATE cards SET balance_cents = ?, last_used_at = ? "
                "WHERE id = ? AND balance_cents = ?",
                (new_cents, ts(now), card["id"], card["balance_cents"]),
            ).rowcount
        if updated != 1:  # cannot happen: the store keeps writers of a card apart; refuse
            raise RuntimeError("card changed during its own transaction")
        row = (
            card["id"],
            store["id"],
            kind,
            cents,
            card["balance_cents"],
            new_cents,
            pos_ref,
            ts(now),
            username,
        )
        # Into the store's open batch, found by the insert itself (one statement, one round
        # trip on PostgreSQL); the first movement after a close opens the next batch.
        created = conn.execute(
            f"INSERT INTO ledger({_LEDGER_COLUMNS}) SELECT ?, ?, id, ?, ?, ?, ?, ?, ?, ? "
            "FROM batches WHERE store_id = ? AND status = 'open' RETURNING id",
            (*row, store["id"]),
        ).fetchall()
        if not created:
            batch_id = self.batches.open_batch(conn, store["id"], now)
            created = conn.execute(
                f"INSERT INTO ledger({_LEDGER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                (*row[:2], batch_id, *row[2:]),
            ).fetchall()
        return int(created[0][0])

    def load(
        self,
        username: str,
        stores: frozenset[str],
        ref: CardRef,
        amount: Decimal,
        store_id: str,
        pos_ref: str | None,
        *,
        sale: bool,
        idem: Idempotency | None = None,
        owner: str | None = None,
        max_amount: Decimal | None = None,
    ) -> str:
        """``sellnewcard`` (``sale=True``: activate a stock card) or ``reload``;
        ``max_amount`` is the user's own limit (None: the server's limits only)."""

        def operation(conn: Conn, now: datetime) -> Body:
            if amount_problem(amount):
                raise Decline("100006")
            store = self.admin.granted_store(conn, stores, store_id)
            card = self.tokens.resolve(conn, username, ref, now)
            if sale and card["state"] != "stock":
                raise Decline("100004")
            if not sale:
                if card["state"] != "active":
                    raise Decline("100002")
                if expired(card, now):
                    raise Decline("100003")
            max_balance_cents = to_cents(self.books.limits.max_balance)
            if amount > self.books.limits.max_load or amount > self.books.limits.max_balance:
                raise Decline("100012")
            cents = to_cents(amount)
            new_cents = card["balance_cents"] + cents
            if new_cents > max_balance_cents:
                raise Decline("100012")
            check_user_limit(username, amount, max_amount)
            host_ref = self.move(
                conn,
                card=card,
                store=store,
                kind="sale" if sale else "reload",
                cents=cents,
                new_cents=new_cents,
                pos_ref=pos_ref,
                username=username,
                now=now,
                activate=sale,
            )
            return {
                "statuscode": "000000",
                "description": DESCRIPTIONS["000000"],
                "hostRef": str(host_ref),
                "cardno": mask(card["last4"]),
                "balance": from_cents(new_cents),
                "status": True,
                **store_fields(store),
                "datetimereloaded": self.books.time_text(ts(now)),
            }

        return self.operations.run(operation, idem, owner)

    def redeem(
        self,
        username: str,
        stores: frozenset[str],
        ref: CardRef,
        amount: Decimal,
        store_id: str,
        pos_ref: str | None,
        *,
        accept_partial: bool = False,
        idem: Idempotency | None = None,
        owner: str | None = None,
        max_amount: Decimal | None = None,
    ) -> str:
        """``radeem``: never below zero; the whole balance when partial approval is allowed.
        ``max_amount`` is the user's own limit on the amount asked (None: none)."""

        def operation(conn: Conn, now: datetime) -> Body:
            if amount_problem(amount):
                raise Decline("100006")
            store = self.admin.granted_store(conn, stores, store_id)
            card = self.tokens.resolve(conn, username, ref, now)
            if card["state"] != "active":
                raise Decline("100002")
            if expired(card, now):
                raise Decline("100003")
            check_user_limit(username, amount, max_amount)
            previous = card["balance_cents"]
            code = "000000"
            if amount > from_cents(previous):
                if not accept_partial or previous == 0:
                    raise Decline("100005", balance=from_cents(previous))
                code, cents = "000001", previous
            else:
                cents = to_cents(amount)
            host_ref = self.move(
                conn,
                card=card,
                store=store,
                kind="redeem",
                cents=cents,
                new_cents=previous - cents,
                pos_ref=pos_ref,
                username=username,
                now=now,
            )
            return {
                "statuscode": code,
                "description": DESCRIPTIONS[code],
                "hostRef": str(host_ref),
                "cardno": mask(card["last4"]),
                "approvedbalance": from_cents(cents),
                "previousbalance": from_cents(previous),
                "newbalance": from_cents(previous - cents),
                "status": True,
                **store_fields(store),
                "datetimeradeemed": self.books.time_text(ts(now)),
            }

        return self.operations.run(operation, idem, owner)

    def change_status(
        self,
        username: str,
        ref: CardRef,
        active: bool,
        reason: str,
        *,
        idem: Idempotency | None = None,
        owner: str | None = None,
    ) -> str:
        """``changestatus``: block (``active=False``) or unblock a sold card; balance kept."""

        def operation(conn: Conn, now: datetime) -> Body:
            card = self.tokens.resolve(conn, username, ref, now)
            if card["state"] == "stock":
                raise Decline("100002")
            if (card["state"] == "active") == active:
                raise Decline("100015")
            conn.execute(
                "UPDATE cards SET state = ? WHERE id = ?",
                ("active" if active else "inactive", card["id"]),
            )
            conn.execute(
                "INSERT INTO status_changes(card_id, active, reason, at, username) "
                "VALUES (?, ?, ?, ?, ?)",
                (card["id"], int(active), reason, ts(now), username),
            )
            return {
                "statuscode": "000000",
                "description": DESCRIPTIONS["000000"],
                "card": mask(card["last4"]),
                "balance": from_cents(card["balance_cents"]),
                "status": active,
            }

        return self.operations.run(operation, idem, owner)

    def check_invariants(self) -> list[str]:
        """Every way the books could be wrong; empty when they are right (tests use this)."""
        problems: list[str] = []
        with self.books.storage.read() as conn:
            for r in conn.execute(
                "SELECT c.id, c.balance_cents, coalesce(sum(CASE l.type WHEN 'redeem' "
                "THEN -l.amount_cents ELSE l.amount_cents END), 0) AS total FROM cards c "
                "LEFT JOIN ledger l ON l.card_id = c.id GROUP BY c.id, c.balance_cents "
                "HAVING c.balance_cents != coalesce(sum(CASE l.type WHEN 'redeem' "
                "THEN -l.amount_cents ELSE l.amount_cents END), 0)"
            ):
                problems.append(f"card {r[0]}: balance {r[1]} != ledger sum {r[2]}")
            for r in conn.execute(
                "SELECT id FROM ledger WHERE new_cents != previous_cents + CASE type "
                "WHEN 'redeem' THEN -amount_cents ELSE amount_cents END"
            ):
                problems.append(f"ledger row {r[0]}: previous/new balance disagree")
            for r in conn.execute(
                "SELECT l.id FROM ledger l JOIN batches b ON b.id = l.batch_id "
                "WHERE b.store_id != l.store_id"
            ):
                problems.append(f"ledger row {r[0]} is in another store's batch")
            opened = conn.execute(
                "SELECT store_id, count(*) FROM batches WHERE status = 'open' GROUP BY store_id "
                "HAVING count(*) > 1"
            ).fetchall()
            problems.extend(f"store {r[0]} has {r[1]} open batches" for r in opened)
        return problems
