"""Batches: each movement goes into its store's open batch (opened on demand, at most one
per store); a batch's totals are computed from its rows, never stored, so they cannot
drift. Closing one is a write transaction too, so a movement is either before the close
(in the closed batch) or after it (in the next one), never both, never neither."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from giftcard_toolkit.cards import mask
from giftcard_toolkit.server.ledger.admin import Admin
from giftcard_toolkit.server.ledger.books import Books
from giftcard_toolkit.server.ledger.idempotency import Operations
from giftcard_toolkit.server.ledger.records import (
    DESCRIPTIONS,
    Body,
    Decline,
    Idempotency,
    RawJSON,
    decline_body,
    dumps,
    from_cents,
    json_string,
    money_json,
    ts,
)
from giftcard_toolkit.server.ledger.storage import Conn, Row

# A batch's transactions as listed, for ``_transaction_json``.
_LISTED = (
    "SELECT l.batch_id, l.id, l.type, c.last4, c.cardref, l.amount_cents, l.previous_cents, "
    "l.new_cents, l.pos_ref, l.at, l.username FROM ledger l JOIN cards c ON c.id = l.card_id "
    "WHERE l.batch_id IN ({marks}) ORDER BY l.batch_id, l.at, l.id"
)


def _transaction_json(fields: Sequence[Any], time_text: Callable[[str | None], str | None]) -> str:
    """A listed transaction (a row of ``_LISTED`` after its batch id) as the very JSON text
    ``dumps`` gives its dict: a listing holds up to a thousand batches, and dicts of
    decimals cost several times more to make and encode."""
    host_ref, kind, last4, ref, amount, previous, new, pos, at, user = fields
    return (
        f'{{"hostRef":"{host_ref}","type":{json_string(kind)},'
        f'"cardno":{json_string(mask(last4))},"cardref":{json_string(ref)},'
        f'"amount":{money_json(amount)},"previousbalance":{money_json(previous)},'
        f'"newbalance":{money_json(new)},"posref":{json_string(pos)},'
        f'"datetime":{json_string(time_text(at))},"username":{json_string(user)}}}'
    )


class Batches:
    """Open, list and close the stores' batches."""

    def __init__(self, books: Books, admin: Admin, operations: Operations) -> None:
        self.books = books
        self.admin = admin
        self.operations = operations

    def open_batch(self, conn: Conn, store_id: str, now: datetime) -> int:
        """A new open batch for a store that has none (``Money.move`` looked, in its insert)."""
        (created,) = conn.execute(
            "INSERT INTO batches(store_id, status, opened_at) VALUES (?, 'open', ?) RETURNING id",
            (store_id, ts(now)),
        ).fetchall()
        return int(created[0])

    def _bodies(self, conn: Conn, rows: list[Row], transactions: bool) -> list[Body]:
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        marks = ",".join("?" * len(ids))
        # Per batch and type: how many movements, how many cents.
        totals: dict[int, dict[str, list[int]]] = {i: {} for i in ids}
        listed: dict[int, list[str]] = {i: [] for i in ids}
        if transactions:  # every movement is read anyway: its totals are counted on the way
            time_text = self.books.time_text
            for batch_id, *fields in conn.execute(_LISTED.format(marks=marks), ids):
                listed[batch_id].append(_transaction_json(fields, time_text))
                kind, amount_cents = fields[1], fields[4]
                of_type = totals[batch_id].setdefault(kind, [0, 0])
                of_type[0] += 1
                of_type[1] += amount_cents
        else:
            for r in conn.execute(
                f"SELECT batch_id, type, count(*), sum(amount_cents) FROM ledger "
                f"WHERE batch_id IN ({marks}) GROUP BY batch_id, type",
                ids,
            ):
                totals[r[0]][r[1]] = [r[2], r[3]]
        bodies = []
        for r in rows:
            sums = totals[r["id"]]
            sold, reloaded, redeemed = (
                sums.get(k, [0, 0])[1] for k in ("sale", "reload", "redeem")
            )
            body: Body = {
                "batchid": str(r["id"]),
                "status": r["status"],
                "opened": self.books.time_text(r["opened_at"]),
                "closed": self.books.time_text(r["closed_at"]),
                "transactioncount": sum(c for c, _ in sums.values()),
                "soldamount": from_cents(sold),
                "reloadedamount": from_cents(reloaded),
                "redeemedamount": from_cents(redeemed),
                "netamount": from_cents(sold + reloaded - redeemed),
            }
            if transactions:
                body["transactions"] = RawJSON(f"[{','.join(listed[r['id']])}]")
            bodies.append(body)
        return bodies

    def _local_day_start(self, day: date) -> str:
        return ts(datetime(day.year, day.month, day.day, tzinfo=self.books.tz))

    def find(
        self,
        stores: frozenset[str],
        store_id: str,
        *,
        status: str = "all",
        since: date | None = None,
        until: date | None = None,
        limit: int = 100,
        transactions: bool = True,
    ) -> str:
        """``GET /Batch/{storeid}``: newest first, filtered on the opening date (server zone)."""
        with self.books.storage.read() as conn:
            try:
                store = self.admin.granted_store(conn, stores, store_id)
            except Decline as decline:
                return dumps(decline_body(decline.code, franchiseeid=store_id, batches=[]))
            where, params = ["store_id = ?"], [store_id]
            if status != "all":
                where.append("status = ?")
                params.append(status)
            if since is not None:
                where.append("opened_at >= ?")
                params.append(self._local_day_start(since))
            if until is not None:
                where.append("opened_at < ?")
                params.append(self._local_day_start(until + timedelta(days=1)))
            rows = conn.execute(
                f"SELECT * FROM batches WHERE {' AND '.join(where)} "
                "ORDER BY opened_at DESC, id DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
            bodies = self._bodies(conn, rows, transactions)
        return dumps(self._envelope(store, bodies))

    def _envelope(self, store: Row, bodies: list[Body]) -> Body:
        return {
            "statuscode": "000000",
            "description": DESCRIPTIONS["000000"],
            "franchiseeid": store["id"],
            "storename": store["name"],
            "batches": bodies,
        }

    def close_batch(
        self,
        stores: frozenset[str],
        store_id: str,
        *,
        expected_count: int | None = None,
        expected_amount: Decimal | None = None,
        idem: Idempotency | None = None,
        owner: str | None = None,
    ) -> str:
        """``POST /Batch/batch/{storeid}``: settle the open batch, if the totals agree."""

        def operation(conn: Conn, now: datetime) -> Body:
            store = self.admin.granted_store(conn, stores, store_id)
            return self._close(conn, store, now, expected_count, expected_amount)

        return self.operations.run(operation, idem, owner)

    def _close(
        self,
        conn: Conn,
        store: Row,
        now: datetime,
        expected_count: int | None = None,
        expected_amount: Decimal | None = None,
    ) -> Body:
        row = conn.execute(
            "SELECT * FROM batches WHERE store_id = ? AND status = 'open'", (store["id"],)
        ).fetchone()
        if row is None:
            raise Decline("100016")
        (current,) = self._bodies(conn, [row], transactions=False)
        if current["transactioncount"] == 0:
            raise Decline("100016")
        count_differs = expected_count is not None and expected_count != current["transactioncount"]
        amount_differs = expected_amount is not None and expected_amount != current["netamount"]
        if count_differs or amount_differs:
            raise Decline(
                "100013",
                batchid=current["batchid"],
                transactioncount=current["transactioncount"],
                netamount=current["netamount"],
            )
        conn.execute(
            "UPDATE batches SET status = 'closed', closed_at = ? WHERE id = ?",
            (ts(now), row["id"]),
        )
        closed = conn.execute("SELECT * FROM batches WHERE id = ?", (row["id"],)).fetchall()
        return self._envelope(store, self._bodies(conn, closed, transactions=True))
