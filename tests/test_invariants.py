"""Random sequences of money operations, some of them concurrent, never break the books.

A hypothesis state machine drives the ledger with sells, reloads, redeems (partial or not),
blocks and unblocks, and batch closes over a few cards and two stores, and after every step
checks: each card's balance equals its ledger rows and never goes below zero, each batch's
totals are its transactions', every approved hostRef is exactly one ledger row in exactly
one batch, and what the answers said the balances are is what they are.
"""

from __future__ import annotations

import json
import tempfile
from concurrent.futures import wait
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from giftcard_toolkit.cards import AesGcmCardCipher, luhn_check_digit
from giftcard_toolkit.server.ledger import CardRef, IssuedCard, Ledger, Limits

CARDS = ["60060000000001" + str(n) for n in range(4)]
CARDS = [c + luhn_check_digit(c) for c in CARDS]
amounts = st.one_of(
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("600"), places=2),
    st.sampled_from([Decimal("0"), Decimal("-1"), Decimal("1.005"), Decimal("2000.01")]),
)


class Books(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="giftcard-books-")
        self.cipher = AesGcmCardCipher(b"b" * 32)
        self.ledger = Ledger(
            Path(self.tmp.name) / "books.sqlite",
            durable=False,
            card_cipher=self.cipher,
            limits=Limits(),
        )
        self.stores = [self.ledger.add_store(f"Store {n}").id for n in range(2)]
        self.granted = frozenset(self.stores)
        self.ledger.add_cards([IssuedCard(n, "1234", self.stores[0]) for n in CARDS])
        self.approved: set[str] = set()
        self.said: dict[str, Decimal] = {}  # card -> balance as the last answer said

    def teardown(self) -> None:
        self.ledger.close()
        self.tmp.cleanup()

    def ref(self, card: str) -> CardRef:
        return CardRef(encrypted=self.cipher.encrypt(card))

    def note(self, card: str, text: str, field: str) -> dict:
        body = json.loads(text, parse_float=Decimal)
        if body["statuscode"] in ("000000", "000001") and "hostRef" in body:
            assert body["hostRef"] not in self.approved, "a hostRef approved twice"
            self.approved.add(body["hostRef"])
            self.said[card] = body[field]
        return body

    @rule(card=st.sampled_from(CARDS), amount=amounts, store=st.integers(0, 1), sale=st.booleans())
    def load(self, card, amount, store, sale):
        text = self.ledger.load(
            "demo", self.granted, self.ref(card), amount, self.stores[store], "POS", sale=sale
        )
        self.note(card, text, "balance")

    @rule(
        card=st.sampled_from(CARDS), amount=amounts, store=st.integers(0, 1), partial=st.booleans()
    )
    def redeem(self, card, amount, store, partial):
        text = self.ledger.redeem(
            "demo",
            self.granted,
            self.ref(card),
            amount,
            self.stores[store],
            "POS",
            accept_partial=partial,
        )
        self.note(card, text, "newbalance")

    @rule(card=st.sampled_from(CARDS), amount=amounts, count=st.integers(2, 6))
    def concurrent_redeems(self, card, amount, count):
        futures = [
            self.ledger.submit(
                lambda: self.ledger.redeem(
                    "demo", self.granted, self.ref(card), amount, self.stores[0], "POS"
                )
            )
            for _ in range(count)
        ]
        wait(futures, timeout=30)
        for future in futures:
            self.note(card, future.result(), "newbalance")

    @rule(card=st.sampled_from(CARDS), active=st.booleans())
    def change_status(self, card, active):
        self.ledger.change_status("demo", self.ref(card), active, "testing")

    @rule(store=st.integers(0, 1))
    def close_batch(self, store):
        self.ledger.close_batch(self.granted, self.stores[store])

    @invariant()
    def books_balance(self):
        assert self.ledger.check_invariants() == []

    @invariant()
    def every_approval_is_one_row_in_one_batch(self):
        with self.ledger.read() as conn:
            rows = {str(r[0]): r[1] for r in conn.execute("SELECT id, batch_id FROM ledger")}
            negative = conn.execute("SELECT count(*) FROM cards WHERE balance_cents < 0")
            assert negative.fetchone()[0] == 0
        assert set(rows) == self.approved, "applied exactly what was approved"
        assert all(batch is not None for batch in rows.values())

    @invariant()
    def balances_are_what_the_answers_said(self):
        for card, said in self.said.items():
            answer = json.loads(self.ledger.balance("demo", self.ref(card)), parse_float=Decimal)
            assert answer["balance"] == said


Books.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestBooks = Books.TestCase
