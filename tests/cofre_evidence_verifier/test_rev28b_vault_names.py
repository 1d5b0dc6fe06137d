"""Review 28b (attacker): check 6c's authority comparison, vault against verifier.

The vault accepts an officer's signed ``@authority`` when `normalize_authority` takes
it, its host is one of the certificate's names (`names_host`) and its port one of
`officer_ports`; the offline verifier must accept exactly the same authorities from
the names and ports the bundle records (`keys/officer_authorities.json`, written from
`server_names` of the same certificate and `officer_ports`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cofre_evidence_verifier.bundle import OFFICER_AUTHORITIES
from cofre_evidence_verifier.request_signature import (
    normalize_authority as verifier_normalize,
)
from cofre_evidence_verifier.vault_names import PINNED, VaultNames, parse_name, vault_names
from vault.errors import OfficerMfaInvalid
from vault.officer_mfa import OfficerMfa, officer_ports, server_names


def _certificate(dns: list[str], ips: list[str]) -> bytes:
    """A self-signed server certificate naming `dns` and `ips` in its subjectAltName."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault")])
    now = datetime.now(UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ip_address(a)) for a in ips]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _bundle_names(own: frozenset[str], ports: frozenset[int]) -> tuple[VaultNames, list[str]]:
    """What the verifier compares with, from the record the exporter writes
    (`compliance.export._stage_sources`)."""
    record = json.dumps({"names": sorted(own), "ports": sorted(ports)}).encode()
    problems: list[str] = []
    return vault_names({OFFICER_AUTHORITIES: record}, None, problems), problems


def _vault_accepts(own: frozenset[str], ports: frozenset[int], host: str) -> bool:
    """Whether the vault's own check (`OfficerMfa._check_authority`) takes `host`."""
    mfa = OfficerMfa(cast("Any", None), cast("Any", None), authorities=lambda: own, ports=ports)
    try:
        mfa._check_authority(host)
    except OfficerMfaInvalid:
        return False
    return True


def _verifier_accepts(names: VaultNames, host: str) -> bool:
    """Whether the verifier counts a request signed with Host `host` (it verifies the
    signature over the normalised authority first, then compares it)."""
    try:
        authority = verifier_normalize(host)
    except ValueError:
        return False
    return names.problem(authority) is None


# Hosts an officer's tool (or an attacker) may sign for: case, brackets, IPv6 forms,
# leading zeros in the port and in IPv4 octets, trailing dots, default and odd ports.
_HOSTS = [
    "vault.example",
    "VAULT.EXAMPLE",
    "vault.example:443",
    "vault.example:0443",
    "vault.example:8443",
    "vault.example:08443",
    "vault.example:9443",
    "vault.example.",
    "vault.example.:443",
    "staging.vault.example",
    "10.0.0.7",
    "10.0.0.7:8443",
    "010.000.000.007",
    "[2001:db8::7]",
    "[2001:DB8:0:0:0:0:0:7]:8443",
    "[2001:0db8::0007]:443",
    "[::ffff:10.0.0.7]",
    "2001:db8::7",
    "[10.0.0.7]",
    "vault.example:65535",
]


@pytest.mark.parametrize("host", _HOSTS)
def test_vault_and_verifier_agree_on_each_authority(host: str) -> None:
    """Holds: for a certificate without a wildcard, the verifier counts exactly the
    authorities the vault accepted (no pin that passes more, none that refuses a
    ceremony the vault ran)."""
    own = server_names(_certificate(["vault.example"], ["10.0.0.7", "2001:db8::7"]))
    ports = officer_ports(8443, None)
    names, problems = _bundle_names(own, ports)
    assert problems == []
    assert _verifier_accepts(names, host) is _vault_accepts(own, ports, host), host


def test_a_wildcard_name_in_the_certificate_does_not_void_the_recorded_names() -> None:
    """R28b-V1, severity low-medium (availability of the evidence, fails closed).

    A server certificate naming the vault and a wildcard (``vault.example`` and
    ``*.vault.example``, a common certificate) is recorded as is: `server_names` keeps
    the wildcard (the vault merely never matches it) and the exporter writes it into
    ``keys/officer_authorities.json``. The verifier then refuses the whole record
    (``'*.vault.example' is not a host``) and compares with no name at all, so every
    key rotation of the period is reported "not this vault" although each was signed
    for ``vault.example``, a name the vault accepted. Any bundle of such a vault fails
    unless the auditor pins the names by hand; an auditor who learns to ignore 6c
    failures is what a copied staging ceremony needs.

    Suggested fix: the exporter records only the names the vault can match (no
    wildcard: `names_host` never honours one), and/or the verifier reports an
    unreadable recorded name and keeps the others."""
    own = server_names(_certificate(["vault.example", "*.vault.example"], []))
    assert _vault_accepts(own, officer_ports(8443, None), "vault.example")
    names, problems = _bundle_names(own, officer_ports(8443, None))
    assert problems == [], problems
    assert names.problem("vault.example") is None


@pytest.mark.parametrize("authority", ["vault.example:0", "vault.example:99999"])
def test_an_authority_with_no_valid_port_is_a_ceremony_problem_not_an_exception(
    authority: str,
) -> None:
    """R28b-V2, severity low (fails closed, but the verdict is wrong in kind).

    The verifier's `normalize_authority` (as the vault's) takes any 1-5 digit port, so
    a verified officer signature for ``vault.example:0`` or ``:99999`` reaches
    `VaultNames.problem`, whose `parse_name` raises `ValueError` ("has no valid port")
    instead of returning the reason. The exception leaves `check_dual_control` and
    every later check (witnesses...) unrun: the report says "malformed bundle content"
    rather than naming the ceremony whose signature does not count. The vault refuses
    such a port only when its OfficerMfa is given `ports` (None: not compared).

    Suggested fix: `problem` catches `ValueError` from `parse_name` and returns it as
    the reason ("it was signed for an authority with no valid port")."""
    names = VaultNames(frozenset({("vault.example", None)}), PINNED, None)
    assert verifier_normalize(authority)  # the signature's authority is taken
    problem = names.problem(authority)
    assert problem is not None


def test_parse_name_and_vault_normalisation_agree_on_ipv6_forms() -> None:
    """Holds: every written form of one IPv6 address is one name on both sides."""
    forms = ["2001:db8::7", "[2001:db8::7]", "[2001:0DB8:0000::7]", "2001:DB8:0:0:0:0:0:7"]
    assert {parse_name(form)[0] for form in forms} == {"2001:db8::7"}
