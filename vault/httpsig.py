"""HTTP Message Signatures (RFC 9421) with ``ecdsa-p256-sha256`` over a request whose body
is bound by ``Content-Digest`` (RFC 9530): the officers' second factor.

IN PCI SCOPE (authentication). Pure functions, no keys: the signer passes a function
that signs bytes (the officer's PKCS#11 token, `cofre_cli`), the verifier a public key
(`vault.officer_mfa`). Only the subset Cofre sends is accepted, parsed strictly:

    Content-Digest: sha-256=:<base64 SHA-256 of the body>:
    Signature-Input: cofre=("@method" "@authority" "@path" "@query" "content-digest");
        created=<unix>;nonce="<random>";keyid="<RFC 7638 thumbprint>";
        alg="ecdsa-p256-sha256";tag="cofre-officer-mfa"
    Signature: cofre=:<base64 of r||s, 64 bytes>:

``@authority`` (section 2.2.3) binds the request to the vault it was meant for: the
``Host`` header as sent, normalised (host lower-case, the default port 443 omitted). A
request signed for a staging vault does not verify with another ``Host``, and the vault
refuses an authority that is not its own (`vault.officer_mfa`).

The signature base is built as RFC 9421 section 2.5 says: one line per covered component,
``"name": value``, then ``"@signature-params": `` and the parameters exactly as the
``Signature-Input`` member carries them. Tested against RFC 9421 Appendix B.2.4 and RFC
9530's examples (tests/vectors/).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cofre.redaction import name_holds_pan_like
from vault.errors import OfficerMfaInvalid, OfficerMfaRequired

LABEL: Final = "cofre"
ALGORITHM: Final = "ecdsa-p256-sha256"
TAG: Final = "cofre-officer-mfa"
COVERED: Final = ("@method", "@authority", "@path", "@query", "content-digest")
_P256_BYTES: Final = 32

# Only what `sign_request` writes: a single member, these components in this order, then
# created, nonce, keyid, alg and tag. Anything else is refused, not interpreted.
_INPUT: Final = re.compile(
    r'^(?P<label>[a-z][a-z0-9_-]{0,31})=(?P<params>\((?P<components>(?:"[a-z@-]{1,40}"'
    r'(?: "[a-z@-]{1,40}")*)?)\);created=(?P<created>[0-9]{1,12});nonce="(?P<nonce>[A-Za-z0-9_-]'
    r'{16,64})";keyid="(?P<keyid>[A-Za-z0-9_-]{1,64})";alg="(?P<alg>[a-z0-9-]{1,32})";'
    r'tag="(?P<tag>[a-z0-9-]{1,32})")$'
)
_SIGNATURE: Final = re.compile(
    r"^(?P<label>[a-z][a-z0-9_-]{0,31})=:(?P<value>[A-Za-z0-9+/=]{1,200}):$"
)
_DIGEST: Final = re.compile(r"^sha-256=:(?P<value>[A-Za-z0-9+/=]{44}):$")
# An authority (RFC 3986 3.2.2, 3.2.3) as Cofre's vaults are named: a DNS name or IPv4
# address, or an IPv6 address in brackets, then an optional port. No userinfo, no
# percent-encoding, no IPvFuture: a Host header holding one is refused, not interpreted.
_AUTHORITY: Final = re.compile(  # fullmatch: "$" would let a trailing newline through
    r"(?P<host>[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_DEFAULT_PORT: Final = "443"  # https: Cofre's listeners speak nothing else


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """What a signature covers, as the server received it: `query` without its ``?``,
    header names lower-case (``host`` among them: the ``@authority``)."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class RequestSignature:
    """A parsed ``Signature-Input`` / ``Signature`` pair."""

    components: tuple[str, ...]
    params: str  # the member's value exactly as sent: part of the signature base
    created: int
    nonce: str
    keyid: str
    alg: str
    tag: str
    signature: bytes  # r||s


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` field value of `body` (RFC 9530, SHA-256)."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def signature_base(components: Sequence[tuple[str, str]], params: str) -> bytes:
    """The RFC 9421 signature base: each ``(component id, value)`` on its own line, then
    the signature parameters (`params`, serialized as sent)."""
    lines = [f'"{name}": {value}' for name, value in components]
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines).encode()


def jwk_thumbprint(public_pem: bytes) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of a P-256 public key: the
    ``keyid`` an officer's signatures carry. Raises `ValueError` for another key type."""
    key = load_pem_public_key(public_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("the MFA key must be an EC P-256 public key")
    numbers = key.public_numbers()

    def b64url(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(_P256_BYTES, "big")).rstrip(b"=").decode()

    members = {"crv": "P-256", "kty": "EC", "x": b64url(numbers.x), "y": b64url(numbers.y)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def der_to_raw(der: bytes) -> bytes:
    """A DER ECDSA signature (what PKCS#11 wrappers and `cryptography` give) as r||s."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")


def normalize_authority(authority: str) -> str:
    """`authority` (a ``Host`` header value) as RFC 9421 2.2.3 covers it: the host
    lower-case, the default port (443) omitted. Raises `OfficerMfaInvalid` when it is not
    a plain ``host[:port]``."""
    parsed = _AUTHORITY.fullmatch(authority.lower())
    if parsed is None or not _ip_literal(parsed["host"]):
        raise OfficerMfaInvalid("the Host header is missing or not a plain host[:port]")
    port = parsed["port"]
    return parsed["host"] if port in (None, _DEFAULT_PORT) else f"{parsed['host']}:{port}"


def _ip_literal(host: str) -> bool:
    """Whether `host` is not in brackets, or holds an IPv6 address there (RFC 3986 3.2.2:
    ``[10.0.0.7]`` or ``[:::7]`` is no IP-literal, and is refused, not read as an IP)."""
    if not host.startswith("["):
        return True
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        return False
    return True


def authority_host(authority: str) -> str:
    """The host of a normalised `authority`, without its port or an IPv6 address's
    brackets."""
    if authority.startswith("["):
        return authority[1 : authority.index("]")]
    return authority.partition(":")[0]


def authority_port(authority: str) -> int:
    """The port of a normalised `authority`: 443 when it names none."""
    _, _, port = authority.rpartition("]")[2].partition(":")
    return int(port or _DEFAULT_PORT)


def _components(
    method: str, authority: str, path: str, query: str, digest: str
) -> list[tuple[str, str]]:
    # RFC 9421 2.2.3, 2.2.6 and 2.2.7: the authority normalised, an empty path is "/",
    # the query keeps its "?", an absent query is "?" alone.
    values = (method.upper(), normalize_authority(authority), path or "/", f"?{query}", digest)
    return list(zip(COVERED, values, strict=True))


def sign_request(
    method: str,
    path: str,
    query: str,
    body: bytes,
    *,
    authority: str,
    keyid: str,
    nonce: str,
    created: int,
    sign: Callable[[bytes], bytes],
) -> dict[str, str]:
    """The headers that sign a request: ``Content-Digest``, ``Signature-Input`` and
    ``Signature``. `sign` returns a raw r||s ECDSA P-256 signature over SHA-256 of its
    argument; `query` is the query string without its ``?``; `authority` is the ``Host``
    header the request is sent with (the vault it is meant for)."""
    digest = content_digest(body)
    names = " ".join(f'"{c}"' for c in COVERED)
    params = (
        f'({names});created={created};nonce="{nonce}";keyid="{keyid}";alg="{ALGORITHM}";tag="{TAG}"'
    )
    base = signature_base(_components(method, authority, path, query, digest), params)
    signature = base64.b64encode(sign(base)).decode()
    return {
        "content-digest": digest,
        "signature-input": f"{LABEL}={params}",
        "signature": f"{LABEL}=:{signature}:",
    }


def parse_signature(headers: Mapping[str, str]) -> RequestSignature:
    """Parse the request's signature headers (names lower-case). Raises
    `OfficerMfaRequired` when they are absent, `OfficerMfaInvalid` when malformed or not
    Cofre's profile (algorithm, tag, covered components)."""
    raw_input, raw_signature = headers.get("signature-input"), headers.get("signature")
    if raw_input is None and raw_signature is None:
        raise OfficerMfaRequired(
            "this action needs a signature by your own token key (Signature-Input, "
            "Signature): use `cofre keys` / `cofre evidence export` with your token"
        )
    parsed = _INPUT.match(raw_input or "")
    value = _SIGNATURE.match(raw_signature or "")
    if parsed is None or value is None or parsed["label"] != value["label"]:
        raise OfficerMfaInvalid("the Signature-Input or Signature header is malformed")
    components = tuple(c.strip('"') for c in parsed["components"].split(" ") if c)
    if components != COVERED:
        raise OfficerMfaInvalid(f"the signature must cover {', '.join(COVERED)}, in order")
    if parsed["alg"] != ALGORITHM or parsed["tag"] != TAG:
        raise OfficerMfaInvalid(f"the signature must use alg {ALGORITHM} and tag {TAG}")
    if name_holds_pan_like(parsed["nonce"]):
        # The nonce is kept in clear (the replay table, a ceremony's stored proof and its
        # audit document): sixteen digits were a card there (session 36 review). A
        # random nonce never looks like one.
        raise OfficerMfaInvalid("the signature's nonce must not look like a card number")
    try:
        signature = base64.b64decode(value["value"], validate=True)
    except ValueError:
        raise OfficerMfaInvalid("the Signature value is not base64") from None
    if len(signature) != 2 * _P256_BYTES:
        raise OfficerMfaInvalid("an ecdsa-p256-sha256 signature is 64 bytes (r||s)")
    return RequestSignature(
        components=components,
        params=parsed["params"],
        created=int(parsed["created"]),
        nonce=parsed["nonce"],
        keyid=parsed["keyid"],
        alg=parsed["alg"],
        tag=parsed["tag"],
        signature=signature,
    )


def verify_ecdsa_p256(public_pem: bytes, base: bytes, raw_signature: bytes) -> None:
    """Check an ``ecdsa-p256-sha256`` signature (r||s) over `base`. Raises
    `OfficerMfaInvalid` when it does not verify."""
    key = load_pem_public_key(public_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise OfficerMfaInvalid("the registered MFA key is not an EC key")
    r = int.from_bytes(raw_signature[:_P256_BYTES], "big")
    s = int.from_bytes(raw_signature[_P256_BYTES:], "big")
    try:
        key.verify(encode_dss_signature(r, s), base, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise OfficerMfaInvalid(
            "the signature does not verify: another request, body or key"
        ) from None


def verify_request(signed: RequestSignature, request: HttpRequest, public_pem: bytes) -> None:
    """Check `signed` over `request`: its ``Content-Digest`` header is the body's and the
    signature verifies under `public_pem` (with the ``Host`` header as ``@authority``;
    whether that authority is the vault's own is `vault.officer_mfa`'s check). Raises
    `OfficerMfaInvalid`."""
    sent = request.headers.get("content-digest", "")
    if _DIGEST.match(sent) is None or sent != content_digest(request.body):
        raise OfficerMfaInvalid("Content-Digest is missing or is not the body's SHA-256")
    authority = request.headers.get("host", "")
    components = _components(request.method, authority, request.path, request.query, sent)
    verify_ecdsa_p256(public_pem, signature_base(components, signed.params), signed.signature)
