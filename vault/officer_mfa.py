"""The officers' second factor (PCI DSS 4.0.1 req. 8.4.1, 8.4.2): every key ceremony
action and evidence export is signed by a key in the officer's own PKCS#11 token.

IN PCI SCOPE (authentication). The client certificate is the first factor (something
held, as a file); the token key, usable only after the token's PIN, adds something held
in hardware and something known. The request signature is RFC 9421 (`vault.httpsig`)
over the method, authority (``Host``), path, query and ``Content-Digest`` of the body,
with ``created``, ``nonce`` and ``keyid``. The vault checks, in order:

1. the identity has a registered key (``mfa_public_key`` in the policy) when the policy
   grants it the action at all (a caller the policy denies is left to the operation's own
   denial, so that refusal keeps its code);
2. the headers parse, and ``keyid`` is the thumbprint of *this identity's* key (another
   officer's token cannot stand in);
3. the signed ``@authority`` is this vault's: its host is a name in the vault's own TLS
   certificate (`server_names`; exact names, no wildcard). Nonces are per vault database,
   so without this a request signed for a staging vault, where the same officer and key
   are registered, could be sent to production within the window. Its port is one the
   vault is reached by (`ports`: ``server.officer_ports``, by default 443, a load
   balancer's or proxy's, and the node's own listening port), so a vault sharing its
   host name on another port (staging on ``vault.example:9443``) is told apart;
4. ``created`` is within the window around the vault's clock;
5. the body's digest matches and the signature verifies;
6. the nonce was never used: it is stored once (a primary key), in its own transaction,
   so a replay is refused on every node.

Every refusal raises an `OfficerMfaError` with its own code; the API answers it as
problem+json and the request guard writes the request's audit entry with that code.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from sqlalchemy import Engine, delete, insert
from sqlalchemy.exc import IntegrityError

from cofre.dberrors import database_errors_as
from policies.engine import PolicyEngine
from policies.models import Action
from vault.errors import (
    OfficerMfaInvalid,
    OfficerMfaNotRegistered,
    OfficerMfaReplayed,
    StorageUnavailable,
)
from vault.httpsig import (
    HttpRequest,
    authority_host,
    authority_port,
    jwk_thumbprint,
    normalize_authority,
    parse_signature,
    verify_request,
)
from vault.storage.schema import officer_request_nonces

WINDOW_SECONDS: Final = 300


def identities_without_mfa(policy: PolicyEngine) -> list[str]:
    """The identities the policy grants key ceremonies or evidence exports but registers
    no MFA key for: every such action of theirs is refused (``mfa_not_registered``)."""
    needs = {Action.KEY_ADMIN, Action.EVIDENCE_EXPORT}
    return sorted(
        identity
        for identity, rules in policy.policy.identities.items()
        if rules.operations & needs and rules.mfa_public_key is None
    )


def server_names(certificate_pem: bytes) -> frozenset[str]:
    """The DNS names (lower-case) and IP addresses (canonical text) a server certificate's
    subjectAltName lists: the authorities officers may sign for. Empty when it has none.
    A wildcard name is left out: `names_host` never honours one, and evidence bundles
    record these names for the offline verifier, which reads only hosts (review 28b V1:
    a ``*.vault.example`` beside ``vault.example`` voided the whole record)."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return frozenset()
    names = {
        name.lower()
        for name in sans.value.get_values_for_type(x509.DNSName)
        if not name.startswith("*")
    }
    names |= {str(address) for address in sans.value.get_values_for_type(x509.IPAddress)}
    return frozenset(names)


def officer_ports(listening: int, configured: Collection[int] | None) -> frozenset[int]:
    """The ports an officer's signed ``@authority`` may name: `configured`
    (``server.officer_ports``) when set, else 443 (a load balancer or proxy on the
    standard port, which officers' ``Host`` then omits) and the node's own `listening`
    port (officers dialling it directly, as ``cofre keys`` does by default)."""
    return frozenset(configured) if configured else frozenset({443, listening})


def names_host(host: str, own: Collection[str]) -> bool:
    """Whether `host` is one of `own` (`server_names`): an IP address by value, a DNS name
    exactly. A wildcard name is not honoured: ``*.vault.example`` would name the staging
    vault too, which is what the check is for."""
    try:
        return str(ipaddress.ip_address(host)) in own
    except ValueError:
        return host in own


class OfficerMfa:
    """Checks officers' request signatures against the keys the policy registers, for
    requests signed for one of `authorities` (the vault's own names, `server_names`; read
    at each check, so a renewed certificate's names count once its file is in place)."""

    def __init__(
        self,
        engine: Engine,
        policy: Callable[[], PolicyEngine],
        *,
        authorities: Callable[[], Collection[str]],
        ports: Collection[int] | None = None,
        window_seconds: int = WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._policy = policy
        self._authorities = authorities
        # The ports officers reach the vault by (None: not compared; the server's
        # wiring always gives them, `officer_ports`).
        self._ports = None if ports is None else frozenset(ports)
        self._window = window_seconds
        self._clock = clock

    def registered_key(self, identity: str) -> bytes | None:
        """The PEM public key registered for `identity`, or ``None``."""
        entry = self._policy().policy.identities.get(identity)
        if entry is None or entry.mfa_public_key is None:
            return None
        return entry.mfa_public_key.encode()

    def verify(self, identity: str, action: Action, request: HttpRequest) -> str | None:
        """Check the request's second factor; return the key id it was signed with, or
        ``None`` when the policy does not grant `identity` the `action` at all (the
        operation then denies it). Raises an `OfficerMfaError` (see the module text) or
        `StorageUnavailable`."""
        entry = self._policy().policy.identities.get(identity)
        if entry is None or action not in entry.operations:
            return None
        public = self.registered_key(identity)
        if public is None:
            raise OfficerMfaNotRegistered(
                f"{identity} has no MFA key in the policy (mfa_public_key): register the "
                "public key of the officer's token before key ceremonies or evidence exports"
            )
        signed = parse_signature(request.headers)
        if signed.keyid != jwk_thumbprint(public):
            raise OfficerMfaInvalid(
                f"the signature's keyid is not the key registered for {identity}"
            )
        self._check_authority(request.headers.get("host", ""))
        now = self._clock()
        if abs(now - signed.created) > self._window:
            raise OfficerMfaInvalid(
                f"the signature was created {int(now - signed.created)} s from the vault's "
                f"clock; at most {self._window} s either way is accepted"
            )
        verify_request(signed, request, public)
        self._claim(signed.nonce, identity, signed.keyid, signed.created)
        return signed.keyid

    def _check_authority(self, host_header: str) -> None:
        """Raise `OfficerMfaInvalid` unless the signed authority is this vault's."""
        authority = normalize_authority(host_header)
        own = self._authorities()
        if not names_host(authority_host(authority), own):
            raise OfficerMfaInvalid(
                f"the request was signed for {authority}, which is not this vault "
                f"(its certificate names {', '.join(sorted(own)) or 'nothing'}): sign for "
                "the vault you send to"
            )
        port = authority_port(authority)
        if self._ports is not None and port not in self._ports:
            raise OfficerMfaInvalid(
                f"the request was signed for {authority}, port {port}, which is not a port "
                f"this vault is reached by ({', '.join(map(str, sorted(self._ports)))}): "
                "sign for the address you send to (the vault's COFRE_SERVER__OFFICER_PORTS)"
            )

    def _claim(self, nonce: str, identity: str, keyid: str, created: int) -> None:
        """Store the nonce once. Raises `OfficerMfaReplayed` when it is already there."""
        at = datetime.fromtimestamp(created, UTC)
        stale = datetime.fromtimestamp(self._clock(), UTC) - timedelta(seconds=2 * self._window)
        with database_errors_as(StorageUnavailable, "the MFA nonce store"):
            try:
                with self._engine.begin() as connection:
                    connection.execute(
                        delete(officer_request_nonces).where(
                            officer_request_nonces.c.created_at < stale
                        )
                    )
                    connection.execute(
                        insert(officer_request_nonces).values(
                            nonce=nonce, identity=identity, keyid=keyid, created_at=at
                        )
                    )
            except IntegrityError:
                raise OfficerMfaReplayed(
                    "this signed request was already accepted once (nonce reused): a replay"
                ) from None
