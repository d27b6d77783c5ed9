from __future__ import annotations

import re

MASKED = re.compile(r"^\*{12}[0-9]{4}$")


def test_money_is_sent_with_two_decimals(pos):
    _, token = pos.sold_card("7.5")
    text = pos.send("POST", "/Transaction/balancecheck", {"cardtoken": token}).text
    assert '"balance":7.50' in text
