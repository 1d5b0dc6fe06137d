"""An officer's signed request, as the vault stores it with a key ceremony's proposal or
approval (the audit entry's ``document``), checked offline: the RFC 9421 subset the
vault accepts, re-implemented here because the verifier imports nothing of the vault.

The vault's side is ``vault/httpsig.py`` (parsing and verification) and
``vault/approval_proof.py`` (the stored form, `SignedAction.to_json`, and what a
proposal or an approval must have signed). Only what those accept is accepted here,
parsed as strictly:

    Content-Digest: sha-256=:<base64 SHA-256 of the body>:
    Signature-Input: cofre=("@method" "@authority" "@path" "@query" "content-digest");
        created=<unix>;nonce="<random>";keyid="<RFC 7638 thumbprint>";
        alg="ecdsa-p256-sha256";tag="cofre-officer-mfa"
    Signature: cofre=:<base64 of r||s, 64 bytes>:

The signature base is RFC 9421 section 2.5's: one line per covered component, then
``"@signature-params"`` with the parameters exactly as sent. ``@authority`` is the
``Host`` header normalised (host lower-case, port 443 omitted), so the vault a request
was signed for is part of what verifies; a test checks these functions against the
vault's on the same requests (tests/cofre_evidence_verifier/test_request_signature.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import uuid
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cofre_evidence_verifier.bundle import load_json
from cofre_evidence_verifier.errors import MalformedBundle, SignedRequestError

PROPOSALS: Final = "/v1/admin/keys/rotations"  # the vault API's route
ALGORITHM: Final = "ecdsa-p256-sha256"
TAG: Final = "cofre-officer-mfa"
COVERED: Final = ("@method", "@authority", "@path", "@query", "content-digest")
_P256_BYTES: Final = 32
_FIELDS: Final = frozenset(
    {
        "method",
        "authority",
        "path",
        "query",
        "content_digest",
        "signature_input",
        "signature",
        "body",
    }
)
# The vault's own expressions (vault/httpsig.py), unchanged: what it did not accept
# cannot be a proof here.
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
_AUTHORITY: Final = re.compile(
    r"(?P<host>[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


def approval_path(ceremony_id: str) -> str:
    """The path an approval of `ceremony_id` is signed over."""
    return f"{PROPOSALS}/{ceremony_id}/approve"


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A stored ceremony action: what its signature covers, the signature headers as
    sent and the body (which ``Content-Digest`` binds)."""

    method: str
    authority: str
    path: str
    query: str
    content_digest: str
    signature_input: str
    signature: str
    body: bytes

    @classmethod
    def from_json(cls, text: str) -> SignedRequest:
        """Read a stored request (`SignedAction.to_json`'s form). Raises
        `SignedRequestError` when it is not one."""
        # Parsed as strictly as the bundle's own JSON (session 37): with the standard
        # parser a field given twice kept its last value, so a decoy authority, body or
        # signature put first showed another request to a reader keeping the first.
        try:
            fields = load_json(text)
        except MalformedBundle as exc:
            raise SignedRequestError(f"not a stored signed request: {exc}") from None
        except ValueError:
            fields = None
        if not isinstance(fields, dict) or set(fields) != _FIELDS:
            raise SignedRequestError("not a stored signed request")
        if not all(isinstance(value, str) for value in fields.values()):
            raise SignedRequestError("not a stored signed request")
        try:
            body = base64.b64decode(fields.pop("body"), validate=True)
        except binascii.Error:
            raise SignedRequestError("not a stored signed request") from None
        return cls(body=body, **fields)

    def ceremony_id(self) -> str:
        """The id of the ceremony this proposal opened: the vault derives it from the
        proposal's signature (`vault.approval_proof.SignedAction.ceremony_id`)."""
        digest = hashlib.sha256(b"cofre key ceremony\x00" + self.signature.encode()).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))

    def proposal_digest(self) -> str | None:
        """The SHA-256 (hex) of the signature parameters its officer's token signed
        (created, nonce, key id), as the vault computes it
        (`vault._ceremony_guards.proposal_digest`) and writes on each start
        (``details.proposal``): what tells one signed proposal from another. Not the
        ceremony id, which derives from the ``Signature`` header as sent: its label lies
        outside the signature base and an ECDSA (r, s) verifies as (r, n - s) too, so
        one signed proposal has many ids (atk48a). None when the header does not parse."""
        parsed = _INPUT.match(self.signature_input)
        if parsed is None:
            return None
        return hashlib.sha256(b"cofre proposal\x00" + parsed["params"].encode()).hexdigest()

    def proposed_kind(self) -> object:
        """The ``kind`` its body proposes (None when the body says none)."""
        try:
            proposed = load_json(self.body)  # a kind twice is no kind (see `from_json`)
        except ValueError:  # MalformedBundle and UnicodeDecodeError are ValueErrors
            return None
        return proposed.get("kind") if isinstance(proposed, dict) else None


@dataclass(frozen=True, slots=True)
class Signed:
    """What a verified request's signature says: when it was made (its ``created``, a
    Unix second no database writer can move), the key id it names and the vault
    (``@authority``) it was signed for."""

    created: int
    keyid: str
    authority: str


def normalize_authority(authority: str) -> str:
    """`authority` as RFC 9421 2.2.3 covers it: host lower-case, port 443 omitted.
    Raises `SignedRequestError` when it is not a plain ``host[:port]``."""
    parsed = _AUTHORITY.fullmatch(authority.lower())
    if parsed is None:
        raise SignedRequestError("its Host is not a plain host[:port]")
    host = parsed["host"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise SignedRequestError("its Host is not a plain host[:port]") from None
    port = parsed["port"]
    return host if port in (None, "443") else f"{host}:{port}"


def _signature_base(request: SignedRequest, params: str, target: tuple[str, str, str]) -> bytes:
    method, path, query = target
    values = (
        method.upper(),
        normalize_authority(request.authority),
        path or "/",
        f"?{query}",
        request.content_digest,
    )
    lines = [f'"{name}": {value}' for name, value in zip(COVERED, values, strict=True)]
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines).encode()


def verify_signed_request(
    request: SignedRequest, public_pem: str, target: tuple[str, str, str] | None = None
) -> Signed:
    """Check `request`'s signature under `public_pem` (an officer's registered MFA key):
    Cofre's profile (components, algorithm, tag), ``Content-Digest`` the body's SHA-256,
    and the ECDSA P-256 signature over the RFC 9421 signature base. With `target`
    (method, path, query), the signature must cover those rather than the stored ones:
    what the action must have signed, whatever the stored text shows (the audit log
    masks a 12-digit run, such as a ceremony id's last group, in the stored path).
    Returns what it signed; raises `SignedRequestError` naming what does not hold."""
    parsed = _INPUT.match(request.signature_input)
    value = _SIGNATURE.match(request.signature)
    if parsed is None or value is None or parsed["label"] != value["label"]:
        raise SignedRequestError("its Signature-Input or Signature is malformed")
    components = tuple(c.strip('"') for c in parsed["components"].split(" ") if c)
    if components != COVERED or parsed["alg"] != ALGORITHM or parsed["tag"] != TAG:
        raise SignedRequestError("its signature is not Cofre's officer profile")
    try:
        raw = base64.b64decode(value["value"], validate=True)
    except binascii.Error:
        raise SignedRequestError("its Signature value is not base64") from None
    if len(raw) != 2 * _P256_BYTES:
        raise SignedRequestError("an ecdsa-p256-sha256 signature is 64 bytes (r||s)")
    digest = base64.b64encode(hashlib.sha256(request.body).digest()).decode()
    if _DIGEST.match(request.content_digest) is None or (
        request.content_digest != f"sha-256=:{digest}:"
    ):
        raise SignedRequestError("its Content-Digest is not the body's SHA-256")
    stored = (request.method, request.path, request.query)
    base = _signature_base(request, parsed["params"], stored if target is None else target)
    try:
        key = load_pem_public_key(public_pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SignedRequestError("the registered MFA key is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise SignedRequestError("the registered MFA key is not an EC P-256 key")
    r = int.from_bytes(raw[:_P256_BYTES], "big")
    s = int.from_bytes(raw[_P256_BYTES:], "big")
    try:
        key.verify(encode_dss_signature(r, s), base, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignedRequestError("its signature does not verify") from None
    return Signed(
        created=int(parsed["created"]),
        keyid=parsed["keyid"],
        authority=normalize_authority(request.authority),
    )
