"""Test helpers for the server suites: a movable clock and a POS terminal over raw HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import simplejson

from giftcard_toolkit.cards import luhn_check_digit
from giftcard_toolkit.server.runner import RunningServer
from giftcard_toolkit.server.seed import DemoCard

# A valid card number that no demo server has issued.
UNKNOWN_CARD = "600600000000000" + luhn_check_digit("600600000000000")


class Recording(httpx.HTTPTransport):
    """A real transport that keeps every request it sent (to assert what left, or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return super().handle_request(request)


class MovableClock:
    """An injectable clock: tests move time instead of sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 10, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Seconds:
    """A monotonic clock in seconds that the test moves (for the throttle and the
    credential cache)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def body(response: httpx.Response) -> dict[str, Any]:
    """A response body with money as Decimal, as a careful client reads it."""
    parsed: dict[str, Any] = json.loads(response.text, parse_float=Decimal)
    return parsed


class Pos:
    """A POS terminal talking to a live server: thin helpers over raw HTTP."""

    def __init__(self, srv: RunningServer, user: str = "demo") -> None:
        self.srv = srv
        self.http = httpx.Client(base_url=srv.url, auth=(user, srv.users[user]), timeout=30.0)
        self._unused = {
            store.id: iter([c for c in srv.card_stock if not c.sold and c.store_id == store.id])
            for store in srv.stores
        }

    def fresh_card(self, store_index: int = 0) -> DemoCard:
        """An unsold card from a store's stock that no other test of this server has used."""
        card = next(self._unused[self.srv.stores[store_index].id], None)
        assert card is not None, "ran out of unsold demo cards"
        return card

    def token(self, card: DemoCard) -> str:
        answer = body(
            self.http.post(
                "/v1/Token", json={"cardnumber": card.number, "securitycode": card.security_code}
            )
        )
        assert answer["statuscode"] == "000000", answer
        return str(answer["token"])

    def send(self, method: str, path: str, payload: Any, **kwargs: Any) -> httpx.Response:
        """Send ``payload`` as JSON, Decimal amounts as exact JSON numbers."""
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        content = simplejson.dumps(payload, use_decimal=True)
        return self.http.request(method, path, content=content, headers=headers, **kwargs)

    def post(self, path: str, payload: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        response = self.send("POST", path, payload, **kwargs)
        assert response.status_code == 200, response.text
        return body(response)

    def sold_card(self, amount: str = "50.00", store_index: int = 0) -> tuple[DemoCard, str]:
        """A freshly sold card and its token."""
        card = self.fresh_card(store_index)
        token = self.token(card)
        sold = self.post(
            "/Transaction/sellnewcard",
            {
                "cardtoken": token,
                "amount": Decimal(amount),
                "FranchiseeID": self.srv.stores[store_index].id,
            },
        )
        assert sold["statuscode"] == "000000", sold
        return card, token

    def balance(self, token: str) -> Decimal:
        answer = self.post("/Transaction/balancecheck", {"cardtoken": token})
        return Decimal(answer["balance"])

    def close(self) -> None:
        self.http.close()


def books(srv: Any, tokens: bool = True) -> tuple[Any, ...]:
    """Everything a request could have applied: money, card states, batches, status
    changes, tokens (unless ``tokens`` is false: a valid /v1/Token makes one),
    security-code failures, idempotency records, stores."""
    with srv.ledger.read() as conn:
        return tuple(
            tuple(tuple(row) for row in conn.execute(sql))
            for sql in (
                "SELECT count(*), coalesce(sum(amount_cents), 0), coalesce(max(id), 0) FROM ledger",
                "SELECT id, state, balance_cents, locked_until FROM cards ORDER BY id",
                "SELECT id, status, closed_at FROM batches ORDER BY id",
                "SELECT count(*) FROM status_changes",
                "SELECT count(*) FROM tokens" if tokens else "SELECT 0",
                "SELECT count(*) FROM code_failures",
                "SELECT count(*) FROM idempotency",
                "SELECT id, name, address FROM stores ORDER BY id",
            )
        )
