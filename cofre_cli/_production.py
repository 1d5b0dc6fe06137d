"""`cofre serve`'s production checks: what it refuses to serve with unless an insecure
allowance says otherwise (SQLite, a missing or empty policy, the dev PKI, SoftHSM2),
and a database reached over the network without verifying it (no allowance).

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

from pathlib import Path

import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID

from api.pki import DEV_CA_COMMON_NAME
from cofre.errors import ConfigurationError
from cofre.settings import Settings
from cofre_cli._database_tls import unverified_database
from cofre_cli._library_probe import bounded_library_identity
from hsm.errors import HSMUnavailable
from hsm.library import cloudhsm_pin_problem, is_softhsm, says_softhsm
from policies.loader import load_policy

_log = structlog.get_logger("cofre.vault")


def production_checks(settings: Settings) -> list[str]:
    """Return the insecure allowances in effect, after refusing (`ConfigurationError`)
    what production must not run with: SQLite, a PostgreSQL server reached over the
    network and not verified (`unverified_database`), a missing or empty policy (it would
    deny everything while looking healthy), the dev PKI, SoftHSM2 (whose keys are files
    under the PIN, while every document and the evidence say "in the HSM"), known by its
    file name or by what the loaded library says about itself (`_software_token`)."""
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
    unverified = unverified_database(settings.database_url)
    if unverified is not None:
        refused.append(unverified)
    software = _software_token(settings, allowed_anyway=allow.allow_software_hsm)
    judge(software is not None, allow.allow_software_hsm, "allow_software_hsm", software or "")
    if allow.seal_cards_without_domain:  # a rolling upgrade's, warned like the others
        allowed.append("seal_cards_without_domain")
    # No allowance: such a PIN cannot log in (and is never sent, `hsm.session`).
    pin_problem = _cloudhsm_pin_problem(settings)
    if pin_problem is not None:
        refused.append(pin_problem)
    if refused:
        raise ConfigurationError("refusing to serve in production: " + "; ".join(refused))
    return allowed


def _cloudhsm_pin_problem(settings: Settings) -> str | None:
    """`hsm.library.cloudhsm_pin_problem` for the configured PIN (a PIN that cannot be
    read is said where the HSM is first used, as before)."""
    try:
        pin = settings.hsm.read_pin()
    except ConfigurationError:
        return None
    return cloudhsm_pin_problem(settings.hsm.library, pin.get_secret_value())


def refusing_software_tokens(settings: Settings) -> Settings:
    """`settings` with its HSM providers refusing a library that says it is SoftHSM
    whenever a session opens, unless software tokens are allowed. `_software_token`
    judges a library that does not initialise at start by its name alone, and
    SoftHSM2 under another name whose token directory came later served (review 31b)."""
    if settings.insecure.allow_software_hsm:
        return settings
    hsm = settings.hsm.model_copy(update={"refuse_software_token": True})
    return settings.model_copy(update={"hsm": hsm})


def _software_token(settings: Settings, *, allowed_anyway: bool) -> str | None:
    """Why `settings.hsm.library` is taken for a software token, or None.

    By its file name first (known without loading it), then by what the loaded library
    says about itself and its token (`hsm.library.library_identity`, asked in a child
    process that is killed after ``COFRE_HSM__INIT_TIMEOUT_SECONDS``): a copy of SoftHSM2
    under another name still calls itself SoftHSM. A library file that is not there
    cannot be told from one and is refused too, unless software tokens are allowed
    anyway (then there is nothing to refuse, and nothing to warn of). One that is there
    but cannot be loaded or initialised now is judged by its name alone, with a
    warning: a networked HSM's library may fail to initialise while its cluster is
    down, and the vault then starts unready (its readiness names the HSM) rather than
    exiting, so that a cluster outage at a rollout does not put every pod in a restart
    loop; such a library serves nothing until it initialises, as the vault's own. One
    whose ``C_Initialize`` hangs is judged the same way at the bound, so the node still
    listens (unready) rather than wait before any listener with no line saying why."""
    hsm = settings.hsm
    if is_softhsm(hsm.library):
        return f"the PKCS#11 library {hsm.library} is SoftHSM2, a software token, not an HSM"
    try:
        identity = bounded_library_identity(
            hsm.library, hsm.softhsm_conf, hsm.token_label, seconds=hsm.init_timeout_seconds
        )
    except HSMUnavailable as exc:
        if allowed_anyway:
            return None
        if hsm.library.is_file():
            _log.warning(
                "PKCS#11 library not identified: judged by its file name alone",
                library=str(hsm.library),
                reason=str(exc),
            )
            return None
        return (
            f"cannot read what the PKCS#11 library says about itself ({exc}), so it "
            "cannot be told from a software token"
        )
    if says_softhsm(identity):
        return (
            f"the PKCS#11 library {hsm.library} says it is SoftHSM ({identity.describe()}), "
            "a software token, not an HSM"
        )
    return None


def _holds_dev_ca(ca_bundle: Path | None) -> bool:
    if ca_bundle is None or not ca_bundle.is_file():
        return False
    try:
        certificates = x509.load_pem_x509_certificates(ca_bundle.read_bytes())
    except ValueError:
        return False  # build_server reports an unreadable bundle
    dev = x509.NameAttribute(NameOID.COMMON_NAME, DEV_CA_COMMON_NAME)
    return any(dev in cert.subject for cert in certificates)
