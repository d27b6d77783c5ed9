"""Card numbers: normalising, the Luhn check, masking, and the card cipher.

Both halves of the toolkit use this module (the client to send cards, the server to read
them), so it depends on nothing but the standard library and ``cryptography``.  A full
card number or security code must never reach a log, a repr or an exception message:
everything here that shows a card shows it masked to its last four digits.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CARD_NUMBER_LENGTH = 16
SECURITY_CODE_LENGTH = 4
_SEPARATORS = re.compile(r"[\s-]+")


class InvalidCardNumber(ValueError):
    """A card number that is not 16 digits or fails the Luhn check (message never holds it)."""


class InvalidSecurityCode(ValueError):
    """A security code that is not 4 digits (message never holds it)."""


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (a string of digits) passes the Luhn checksum."""
    if not (digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """The digit that makes ``partial + digit`` Luhn-valid (used to issue new cards)."""
    for digit in "0123456789":
        if luhn_valid(partial + digit):
            return digit
    raise AssertionError("unreachable: one of ten digits always completes a Luhn number")


def card_number_problem(value: object) -> str | None:
    """Why ``value`` is not a usable card number, or None when it is.

    Spaces and dashes are ignored, as printed cards and POS keypads use them.
    """
    if not isinstance(value, str):
        return "must be a string of 16 digits"
    digits = _SEPARATORS.sub("", value)
    if not (digits.isascii() and digits.isdigit()):
        return "must contain only digits (spaces and dashes are ignored)"
    if len(digits) != CARD_NUMBER_LENGTH:
        return f"must be {CARD_NUMBER_LENGTH} digits, got {len(digits)}"
    if not luhn_valid(digits):
        return "fails the Luhn check: a digit is mistyped"
    return None


def normalize_card_number(value: str) -> str:
    """The 16 digits of a card number, or :class:`InvalidCardNumber` saying what is wrong."""
    problem = card_number_problem(value)
    if problem is not None:
        raise InvalidCardNumber(f"card number {problem}")
    return _SEPARATORS.sub("", value)


def security_code_problem(value: object) -> str | None:
    """Why ``value`` is not a security code (4 digits), or None when it is."""
    if not isinstance(value, str):
        return "must be a string of 4 digits"
    if len(value) != SECURITY_CODE_LENGTH or not (value.isascii() and value.isdigit()):
        return f"must be {SECURITY_CODE_LENGTH} digits"
    return None


def normalize_security_code(value: str) -> str:
    problem = security_code_problem(value)
    if problem is not None:
        raise InvalidSecurityCode(f"security code {problem}")
    return value


def mask(number: str) -> str:
    """``************4759``: the form in which a card may be shown anywhere."""
    last4 = number[-4:] if len(number) >= 4 else ""
    return "*" * 12 + last4


# 12 to 19 digits, possibly grouped by spaces or dashes: anything that could be a card number.
CARD_LIKE = re.compile(r"(?<![0-9])(?:[0-9][ -]?){11,18}[0-9](?![0-9])")


# A GUID (a store id) can hold 12 or more digits in a row between its dashes: not a card.
_GUID_ANYWHERE = re.compile(r"[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")


def scrub(text: str) -> str:
    """``text`` with anything shaped like a card number masked to its last four digits
    (store ids, GUIDs, are left as they are)."""
    parts = _GUID_ANYWHERE.split(text)
    guids = _GUID_ANYWHERE.findall(text)
    scrubbed = [CARD_LIKE.sub(lambda m: mask(re.sub(r"[ -]", "", m.group(0))), p) for p in parts]
    return "".join(p + g for p, g in zip(scrubbed, [*guids, ""], strict=True))


@dataclass(frozen=True)
class Card:
    """A gift card as printed: its number and (optionally) its security code.

    The repr shows the masked number only, so a card can be printed in a notebook.
    """

    number: str
    security_code: str | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "number", normalize_card_number(self.number))
        if self.security_code is not None:
            normalize_security_code(self.security_code)

    @property
    def last4(self) -> str:
        return self.number[-4:]

    @property
    def masked(self) -> str:
        return mask(self.number)

    def __repr__(self) -> str:
        code = ", security_code='****'" if self.security_code is not None else ""
        return f"{type(self).__name__}({self.masked!r}{code})"

    __str__ = __repr__


class CardCipher(Protocol):
    """How a card number travels in the ``encrypted`` field; pluggable per deployment."""

    def encrypt(self, card_number: str) -> str: ...

    def decrypt(self, encrypted: str) -> str: ...


class CardDecryptError(ValueError):
    """The ``encrypted`` value could not be read as a card number."""


class AesGcmCardCipher:
    """The contract's cipher: ``base64(nonce[12] || AES-256-GCM(number) || tag[16])``."""

    NONCE_BYTES = 12

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("card key must be 32 bytes (AES-256); give it as 44 base64 characters")
        self._aead = AESGCM(key)

    @classmethod
    def from_base64(cls, key_b64: str) -> AesGcmCardCipher:
        """Build from the base64 form used in ``GIFTCARD_CARD_KEY``."""
        try:
            key = base64.b64decode(key_b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                "card key is not valid base64; expected 32 random bytes in base64 (44 characters)"
            ) from None
        return cls(key)

    def encrypt(self, card_number: str) -> str:
        number = normalize_card_number(card_number)
        nonce = os.urandom(self.NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, number.encode("ascii"), None)
        return base64.b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, encrypted: str) -> str:
        try:
            blob = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError):
            raise CardDecryptError("encrypted card data is not valid base64") from None
        if len(blob) < self.NONCE_BYTES + 16 + 1:
            raise CardDecryptError("encrypted card data is too short")
        nonce, sealed = blob[: self.NONCE_BYTES], blob[self.NONCE_BYTES :]
        try:
            plain = self._aead.decrypt(nonce, sealed, None)
        except InvalidTag:
            raise CardDecryptError("encrypted card data does not decrypt with this key") from None
        try:
            return normalize_card_number(plain.decode("ascii"))
        except (UnicodeDecodeError, InvalidCardNumber):
            raise CardDecryptError("encrypted card data is not a valid card number") from None

    def __repr__(self) -> str:
        return "AesGcmCardCipher(key=<hidden>)"
