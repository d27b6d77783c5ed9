"""``giftcard-toolkit serve --certfile --keyfile`` speaks HTTPS (uvicorn's TLS), with a
throwaway self-signed certificate made here; listening beyond loopback without TLS is
warned about."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from giftcard_toolkit import GiftCardClient
from giftcard_toolkit.server import runner
from giftcard_toolkit.server.runner import server_process
from giftcard_toolkit.server.seed import read_card_stock


def self_signed(folder: Path, name: str = "giftcard-test") -> tuple[Path, Path]:
    """(certificate, key) as PEM files: a self-signed certificate for 127.0.0.1 and
    localhost, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_serve_speaks_https_with_the_given_certificate(tmp_path):
    cert, key = self_signed(tmp_path)
    stock = tmp_path / "stock.csv"
    with server_process(
        tmp_path / "tls.sqlite", card_stock=stock, certfile=cert, keyfile=key
    ) as server:
        assert server.url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as http:
            verified = http.put(f"{server.url}/Auth/verify", auth=("demo", "demo-password"))
            assert verified.status_code == 200 and verified.json()["username"] == "demo"
            assert http.get(f"{server.url}/Health").json()["status"] == "Healthy"
        # The toolkit's client over HTTPS, moving money.
        card = next(c for c in read_card_stock(stock) if not c.sold)
        transport = httpx.HTTPTransport(verify=ssl.create_default_context(cafile=str(cert)))
        with GiftCardClient(server.url, "demo", "demo-password", transport=transport) as gc:
            gc.sell(card, "25.00", card.store_id)
            assert str(gc.balance(card).balance) == "25.00"
        # No clear-text fallback, and a client that does not trust the certificate stops.
        with pytest.raises(httpx.TransportError):
            httpx.get(server.url.replace("https://", "http://") + "/Health", timeout=5)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{server.url}/Health", timeout=5)  # the system's CAs only
        other, _ = self_signed(tmp_path, "someone-else")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(
                f"{server.url}/Health",
                timeout=5,
                verify=ssl.create_default_context(cafile=str(other)),
            )


@pytest.fixture
def uvicorn_run(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """serve() up to uvicorn.run, which is recorded instead of run."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(runner.uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(runner.gc, "freeze", lambda: None)
    return calls


def test_listening_beyond_loopback_without_tls_is_warned_about(tmp_path, uvicorn_run, caplog):
    caplog.set_level(logging.WARNING, logger="giftcard_toolkit.server")
    runner.serve(host="0.0.0.0", port=8443, db=tmp_path / "plain.sqlite")  # noqa: S104
    assert uvicorn_run[-1]["ssl_certfile"] is None
    [warning] = [r.getMessage() for r in caplog.records if "without TLS" in r.getMessage()]
    assert "listening on 0.0.0.0 without TLS" in warning and "--certfile" in warning
    caplog.clear()
    runner.serve(host="127.0.0.1", port=8443, db=tmp_path / "plain.sqlite")
    assert not [r for r in caplog.records if "without TLS" in r.getMessage()], "loopback: fine"


def test_with_tls_there_is_no_warning_and_uvicorn_gets_the_files(
    tmp_path, uvicorn_run, caplog, capsys
):
    cert, key = self_signed(tmp_path)
    caplog.set_level(logging.WARNING, logger="giftcard_toolkit.server")
    runner.serve(host="0.0.0.0", port=8443, db=tmp_path / "tls.sqlite", certfile=cert, keyfile=key)  # noqa: S104
    assert (uvicorn_run[-1]["ssl_certfile"], uvicorn_run[-1]["ssl_keyfile"]) == (
        str(cert),
        str(key),
    )
    assert not [r for r in caplog.records if "without TLS" in r.getMessage()]
    assert "serving on https://0.0.0.0:8443" in capsys.readouterr().out


def test_bad_tls_options_are_refused_before_serving(tmp_path, uvicorn_run):
    cert, key = self_signed(tmp_path)
    other_cert, _ = self_signed(tmp_path, "other")
    db = tmp_path / "x.sqlite"
    with pytest.raises(SystemExit, match="--keyfile needs --certfile"):
        runner.serve(db=db, keyfile=key)
    with pytest.raises(SystemExit, match="no such file"):
        runner.serve(db=db, certfile=tmp_path / "missing.crt", keyfile=key)
    with pytest.raises(SystemExit, match="cannot use"):
        runner.serve(db=db, certfile=other_cert, keyfile=key)  # a key of another certificate
    with pytest.raises(SystemExit, match="--max-body 10 is too small"):
        runner.serve(db=db, max_body=10)
    assert uvicorn_run == [], "nothing was served"
