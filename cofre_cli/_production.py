"""`cofre serve`'s production checks: what it refuses to serve with unless an insecure
allowance says otherwise (SQLite, a missing or empty policy, the dev PKI, SoftHSM2).

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from api.pki import DEV_CA_COMMON_NAME
from cofre.errors import ConfigurationError
from cofre.settings import Settings
from hsm.session import is_softhsm
from policies.loader import load_policy


def production_checks(settings: Settings) -> list[str]:
    """Return the insecure allowances in effect, after refusing (`ConfigurationError`)
    what production must not run with: SQLite, a missing or empty policy (it would
    deny everything while looking healthy), the dev PKI, SoftHSM2 (whose keys are files
    under the PIN, while every document and the evidence say "in the HSM")."""
    allow = settings.insecure
    refused: list[str] = []
    allowed: list[str] = []

    def judge(broken: bool, allowed_anyway: bool, name: str, problem: str) -> None:
        if broken and allowed_anyway:
            allowed.append(name)
        elif broken:
            refused.append(f"{problem} (or set COFRE_INSECURE__{name.upper()}=true)")

    judge(
        settings.database_url.startswith("sqlite"),
        allow.allow_sqlite,
        "allow_sqlite",
        "the database is SQLite: set COFRE_DATABASE__URL to PostgreSQL",
    )
    policy_file = settings.policy_file
    if policy_file is None or not policy_file.is_file():
        judge(
            True,
            allow.allow_empty_policy,
            "allow_empty_policy",
            f"the policy file {policy_file or '(COFRE_POLICY_FILE unset)'} does not exist",
        )
    else:
        judge(
            not load_policy(policy_file).policy.identities,
            allow.allow_empty_policy,
            "allow_empty_policy",
            f"the policy {policy_file} names no identity",
        )
    judge(
        _holds_dev_ca(settings.server.ca_bundle),
        allow.allow_dev_pki,
        "allow_dev_pki",
        "the client CA bundle is the dev PKI's",
    )
    judge(
        is_softhsm(settings.hsm.library),
        allow.allow_software_hsm,
        "allow_software_hsm",
        f"the PKCS#11 library {settings.hsm.library} is SoftHSM2, a software token, not an HSM",
    )
    if refused:
        raise ConfigurationError("refusing to serve in production: " + "; ".join(refused))
    return allowed


def _holds_dev_ca(ca_bundle: Path | None) -> bool:
    if ca_bundle is None or not ca_bundle.is_file():
        return False
    try:
        certificates = x509.load_pem_x509_certificates(ca_bundle.read_bytes())
    except ValueError:
        return False  # build_server reports an unreadable bundle
    dev = x509.NameAttribute(NameOID.COMMON_NAME, DEV_CA_COMMON_NAME)
    return any(dev in cert.subject for cert in certificates)
