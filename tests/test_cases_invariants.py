"""Random mixes of card cases (replace, reverse, adjust) with ordinary reloads, redeems and
status changes, on a live server: the books always balance, no money is created or lost by
a case, and every card holds what the answers said.
"""

from __future__ import annotations

import contextlib
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from giftcard_toolkit import Card, GiftCardClient, errors
from giftcard_toolkit.ops import cases
from giftcard_toolkit.server import hash_password, running

amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("400"), places=2)
signed = amounts.flatmap(lambda a: st.sampled_from([a, -a]))
CARDS = 3


@pytest.fixture(scope="module")
def live():
    with running(seed=None) as srv:
        store = srv.ledger.add_store("Case Street", "1 Case St")
        srv.ledger.put_user("ops", hash_password("ops-password"), [store.id])
        yield srv, store


class Cases(RuleBasedStateMachine):
    srv = None
    store = None

    @initialize(start=st.lists(amounts, min_size=CARDS, max_size=CARDS))
    def open_cards(self, start: list[Decimal]) -> None:
        self.gc = GiftCardClient(self.srv.url, "ops", "ops-password")
        issued = self.srv.ledger.issue_cards(self.store.id, CARDS)
        self.cards = [Card(c.number, c.security_code) for c in issued]
        self.said: list[Decimal] = []
        for card, amount in zip(self.cards, start, strict=True):
            self.said.append(self.gc.sell(card, amount, self.store).balance)

    def teardown(self) -> None:
        if hasattr(self, "gc"):
            self.gc.close()

    def _balances(self) -> list[Decimal]:
        return [self.gc.balance(c).balance for c in self.cards]

    @rule(i=st.integers(0, CARDS - 1), amount=amounts)
    def reload(self, i: int, amount: Decimal) -> None:
        with contextlib.suppress(errors.Declined):
            self.said[i] = self.gc.reload(self.cards[i], amount, self.store).balance

    @rule(i=st.integers(0, CARDS - 1), amount=amounts)
    def redeem(self, i: int, amount: Decimal) -> None:
        with contextlib.suppress(errors.Declined):
            self.said[i] = self.gc.redeem(self.cards[i], amount, self.store).new_balance

    @rule(i=st.integers(0, CARDS - 1), active=st.booleans())
    def change_status(self, i: int, active: bool) -> None:
        with contextlib.suppress(errors.Declined):
            self.gc.change_status(self.cards[i], active, "state machine")

    @rule(i=st.integers(0, CARDS - 1), j=st.integers(0, CARDS - 1))
    def replace(self, i: int, j: int) -> None:
        before = self._balances()
        try:
            done = cases.replace(self.gc, self.cards[i], self.cards[j], self.store, "lost")
        except (cases.CaseError, errors.InvalidInput):
            assert self._balances() == before, "a refused or undone case moved money"
            return
        after = self._balances()
        assert sum(after) == sum(before), "a replacement created or lost money"
        assert after[i] == done.old_balance == 0 and after[j] == done.new_balance
        if all(step.earlier for step in done.steps):  # the same case, found done: no move
            assert after == before
        else:
            assert done.moved == before[i] and after[j] == before[j] + before[i]
        assert self.gc.balance(self.cards[i]).state == "blocked"
        self.said = after

    @rule(i=st.integers(0, CARDS - 1), pick=st.integers(0, 50))
    def reverse(self, i: int, pick: int) -> None:
        story = cases.history(self.gc, self.cards[i])
        if story.is_empty():
            return
        tx = story.row(pick % story.height, named=True)
        before = self._balances()
        try:
            back = cases.reverse(self.gc, self.cards[i], tx["host_ref"], self.store, "twice")
        except cases.CaseError:
            assert self._balances() == before
            return
        sign = 1 if tx["type"] == "redeem" else -1
        if back.steps[0].earlier:
            sign = 0  # reversed earlier: nothing moved now
        assert self._balances()[i] == before[i] + sign * back.amount == back.balance
        self.said[i] = back.balance

    @rule(i=st.integers(0, CARDS - 1), amount=signed)
    def adjust(self, i: int, amount: Decimal) -> None:
        before = self._balances()
        try:
            fixed = cases.adjust(self.gc, self.cards[i], amount, self.store, "correction")
        except cases.CaseError:
            assert self._balances() == before
            return
        assert fixed.balance == before[i] + amount == self._balances()[i]
        self.said[i] = fixed.balance

    @invariant()
    def books_balance(self) -> None:
        if not hasattr(self, "gc"):
            return
        assert self._balances() == self.said, "a card holds other than its answers said"
        assert all(b >= 0 for b in self.said)
        assert self.srv.ledger.check_invariants() == []


def test_cases_mixed_with_ordinary_operations_keep_the_books(live):
    Cases.srv, Cases.store = live
    run_state_machine_as_test(
        Cases,
        settings=settings(
            max_examples=12,
            stateful_step_count=10,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
