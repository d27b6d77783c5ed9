"""The contract's rules for what a request may hold, written once for both halves: the
client checks what people type against them before sending, the server refuses what
breaks them. Only the standard library here (the server imports it too)."""

from __future__ import annotations

import re
from decimal import Decimal

# A store id, as ``FranchiseeID`` and ``{storeid}`` carry it.
GUID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")
GUID_EXAMPLE = "3f2a6c1e-8b1d-4c7a-9e2f-0a1b2c3d4e5f"
# An Idempotency-Key: 1 to 64 printable ASCII characters.
IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]{1,64}$")
# Where a store trades, for unclaimed-property rules: an ISO 3166 code, a country ("US")
# or a subdivision ("US-NY"), in capitals.
JURISDICTION = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?\Z")
JURISDICTION_EXAMPLE = "US-NY"


def is_money_amount(amount: Decimal) -> bool:
    """Whether ``amount`` can move money: finite, above zero, whole cents."""
    if not amount.is_finite() or amount <= 0:
        return False
    scaled = amount.scaleb(2)
    return scaled == scaled.to_integral_value()
