"""A ready client for notebooks and scripts: the server at ``GIFTCARD_URL`` when that is
set, else a fresh embedded demo server on loopback (so every notebook runs anywhere)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from giftcard_toolkit import scratch
from giftcard_toolkit.client import GiftCardClient
from giftcard_toolkit.models import Store


@dataclass
class Session:
    """``client`` to use; ``server`` is the embedded demo (None against a real server);
    ``demo_cards`` its card stock (empty against a real server)."""

    client: GiftCardClient
    server: Any = None
    stores: list[Store] = field(default_factory=list)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    _workdir: Path | None = field(default=None, repr=False)

    @property
    def workdir(self) -> Path:
        """A scratch folder for this session's own files (an audit log, a bulk file):
        removed when the session closes, or at the latest when its process ends."""
        if self._workdir is None:
            self._workdir = scratch.folder("session")
            self._stack.callback(scratch.remove, self._workdir)
        return self._workdir

    @property
    def demo_cards(self) -> list[Any]:
        return list(self.server.card_stock) if self.server is not None else []

    def store(self, name_or_id: str | None) -> Store | None:
        """The store a notebook's ``store`` parameter names (its name or id; None: none)."""
        return None if name_or_id is None else find_store(self.stores, name_or_id)

    def close(self) -> None:
        """Close the client and stop the embedded server, if any."""
        self._stack.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class UnknownStore(LookupError):
    """A store name or id that is none of the stores the user may see."""


def find_store(stores: list[Store], name_or_id: str) -> Store:
    """The store of ``stores`` whose id, or name (in any case), is ``name_or_id``."""
    wanted = " ".join(str(name_or_id).split()).casefold()
    for store in stores:
        if wanted in (store.id.casefold(), " ".join(store.name.split()).casefold()):
            return store
    names = ", ".join(repr(s.name or s.id) for s in stores) or "none"
    raise UnknownStore(
        f"no store {str(name_or_id)!r} among the stores this user may see ({names}); "
        "give one of those names, or its id"
    )


def open_session(**client_options: Any) -> Session:
    """Connect: ``GIFTCARD_URL`` (with ``GIFTCARD_USERNAME``/``PASSWORD``) when set, else a
    seeded demo server started here. Call ``close()`` (or use ``with``) when done."""
    stack = contextlib.ExitStack()
    try:
        server = None
        if os.environ.get("GIFTCARD_URL"):
            client = stack.enter_context(GiftCardClient.from_env(**client_options))
        else:
            from giftcard_toolkit.server import running

            server = stack.enter_context(running())
            assert server.username is not None and server.password is not None
            client = stack.enter_context(
                GiftCardClient(
                    server.url,
                    server.username,
                    server.password,
                    card_key=server.card_key,
                    **client_options,
                )
            )
        stores = list(client.verify().stores)
    except BaseException:
        stack.close()
        raise
    return Session(client=client, server=server, stores=stores, _stack=stack)


# ------------------------------------------------------------------ notebooks on any server

CHANGES = "sales, reloads, redemptions, blocks, batch closes and bulk runs"


def is_embedded_demo(session: Session) -> bool:
    """Whether ``session`` talks to the demo server it started itself (thrown away with it)."""
    return session.server is not None


def may_change(session: Session, allow_changes: bool = False) -> bool:
    """Whether a notebook may change the server it talks to: always the embedded demo (its
    data goes when the session closes), any other server only when ``allow_changes``."""
    return is_embedded_demo(session) or allow_changes is True


def describe(session: Session, allow_changes: bool | None = None) -> str:
    """Which server ``session`` talks to, as whom, and what a notebook will do there: the
    sentence each notebook prints at its top. ``allow_changes`` is the notebook's parameter;
    None for a notebook that only reads."""
    import httpx

    url = httpx.URL(session.client.base_url).copy_with(username=None, password=None)
    where = f"Server: {url}, as {session.client.username!r}."
    if is_embedded_demo(session):
        return (
            f"{where} It is the embedded demo server started for this notebook: seeded demo "
            "data on loopback, thrown away when the notebook ends."
        )
    if allow_changes is None:
        return f"{where} It is not the embedded demo: this notebook only reads there."
    if may_change(session, allow_changes):
        return (
            f"{where} It is not the embedded demo, and allow_changes is True: this notebook "
            f"makes real changes there ({CHANGES})."
        )
    return (
        f"{where} It is not the embedded demo, so this notebook changes nothing there "
        f"({CHANGES} are skipped); set allow_changes = True in its parameters cell to make them."
    )
