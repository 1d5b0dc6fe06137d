"""The development PKI: a CA, a server certificate for localhost, and client certificates
whose SAN URI is the caller's identity (``spiffe://cofre/<name>``).

IN PCI SCOPE (it issues the identities the policy trusts), for development only:
production certificates come from the organisation's CA. Keys are EC P-256, written
0600; the layout is ``pki/ca.pem``, ``pki/ca-key.pem``, ``pki/server.pem``,
``pki/server-key.pem``, ``pki/clients/<name>.pem`` and ``pki/clients/<name>-key.pem``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from api.errors import PKIError

SPIFFE_PREFIX: Final = "spiffe://cofre/"
DEV_IDENTITIES: Final = (
    "payments",
    "ledger",
    "store",
    "getnet-adapter",
    "officer-alice",
    "officer-bob",
    "auditor",
)
_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_CA_DAYS: Final = 3650
_LEAF_DAYS: Final = 825


@dataclass(frozen=True)
class DevPKI:
    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server-key.pem"

    def client_cert(self, name: str) -> Path:
        return self.root / "clients" / f"{name}.pem"

    def client_key(self, name: str) -> Path:
        return self.root / "clients" / f"{name}-key.pem"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    # 0600 like the key, whatever the umask: the PKI lives in the data directory, which
    # every start tightens to 0600 and warns about each file it had to (`cofre pki
    # issue-client` ran with the shell's umask, so the next `make run` warned).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _load_ca(pki: DevPKI) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError("the dev CA key is not an EC key")
    return cert, key


def _issue(
    pki: DevPKI,
    subject_cn: str,
    san: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    *,
    cert_path: Path,
    key_path: Path,
    days: int = _LEAF_DAYS,
) -> None:
    ca_cert, ca_key = _load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_key(key_path, key)
    _write_cert(cert_path, cert)


# `cofre serve` refuses a CA bundle holding this CA unless told otherwise.
DEV_CA_COMMON_NAME = "Cofre dev CA"


def ensure_dev_pki(root: Path, identities: tuple[str, ...] = DEV_IDENTITIES) -> DevPKI:
    """Create the CA, the server certificate and the client certificates that do not
    exist yet; return where they are. Idempotent."""
    pki = DevPKI(root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not pki.ca.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEV_CA_COMMON_NAME)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    key_encipherment=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        _write_key(pki.ca_key, key)
        _write_cert(pki.ca, cert)
    if not pki.server_cert.exists():
        _issue(
            pki,
            "localhost",
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            ExtendedKeyUsageOID.SERVER_AUTH,
            cert_path=pki.server_cert,
            key_path=pki.server_key,
        )
    for name in identities:
        if not pki.client_cert(name).exists():
            issue_client(pki, name)
    return pki


def issue_client(pki: DevPKI, name: str) -> Path:
    """Issue a client certificate with SAN URI ``spiffe://cofre/<name>``; return its path.

    Raises `PKIError` for a name that is not lowercase letters, digits and dashes.
    """
    if not _NAME.match(name):
        raise PKIError("client names are lowercase letters, digits and '-', up to 63")
    _issue(
        pki,
        name,
        [x509.UniformResourceIdentifier(SPIFFE_PREFIX + name)],
        ExtendedKeyUsageOID.CLIENT_AUTH,
        cert_path=pki.client_cert(name),
        key_path=pki.client_key(name),
    )
    return pki.client_cert(name)


def certificate_inventory(paths: list[Path]) -> list[dict[str, str]]:
    """Subjects, SANs and expiry of certificates (for `cofre pki list` and evidence)."""
    out = []
    for path in paths:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [str(v) for v in sans.get_values_for_type(x509.UniformResourceIdentifier)]
            names += [str(v) for v in sans.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            names = []
        out.append(
            {
                "file": str(path),
                "subject": cert.subject.rfc4514_string(),
                "issuer": cert.issuer.rfc4514_string(),
                "san": ", ".join(names),
                "not_after": cert.not_valid_after_utc.isoformat(),
                # openssl's colon form: a bare hex serial can hold a card-shaped digit run.
                "serial": ":".join(
                    f"{b:02x}" for b in cert.serial_number.to_bytes(20, "big").lstrip(b"\0")
                ),
            }
        )
    return out


def revoke_clients(pki: DevPKI, names: list[str], out: Path) -> Path:
    """Write a CRL (PEM) signed by the dev CA that revokes the named client certificates
    (`cofre serve` checks client leaves against it when COFRE_SERVER__CRL_FILE is set)."""
    ca_cert, ca_key = _load_ca(pki)
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=7))
    )
    for name in names:
        cert = x509.load_pem_x509_certificate(pki.client_cert(name).read_bytes())
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    out.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return out
