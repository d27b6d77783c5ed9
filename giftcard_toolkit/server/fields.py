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


# Limits on what a request body may hold (contract §1, "hostile input"). Nothing a client
# needs comes near them; what goes beyond is refused with a 400 naming it, never a 500.
MAX_DEPTH = 32  # arrays and objects nested in each other
MAX_NUMBER_LENGTH = 40  # characters of one JSON number as written
# The farthest a number may be from 1 (its adjusted exponent): far beyond any amount, so
# that 1e300 is still an amount over the limit (100012), yet far from where Decimal's
# arithmetic overflows (1e999999 would).
MAX_EXPONENT = 1000

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# Control characters (C0, DEL, C1), lone surrogates, the line and paragraph separators,
# and the bidirectional marks, embeddings, overrides and isolates (Unicode's Bidi_Control).
_FORBIDDEN_TEXT = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be free text (a reason, a PosRef, a store's name), or None.

    Control characters and bidirectional overrides are refused: they hide or reorder what
    a person reads in batches, audit records and reports (``"lost\\u202ekcab"``)."""
    found = _FORBIDDEN_TEXT.search(value)
    if found is None:
        return None
    return (
        f"must not hold control characters or bidirectional overrides "
        f"(U+{ord(found.group()):04X} at position {found.start() + 1})"
    )


class _Refused(Exception):
    """Raised inside the JSON decoder's hooks: parsing stops; the 400 names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class _NumberOutOfRange(Exception):
    """A JSON number too long or too far from 1 for anything a request holds."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _folded(name: str) -> str:
    # ASCII-only folding, like .NET's ordinal-ignore-case: "\u212a" (Kelvin) is not "k".
    return name.lower() if name.isascii() else name


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when a name is given twice in any letter case: which of
    ``{"amount": 1.00, "Amount": 3.00}`` did the till mean?"""
    obj = dict(pairs)
    if len({_folded(name) for name in obj}) == len(pairs):
        return obj
    seen: dict[str, str] = {}
    for name, _ in pairs:
        first = seen.get(_folded(name))
        if first is None:
            seen[_folded(name)] = name
            continue
        twice = f'"{name}" twice' if first == name else f'"{first}" and "{name}"'
        raise _Refused(
            first, f"{first} is given twice ({twice}; names match in any letter case): send it once"
        )
    return obj  # not reached: some name was given twice


def _integer(text: str) -> int:
    if len(text) > MAX_NUMBER_LENGTH:
        raise _NumberOutOfRange(text)
    return int(text)


def _fraction(text: str) -> Decimal:
    if len(text) > MAX_NUMBER_LENGTH:
        raise _NumberOutOfRange(text)
    value = Decimal(text)
    if not -MAX_EXPONENT <= value.adjusted() <= MAX_EXPONENT:
        raise _NumberOutOfRange(text)
    return value


# One decoder for every request: its hooks hold no state. NaN and Infinity are read (as
# Decimal) so that the ledger declines them with 100006, as the contract says.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_object, parse_float=_fraction, parse_int=_integer, parse_constant=Decimal
)


def _too_deep(text: str) -> bool:
    """Whether arrays and objects nest deeper than ``MAX_DEPTH`` (brackets in strings aside).
    Checked before parsing: the decoder recurses once per level."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False  # cannot be, whatever the strings hold
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub("", text)):
        if bracket.group() in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _field_of(text: str, number: str) -> str:
    """The name of the field whose value is ``number`` as written, or ``body``."""
    found = re.search(
        r'"((?:[^"\\]|\\.){1,64})"\s*:\s*' + re.escape(number) + r"(?![0-9.eE+-])", text
    )
    return found.group(1) if found and found.group(1).isprintable() else "body"


def parse_json_object(raw: bytes, *, required: bool = True) -> dict[str, Any]:
    """The request body as a dict; numbers with a fraction or an exponent as ``Decimal``.

    Parsed with limits (contract §1, hostile input): UTF-8 only, at most ``MAX_DEPTH``
    levels, numbers of at most ``MAX_NUMBER_LENGTH`` characters and ``MAX_EXPONENT``, no
    escaped lone surrogate, no name given twice in any letter case. Whatever breaks one is
    an :class:`InvalidRequest` (400) naming it, never a 500.
    """
    if not raw.strip():
        if required:
            raise InvalidRequest({"body": ["a JSON object body is required"]})
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            {
                "body": [
                    f"the body is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                    f"{exc.start}): send a JSON object in UTF-8"
                ]
            }
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte order mark, as some Windows tools write
    if _too_deep(text):
        raise InvalidRequest(
            {"body": [f"the JSON is nested deeper than {MAX_DEPTH} levels: send a flat object"]}
        )
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            {
                "body": [
                    f"the body is not valid JSON (line {exc.lineno}, column {exc.colno}): "
                    "send a JSON object"
                ]
            }
        ) from None
    except _Refused as exc:
        raise InvalidRequest({exc.field: [exc.message]}) from None
    except _NumberOutOfRange as exc:
        name = _field_of(text, exc.text)
        shown = exc.text if len(exc.text) <= 24 else f"{exc.text[:16]}... ({len(exc.text)} chars)"
        raise InvalidRequest(
            {
                name: [
                    f"{name} holds the number {shown}, out of range: at most "
                    f"{MAX_NUMBER_LENGTH} characters, from 1E-{MAX_EXPONENT} to 1E+{MAX_EXPONENT}"
                ]
            }
        ) from None
    except (RecursionError, ValueError, ArithmeticError):  # the limits above should stop these
        raise InvalidRequest({"body": ["the body cannot be read as a JSON object"]}) from None
    if not isinstance(value, dict):
        raise InvalidRequest({"body": ['the body must be a JSON object, e.g. {"cardtoken": ...}']})
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _holds_lone_surrogate(value):
        raise InvalidRequest(
            {"body": ["the body escapes a lone surrogate (\\ud800-\\udfff), which is not text"]}
        )
    return value


def _holds_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# Made once: simplejson.dumps with options builds a new encoder at every call (twice a
# keyed request). The text is the same as that call's.
_CANONICAL_ENCODER = simplejson.JSONEncoder(sort_keys=True, use_decimal=True)


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
        self._data = {_folded(k): v for k, v in body.items() if v is not None and v != ""}
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
        text = _CANONICAL_ENCODER.encode(_canonical(data))
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
        free_text: bool = False,
    ) -> str | None:
        """A string; ``free_text`` (what people type: a reason, a PosRef) also refuses
        control characters and bidirectional overrides."""
        value = self._get(name, required, example)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(name, f"{name} must be a string, e.g. {example}")
            return None
        if max_length is not None and len(value) > max_length:
            self.fail(name, f"{name} must be at most {max_length} characters, got {len(value)}")
            return None
        if free_text:
            problem = text_problem(value)
            if problem is not None:
                self.fail(name, f"{name} {problem}")
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
        if not GUID.fullmatch(value):
            self.fail(name, f"{name} must be a store id GUID like {GUID_EXAMPLE}")
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
    if not GUID.fullmatch(value):
        raise InvalidRequest({name: [f"{name} must be a store id GUID like {GUID_EXAMPLE}"]})
    return value.lower()


def idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not IDEMPOTENCY_KEY.match(value):
        raise InvalidRequest(
            {"Idempotency-Key": ["must be 1 to 64 printable ASCII characters, e.g. a UUID"]}
        )
    return value
