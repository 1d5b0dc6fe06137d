"""The dev officers' second factor in tests: their signing keys, registered in the policy.

Two kinds, for two harnesses:

- `software_officers`: P-256 keys in memory, for the vault served inside the test process
  (tests/api/conftest.py). SoftHSM2 runs unlocked there (TOOLCHAIN.md: two threads on two
  sessions crash it), so the test thread must not sign on a token while the server's
  threads use the vault's; the vault only verifies, and the bytes are the same.
- `token_officers`: a SoftHSM2 token per officer (made at session start beside the
  session's token, see tests/support/softhsm.py), for `cofre serve` in its own process
  (tests/support/vault_process.py); the `cofre` CLI finds the same tokens through
  `cli_env`, as an officer's workstation does.
"""

from __future__ import annotations

import functools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cofre_cli._shared import officer_signature
from cofre_cli.devenv import with_mfa_keys
from cofre_cli.officer_token import DEV_OFFICERS, OfficerToken, TokenSigner, init_key
from tests.support.softhsm import SoftHSMToken, officer_token_label
from vault.approval_proof import PROPOSALS, SignedAction, approval_path
from vault.httpsig import HttpRequest, der_to_raw, jwk_thumbprint, sign_request


@dataclass(frozen=True)
class SigningOfficer:
    name: str
    pem: str
    keyid: str
    sign: Callable[[bytes], bytes]

    def auth(self) -> Any:
        """An httpx auth that signs this officer's requests."""
        return officer_signature(self.keyid, self.sign)


def _software(name: str) -> SigningOfficer:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return SigningOfficer(
        name,
        pem.decode(),
        jwk_thumbprint(pem),
        lambda data: der_to_raw(key.sign(data, ec.ECDSA(hashes.SHA256()))),
    )


def new_software_officer(name: str) -> SigningOfficer:
    """An officer `name` (``spiffe://cofre/<name>``) with a fresh in-memory key."""
    return _software(name)


def officers_policy(officers: Iterable[tuple[str, SigningOfficer]]) -> str:
    """Policy text granting each (identity, officer) pair `key_admin` as a security
    officer, with the officer's MFA public key."""
    return "".join(
        f'[identities."{who}"]\nrole = "security_officer"\noperations = ["key_admin"]\n'
        f'mfa_public_key = """{officer.pem}"""\n'
        for who, officer in officers
    )


@functools.cache
def software_officers() -> dict[str, SigningOfficer]:
    return {name: _software(name) for name in DEV_OFFICERS}


def _officer_token(token: SoftHSMToken, name: str) -> OfficerToken:
    pin_file = token.conf.parent / "officer-pin"
    if not pin_file.is_file():
        pin_file.write_text(token.user_pin)
        pin_file.chmod(0o600)
    return OfficerToken(
        library=token.library,
        token_label=officer_token_label(token, name),
        key_label="cofre-mfa",
        pin_file=pin_file,
        softhsm_conf=token.conf,
    )


_TOKEN_OFFICERS: dict[str, dict[str, SigningOfficer]] = {}
# SoftHSM2 runs without locking in this process: one token call at a time.
_TOKEN_CALLS = threading.Lock()


def _locked(sign: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    def call(data: bytes) -> bytes:
        with _TOKEN_CALLS:
            return sign(data)

    return call


def token_officers(token: SoftHSMToken) -> dict[str, SigningOfficer]:
    """Each dev officer's key on their own token of the session (created once)."""
    if token.label not in _TOKEN_OFFICERS:
        officers = {}
        for name in DEV_OFFICERS:
            officer_token = _officer_token(token, name)
            init_key(officer_token)
            signer = TokenSigner(officer_token)
            officers[name] = SigningOfficer(
                name, signer.public_pem.decode(), signer.keyid, _locked(signer.sign)
            )
        _TOKEN_OFFICERS[token.label] = officers
    return _TOKEN_OFFICERS[token.label]


def cli_env(token: SoftHSMToken) -> dict[str, str]:
    """What the `cofre` CLI needs to find an ``--as`` name's token of the session."""
    officer = _officer_token(token, "{name}")
    return {
        "COFRE_OFFICER_TOKEN__LIBRARY": str(officer.library),
        "COFRE_OFFICER_TOKEN__TOKEN_LABEL": officer.token_label,
        "COFRE_OFFICER_TOKEN__PIN_FILE": str(officer.pin_file),
        "COFRE_OFFICER_TOKEN__SOFTHSM_CONF": str(officer.softhsm_conf),
    }


def policy_with(policy: str, officers: dict[str, SigningOfficer]) -> str:
    """`policy` with each officer's public key registered as their second factor."""
    return with_mfa_keys(policy, {name: o.pem for name, o in officers.items()})


def signature_headers(
    officer: SigningOfficer,
    path: str,
    body: bytes,
    *,
    authority: str,
    keyid: str | None = None,
    nonce: str | None = None,
    created: int | None = None,
) -> dict[str, str]:
    """The RFC 9421 headers of a ``POST`` of `body` to `path` signed now (or at
    `created`) by `officer`'s key as their client signs it
    (`cofre_cli._shared.officer_signature`); a test may name another `keyid` or replay
    a `nonce`."""
    return sign_request(
        "POST",
        path,
        "",
        body,
        authority=authority,
        keyid=officer.keyid if keyid is None else keyid,
        nonce=secrets.token_urlsafe(18) if nonce is None else nonce,
        created=int(time.time()) if created is None else created,
        sign=officer.sign,
    )


def signed_action(
    officer: SigningOfficer,
    path: str,
    body: bytes = b"",
    *,
    authority: str = "localhost",
    created: int | None = None,
) -> SignedAction:
    """A ``POST`` of `body` to `path` signed by `officer`'s key, kept as the vault stores
    it: for in-process ceremony callers, whose actions count only with such a proof
    (`vault.approval_proof`)."""
    headers = signature_headers(officer, path, body, authority=authority, created=created)
    return SignedAction.of(HttpRequest("POST", path, "", {"host": authority, **headers}, body))


def signed_proposal(
    officer: SigningOfficer, kind: str, *, authority: str = "localhost", created: int | None = None
) -> SignedAction:
    """`officer`'s signed proposal of a `kind` rotation (the API's body), signed now or
    at `created`."""
    body = json.dumps({"kind": kind}).encode()
    return signed_action(officer, PROPOSALS, body, authority=authority, created=created)


def signed_approval(
    officer: SigningOfficer, ceremony_id: str, *, authority: str = "localhost"
) -> SignedAction:
    """`officer`'s signed approval of ceremony `ceremony_id`."""
    return signed_action(officer, approval_path(ceremony_id), authority=authority)


def signed_kek_ceremony(*, authority: str = "localhost") -> tuple[str, SignedAction, SignedAction]:
    """Alice's signed proposal of a kek rotation and Bob's signed approval of it, both
    signed for `authority` (the vault's name in their signatures) with their software
    keys: the ceremony's id, the proposal and the approval."""
    officers = software_officers()
    proposal = signed_proposal(officers["officer-alice"], "kek", authority=authority)
    ceremony = proposal.ceremony_id()
    approval = signed_approval(officers["officer-bob"], ceremony, authority=authority)
    return ceremony, proposal, approval


def signed_registration(
    officer: SigningOfficer,
    registered: dict[str, str | None],
    *,
    authority: str = "localhost",
    created: int | None = None,
) -> SignedAction:
    """`officer`'s signed proposal of a ``register`` ceremony: label ``registered["label"]``
    is the key with its ``cka_id`` and ``check`` (`vault._signed_registration`)."""
    names = ("label", "cka_id", "check")
    body = json.dumps({"kind": "register", **{n: registered[n] for n in names}}).encode()
    return signed_action(officer, PROPOSALS, body, authority=authority, created=created)
