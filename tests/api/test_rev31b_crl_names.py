"""Review 31b: the request guard's CRL checks (revocation, and since review 31 the CRL's
expiry) matched a client certificate to its CA's CRL by the issuer name's DER bytes.

A CRL whose issuer name says the same as the CA's subject in another string type (a
PrintableString where the CA's subject and the certificates it issued carry a
UTF8String, as CA tools that re-encode the name when they sign a CRL write it) is
taken: `cryptography` compares names by value (`_trusted_source`), and OpenSSL by its
canonical form, so the handshake honours it. The per-request check, which stands for
the handshake on a keep-alive connection opened before a revocation and on an expired
CRL OpenSSL falls back from, looked it up by bytes and missed both: a revoked
certificate's open connection went on being served, and an expired CRL's clients too.
Fixed: the issuer is keyed by its value, as the CRL was taken.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type

from api.crl import CrlWatcher
from api.errors import CertificateRevoked, CrlExpired
from api.pki import DevPKI, ensure_dev_pki


def _reencoded(name: x509.Name) -> x509.Name:
    """`name` with each string attribute as a PrintableString (the dev CA's are UTF8)."""
    return x509.Name(
        [
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(a.oid, a.value, _ASN1Type.PrintableString)  # type: ignore[arg-type]
                    for a in rdn
                ]
            )
            for rdn in name.rdns
        ]
    )


def _crl(pki: DevPKI, path: Path, revoked: tuple[int, ...], *, next_days: int) -> Path:
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_reencoded(ca.subject))
        .last_update(now - dt.timedelta(days=2))
        .next_update(now + dt.timedelta(days=next_days))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - dt.timedelta(days=1))
            .build()
        )
    crl = builder.sign(key, hashes.SHA256())
    assert crl.issuer.public_bytes() != ca.subject.public_bytes()  # the point of the test
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def _server_context(pki: DevPKI) -> ssl.SSLContext:
    """A server context checking client certificates against the CRL, as the vault's."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.load_verify_locations(cafile=str(pki.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def _watcher(pki: DevPKI, crl: Path, context: ssl.SSLContext | None = None) -> CrlWatcher:
    watcher = CrlWatcher(crl, context or _server_context(pki))
    watcher.reload()
    return watcher


def _handshake_error(server: ssl.SSLContext, pki: DevPKI, name: str) -> str | None:
    """One mutual-TLS handshake of `name`'s certificate with `server`: the server's
    verification error, or None when it passed."""
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[str | None] = []

    def accept() -> None:
        connection, _ = listener.accept()
        try:
            with server.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)
            errors.append(None)
        except (ssl.SSLError, OSError) as exc:
            errors.append(type(exc).__name__ + ": " + str(exc))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    client = ssl.create_default_context(cafile=str(pki.ca))
    client.check_hostname = False
    client.load_cert_chain(str(pki.client_cert(name)), str(pki.client_key(name)))
    try:
        raw = socket.create_connection(listener.getsockname(), timeout=10)
        with client.wrap_socket(raw) as tls:
            tls.sendall(b"x")
            tls.recv(1)
    except (ssl.SSLError, OSError):
        pass
    thread.join(timeout=10)  # a bound against a hang only
    listener.close()
    assert errors, "the handshake did not finish"
    return errors[0]


def test_a_revocation_in_a_reencoded_issuer_name_refuses_the_open_connection(
    tmp_path: Path,
) -> None:
    pki = ensure_dev_pki(tmp_path / "pki", identities=("payments", "ledger"))
    payments = pki.client_cert("payments").read_text()
    serial = x509.load_pem_x509_certificate(payments.encode()).serial_number
    watcher = _watcher(pki, _crl(pki, tmp_path / "crl.pem", (serial,), next_days=7))
    watcher.check()  # taken, as OpenSSL takes it
    with pytest.raises(CertificateRevoked):
        watcher.revoked.check(payments)
    watcher.revoked.check(pki.client_cert("ledger").read_text())


def test_an_expired_crl_in_a_reencoded_issuer_name_refuses_its_cas_clients(
    tmp_path: Path,
) -> None:
    pki = ensure_dev_pki(tmp_path / "pki", identities=("payments",))
    watcher = _watcher(pki, _crl(pki, tmp_path / "crl.pem", (), next_days=-1))
    with pytest.raises(CrlExpired):
        watcher.revoked.check(pki.client_cert("payments").read_text())


def test_a_delta_crl_beside_its_base_does_not_take_the_base_revocations_away(
    tmp_path: Path,
) -> None:
    """A PKI that publishes a delta CRL beside its base (both in the file): the delta,
    newer, replaced the base in the per-request check, whose revocations and expiry it
    then lacked; and OpenSSL 3.0 (no ``X509_V_FLAG_USE_DELTAS``), with the delta in its
    store, completed new handshakes of a certificate the base revokes. Deltas are now
    kept out of both."""
    pki = ensure_dev_pki(tmp_path / "pki", identities=("payments",))
    payments = pki.client_cert("payments").read_text()
    serial = x509.load_pem_x509_certificate(payments.encode()).serial_number
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)

    def crl(days_ago: int, *extensions: x509.ExtensionType) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.subject)
            .last_update(now - dt.timedelta(days=days_ago))
            .next_update(now + dt.timedelta(days=7))
            .add_extension(x509.CRLNumber(10 - days_ago), critical=False)
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=True)
        if not extensions:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - dt.timedelta(days=3))
                .build()
            )
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    path = tmp_path / "crl.pem"
    path.write_bytes(crl(2) + crl(1, x509.DeltaCRLIndicator(8)))
    context = _server_context(pki)
    watcher = _watcher(pki, path, context)
    watcher.check()
    with pytest.raises(CertificateRevoked):
        watcher.revoked.check(payments)
    # OpenSSL 3.0 with the delta in its store completed the handshake of a certificate
    # the base revokes; the delta is kept out of it.
    refused = _handshake_error(context, pki, "payments")
    assert refused is not None
    assert "certificate revoked" in refused, refused


def test_of_two_crls_of_one_lastupdate_the_earlier_nextupdate_is_in_force(
    tmp_path: Path,
) -> None:
    """Two CRLs of one CA with the same lastUpdate are united (fail closed: which one
    OpenSSL picks is not ours to guess), but the nextUpdate kept was the one listed
    last: with that one still valid, the other's expiry was never checked."""
    pki = ensure_dev_pki(tmp_path / "pki", identities=("payments",))
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    last = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=2)

    def crl(next_days: int) -> bytes:
        return (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.subject)
            .last_update(last)
            .next_update(last + dt.timedelta(days=next_days))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )

    path = tmp_path / "crl.pem"
    path.write_bytes(crl(1) + crl(30))  # the first expired a day ago
    watcher = _watcher(pki, path)
    with pytest.raises(CrlExpired):
        watcher.check()
    with pytest.raises(CrlExpired):
        watcher.revoked.check(pki.client_cert("payments").read_text())
