"""The development environment behind `make run`: a SoftHSM2 token, a SQLite store and
(later) a dev PKI under ``./.cofre-dev/``, created on first run and reused after.

IN PCI SCOPE (it creates keys), but for development only: the PINs are random and kept
in 0600 files in the data directory, which is fine for a laptop token and never for a
production HSM (see docs/key-ceremony.md for CloudHSM).
"""

from __future__ import annotations

import fcntl
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from api.pki import ensure_dev_pki
from cofre.settings import Settings, load_settings
from cofre_cli.officer_token import create_dev_tokens
from hsm.softhsm import init_softhsm_token, write_softhsm_conf

# Payments' capture origins: the local pages the dev vault's `allow_http_localhost` admits.
_DEV_CAPTURE_ORIGINS = """\
# The shop pages it may open capture sessions for (a policy granting "capture" must name
# them): your local checkout page's origin; the dev vault allows http on localhost only.
capture_origins = ["http://localhost:3000", "http://127.0.0.1:3000"]
"""

# Payments is the shop's backend: it tokenizes, opens capture sessions and, holding only
# tokens, updates a reissued card's expiry (`update`).
_PAYMENTS_OPERATIONS = """\
# "capture": opens hosted-fields sessions for the shop's checkout page (docs/capture.md);
# the card then goes from the shopper's browser straight to the vault. "update": the
# shop's backend holds only the token, so a reissued card's new expiry (Visa Account
# Updater, Mastercard ABU) reaches the stored card through PATCH /v1/tokens/{token}.
operations = [
    "tokenize", "detokenize_masked", "lookup", "metadata", "delete", "capture", "update"
]"""
# As `cofre dev` wrote them before payments was granted `update`.
_PAYMENTS_OPERATIONS_BEFORE_UPDATE = """\
# "capture": opens hosted-fields sessions for the shop's checkout page (docs/capture.md);
# the card then goes from the shopper's browser straight to the vault.
operations = ["tokenize", "detokenize_masked", "lookup", "metadata", "delete", "capture"]"""

_DEV_POLICY_TEMPLATE = """\
# The development policy written by `cofre dev`. Identities are the SAN URIs of the dev
# client certificates in pki/clients/. An identity not listed here is denied everything.
#
# Token domains: each identity tokenizes into its own domain (its URI) unless `domain`
# says otherwise; the same card gives unrelated tokens in two domains, and no answer in
# one domain depends on what another holds. `read_domains` lets an identity read (at its
# reveal level) tokens of other domains. Nobody here gets a full PAN: the relay sends it
# to the acquirer from inside the vault.
version = 1

[identities."spiffe://cofre/payments"]
description = "Payment service: tokenizes cards, sees only masked PANs"
{payments_operations}
{capture_origins}formats = ["pan_bin6_last4", "pan_bin8_last4", "pan_last4", "pan_fpe", "uuid"]
reveal = "masked"
rate_limit = { per_second = 2000, burst = 4000 }
# At most 10 different cards of one BIN and last four a day: real traffic has a few, a
# caller guessing a card from its token needs thousands.
oracle_guard = { max_pans_per_bucket = 10, window_seconds = 86400 }

[identities."spiffe://cofre/store"]
description = "Card-on-file store: its own tokens, and payments' tokens masked"
operations = ["tokenize", "detokenize_masked", "metadata"]
formats = ["pan_bin6_last4", "uuid"]
reveal = "masked"
read_domains = ["spiffe://cofre/payments"]
rate_limit = { per_second = 500, burst = 1000 }

[identities."spiffe://cofre/ledger"]
description = "Ledger: reads masked PANs of the payment service's tokens for statements"
operations = ["detokenize", "detokenize_masked", "metadata"]
reveal = "masked"
read_domains = ["spiffe://cofre/payments"]
rate_limit = { per_second = 500, burst = 1000 }
quota = { detokenize_per_day = 1000000 }

[identities."spiffe://cofre/getnet-adapter"]
description = "Getnet routing, outside PCI scope: never holds a PAN; the vault relays it"
scope = "out"
operations = ["relay", "detokenize_masked"]
reveal = "masked"
read_domains = ["spiffe://cofre/payments"]
rate_limit = { per_second = 500, burst = 1000 }
quota = { detokenize_per_day = 1000000 }

# Relay routes name their upstream; the dev policy has none (the tests add a fake
# acquirer). See docs/adapters.md.

[identities."spiffe://cofre/officer-alice"]
role = "security_officer"
operations = ["key_admin", "audit_read", "evidence_export"]

[identities."spiffe://cofre/officer-bob"]
role = "security_officer"
operations = ["key_admin", "audit_read", "evidence_export"]

[identities."spiffe://cofre/auditor"]
role = "auditor"
operations = ["audit_read", "evidence_export"]
"""


def _dev_policy(*, origins: bool, update: bool) -> str:
    """The dev policy, as this version writes it (both true) or as an older one did."""
    operations = _PAYMENTS_OPERATIONS if update else _PAYMENTS_OPERATIONS_BEFORE_UPDATE
    return _DEV_POLICY_TEMPLATE.replace("{payments_operations}", operations).replace(
        "{capture_origins}", _DEV_CAPTURE_ORIGINS if origins else ""
    )


# The dev policy as `cofre dev` writes it. One it wrote before a policy granting capture
# had to name its origins (the vault would refuse to load it), or before payments was
# granted `update`, is rewritten when never edited (`ensure_dev_environment`).
DEV_POLICY = _dev_policy(origins=True, update=True)

DEV_TOKEN_LABEL = "cofre-dev"  # noqa: S105 - a token label, not a secret
CONFIG_NAME = "cofre.toml"


@dataclass(frozen=True)
class DevEnvironment:
    data_dir: Path
    config_file: Path
    created: bool


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")


def ensure_dev_environment(data_dir: Path, port: int = 8443) -> DevEnvironment:
    """Create the dev data directory, SoftHSM token, PKI, policy and config file where
    they are missing, and return where they are. Idempotent: a second call creates
    nothing (the config file is rewritten with the same content).

    Raises `hsm.errors.HSMUnavailable` when softhsm2-util is missing or fails.
    """
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # One set-up at a time (review 34: three first runs at once made two officer-alice
    # tokens, and every later run failed on "more than one token labelled"). The lock
    # is released when its file is closed, however the process ends.
    lock = os.open(data_dir / ".setup-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure(data_dir, port)
    finally:
        os.close(lock)


def _ensure(data_dir: Path, port: int) -> DevEnvironment:
    hsm_dir = data_dir / "hsm"
    config_file = data_dir / CONFIG_NAME
    conf = hsm_dir / "softhsm2.conf"
    user_pin_file = hsm_dir / "user-pin"
    created = not user_pin_file.is_file()
    if created:
        hsm_dir.mkdir(exist_ok=True, mode=0o700)
        write_softhsm_conf(conf, hsm_dir / "tokens")
        so_pin = secrets.token_urlsafe(18)
        # AWS CloudHSM's shape, <CU user name>:<password> (pkcs11-pin.html): SoftHSM2
        # takes any PIN, and the dev vault also runs on the CloudHSM-behaviour shim.
        user_pin = "cofre-dev:" + secrets.token_urlsafe(18)
        init_softhsm_token(conf, DEV_TOKEN_LABEL, so_pin=so_pin, user_pin=user_pin)
        _write_secret(hsm_dir / "so-pin", so_pin)
        _write_secret(user_pin_file, user_pin)
    pki = ensure_dev_pki(data_dir / "pki")
    policy = data_dir / "policy.toml"
    config_file.write_text(
        "# Written by `cofre dev`; development only.\n"
        f'data_dir = "{data_dir}"\n'
        f'policy_file = "{policy}"\n\n'
        "[hsm]\n"
        'library = "/usr/lib/softhsm/libsofthsm2.so"\n'
        f'token_label = "{DEV_TOKEN_LABEL}"\n'
        f'pin_file = "{user_pin_file}"\n'
        f'softhsm_conf = "{conf}"\n\n'
        "[server]\n"
        # The port too: `cofre keys` and `cofre evidence` find the vault through this file.
        f"port = {int(port)}\n"
        f'ca_bundle = "{pki.ca}"\n'
        f'cert_file = "{pki.server_cert}"\n'
        f'key_file = "{pki.server_key}"\n\n'
        # The capture listener (hosted card fields) on the next port; a shop page on
        # http://localhost may embed them (development only).
        "[capture]\n"
        f"port = {int(port) + 1}\n"
        "allow_http_localhost = true\n",
        encoding="utf-8",
    )
    # Each dev officer and the auditor get a token of their own, whose key the policy
    # registers as their second factor (a policy still exactly as an older `cofre dev`
    # wrote it, without keys or without capture origins, is rewritten; an edited one is
    # left alone, and the vault refuses to load it if it grants capture without origins).
    keys = create_dev_tokens(data_dir, config_file)
    # Every version without its origins or its `update` grant, untouched, with or
    # without the officers' keys.
    older = [
        _dev_policy(origins=origins, update=update)
        for origins in (False, True)
        for update in (False, True)
        if not (origins and update)
    ]
    as_written_before = {DEV_POLICY, *older, *(with_mfa_keys(text, keys) for text in older)}
    if not policy.exists() or policy.read_text(encoding="utf-8") in as_written_before:
        policy.write_text(with_mfa_keys(DEV_POLICY, keys), encoding="utf-8")
    return DevEnvironment(data_dir, config_file, created=created)


def with_mfa_keys(policy: str, keys: dict[str, str]) -> str:
    """`policy` with ``mfa_public_key`` set for each ``spiffe://cofre/<name>`` in `keys`
    (name -> PEM public key of that officer's token)."""
    for name, pem in keys.items():
        header = f'[identities."spiffe://cofre/{name}"]\n'
        if header not in policy:
            raise ValueError(f"the policy has no identity {name}")
        policy = policy.replace(header, f'{header}mfa_public_key = """\n{pem.strip()}\n"""\n', 1)
    return policy


def dev_settings(env: DevEnvironment) -> Settings:
    """Return the settings of the dev environment (its TOML file, then COFRE_* variables)."""
    os.environ["COFRE_CONFIG"] = str(env.config_file)
    # The interactive API docs are a development aid: on here, off in `cofre serve`.
    os.environ.setdefault("COFRE_SERVER__API_DOCS", "true")
    return load_settings()
