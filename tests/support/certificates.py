"""Client certificates from the vault's own dev CA that pass the TLS handshake but
break one of the identity rules (issue 20): no URI SAN, two of them, a CA:TRUE leaf, no
clientAuth EKU. Used by the audit-completeness and connection-cap tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from api.pki import DevPKI


def issue_odd_client(
    pki: DevPKI,
    tmp: Path,
    name: str,
    uris: list[str],
    *,
    ca: bool = False,
    client_auth: bool = True,
    expired: bool = False,
) -> tuple[Path, Path, x509.Certificate]:
    """A certificate from the vault's own CA that passes the TLS handshake but breaks
    one of the identity rules (or, `expired`, one whose validity ended an hour ago, which
    the handshake must refuse)."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2 if expired else 0, minutes=5))
        .not_valid_after(now + (dt.timedelta(hours=-1) if expired else dt.timedelta(days=1)))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    )
    if client_auth:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = write_pair(tmp, name, cert, key)
    return cert_path, key_path, cert


def self_signed(
    common_name: str, extension: x509.ExtensionType, *, days: int, critical: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed P-256 certificate of `common_name` with one `extension`, valid from
    five minutes ago for `days` days (a public CA's server certificate, an acquirer's
    private CA: what the vault names, not what it trusts)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(extension, critical=critical)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def write_pair(
    tmp: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    """`cert` and its unencrypted `key` as PEM files `tmp/name.pem` and
    `tmp/name-key.pem` (the key readable by its owner only)."""
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
