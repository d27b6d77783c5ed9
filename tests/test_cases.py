"""Card cases: one card's story, and replace / reverse / adjust applied exactly once whatever
fails, with money conserved at every step."""

from __future__ import annotations

import random
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import polars as pl
import pytest

from giftcard_toolkit import Card, GiftCardClient, audit, errors, frames
from giftcard_toolkit.ops import cases

MONEY_PATHS = ("/Transaction/radeem", "/Transaction/sellnewcard", "/Transaction/reload")
STEP_PATHS = (*MONEY_PATHS, "/Transaction/changestatus")


@pytest.fixture
def gc(server):
    with GiftCardClient(server.url, server.username, server.password) as client:
        yield client


def _cards(server, sold: bool, count: int, taken=set()):  # noqa: B006 - one pool a module
    store = server.stores[0].id
    picked = [
        c
        for c in server.card_stock
        if c.sold == sold and c.store_id == store and c.number not in taken
    ][:count]
    taken.update(c.number for c in picked)
    return picked


def _loaded(server, gc, amount: str = "60.00", count: int = 1):
    """Fresh cards sold now with ``amount``: their story is known to the cent."""
    cards = _cards(server, False, count)
    for card in cards:
        gc.sell(card, amount, card.store_id)
    return cards


def _marked(server, case_id: str) -> list[dict]:
    """Every transaction in the server's batches that a case's steps made."""
    with GiftCardClient(server.url, server.username, server.password) as gc:
        _, txs = frames.fetch(gc, progress=False)
    return txs.filter(pl.col("pos_ref").str.starts_with(f"case {case_id} ")).rows(named=True)


def _balance(gc, card) -> Decimal:
    return gc.balance(card).balance


# ------------------------------------------------------------------ history


def test_history_is_the_cards_batch_rows_by_cardref(server, gc):
    card = next(c for c in server.card_stock if c.sold)
    story = cases.history(gc, card)
    ref = gc.balance(card).card_ref
    _, txs = frames.fetch(gc, progress=False)
    expected = txs.filter(pl.col("card_ref") == ref).sort("at", "host_ref")
    assert story.height > 0 and story.equals(expected)
    assert story.schema == frames.TRANSACTION_SCHEMA
    assert story["at"].is_sorted()
    assert card.number not in str(story)


class NoCardRef(httpx.HTTPTransport):
    """A production-like server that sends no cardref anywhere."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        text = response.text.replace('"cardref":', '"x-ignored":')
        return httpx.Response(response.status_code, headers=response.headers, content=text.encode())


def test_without_cardref_history_matches_last_four_and_warns(server):
    card = next(c for c in server.card_stock if c.sold)
    with (
        GiftCardClient(server.url, server.username, server.password, transport=NoCardRef()) as gc,
        pytest.warns(cases.AmbiguousHistory, match="last four digits"),
    ):
        story = cases.history(gc, card)
    assert story.height > 0 and set(story["card_last4"]) == {card.number[-4:]}


def test_an_unsold_card_has_an_empty_history(server, gc):
    (card,) = _cards(server, False, 1)
    assert cases.history(gc, card).is_empty()


# ------------------------------------------------------------------ replace


def test_replace_moves_the_whole_balance_and_blocks_the_old_card(server, gc, tmp_path):
    (old,) = _loaded(server, gc, "60.00")
    gc.redeem(old, "12.50", old.store_id)
    (new,) = _cards(server, False, 1)
    log = tmp_path / "audit.jsonl"
    done = cases.replace(gc, old, new, old.store_id, "customer lost it", audit_log=log)
    assert done.moved == Decimal("47.50")
    assert done.old_balance == Decimal("0.00") and done.new_balance == Decimal("47.50")
    assert [s.name for s in done.steps] == ["take", "give", "block"]
    assert [s.operation for s in done.steps] == ["redeem", "sell", "block"]
    assert len(done.host_refs) == 2
    assert gc.balance(old).state == "blocked" and gc.balance(new).state == "active"
    steps = audit.read(log, case_id=done.case_id)
    assert steps["operation"].to_list() == ["replace redeem", "replace sell", "replace block"]
    assert old.number not in log.read_text() and new.number not in log.read_text()
    # Run again: nothing moves, the steps are found applied.
    again = cases.replace(gc, old, new, old.store_id, "customer lost it")
    assert again.moved == Decimal("47.50") and all(s.earlier for s in again.steps)
    assert _balance(gc, new) == Decimal("47.50")
    assert len(_marked(server, done.case_id)) == 2


def test_replace_of_a_blocked_card_onto_an_active_one(server, gc):
    old, new = _loaded(server, gc, "30.00", count=2)
    gc.change_status(old, False, "reported lost")
    done = cases.replace(gc, old, new, old.store_id, "lost")
    assert [s.name for s in done.steps] == ["unblock", "take", "give", "block"]
    assert done.steps[2].operation == "reload"
    assert done.new_balance == Decimal("60.00") and gc.balance(old).state == "blocked"


def test_replace_refuses_bad_cases_and_sends_nothing(server, gc):
    old, other = _loaded(server, gc, "20.00", count=2)
    (blocked,) = _loaded(server, gc, "5.00")
    gc.change_status(blocked, False, "fraud")
    (empty,) = _loaded(server, gc, "5.00")
    gc.redeem(empty, "5.00", empty.store_id)
    (new,) = _cards(server, False, 1)
    store = old.store_id
    with pytest.raises(errors.InvalidInput, match="is the old card"):
        cases.replace(gc, old, Card(old.number, old.security_code), store, "x")
    with pytest.raises(cases.CaseError, match="it is blocked; nothing was sent"):
        cases.replace(gc, old, blocked, store, "x")
    with pytest.raises(cases.CaseError, match="holds nothing to move"):
        cases.replace(gc, empty, new, store, "x")
    with pytest.raises(errors.InvalidInput, match="reason is required"):
        cases.replace(gc, old, new, store, "  ")
    assert _balance(gc, old) == Decimal("20.00") and gc.balance(new).state == "unsold"
    assert _balance(gc, other) == Decimal("20.00")


def test_a_declined_give_puts_the_money_back(server, gc):
    (old,) = _loaded(server, gc, "300.00")
    (full,) = _loaded(server, gc, "500.00")
    for _ in range(3):
        gc.reload(full, "500.00", full.store_id)  # 2,000.00: the card's limit
    gc.change_status(old, False, "lost")
    with pytest.raises(cases.CaseError, match="money was put back") as failed:
        cases.replace(gc, old, full, old.store_id, "lost")
    assert [s.name for s in failed.value.steps] == ["unblock", "take", "undo-take", "reblock"]
    assert _balance(gc, old) == Decimal("300.00") and gc.balance(old).state == "blocked"
    assert _balance(gc, full) == Decimal("2000.00")
    with pytest.raises(cases.CaseError, match="undone earlier"):
        cases.replace(gc, old, full, old.store_id, "lost")
    assert _balance(gc, old) == Decimal("300.00")


class CrashAfter(httpx.HTTPTransport):
    """Lets ``steps`` case steps through, then crashes (like Ctrl-C or a killed kernel)
    right after the next one reached the server and was applied: its answer is lost."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.left = steps

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path in STEP_PATHS and request.headers.get("idempotency-key", "").startswith(
            "case-"
        ):
            if self.left == 0:
                response.read()
                raise KeyboardInterrupt
            self.left -= 1
        return response


@pytest.mark.parametrize("crash_after", [0, 1, 2, 3])
def test_replace_crashed_after_each_step_then_run_again_conserves_money(server, crash_after):
    with GiftCardClient(server.url, server.username, server.password) as gc:
        (old,) = _loaded(server, gc, "45.00")
        (new,) = _loaded(server, gc, "5.00")
        gc.change_status(old, False, "lost")  # four steps: unblock, take, give, block
    with (
        GiftCardClient(
            server.url, server.username, server.password, transport=CrashAfter(crash_after)
        ) as crashing,
        pytest.raises(KeyboardInterrupt),
    ):
        cases.replace(crashing, old, new, old.store_id, "lost")
    with GiftCardClient(server.url, server.username, server.password) as gc:
        done = cases.replace(gc, old, new, old.store_id, "lost")
        assert _balance(gc, old) + _balance(gc, new) == Decimal("50.00")
        assert _balance(gc, new) == Decimal("50.00") and gc.balance(old).state == "blocked"
    marked = _marked(server, done.case_id)
    assert sorted(t["pos_ref"].split()[-1] for t in marked) == ["give", "take"], "each once"


@pytest.mark.parametrize("crash_after", [0, 1])
def test_reverse_crashed_then_run_again_applies_once(server, crash_after):
    with GiftCardClient(server.url, server.username, server.password) as gc:
        (card,) = _loaded(server, gc, "40.00")
        charged = gc.redeem(card, "15.00", card.store_id)
    with GiftCardClient(
        server.url, server.username, server.password, transport=CrashAfter(crash_after)
    ) as crashing:
        if crash_after == 0:
            with pytest.raises(KeyboardInterrupt):
                cases.reverse(crashing, card, charged.host_ref, card.store_id, "twice")
        else:
            cases.reverse(crashing, card, charged.host_ref, card.store_id, "twice")
    with GiftCardClient(server.url, server.username, server.password) as gc:
        done = cases.reverse(gc, card, charged.host_ref, card.store_id, "twice")
        assert done.steps[0].earlier
        assert _balance(gc, card) == Decimal("40.00")
    assert len(_marked(server, done.case_id)) == 1


class LoseSome(httpx.HTTPTransport):
    """A proxy losing a tenth of the answers to money and status calls (seeded)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.random = random.Random(seed)
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path in STEP_PATHS and self.random.random() < 0.10:
            response.read()
            self.lost += 1
            raise httpx.ReadTimeout("answer lost", request=request)
        return response


def _until_done(run):
    for _ in range(20):
        try:
            return run()
        except cases.CaseIncomplete:
            continue
    raise AssertionError("the case never finished")


def test_cases_through_a_proxy_losing_answers_conserve_money(server):
    transport = LoseSome(seed=7)
    with (
        GiftCardClient(server.url, server.username, server.password) as plain,
        GiftCardClient(
            server.url,
            server.username,
            server.password,
            transport=transport,
            attempts=2,
            backoff=0.001,
        ) as gc,
    ):
        pairs = [_loaded(server, plain, "25.00", count=2) for _ in range(6)]
        case_ids = []
        for old, new in pairs:
            done = _until_done(lambda o=old, n=new: cases.replace(gc, o, n, o.store_id, "lost"))
            case_ids.append(done.case_id)
            charged = plain.redeem(new, "10.00", new.store_id)
            rev = _until_done(
                lambda n=new, c=charged: cases.reverse(gc, n, c.host_ref, n.store_id, "twice")
            )
            case_ids.append(rev.case_id)
            assert _balance(plain, old) == 0 and _balance(plain, new) == Decimal("50.00")
    assert transport.lost > 0, "the proxy lost answers"
    for case_id in case_ids:
        steps = [t["pos_ref"] for t in _marked(server, case_id)]
        assert len(steps) == len(set(steps)), f"a step of case {case_id} applied twice"


# ------------------------------------------------------------------ reverse


def test_reverse_a_double_charge_once_ever(server, gc, tmp_path):
    (card,) = _loaded(server, gc, "50.00")
    first = gc.redeem(card, "20.00", card.store_id)
    gc.redeem(card, "20.00", card.store_id)  # the till charged twice
    done = cases.reverse(gc, card, first.host_ref, card.store_id, "charged twice")
    assert done.reversed_type == "redeem" and done.amount == Decimal("20.00")
    assert done.balance == Decimal("30.00") == _balance(gc, card)
    with GiftCardClient(server.url, "clerk", "clerk-password") as colleague:
        # A colleague running the same case finds it done; under another key it is refused.
        same = cases.reverse(colleague, card, first.host_ref, card.store_id, "charged twice")
        assert same.host_ref == done.host_ref and same.steps[0].earlier
        with pytest.raises(cases.CaseError, match=f"reversed already .*{done.host_ref}"):
            cases.reverse(colleague, card, first.host_ref, card.store_id, "again", key="t-9")
    assert _balance(gc, card) == Decimal("30.00")


def test_reverse_a_sale_and_a_reload(server, gc):
    (card,) = _loaded(server, gc, "50.00")
    reload = gc.reload(card, "20.00", card.store_id)
    back = cases.reverse(gc, card, reload.host_ref, card.store_id, "wrong card")
    assert back.reversed_type == "reload" and back.balance == Decimal("50.00")
    sale = cases.history(gc, card).filter(pl.col("type") == "sale").row(0, named=True)
    undone = cases.reverse(gc, card, sale["host_ref"], card.store_id, "sold by mistake")
    assert undone.balance == Decimal("0.00")


def test_reverse_refuses_what_it_cannot_do_and_sends_nothing(server, gc):
    card, other = _loaded(server, gc, "30.00", count=2)
    others = gc.redeem(other, "5.00", other.store_id)
    reload = gc.reload(card, "20.00", card.store_id)
    gc.redeem(card, "45.00", card.store_id)  # holds 5.00 now
    store = card.store_id
    with pytest.raises(cases.CaseError, match="not a transaction of card"):
        cases.reverse(gc, card, "no-such-ref", store, "x")
    with pytest.raises(cases.CaseError, match="not a transaction of card"):
        cases.reverse(gc, card, others.host_ref, store, "x")
    with pytest.raises(cases.CaseError, match=r"takes 20\.00 off .* which holds 5\.00"):
        cases.reverse(gc, card, reload.host_ref, store, "x")
    with pytest.raises(errors.InvalidInput, match="reason"):
        cases.reverse(gc, card, reload.host_ref, store, "")
    assert _balance(gc, card) == Decimal("5.00") and _balance(gc, other) == Decimal("25.00")


@pytest.mark.parametrize("colleague", ["demo", "clerk"])
def test_two_concurrent_reversals_apply_once(server, gc, colleague):
    (card,) = _loaded(server, gc, "50.00")
    charged = gc.redeem(card, "20.00", card.store_id)
    password = {"demo": "demo-password", "clerk": "clerk-password"}
    start = threading.Barrier(2)

    def reverse(user: str):
        with GiftCardClient(server.url, user, password[user]) as client:
            start.wait()
            try:
                return cases.reverse(client, card, charged.host_ref, card.store_id, "twice")
            except cases.CaseError as refused:
                return refused

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(reverse, ["demo", colleague]))
    assert _balance(gc, card) == Decimal("50.00"), "reversed once"
    assert any(isinstance(o, cases.Reversal) for o in outcomes)
    assert all(
        isinstance(o, cases.Reversal) or "reversed" in str(o) or "in flight" in str(o)
        for o in outcomes
    )


# ------------------------------------------------------------------ adjust


def test_adjust_up_and_down(server, gc, tmp_path):
    (card,) = _loaded(server, gc, "50.00")
    up = cases.adjust(gc, card, "5.00", card.store_id, "clerk loaded 5 short")
    down = cases.adjust(gc, card, Decimal("-45.00"), card.store_id, "loaded 50, not 5")
    assert (up.balance, down.balance) == (Decimal("55.00"), Decimal("10.00"))
    assert down.amount == Decimal("-45.00") and down.host_ref
    with pytest.raises(cases.CaseError, match="holds 10.00"):
        cases.adjust(gc, card, "-11", card.store_id, "too much")
    keyed = cases.adjust(gc, card, "1.00", card.store_id, "once", key="ticket-42")
    again = cases.adjust(gc, card, "1.00", card.store_id, "once", key="ticket-42")
    assert again.host_ref == keyed.host_ref and _balance(gc, card) == Decimal("11.00")


@pytest.mark.parametrize(
    ("amount", "reason", "error"),
    [
        ("0", "x", "non-zero"),
        ("0.00", "x", "non-zero"),
        ("1.005", "x", "at most 2 decimals"),
        (1.5, "x", "float"),
        ("abc", "x", "not a number"),
        ("5", "", "reason"),
    ],
)
def test_adjust_refuses_bad_input_before_sending(server, gc, amount, reason, error):
    (card,) = _loaded(server, gc, "10.00")
    with pytest.raises(errors.InvalidInput, match=error):
        cases.adjust(gc, card, amount, card.store_id, reason)
    assert _balance(gc, card) == Decimal("10.00")


def test_no_case_leaks_a_card_number(server, gc, tmp_path):
    old, new = _loaded(server, gc, "10.00", count=2)
    log = tmp_path / "audit.jsonl"
    done = cases.replace(gc, old, new, old.store_id, "lost", audit_log=log)
    texts = [repr(done), str(done.steps), log.read_text()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        texts.append(str(cases.history(gc, new)))
    for text in texts:
        assert old.number not in text and new.number not in text
        assert old.security_code not in text.replace(done.case_id, "")


def test_a_balance_over_the_per_load_limit_moves_in_parts(server, gc):
    (old,) = _loaded(server, gc, "500.00")
    gc.reload(old, "500.00", old.store_id)
    gc.reload(old, "234.56", old.store_id)  # 1,234.56: three loads
    (new,) = _cards(server, False, 1)
    done = cases.replace(gc, old, new, old.store_id, "lost")
    assert done.moved == Decimal("1234.56") and done.new_balance == Decimal("1234.56")
    assert [(s.name, s.operation, s.amount) for s in done.steps[1:4]] == [
        ("give", "sell", Decimal("500.00")),
        ("give-2", "reload", Decimal("500.00")),
        ("give-3", "reload", Decimal("234.56")),
    ]
    again = cases.replace(gc, old, new, old.store_id, "lost")
    assert all(s.earlier for s in again.steps) and _balance(gc, new) == Decimal("1234.56")


def test_a_part_refused_half_way_takes_back_what_was_given_and_puts_it_all_back(server, gc):
    (old,) = _loaded(server, gc, "500.00")
    gc.reload(old, "400.00", old.store_id)  # 900.00: 500 + 400
    (new,) = _loaded(server, gc, "500.00")
    gc.reload(new, "500.00", new.store_id)
    gc.reload(new, "500.00", new.store_id)  # 1,500.00: the first 500 fits, the 400 not
    with pytest.raises(cases.CaseError, match="put back") as undone:
        cases.replace(gc, old, new, old.store_id, "lost")
    names = [s.name for s in undone.value.steps]
    assert names == ["take", "give", "undo-give", "undo-take", "undo-take-2"]
    assert _balance(gc, old) == Decimal("900.00") and _balance(gc, new) == Decimal("1500.00")


def test_an_undo_stopped_half_way_is_finished_by_the_next_run(server):
    with GiftCardClient(server.url, server.username, server.password) as gc:
        (old,) = _loaded(server, gc, "500.00")
        gc.reload(old, "400.00", old.store_id)  # 900.00
        (new,) = _loaded(server, gc, "500.00")
        gc.reload(new, "500.00", new.store_id)
        gc.reload(new, "500.00", new.store_id)  # 1,500.00
    # take, give, give-2 (refused), undo-give, undo-take: crash after it reached the server
    with (
        GiftCardClient(
            server.url, server.username, server.password, transport=CrashAfter(4)
        ) as crashing,
        pytest.raises(KeyboardInterrupt),
    ):
        cases.replace(crashing, old, new, old.store_id, "lost")
    with GiftCardClient(server.url, server.username, server.password) as gc:
        assert _balance(gc, old) == Decimal("500.00"), "half put back when it stopped"
        with pytest.raises(cases.CaseError, match="undone earlier") as finished:
            cases.replace(gc, old, new, old.store_id, "lost")
        assert [s.name for s in finished.value.steps if not s.earlier][:1] == ["undo-take-2"]
        assert _balance(gc, old) == Decimal("900.00") and _balance(gc, new) == Decimal("1500.00")
        with pytest.raises(cases.CaseError, match="undone earlier"):
            cases.replace(gc, old, new, old.store_id, "lost")
        assert _balance(gc, old) == Decimal("900.00"), "never undone twice"
