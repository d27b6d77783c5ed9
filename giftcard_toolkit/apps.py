"""Web apps on top of the package: the ops console and the analysts' dashboard, each served
as a page (Voilà).

    giftcard-toolkit console [--host 127.0.0.1] [--port 8866] [--demo] [--audit-log PATH]
                             [--idle-minutes 15] [--token T | --no-token ...]
                             [--certfile PEM --keyfile PEM]

Voilà runs :data:`CONSOLE_NOTEBOOK` (one cell: :func:`console_page`) in a kernel on this
machine (one kernel per page opened), with the server's URL in that kernel's environment.
Without ``GIFTCARD_USERNAME``/``GIFTCARD_PASSWORD`` every visitor signs in as themselves
(:class:`~giftcard_toolkit.ops.forms.SignInConsole`); with them, the page is signed in as
that one user. The client, and so the password, lives only in the page's kernel: the browser
receives the widgets, shows no code, and Voilà lets it send widget messages only.

Served beyond this machine (``--host`` other than loopback), the page needs Voilà's token
(one is made and printed in the URL unless given) and may be served over TLS.

    giftcard-toolkit dashboard [--data PATH | --demo] [--host 127.0.0.1] [--port 8867]

The dashboard is :data:`DASHBOARD_NOTEBOOK` (:func:`dashboard_page`): the explorer
(``analysis.explore``) over a dataset written by ``frames.sync``, read only (no exports, no
server access: its kernel reads the dataset's files and nothing else).
"""

from __future__ import annotations

import contextlib
import html
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from giftcard_toolkit import scratch

CONSOLE = Path(__file__).resolve().parent / "ops" / "console"
CONSOLE_NOTEBOOK = CONSOLE / "console.ipynb"
# Where Voilà finds the console's page template (voila/templates/giftcard): Voilà's own
# "lab" one, less the FontAwesome it fetches from a CDN, so the page needs no internet.
TEMPLATES = CONSOLE
DEFAULT_PORT = 8866
DASHBOARD_NOTEBOOK = Path(__file__).resolve().parent / "analysis" / "dashboard" / "dashboard.ipynb"
DASHBOARD_PORT = 8867
# How the dashboard process tells the page's kernel which dataset to show (absolute path).
DASHBOARD_DATA_VARIABLE = "GIFTCARD_DASHBOARD_DATA"
DEFAULT_AUDIT_LOG = "audit.jsonl"
# How the console process tells the page's kernel where the audit log is (an absolute path:
# the kernel runs in the notebook's folder, inside the installed package).
AUDIT_LOG_VARIABLE = "GIFTCARD_AUDIT_LOG"
SETTINGS = ("GIFTCARD_URL", "GIFTCARD_USERNAME", "GIFTCARD_PASSWORD")
CREDENTIALS = ("GIFTCARD_USERNAME", "GIFTCARD_PASSWORD")
# How many idle minutes sign a page out (the console's --idle-minutes reaches the kernel).
IDLE_VARIABLE = "GIFTCARD_IDLE_MINUTES"
DEFAULT_IDLE_MINUTES = 15.0


def console_page(environ: Mapping[str, str] | None = None) -> Any:
    """The console's page, in the Voilà kernel: a heading saying who is signed in where,
    then the console; or, when the server cannot be used, why, in words."""
    import httpx
    import ipywidgets as widgets

    from giftcard_toolkit import errors
    from giftcard_toolkit.client import GiftCardClient
    from giftcard_toolkit.ops import forms

    environ = os.environ if environ is None else environ
    heading = widgets.HTML("<h2 style='margin:4px 0'>Gift card ops console</h2>")
    audit_log = environ.get(AUDIT_LOG_VARIABLE) or DEFAULT_AUDIT_LOG
    if environ.get("GIFTCARD_URL") and not all(environ.get(n) for n in CREDENTIALS):
        signing_in = forms.SignInConsole(
            environ["GIFTCARD_URL"],
            audit_log=audit_log,
            idle_minutes=float(environ.get(IDLE_VARIABLE) or DEFAULT_IDLE_MINUTES),
        )
        page = widgets.VBox([heading, signing_in], layout=widgets.Layout(padding="0 12px"))
        page.add_class("gc-page")
        return page
    try:
        client = GiftCardClient(
            environ["GIFTCARD_URL"],
            environ["GIFTCARD_USERNAME"],
            environ["GIFTCARD_PASSWORD"],
            card_key=environ.get("GIFTCARD_CARD_KEY") or None,
        )
        console = forms.ops_console(client, audit_log=audit_log)
    except (KeyError, errors.GiftCardError) as failed:
        reason = f"{failed.args[0]} is not set" if isinstance(failed, KeyError) else failed
        problem = widgets.HTML(
            f"<p style='color:{forms.BAD_COLOUR}'>The console cannot start: "
            f"{html.escape(str(reason))}. Restart it with the right settings.</p>"
        )
        return widgets.VBox([heading, problem])
    where = httpx.URL(client.base_url).copy_with(username=None, password=None)
    who = widgets.HTML(
        f"Signed in as <b>{html.escape(client.username)}</b> at {html.escape(str(where))}; "
        f"every action is written to the audit log {html.escape(audit_log)}."
    )
    who.add_class("gc-who")
    page = widgets.VBox([heading, who, console], layout=widgets.Layout(padding="0 12px"))
    page.add_class("gc-page")
    return page


def dashboard_page(environ: Mapping[str, str] | None = None) -> Any:
    """The dashboard's page, in the Voilà kernel: a heading, then the explorer over the
    dataset the dashboard was started with (read only), or why it cannot show."""
    import ipywidgets as widgets

    from giftcard_toolkit.analysis import explore

    environ = os.environ if environ is None else environ
    heading = widgets.HTML("<h2 style='margin:4px 0'>Gift card dashboard</h2>")
    data = environ.get(DASHBOARD_DATA_VARIABLE)
    if not data:
        shown = widgets.HTML(
            f"<p style='color:#a10000'>{DASHBOARD_DATA_VARIABLE} is not set: start the page "
            "with giftcard-toolkit dashboard --data PATH (or --demo).</p>"
        )
    else:
        shown = explore.explorer(data, exports=False)
    page = widgets.VBox([heading, shown], layout=widgets.Layout(padding="0 12px"))
    page.add_class("gc-page")
    return page


def missing_settings(environ: Mapping[str, str]) -> list[str]:
    """The settings the console needs that ``environ`` lacks: the URL, and both or neither
    of username and password (neither: every visitor signs in)."""
    missing = [name for name in SETTINGS if not environ.get(name)]
    if all(name in missing for name in CREDENTIALS):
        return [name for name in missing if name not in CREDENTIALS]
    return missing


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Protection:
    """How a page is protected: Voilà's ``token`` (None: none) and TLS files."""

    token: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    @classmethod
    def for_host(
        cls,
        host: str,
        *,
        token: str | None = None,
        no_token: bool = False,
        unprotected_ok: bool = False,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> Protection:
        """The protection serving on ``host`` gets: on loopback, a token only if given;
        beyond, ``token`` or a new one, unless ``no_token`` *and* ``unprotected_ok``."""
        if bool(certfile) != bool(keyfile):
            raise ValueError("--certfile and --keyfile go together (the TLS certificate and key)")
        if no_token and token:
            raise ValueError("--token and --no-token contradict each other: choose one")
        if no_token or is_loopback(host):
            if no_token and not is_loopback(host) and not unprotected_ok:
                raise ValueError(
                    f"refusing to serve the console on {host} without a token: anyone who "
                    "can reach this address could use it. Drop --no-token (a token is made "
                    "and printed), or, behind your own sign-in proxy, add "
                    "--i-know-this-is-unprotected"
                )
            return cls(token, certfile, keyfile)
        return cls(token or secrets.token_urlsafe(32), certfile, keyfile)


@dataclass
class ConsoleServer:
    """A console page being served: its ``url`` and the Voilà process serving it."""

    url: str
    process: subprocess.Popen[bytes]


def _answers(url: str, tls: bool = False) -> bool:
    import ssl

    # Our own page, maybe with a self-signed certificate: only whether it answers counts.
    context = ssl._create_unverified_context() if tls else None  # noqa: S323
    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def console_server(
    settings: Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    audit_log: str | Path = DEFAULT_AUDIT_LOG,
    log: Any = None,
    timeout: float = 120.0,
    protection: Protection | None = None,
    idle_minutes: float = DEFAULT_IDLE_MINUTES,
    notebook: Path = CONSOLE_NOTEBOOK,
) -> Iterator[ConsoleServer]:
    """Serve the console (or another page's ``notebook``, such as the dashboard's) with
    Voilà until the block ends; ``settings`` are the ``GIFTCARD_*`` variables its kernel
    gets (they go nowhere else). ``log`` takes Voilà's own output (default: this process's
    stderr). The URL carries the token, if any."""
    protection = protection or Protection()
    environ = {
        **{k: v for k, v in os.environ.items() if k not in SETTINGS},
        **settings,
        IDLE_VARIABLE: str(idle_minutes),
        AUDIT_LOG_VARIABLE: str(Path(audit_log).resolve()),
        "JUPYTER_PATH": os.pathsep.join(
            filter(None, [str(TEMPLATES), os.environ.get("JUPYTER_PATH")])
        ),
    }
    command = [
        sys.executable,
        "-m",
        "giftcard_toolkit.apps",  # Voilà, able to serve TLS (see _voila)
        str(notebook),
        "--no-browser",
        f"--port={port}",
        "--Voila.port_retries=0",  # the port asked for, or a clear failure
        f"--Voila.ip={host}",
        "--Voila.log_level=ERROR",  # its warnings are about notebooks, not this page
        "--VoilaConfiguration.show_tracebacks=False",  # a traceback could show a setting
        "--theme=light",
        "--template=giftcard",
        f"--token={protection.token or ''}",
    ]
    if protection.certfile:
        command += [
            f"--TlsVoila.certfile={protection.certfile}",
            f"--TlsVoila.keyfile={protection.keyfile}",
        ]
    # Its own session: Ctrl-C in a terminal reaches this process, which stops Voilà itself
    # (Voilà's own handler would ask a question on stdin).
    process = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
        command,
        env=environ,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    scheme = "https" if protection.certfile else "http"
    url = f"{scheme}://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}/"  # noqa: S104
    try:
        deadline = time.monotonic() + timeout
        while not _answers(
            f"{url}voila/static/voila.js", tls=bool(protection.certfile)
        ):  # the page itself starts a kernel
            if process.poll() is not None:
                raise RuntimeError(
                    f"Voilà stopped at start (exit code {process.returncode}): is port {port} "
                    "free? See its messages above."
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"Voilà did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.2)
        yield ConsoleServer(f"{url}?token={protection.token}" if protection.token else url, process)
    finally:
        scratch.stop(process, signal.SIGTERM)


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM (a service manager's stop) unwinds like Ctrl-C, so Voilà is stopped too
    rather than left serving on its own."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        before = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: nothing to change
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def serve_console(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    demo: bool = False,
    audit_log: str | Path = DEFAULT_AUDIT_LOG,
    card_stock: str | Path | None = None,
    protection: Protection | None = None,
    idle_minutes: float = DEFAULT_IDLE_MINUTES,
    sign_in: bool = False,
) -> None:
    """``giftcard-toolkit console``: check the settings and the sign-in, serve the page,
    print its URL, and run until Ctrl-C (or until Voilà stops). ``sign_in`` (with
    ``demo``): every visitor signs in, as without credentials in the environment."""
    from giftcard_toolkit import errors
    from giftcard_toolkit.client import GiftCardClient

    with contextlib.ExitStack() as stack:
        stack.enter_context(_stopped_by_sigterm())
        if demo:
            from giftcard_toolkit.server import running
            from giftcard_toolkit.server.seed import write_card_stock

            srv = stack.enter_context(running())
            assert srv.username is not None and srv.password is not None
            settings = {"GIFTCARD_URL": srv.url, "GIFTCARD_CARD_KEY": srv.card_key or ""}
            if not sign_in:
                settings |= {"GIFTCARD_USERNAME": srv.username, "GIFTCARD_PASSWORD": srv.password}
            if card_stock:
                write_card_stock(srv.card_stock, card_stock)
            print(
                f"demo server: {srv.url} (seeded demo data, thrown away when the console "
                "stops)" + (f"; its card stock is in {card_stock}" if card_stock else ""),
                flush=True,
            )
        else:
            missing = missing_settings(os.environ)
            if missing:
                raise SystemExit(
                    f"error: {', '.join(missing)} not set: export the server's URL "
                    "(GIFTCARD_URL; and GIFTCARD_CARD_KEY for encrypted card data), and "
                    "either both GIFTCARD_USERNAME and GIFTCARD_PASSWORD (the page is signed "
                    "in as that user) or neither (every visitor signs in), or try the "
                    "console on the demo server with --demo"
                )
            settings = {
                name: os.environ[name]
                for name in (*SETTINGS, "GIFTCARD_CARD_KEY")
                if name in os.environ
            }
        who = "every visitor signs in as themselves"
        if "GIFTCARD_USERNAME" in settings:
            try:
                with GiftCardClient(
                    settings["GIFTCARD_URL"],
                    settings["GIFTCARD_USERNAME"],
                    settings["GIFTCARD_PASSWORD"],
                    card_key=settings.get("GIFTCARD_CARD_KEY") or None,
                ) as client:
                    stores = client.verify().stores
            except errors.GiftCardError as failed:
                raise SystemExit(
                    f"error: cannot sign in at {settings['GIFTCARD_URL']}: {failed}"
                ) from None
            who = f"signed in as {settings['GIFTCARD_USERNAME']!r} for {len(stores)} store(s)"
        audit = Path(audit_log).resolve()
        served = stack.enter_context(
            console_server(
                settings,
                host=host,
                port=port,
                audit_log=audit,
                protection=protection,
                idle_minutes=idle_minutes,
            )
        )
        print(f"ops console: {served.url} (Ctrl-C to stop)\n  {who}; audit log {audit}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            served.process.wait()
        if served.process.returncode not in (None, 0, -signal.SIGTERM):
            raise SystemExit(f"error: Voilà stopped (exit code {served.process.returncode})")


def serve_dashboard(
    *,
    data: str | Path | None = None,
    demo: bool = False,
    host: str = "127.0.0.1",
    port: int = DASHBOARD_PORT,
    protection: Protection | None = None,
) -> None:
    """``giftcard-toolkit dashboard``: check the dataset (or sync the demo server's history
    into a temporary one), serve the page, print its URL, and run until Ctrl-C."""
    import tempfile

    from giftcard_toolkit.analysis import dataset

    with contextlib.ExitStack() as stack:
        stack.enter_context(_stopped_by_sigterm())
        if demo:
            from giftcard_toolkit.client import GiftCardClient
            from giftcard_toolkit.server import running

            srv = stack.enter_context(running())
            assert srv.username is not None and srv.password is not None
            data = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "history"
            with GiftCardClient(
                srv.url, srv.username, srv.password, card_key=srv.card_key
            ) as client:
                dataset.sync(client, data, progress=False)
            print(f"demo data: the seeded demo server's history, synced into {data}", flush=True)
        if data is None:
            raise SystemExit("error: give --data PATH (a dataset written by frames.sync) or --demo")
        try:
            dataset.scan(data)
        except (dataset.DatasetError, OSError) as failed:
            raise SystemExit(
                f"error: {data} is not a dataset ({failed}); write one with "
                "frames.sync(client, PATH), or try --demo"
            ) from None
        settings = {DASHBOARD_DATA_VARIABLE: str(Path(data).expanduser().resolve())}
        served = stack.enter_context(
            console_server(
                settings,
                host=host,
                port=port,
                protection=protection,
                notebook=DASHBOARD_NOTEBOOK,
                audit_log=os.devnull,  # the dashboard changes nothing: no audit log
            )
        )
        print(f"dashboard: {served.url} (Ctrl-C to stop); data {settings[DASHBOARD_DATA_VARIABLE]}")
        with contextlib.suppress(KeyboardInterrupt):
            served.process.wait()
        if served.process.returncode not in (None, 0, -signal.SIGTERM):
            raise SystemExit(f"error: Voilà stopped (exit code {served.process.returncode})")


def _voila(argv: list[str]) -> None:
    """Voilà, plus ``--TlsVoila.certfile/keyfile``: Voilà itself cannot serve TLS."""
    import functools

    from traitlets import Unicode
    from voila.app import Voila

    class TlsVoila(Voila):  # type: ignore[misc]
        certfile = Unicode("", config=True, help="TLS certificate (PEM)")
        keyfile = Unicode("", config=True, help="TLS private key (PEM)")

        def listen(self) -> None:
            if self.certfile:
                tls = {"certfile": self.certfile, "keyfile": self.keyfile}
                self.app.listen = functools.partial(self.app.listen, ssl_options=tls)
            super().listen()

    TlsVoila.launch_instance(argv)


if __name__ == "__main__":
    _voila(sys.argv[1:])
