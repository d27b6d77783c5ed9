"""Nothing the toolkit creates outlives what created it; a bad store id is refused in words."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serverkit import Recording

from giftcard_toolkit import GiftCardClient, errors, scratch

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ store ids


@pytest.mark.parametrize("store", ["not-a-store", "", 42, None, "6006491234567897"])
def test_a_bad_store_is_refused_before_sending(server, store):
    transport = Recording()
    with GiftCardClient(server.url, server.username, server.password, transport=transport) as gc:
        with pytest.raises(errors.InvalidInput, match="GUID like 3f2a6c1e-") as refused:
            gc.batches(store)
        with pytest.raises(errors.InvalidInput, match="is not a store"):
            gc.reload(server.card_stock[0], "5.00", store)
    assert transport.sent == [], "nothing was sent"
    assert "6006491234567897" not in str(refused.value)
    if store == "6006491234567897":
        assert "************7897" in str(refused.value)


def test_a_store_given_in_capitals_or_with_spaces_is_its_id(server):
    with GiftCardClient(server.url, server.username, server.password) as gc:
        store = server.stores[0].id
        assert gc.batches(f" {store.upper()} ", status="open")[0].store_id == store


def test_the_server_says_a_malformed_store_id_in_words(server):
    answer = httpx.get(f"{server.url}/Batch/not-a-store", auth=(server.username, server.password))
    assert answer.status_code == 400
    assert answer.json()["errors"] == {
        "storeid": ["storeid must be a store id GUID like 3f2a6c1e-8b1d-4c7a-9e2f-0a1b2c3d4e5f"]
    }
    limit = httpx.get(
        f"{server.url}/Batch/{server.stores[0].id}?limit=0&to=yesterday",
        auth=(server.username, server.password),
    )
    assert limit.json()["errors"] == {
        "limit": ["limit must be a whole number from 1 to 1000"],
        "to": ["to must be a date as YYYY-MM-DD, e.g. 2026-09-30"],
    }


# ------------------------------------------------------------------ scratch folders


def test_a_scratch_folder_is_removed_with_its_block():
    with scratch.scratch("test") as folder:
        (folder / "audit.jsonl").write_text("{}\n")
        assert folder.name.startswith(f"giftcard-test-{os.getpid()}-")
    assert not folder.exists()


def test_folders_of_processes_that_died_are_swept(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = int(gone.stdout)
    left = tmp_path / f"giftcard-server-{dead}-abc"
    left.mkdir()
    (left / "giftcard.sqlite").write_bytes(b"x")
    mine = scratch.folder("server")
    try:
        assert not left.exists(), "the dead process's folder was swept"
        assert mine.exists()
    finally:
        scratch.remove(mine)
    other = tmp_path / "giftcard-server-notapid"
    other.mkdir()
    scratch.sweep()
    assert other.exists(), "only folders named by this toolkit's pattern are touched"


def _child_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}


def test_a_server_stopped_by_sigterm_leaves_nothing(tmp_path):
    empty = tmp_path / "tmp"
    empty.mkdir()
    code = (
        "from giftcard_toolkit.server import running\n"
        "import time\n"
        "with running() as srv:\n"
        "    print('up', flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        env=_child_env(empty),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        assert any(empty.iterdir()), "the server's files are in TMPDIR while it runs"
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert list(empty.iterdir()) == []


@pytest.mark.slow
def test_the_demo_notebooks_and_tests_leave_tmpdir_empty(tmp_path):
    """The main job (every notebook in its own kernel) and a sample of the suite, with
    TMPDIR pointed at an empty folder: nothing is left in it."""
    empty = tmp_path / "tmp"
    empty.mkdir()
    env = _child_env(empty)
    demo = subprocess.run(
        [sys.executable, "-m", "giftcard_toolkit.cli", "demo", "--out", str(tmp_path / "r")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    suite = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'pytest'}",
            "tests/test_client_operations.py",
            "tests/test_server_money.py",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert suite.returncode == 0, suite.stdout[-2000:]
    deadline = time.monotonic() + 10  # kernels may still be exiting
    while any(empty.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(p.name for p in empty.iterdir()) == []


def test_a_browser_leaves_nothing_in_the_temporary_folder():
    """The browser tests' Chromium keeps its profile and singleton socket in a folder of
    its own, removed with it (chromedriver stops it before it cleans up after itself)."""
    import tempfile

    import browserkit

    system_tmp = Path(tempfile.gettempdir())
    before = set(system_tmp.iterdir())
    with browserkit.chrome() as browser:
        browser.get("data:text/html,<p>hello</p>")
        assert browser.find_element("css selector", "p").text == "hello"
    new = {path.name for path in set(system_tmp.iterdir()) - before}
    assert {name for name in new if "chromium" in name.lower() or "browser" in name} == set()
