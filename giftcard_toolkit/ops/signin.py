"""Signing a person in: their own username and password, checked with the server's
``verify`` before anything else is sent, so that every action after it (and its audit
record) is theirs.

    gc = sign_in("http://127.0.0.1:8800", "clerk", password)
    gc.verification.role, gc.verification.max_amount   # what this person may do

The password lives only in the client's ``Authorization`` header, in memory: it is never
written, logged, nor put in an error message or a repr.
"""

from __future__ import annotations

from typing import Any

from giftcard_toolkit import errors
from giftcard_toolkit.client import GiftCardClient


class SignInFailed(errors.AuthenticationError):
    """The username or password is wrong (or missing): said in words, nothing else shown."""


def sign_in(url: str, username: str, password: str, **options: Any) -> GiftCardClient:
    """A client for ``username`` at ``url``, once the server has accepted the password
    (its ``verify`` answer, with the role and own limit, is ``client.verification``).

    A wrong username or password raises :class:`SignInFailed`; too many of them,
    :class:`~giftcard_toolkit.errors.TooManyAttempts`; a server out of reach,
    :class:`~giftcard_toolkit.errors.ConnectError`. ``options`` go to
    :class:`~giftcard_toolkit.client.GiftCardClient` (``transport``, ``card_key``...)."""
    username = (username or "").strip()
    if not username or not password:
        raise SignInFailed("enter both a username and a password to sign in", status=401, body=None)
    client = GiftCardClient(url, username, password, **options)
    try:
        client.verify()
    except errors.TooManyAttempts:
        client.close()
        raise
    except errors.AuthenticationError as refused:
        client.close()
        raise SignInFailed(
            f"the server at {client.base_url} did not accept username {username!r} with "
            "that password: check both (letter case counts) and sign in again",
            status=refused.status,
            body=refused.body,
        ) from None
    except BaseException:
        client.close()
        raise
    return client
