"""The officer's own PKCS#11 token: the second factor of key ceremonies and evidence
exports (PCI DSS 8.4.1, 8.4.2).

IN PCI SCOPE (authentication). The token holds an EC P-256 key (label ``cofre-mfa``),
sensitive and never extractable, usable only after the token's PIN. This module finds the
token of an ``--as`` name, creates the key (`cofre mfa init`) and signs request
signature bases with it (`vault.httpsig`). The PIN comes from a file or a prompt, never
from the command line.

Where the token is: ``COFRE_OFFICER_TOKEN__*`` (`cofre.settings.OfficerTokenSettings`)
or, when those are unset, the dev token `cofre dev` created for the name under
``<data_dir>/officers/`` (its own SoftHSM2 directory, apart from the vault's token).
"""

from __future__ import annotations

import getpass
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import SecretStr

from cofre.errors import ConfigurationError
from cofre.settings import DEFAULT_SOFTHSM_LIBRARY, Settings
from hsm.errors import HSMKeyNotFound
from hsm.provider import HSMProvider
from hsm.softhsm import init_softhsm_token, write_softhsm_conf
from vault.httpsig import der_to_raw, jwk_thumbprint

DEV_DIR: Final = "officers"
# The dev officers and auditor of DEV_POLICY, each with a token of their own.
DEV_OFFICERS: Final = ("officer-alice", "officer-bob", "auditor")


@dataclass(frozen=True)
class OfficerToken:
    """Where one officer's token is."""

    library: Path
    token_label: str
    key_label: str
    pin_file: Path | None
    softhsm_conf: Path | None


def dev_token(data_dir: Path, name: str) -> OfficerToken:
    """The dev token `cofre dev` creates for `name`."""
    base = data_dir.resolve() / DEV_DIR
    return OfficerToken(
        library=DEFAULT_SOFTHSM_LIBRARY,
        token_label=name,
        key_label="cofre-mfa",
        pin_file=base / f"{name}.pin",
        softhsm_conf=base / "softhsm2.conf",
    )


def find_token(settings: Settings, name: str) -> OfficerToken | None:
    """The token of `name`: the configured one, else its dev token, else ``None`` (the
    request then goes unsigned, and the vault refuses it if the action needs MFA)."""
    configured = settings.officer_token
    if configured.token_label is not None:
        pin_file = configured.pin_file
        return OfficerToken(
            library=configured.library or DEFAULT_SOFTHSM_LIBRARY,
            token_label=configured.token_label.replace("{name}", name),
            key_label=configured.key_label,
            pin_file=Path(str(pin_file).replace("{name}", name)) if pin_file else None,
            softhsm_conf=configured.softhsm_conf,
        )
    token = dev_token(settings.data_dir, name)
    if token.softhsm_conf is not None and token.softhsm_conf.is_file():
        return token
    return None


def _pin(token: OfficerToken) -> SecretStr:
    if token.pin_file is not None:
        try:
            text = token.pin_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the token PIN file {token.pin_file}: {exc.strerror}"
            ) from None
        return SecretStr(text)
    if not sys.stdin.isatty():
        raise ConfigurationError(
            "the officer token needs its PIN: set COFRE_OFFICER_TOKEN__PIN_FILE or run "
            "from a terminal to be asked"
        )
    return SecretStr(getpass.getpass(f"PIN of token {token.token_label!r}: "))


class TokenSigner:
    """Signs with the officer's token key; `keyid` is its RFC 7638 thumbprint."""

    def __init__(self, token: OfficerToken) -> None:
        self._token = token
        self._provider = HSMProvider(
            library=token.library,
            token_label=token.token_label,
            pin=_pin(token),
            softhsm_conf=token.softhsm_conf,
            pool_size=1,
        )
        self.public_pem = self._provider.public_key_pem(token.key_label)
        self.keyid = jwk_thumbprint(self.public_pem)

    def sign(self, data: bytes) -> bytes:
        """An ``ecdsa-p256-sha256`` signature (r||s) over `data`, made by the token."""
        return der_to_raw(self._provider.sign(self._token.key_label, data))

    def close(self) -> None:
        self._provider.close()


_SIGNERS: dict[OfficerToken, TokenSigner] = {}


def signer_for(token: OfficerToken) -> TokenSigner:
    """One signer per token in this process: a token takes one login per application."""
    if token not in _SIGNERS:
        _SIGNERS[token] = TokenSigner(token)
    return _SIGNERS[token]


def init_key(token: OfficerToken) -> bytes:
    """Create the MFA key on `token` if it has none; return its PEM public key."""
    provider = HSMProvider(
        library=token.library,
        token_label=token.token_label,
        pin=_pin(token),
        softhsm_conf=token.softhsm_conf,
        pool_size=1,
    )
    try:
        try:
            return provider.public_key_pem(token.key_label)
        except HSMKeyNotFound:
            provider.generate_signing_key(token.key_label)
            return provider.public_key_pem(token.key_label)
    finally:
        provider.close()


def create_dev_tokens(data_dir: Path, config_file: Path) -> dict[str, str]:
    """Create a SoftHSM2 token with an MFA key for each dev officer and the auditor, under
    ``<data_dir>/officers/`` (once), and return each name's PEM public key.

    The keys are made by `cofre mfa init` in a process of its own: SoftHSM2 reads its
    configuration once per process, and this one may already use the vault's token.
    """
    base = data_dir.resolve() / DEV_DIR
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = base / "softhsm2.conf"
    keys: dict[str, str] = {}
    for name in DEV_OFFICERS:
        token = dev_token(data_dir, name)
        public = base / f"{name}.pub.pem"
        if not public.is_file():
            if not conf.is_file():
                write_softhsm_conf(conf, base / "tokens")
            assert token.pin_file is not None  # noqa: S101 - dev tokens always have one
            if not token.pin_file.is_file():
                pin = secrets.token_urlsafe(18)
                init_softhsm_token(conf, name, so_pin=secrets.token_urlsafe(18), user_pin=pin)
                fd = os.open(token.pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(pin + "\n")
            made = subprocess.run(  # noqa: S603 - our own interpreter and module, fixed argv
                [
                    sys.executable,
                    "-m",
                    "cofre_cli",
                    "mfa",
                    "init",
                    "--as",
                    name,
                    "--out",
                    str(public),
                ],
                env={**os.environ, "COFRE_CONFIG": str(config_file)},
                capture_output=True,
                text=True,
                check=False,
            )
            if made.returncode != 0:
                raise ConfigurationError(f"cofre mfa init --as {name} failed: {made.stderr}")
        keys[name] = public.read_text(encoding="utf-8")
    return keys
