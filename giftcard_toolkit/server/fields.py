"""Reading request bodies the way the production server's binder does.

Field names match case-insensitively (``FranchiseeID`` = ``franchiseeId``), unknown fields
are ignored, and ``null`` or ``""`` count as absent (C# clients send ``"PosRef": null``).
Every problem is collected under the field's name so that one 400 answer names them all.
Messages never repeat a card number, security code, token or ``encrypted`` value.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from decimal import Decimal
from typing import Any

import simplejson

from giftcard_toolkit.cards import (
    card_number_problem,
    normalize_card_number,
    security_code_problem,
)
from giftcard_toolkit.rules import GUID, GUID_EXAMPLE, IDEMPOTENCY_KEY
from giftcard_toolkit.server.ledger import CardRef

DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class InvalidRequest(Exception):
    """A request the server cannot read: answered with a 400 problem body."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))
        self.errors = errors


def parse_json_object(raw: bytes, *, required: bool = True) -> dict[str, Any]:
    """The request body as a dict; money and other numbers with a fraction as ``Decimal``."""
    if not raw.strip():
        if required:
            raise InvalidRequest({"body": ["a JSON object body is required"]})
        return {}
    try:
        value = json.loads(raw, parse_float=Decimal, parse_constant=Decimal)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            {
                "body": [
                    f"the body is not valid JSON (line {exc.lineno}, column {exc.colno}): "
                    "send a JSON object"
                ]
            }
        ) from None
    except ValueError:  # not UTF-8
        raise InvalidRequest({"body": ["the body is not UTF-8 text: send a JSON object"]}) from None
    if not isinstance(value, dict):
        raise InvalidRequest({"body": ['the body must be a JSON object, e.g. {"cardtoken": ...}']})
    return value


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):
        return value.normalize() if value.is_finite() else str(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


class Fields:
    """The fields of one JSON request body, read by name whatever their letter case."""

    def __init__(self, body: dict[str, Any]) -> None:
        # ASCII-only folding, like .NET's ordinal-ignore-case: "\u212a" (Kelvin) is not "k".
        self._data = {
            (k.lower() if k.isascii() else k): v
            for k, v in body.items()
            if v is not None and v != ""
        }
        self.errors: dict[str, list[str]] = {}
        self.card: CardRef | None = None  # set by card_ref()

    def canonical_json(self, card_identity: str | None = None) -> str:
        """The body as compared for idempotency, as a digest: lower-case names, numbers by
        value, and the card itself (its ``card_identity``) in place of the token or
        ciphertext that named it, so a retry after re-tokenizing is the same request.

        Without ``card_identity`` the body is taken as sent, with the token or ciphertext
        digested too: a retry whose token has expired since is recognised by it.
        """
        data = dict(self._data)
        for name in ("cardtoken", "encrypted"):
            if name in data:
                named = data.pop(name)
                if card_identity is None:
                    data[name] = hashlib.sha256(str(named).encode()).hexdigest()
        if card_identity is not None:
            data["card"] = card_identity
        text = simplejson.dumps(_canonical(data), sort_keys=True, use_decimal=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def fail(self, name: str, message: str) -> None:
        self.errors.setdefault(name, []).append(message)

    def check(self) -> None:
        """Raise :class:`InvalidRequest` naming every field that was wrong."""
        if self.errors:
            raise InvalidRequest(self.errors)

    def _get(self, name: str, required: bool, example: str) -> Any:
        value = self._data.get(name.lower())
        if value is None and required:
            self.fail(name, f"{name} is required, e.g. {example}")
        return value

    def text(
        self,
        name: str,
        *,
        required: bool = False,
        max_length: int | None = None,
        example: str = '"..."',
    ) -> str | None:
        value = self._get(name, required, example)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(name, f"{name} must be a string, e.g. {example}")
            return None
        if max_length is not None and len(value) > max_length:
            self.fail(name, f"{name} must be at most {max_length} characters, got {len(value)}")
            return None
        return value

    def boolean(self, name: str, *, required: bool = False) -> bool | None:
        value = self._get(name, required, "true")
        if value is None or isinstance(value, bool):
            return value
        self.fail(name, f"{name} must be true or false")
        return None

    def integer(self, name: str, *, required: bool = False) -> int | None:
        value = self._get(name, required, "12")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(name, f"{name} must be a whole number of 0 or more")
            return None
        return value

    def money(self, name: str, *, required: bool = False) -> Decimal | None:
        """A JSON number as ``Decimal``. Whether it is a *valid amount* (positive, cents) is
        the ledger's call: the contract answers that with the ``100006`` decline, not 400."""
        value = self._get(name, required, "25.00")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            self.fail(name, f"{name} must be a JSON number, e.g. 25.00 (not a string)")
            return None
        return Decimal(value)

    def guid(self, name: str, *, required: bool = True) -> str | None:
        value = self.text(name, required=required, example='"3f2a6c1e-...-...."')
        if value is None:
            return None
        if not GUID.match(value):
            self.fail(
                name, f"{name} must be a store id GUID like {GUID_EXAMPLE}"
            )
            return None
        return value.lower()

    def card_number(self, name: str) -> str | None:
        value = self._get(name, True, '"6006491234567897"')
        if value is None:
            return None
        problem = card_number_problem(value)
        if problem is not None:
            self.fail(name, f"{name} {problem}")
            return None
        return normalize_card_number(value)

    def security_code(self, name: str) -> str | None:
        value = self._get(name, True, '"1234"')
        if value is None:
            return None
        problem = security_code_problem(value)
        if problem is not None:
            self.fail(name, f"{name} {problem}")
            return None
        return str(value)

    def card_ref(self) -> CardRef | None:
        """Exactly one of ``cardtoken`` and ``encrypted``."""
        token = self.text("cardtoken")
        encrypted = self.text("encrypted")
        if "cardtoken" in self.errors or "encrypted" in self.errors:
            return None
        if token is not None and encrypted is not None:
            self.fail("cardtoken", "send either cardtoken or encrypted, not both")
            return None
        if token is None and encrypted is None:
            self.fail(
                "cardtoken", "name the card: send cardtoken (from POST /v1/Token) or encrypted"
            )
            return None
        self.card = CardRef(token=token, encrypted=encrypted)
        return self.card


def query_date(value: str | None, name: str) -> date | None:
    """A ``YYYY-MM-DD`` query parameter (nothing else: ``0`` is not 1970-01-01)."""
    if value is None:
        return None
    if not DATE.match(value):
        raise InvalidRequest({name: [f"{name} must be a date as YYYY-MM-DD, e.g. 2026-09-30"]})
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest({name: [f"{name} is not a real date: {value}"]}) from None


def path_guid(value: str, name: str = "storeid") -> str:
    if not GUID.match(value):
        raise InvalidRequest(
            {name: [f"{name} must be a store id GUID like {GUID_EXAMPLE}"]}
        )
    return value.lower()


def idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not IDEMPOTENCY_KEY.match(value):
        raise InvalidRequest(
            {"Idempotency-Key": ["must be 1 to 64 printable ASCII characters, e.g. a UUID"]}
        )
    return value
