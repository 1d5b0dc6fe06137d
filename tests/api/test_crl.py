"""With a CRL configured, a revoked client certificate fails the TLS handshake, and a
certificate revoked while its keep-alive connection is open is refused on that
connection's next request."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from api.crl import CrlWatcher
from api.errors import CertificateRevoked, CrlExpired, CrlInvalid
from api.pki import DevPKI, ensure_dev_pki, revoke_clients
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.audit_trail import new_request_id, request_entries

PROBLEM = "application/problem+json"
VISA = "4111111111111111"


def test_revoked_client_is_refused(tmp_path: Path, hsm_provider: HSMProvider) -> None:
    with running_vault(
        tmp_path,
        hsm_provider,
        crl=lambda pki: revoke_clients(pki, ["ledger"], tmp_path / "crl.pem"),
    ) as vault:
        with vault.client("payments") as c:
            assert c.get("/healthz").status_code == 200
        with vault.client("ledger") as c, pytest.raises(httpx.TransportError):
            c.get("/healthz")


def _crl(pki: DevPKI, out: Path, serials: tuple[int, ...] = ()) -> Path:
    """A CRL by `pki`'s CA revoking `serials`, issued a day ago: OpenSSL puts a CRL of the
    same issuer into force for new handshakes only when its lastUpdate is strictly later,
    and the CRL `revoke_clients` writes next is issued now."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(days=1))
        .next_update(now + dt.timedelta(days=7))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - dt.timedelta(days=1))
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    out.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return out


def test_revoked_set_is_issuer_and_serial_and_survives_a_bad_file(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path / "pki", identities=("payments", "ledger"))
    other = ensure_dev_pki(tmp_path / "other", identities=("payments",))
    payments = pki.client_cert("payments").read_text()
    serial = x509.load_pem_x509_certificate(payments.encode()).serial_number
    crl_path = tmp_path / "crl.pem"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_verify_locations(cafile=str(pki.ca))
    watcher = CrlWatcher(_crl(pki, crl_path), context)
    watcher.reload()
    watcher.check()
    watcher.revoked.check(payments)
    # A CRL of another CA of the same name (the dev CAs share theirs), naming the same
    # serial, is not taken: its revocations would be keyed on this CA's name.
    _crl(other, crl_path, (serial,))
    watcher.reload()
    watcher.revoked.check(payments)
    with pytest.raises(CrlInvalid):
        watcher.check()
    revoke_clients(pki, ["payments"], crl_path)
    watcher.reload()
    watcher.check()
    with pytest.raises(CertificateRevoked):
        watcher.revoked.check(payments)
    watcher.revoked.check(pki.client_cert("ledger").read_text())
    watcher.revoked.check(None)
    # A half-written file keeps what was loaded (and readiness says why).
    crl_path.write_text("-----BEGIN X509 CRL-----\ngarbage\n")
    watcher.reload()
    with pytest.raises(CertificateRevoked):
        watcher.revoked.check(payments)
    with pytest.raises(CrlInvalid):
        watcher.check()


def _crls(out: Path, *files: Path) -> Path:
    """One CRL file holding the CRLs of `files`, in order (a CA rotation's file)."""
    out.write_bytes(b"".join(f.read_bytes() for f in files))
    return out


def test_every_crl_of_the_file_is_taken_and_none_goes_backwards(tmp_path: Path) -> None:
    """During a CA rotation ca.crt holds two client CAs and the CRL file one CRL of
    each. OpenSSL loads them all, and never puts an issuer's older CRL back in force:
    the revoked set must not revoke less, or a certificate refused at new handshakes
    keeps working on the connections it already holds."""
    pki = ensure_dev_pki(tmp_path / "pki", identities=("payments",))
    second = ensure_dev_pki(tmp_path / "second", identities=("payments",))
    first_cert = pki.client_cert("payments").read_text()
    second_cert = second.client_cert("payments").read_text()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_verify_locations(cafile=str(pki.ca))
    context.load_verify_locations(cafile=str(second.ca))
    crl_path = tmp_path / "crl.pem"
    empty_first = _crl(pki, tmp_path / "first-empty.pem")
    _crls(crl_path, empty_first, _crl(second, tmp_path / "second-empty.pem"))
    watcher = CrlWatcher(crl_path, context)
    watcher.reload()
    watcher.check()
    watcher.revoked.check(second_cert)

    # The second CA revokes its certificate: its CRL is the file's second block.
    revoked_second = revoke_clients(second, ["payments"], tmp_path / "second-revoked.pem")
    _crls(crl_path, empty_first, revoked_second)
    watcher.reload()
    watcher.check()
    with pytest.raises(CertificateRevoked):
        watcher.revoked.check(second_cert)
    watcher.revoked.check(first_cert)

    # An older CRL of the second CA, or a file without it, revokes nothing less.
    _crls(crl_path, empty_first, tmp_path / "second-empty.pem")
    watcher.reload()
    with pytest.raises(CertificateRevoked):
        watcher.revoked.check(second_cert)
    revoked_first = revoke_clients(pki, ["payments"], tmp_path / "first-revoked.pem")
    _crls(crl_path, revoked_first)
    watcher.reload()
    watcher.check()
    for cert in (first_cert, second_cert):
        with pytest.raises(CertificateRevoked):
            watcher.revoked.check(cert)

    # One block not signed by a trusted CA, or not a CRL, and the whole file is refused.
    third = ensure_dev_pki(tmp_path / "third", identities=("payments",))
    third_cert = third.client_cert("payments").read_text()
    for last in (revoke_clients(third, ["payments"], tmp_path / "third.pem"), third.ca):
        _crls(crl_path, revoked_first, revoke_clients(pki, [], tmp_path / "x.pem"), last)
        watcher.reload()
        with pytest.raises(CrlInvalid):
            watcher.check()
        watcher.revoked.check(third_cert)
        with pytest.raises(CertificateRevoked):
            watcher.revoked.check(first_cert)


def test_an_expired_crl_refuses_the_requests_of_its_cas_clients(tmp_path: Path) -> None:
    """Past its nextUpdate a CA's CRL refuses that CA's clients at the request too:
    OpenSSL's handshake check falls back to an older CRL still valid in its store
    (tests/reliability/test_crl_faults.py), so the guard does not rely on it. (Keyed by
    the issuer's name: two CAs of one name are not supported with a CRL, see
    docs/operations.md.)"""
    pki = ensure_dev_pki(tmp_path / "pki", identities=("payments",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_verify_locations(cafile=str(pki.ca))
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    expired = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.load_pem_x509_certificate(pki.ca.read_bytes()).subject)
        .last_update(now - dt.timedelta(days=2))
        .next_update(now - dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    crl_path = tmp_path / "crl.pem"
    crl_path.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    watcher = CrlWatcher(crl_path, context)
    watcher.reload()
    with pytest.raises(CrlExpired):
        watcher.revoked.check(pki.client_cert("payments").read_text())
    watcher.revoked.check(None)  # no certificate: the identity check refuses it
    _crl(pki, crl_path)  # a newer CRL, valid a week: served again
    watcher.reload()
    watcher.revoked.check(pki.client_cert("payments").read_text())


def _connect(vault: VaultServer, name: str) -> ssl.SSLSocket:
    """One mutual-TLS connection with `name`'s certificate, kept open by the caller."""
    context = ssl.create_default_context(cafile=str(vault.pki.ca))
    context.load_cert_chain(str(vault.pki.client_cert(name)), str(vault.pki.client_key(name)))
    host, port = vault.url.removeprefix("https://").split(":")
    raw = socket.create_connection((host, int(port)), timeout=10)
    return context.wrap_socket(raw, server_hostname=host)


def _tokenize(sock: ssl.SSLSocket, request_id: str) -> http.client.HTTPResponse:
    """POST a tokenization on `sock` (keep-alive) and read the whole answer."""
    body = json.dumps({"pan": VISA, "format": "pan_bin6_last4"}).encode()
    sock.sendall(
        (
            "POST /v1/tokenize HTTP/1.1\r\nHost: vault\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-Id: {request_id}\r\n\r\n"
        ).encode()
        + body
    )
    response = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
    response.begin()
    response.body = response.read()  # type: ignore[attr-defined]
    return response


def _closed_by_peer(sock: ssl.SSLSocket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ssl.SSLError, ConnectionError):
        return True


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_revocation_refuses_the_open_keep_alive_connection(
    tmp_path: Path, hsm_provider: HSMProvider, http: str
) -> None:
    """The attacker with a stolen certificate holds a pooled keep-alive connection; the
    certificate is revoked and the CRL reloaded: the next request on that very
    connection is refused 401 ``certificate_revoked``, audited by the certificate's
    name, and the connection is closed. A new handshake fails as before."""
    crl_path = tmp_path / "crl.pem"
    with running_vault(
        tmp_path, hsm_provider, crl=lambda pki: _crl(pki, crl_path), http_protocol=http
    ) as vault:
        assert vault.crl_watcher is not None
        cert = x509.load_pem_x509_certificate(vault.pki.client_cert("payments").read_bytes())
        with _connect(vault, "payments") as sock:
            before = _tokenize(sock, new_request_id())
            assert before.status == 200, before.body  # type: ignore[attr-defined]
            assert not before.will_close

            revoke_clients(vault.pki, ["payments"], crl_path)
            assert vault.crl_watcher.reload_if_changed()

            rid = new_request_id()
            after = _tokenize(sock, rid)
            assert after.status == 401
            assert after.getheader("content-type", "").startswith(PROBLEM)
            body = json.loads(after.body)  # type: ignore[attr-defined]
            assert body["code"] == "certificate_revoked"
            assert body["status"] == 401
            assert after.will_close
            assert _closed_by_peer(sock)

        (entry,) = request_entries(vault.runtime.engine, rid)
        assert (entry["action"], entry["outcome"], entry["actor"]) == (
            "api.request",
            "denied",
            "unauthenticated",
        )
        details = entry["details"]
        assert details["code"] == "certificate_revoked"
        assert details["status"] == 401
        assert details["cert_subject"] == cert.subject.rfc4514_string()
        assert details["cert_serial"] == format(cert.serial_number, "x")
        assert details["cert_sha256"] == cert.fingerprint(hashes.SHA256()).hex()

        # A new handshake with the revoked certificate fails as before; others still pass.
        with vault.client("payments") as c, pytest.raises(httpx.TransportError):
            c.get("/healthz")
        with vault.client("ledger") as c:
            assert c.get("/healthz").status_code == 200


def _renamed_ca(root: Path, name: str) -> DevPKI:
    """A dev PKI whose CA is called `name` (a rotation's new CA), with a `payments`."""
    pki = DevPKI(root)
    root.mkdir(mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    pki.ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.ca_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ensure_dev_pki(root, identities=("payments",))


def test_revocation_by_the_second_ca_refuses_its_open_connection(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    """CA rotation: ca.crt holds two client CAs and the CRL file one CRL of each. The
    attacker's stolen certificate is the second CA's; once it revokes it, the next
    request on the attacker's open keep-alive connection is refused, as new handshakes
    are."""
    crl_path = tmp_path / "crl.pem"
    second = _renamed_ca(tmp_path / "second-ca", "Cofre second CA")

    def two_cas(pki: DevPKI) -> Path:
        pki.ca.write_bytes(pki.ca.read_bytes() + second.ca.read_bytes())
        first = _crl(pki, tmp_path / "first.pem")
        return _crls(crl_path, first, _crl(second, tmp_path / "second.pem"))

    with running_vault(tmp_path, hsm_provider, crl=two_cas) as vault:
        assert vault.crl_watcher is not None
        context = ssl.create_default_context(cafile=str(vault.pki.ca))
        context.load_cert_chain(
            str(second.client_cert("payments")), str(second.client_key("payments"))
        )
        host, port = vault.url.removeprefix("https://").split(":")
        raw = socket.create_connection((host, int(port)), timeout=10)
        with context.wrap_socket(raw, server_hostname=host) as sock:
            before = _tokenize(sock, new_request_id())
            assert before.status == 200, before.body  # type: ignore[attr-defined]

            revoked = revoke_clients(second, ["payments"], tmp_path / "second.pem")
            _crls(crl_path, tmp_path / "first.pem", revoked)
            assert vault.crl_watcher.reload_if_changed()

            after = _tokenize(sock, new_request_id())
            assert after.status == 401
            assert json.loads(after.body)["code"] == "certificate_revoked"  # type: ignore[attr-defined]
            assert _closed_by_peer(sock)

        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            pytest.raises((ssl.SSLError, ConnectionError)),
            context.wrap_socket(raw, server_hostname=host) as fresh,
        ):
            _tokenize(fresh, new_request_id())
        with vault.client("payments") as c:
            assert c.get("/healthz").status_code == 200
