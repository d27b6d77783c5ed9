"""Scratch folders that never outlive the process that made them.

Both halves use them (the embedded server's databases and its demo template, a notebook
session's work folder). Each is named ``giftcard-<purpose>-<pid>-<random>`` in the system's
temporary directory and is removed when its owner lets go of it, at exit, on SIGTERM (a
kernel shut down by Jupyter or nbclient), and, should the process die without any of those
(SIGKILL), by the next process that makes one: folders whose process is gone are swept.
Standard library only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

_NAME = re.compile(r"^giftcard-[a-z]+-(\d+)-")
_owned: set[Path] = set()
_lock = threading.Lock()
_installed = False


def folder(purpose: str) -> Path:
    """A new, empty folder of this process's, removed at the latest when it ends."""
    if not re.fullmatch(r"[a-z]+", purpose):
        raise ValueError("purpose is lower-case letters, e.g. 'server'")
    sweep()
    path = Path(tempfile.mkdtemp(prefix=f"giftcard-{purpose}-{os.getpid()}-"))
    with _lock:
        _owned.add(path)
        _install()
    return path


def remove(path: Path) -> None:
    """Remove a folder made by :func:`folder` (nothing if it is gone already)."""
    with _lock:
        _owned.discard(path)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def scratch(purpose: str) -> Iterator[Path]:
    """A folder for the length of a ``with`` block."""
    path = folder(purpose)
    try:
        yield path
    finally:
        remove(path)


def sweep() -> None:
    """Remove the folders left by processes that no longer exist."""
    try:
        entries = list(Path(tempfile.gettempdir()).iterdir())
    except OSError:
        return
    for entry in entries:
        match = _NAME.match(entry.name)
        if match and entry.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, not ours to judge
        return True
    return True


def _remove_all() -> None:
    with _lock:
        owned = list(_owned)
        _owned.clear()
    for path in owned:
        shutil.rmtree(path, ignore_errors=True)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Run the normal shutdown (finally blocks, context managers, atexit) instead of dying
    # where we stand, which is what SIGTERM does by default.
    raise SystemExit(128 + signum)


def _install() -> None:
    """At exit and on SIGTERM, remove what is still owned (once; SIGTERM only where nobody
    else handles it, and only from the main thread, where Python allows it)."""
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(_remove_all)
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 15) -> None:
    """Stop a child process as a person would (``sig``: Ctrl-C by default, SIGTERM as a
    service manager does), and kill it if it has not stopped within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
