"""What a notebook says at its top about the server it talks to, and whether it may change
it: the embedded demo always, any other server only with ``allow_changes=True``."""

from __future__ import annotations

import pytest

from giftcard_toolkit import GiftCardClient
from giftcard_toolkit.session import Session, describe, is_embedded_demo, may_change, open_session


@pytest.fixture
def remote():
    client = GiftCardClient("https://alice:secret@giftcard.example", "alice", "secret")
    session = Session(client=client)
    yield session
    session.close()
    client.close()


def test_another_server_is_changed_only_when_allowed(remote):
    assert not is_embedded_demo(remote)
    assert not may_change(remote) and not may_change(remote, False)
    assert not may_change(remote, "yes")  # type: ignore[arg-type]  # only True allows
    assert may_change(remote, True)


def test_another_server_is_named_without_credentials(remote):
    said = describe(remote, allow_changes=False)
    assert said.startswith("Server: https://giftcard.example, as 'alice'. It is not the embedded")
    assert "secret" not in said
    assert "changes nothing there" in said and "allow_changes = True" in said
    assert "makes real changes there" in describe(remote, allow_changes=True)
    assert describe(remote).endswith("this notebook only reads there.")


def test_the_embedded_demo_may_always_be_changed(monkeypatch):
    monkeypatch.delenv("GIFTCARD_URL", raising=False)
    with open_session() as session:
        assert is_embedded_demo(session) and may_change(session) and may_change(session, False)
        said = describe(session, allow_changes=False)
    assert said.startswith(f"Server: {session.client.base_url}, as 'demo'. It is the embedded")
    assert "thrown away when the notebook ends" in said
