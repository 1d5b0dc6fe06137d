"""C2SP signed notes, transparency-log checkpoints and witness cosignatures.

IN PCI SCOPE (as evidence). Part of the standalone verifier (the standard library and
`cryptography` only), so the auditor's verifier, the witness and the vault share one
parser (`audit.note` re-exports it for the vault). The formats, exactly as specified:

- c2sp.org/signed-note: a text ending in a newline, a blank line, then signature lines
  ``— <key name> base64(4-byte key ID || signature)``; verifier keys (vkeys)
  ``<name>+<hex key ID>+base64(<signature type byte> || <public key>)``.
- c2sp.org/tlog-checkpoint: the note text is ``<origin>\\n<tree size>\\n<base64 root>\\n``
  and optional extension lines.
- c2sp.org/tlog-cosignature: type 0x04, a witness's Ed25519 signature over
  ``cosignature/v1\\ntime <POSIX seconds>\\n`` followed by the checkpoint text; the note
  signature is ``8-byte big-endian timestamp || 64-byte Ed25519 signature``.

Signature types understood: 0x01 Ed25519 (key ID = SHA-256(name || 0x0A || 0x01 ||
key)[:4]); 0x02 ECDSA over SHA-256 with a DER signature, "as implemented by
github.com/transparency-dev/witness" (key ID = SHA-256 of the key's SPKI DER, truncated:
the vault's audit key is ECDSA P-256 in the HSM, so its checkpoints use this type and any
transparency-dev witness can verify them); 0x04 cosignature/v1 (key ID = SHA-256(name ||
0x0A || 0x04 || key)[:4]). Every other type is unknown, hence ignored, as the spec says.

Verification raises `errors.NoteError` (also a `ValueError`) with a message that names
what is wrong; nothing returns a boolean a caller could forget to check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cofre_evidence_verifier.errors import NoteError

ALG_ED25519: Final = 0x01
ALG_ECDSA: Final = 0x02
ALG_COSIGNATURE_V1: Final = 0x04
# The spec asks verifiers to accept at least 16 signatures; golang.org/x/mod refuses
# more than 100. A note with more is refused whole (it bounds the work of one request).
MAX_SIGNATURES: Final = 100
MAX_NOTE_BYTES: Final = 1 << 16
_DASH: Final = "\u2014 "
_COSIGNATURE_HEADER: Final = "cosignature/v1\n"
_ECDSA_CURVES: Final = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not valid base64") from None


def valid_key_name(name: str) -> bool:
    """Key names are non-empty, with no Unicode space and no '+' (signed-note)."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


# ------------------------------------------------------------------------ checkpoints
@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head as a tlog-checkpoint note text."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        """Return the note text (ends with a newline)."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "\n".join([*lines, *self.extensions]) + "\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Return the checkpoint in the note text `text`. Raises `NoteError` when it is not
    one: fewer than three lines, empty origin, a size with a sign or leading zero, a
    root that is not base64 of 32 bytes, or an empty extension line."""
    if not text.endswith("\n"):
        raise NoteError("the checkpoint text does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("a checkpoint has at least three lines: origin, size, root hash")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise NoteError("the checkpoint's origin line is empty")
    if (
        not size_text.isascii()
        or not size_text.isdigit()
        or (size_text != "0" and size_text.startswith("0"))
    ):
        raise NoteError(f"the checkpoint's size line {size_text[:30]!r} is not a decimal size")
    size = int(size_text)
    if size >= 1 << 63:
        raise NoteError("the checkpoint's size is out of range")
    root = _b64decode(root_text, "the checkpoint's root hash")
    if len(root) != 32:
        raise NoteError("the checkpoint's root hash is not 32 bytes")
    if any(not line for line in extensions):
        raise NoteError("a checkpoint's extension lines must not be empty")
    return Checkpoint(origin, size, root, tuple(extensions))


# ---------------------------------------------------------------------- signed notes
@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: the key name, the 4-byte key ID and the signature bytes."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        """Return the signature line, ending with a newline."""
        blob = struct.pack(">I", self.key_id) + self.signature
        return f"{_DASH}{self.name} {base64.b64encode(blob).decode()}\n"


def _check_note_characters(data: str) -> None:
    if any(ord(c) < 0x20 and c != "\n" for c in data):
        raise NoteError("a signed note must not contain control characters other than newline")


def parse_signature_lines(block: str) -> list[NoteSignature]:
    """Return the signature lines in `block` (each ``— name base64``, each ending with a
    newline). Raises `NoteError` for a malformed line or too many of them."""
    if not block.endswith("\n"):
        raise NoteError("the signature lines do not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"more than {MAX_SIGNATURES} signatures on one note")
    out = []
    for number, line in enumerate(lines, 1):
        if not line.startswith(_DASH):
            raise NoteError(f"signature line {number} does not start with an em dash and space")
        name, space, encoded = line[len(_DASH) :].partition(" ")
        if not space or not valid_key_name(name):
            raise NoteError(f"signature line {number} has no valid key name")
        blob = _b64decode(encoded, f"signature line {number}")
        if len(blob) < 5:
            raise NoteError(f"signature line {number} is too short")
        out.append(NoteSignature(name, struct.unpack(">I", blob[:4])[0], blob[4:]))
    return out


def parse_note(data: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text (with its final newline) and its signatures.
    Raises `NoteError` when it is not a well-formed signed note."""
    if isinstance(data, bytes):
        if len(data) > MAX_NOTE_BYTES:
            raise NoteError("the note is too large")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("a signed note must be UTF-8") from None
    if len(data) > MAX_NOTE_BYTES:
        raise NoteError("the note is too large")
    _check_note_characters(data)
    # The text is separated from the signatures by the last blank line.
    split = data.rfind("\n\n")
    if split < 0:
        raise NoteError("the note has no blank line before its signatures")
    text, block = data[: split + 1], data[split + 2 :]
    return text, parse_signature_lines(block)


# ----------------------------------------------------------------------- vkeys / keys
def _key_id(name: str, algorithm: int, public: bytes) -> int:
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([algorithm]) + public).digest()
    return int(struct.unpack(">I", digest[:4])[0])


def _ecdsa_key_id(spki_der: bytes) -> int:
    return int(struct.unpack(">I", hashlib.sha256(spki_der).digest()[:4])[0])


def cosignature_message(timestamp: int, text: str) -> bytes:
    """Return the bytes a cosignature/v1 signs for checkpoint `text` at `timestamp`."""
    return f"{_COSIGNATURE_HEADER}time {timestamp}\n{text}".encode()


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A public key that verifies note signatures of one type, with its name and ID."""

    name: str
    key_id: int
    algorithm: int
    public: bytes  # 32 raw bytes (Ed25519 types) or the SPKI DER (ECDSA)

    @classmethod
    def parse(cls, vkey: str) -> VerifierKey:
        """Return the key encoded as `vkey`. Raises `NoteError` for a malformed vkey, an
        unsupported type, or a key ID that does not match the key."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3 or not valid_key_name(parts[0]) or len(parts[1]) != 8:
            raise NoteError("a verifier key is <name>+<8 hex digits>+<base64 key>")
        name, hex_id, encoded = parts
        try:
            key_id = int(hex_id, 16)
        except ValueError:
            raise NoteError("the verifier key's ID is not hexadecimal") from None
        blob = _b64decode(encoded, "the verifier key")
        if len(blob) < 2:
            raise NoteError("the verifier key is too short")
        algorithm, public = blob[0], blob[1:]
        key = cls(name, key_id, algorithm, public)
        key._load()  # refuse a key that cannot verify anything, now
        if key._expected_id() != key_id:
            raise NoteError(f"the verifier key {name}'s ID does not match its key")
        return key

    def _expected_id(self) -> int:
        if self.algorithm == ALG_ECDSA:
            return _ecdsa_key_id(self.public)
        return _key_id(self.name, self.algorithm, self.public)

    def _load(self) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey:
        if self.algorithm in (ALG_ED25519, ALG_COSIGNATURE_V1):
            if len(self.public) != 32:
                raise NoteError("an Ed25519 verifier key is 32 bytes")
            return ed25519.Ed25519PublicKey.from_public_bytes(self.public)
        if self.algorithm == ALG_ECDSA:
            try:
                loaded = serialization.load_der_public_key(self.public)
            except (ValueError, UnsupportedAlgorithm):
                raise NoteError("the ECDSA verifier key is not an SPKI DER public key") from None
            if not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(
                loaded.curve, _ECDSA_CURVES
            ):
                raise NoteError("an ECDSA verifier key must be on P-256, P-384 or P-521")
            # Session 37: keys are compared (and their ID taken) as these bytes, and a
            # compressed point is another spelling of the same key: a retired audit key
            # so spelt linked up as a fresh one (K1 -> K2 -> K1'). One spelling only.
            canonical = loaded.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            if canonical != self.public:
                raise NoteError(
                    f"the ECDSA verifier key {self.name} is not the key's own encoding (an "
                    "SPKI DER with the uncompressed point, as the vault and Go's x509 write it)"
                )
            return loaded
        raise NoteError(f"unsupported signature type 0x{self.algorithm:02x}")

    def encode(self) -> str:
        """Return the vkey text."""
        blob = base64.b64encode(bytes([self.algorithm]) + self.public).decode()
        return f"{self.name}+{self.key_id:08x}+{blob}"

    def matches(self, signature: NoteSignature) -> bool:
        return signature.name == self.name and signature.key_id == self.key_id

    def verify(self, text: str, signature: bytes) -> int | None:
        """Return the cosignature's timestamp (type 0x04) or None if `signature` is this
        key's valid signature of note text `text`. Raises `NoteError` otherwise."""
        public = self._load()
        message = text.encode()
        timestamp = None
        if self.algorithm == ALG_COSIGNATURE_V1:
            if len(signature) != 8 + 64:
                raise NoteError(f"cosignature by {self.name}: wrong length")
            timestamp = int(struct.unpack(">Q", signature[:8])[0])
            if timestamp >= 1 << 63:
                raise NoteError(f"cosignature by {self.name}: timestamp out of range")
            message, signature = cosignature_message(timestamp, text), signature[8:]
        try:
            if isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            else:
                public.verify(signature, message)
        except InvalidSignature:
            raise NoteError(f"the signature by {self.name} does not verify") from None
        return timestamp


def ecdsa_verifier_key(name: str, public_key_pem: bytes) -> VerifierKey:
    """Return the type-0x02 vkey of an ECDSA public key (PEM) under `name`."""
    public = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise NoteError("the key is not an ECDSA public key")
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return VerifierKey(name, _ecdsa_key_id(der), ALG_ECDSA, der)


@dataclass(frozen=True, slots=True)
class Verified:
    """A signature that verified: by which key, and its cosignature time if any."""

    key: VerifierKey
    timestamp: int | None
    signature: NoteSignature


def verify_note(
    text: str, signatures: Sequence[NoteSignature], keys: Sequence[VerifierKey]
) -> list[Verified]:
    """Return the signatures of `text` made by one of `keys`, verified; signatures by
    unknown keys are ignored. Raises `NoteError` when a known key's signature fails
    (the whole note is rejected, as signed-note says) or none is by a known key."""
    verified = []
    for signature in signatures:
        for key in keys:
            if key.matches(signature):
                timestamp = key.verify(text, signature.signature)
                verified.append(Verified(key, timestamp, signature))
    if not verified:
        raise NoteError("no signature on the note is by a known key")
    return verified


def require_quorum(
    text: str, signatures: Sequence[NoteSignature], witnesses: Sequence[VerifierKey], quorum: int
) -> list[Verified]:
    """Return the valid cosignatures of `text` by distinct pinned `witnesses` if there
    are at least `quorum`. Each public key counts once, whatever names it is pinned
    under. Raises `NoteError` naming each witness that did not count (no cosignature,
    one that does not verify: the checkpoint was altered after it was cosigned, or a
    key pinned twice) when there are fewer, and when no witness key is pinned at all."""
    if quorum < 1 or not witnesses:
        raise NoteError(
            "no witness key pinned: nothing but the operator's own key vouches for this log"
        )
    valid: list[Verified] = []
    missing = []
    # A cosignature does not sign its key's name: one key pinned under two names (or
    # twice) would verify a relabelled copy of its line and count twice (review 29).
    first: dict[bytes, int] = {}
    for position, key in enumerate(witnesses):
        if first.setdefault(key.public, position) != position:
            same = witnesses[first[key.public]].name
            missing.append(f"{key.name} is the same key as {same} (counted once)")
            continue
        mine = [s for s in signatures if key.matches(s)]
        if not mine:
            missing.append(f"{key.name} has no cosignature")
            continue
        # Every line under the key's name and ID, not only the first: a bogus line put
        # first (or another key's line whose 4-byte ID collides) hid a valid one (the
        # verifier review). A note has at most MAX_SIGNATURES lines.
        for line in mine:
            try:
                valid.append(Verified(key, key.verify(text, line.signature), line))
            except NoteError:
                continue
            break
        else:
            missing.append(f"{key.name}'s cosignature does not verify (altered checkpoint)")
    if len(valid) < quorum:
        raise NoteError(
            f"{len(valid)} of the {quorum} witness cosignatures required: " + "; ".join(missing)
        )
    return valid


def minority_quorum(witness_keys: Sequence[VerifierKey], quorum: int) -> str | None:
    """What is wrong with requiring `quorum` of the distinct `witness_keys`, if it is
    not more than half of them (review 30), else None.

    Two quorums of the pinned witnesses must share one, or each of two histories can
    meet one: the vault's operator decides which witnesses the publisher reaches, so
    they can keep some behind (or never submit to them), rewrite the log past the last
    head those cosigned, re-sign it with the HSM key and have them cosign the rewrite,
    which extends what they saw. The witnesses that saw the genuine log refuse it, but
    with 1 of 2 pinned the lagging one is enough. Each public key counts once, as in
    `require_quorum`."""
    distinct = len({key.public for key in witness_keys})
    if not witness_keys or 2 * quorum > distinct:
        return None  # none pinned: `require_quorum` names it
    return (
        f"a quorum of {quorum} of the {distinct} witnesses pinned is not more than half of "
        "them: two sets of witnesses that share none could each cosign another history "
        "of the log (a split view: the operator keeps some witnesses behind and has them "
        "cosign a rewrite); require a majority (--quorum "
        f"{distinct // 2 + 1}), or all of them (--quorum {distinct}), or pin only the "
        "witnesses you mean to require"
    )


def open_note(data: str | bytes, keys: Sequence[VerifierKey]) -> tuple[str, list[Verified]]:
    """Parse the signed note `data` and verify it with `keys` (see `verify_note`)."""
    text, signatures = parse_note(data)
    return text, verify_note(text, signatures, keys)


def add_checkpoint_body(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """Return a c2sp.org/tlog-witness add-checkpoint request body: ``old <size>``, one
    base64 proof hash a line, a blank line, then the signed checkpoint note."""
    lines = [f"old {old_size}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode()


class CosignerKey:
    """A witness's Ed25519 private key, which makes cosignature/v1 signatures.

    The key is read from a file in the signed-note private key form
    ``PRIVATE+KEY+<name>+<hex ID>+base64(<type> || 32-byte seed)`` (type 0x01 or 0x04,
    as transparency-dev's generate_keys writes it). Its repr never shows the seed.
    """

    __slots__ = ("_private", "name")

    def __init__(self, name: str, private: ed25519.Ed25519PrivateKey) -> None:
        if not valid_key_name(name):
            raise NoteError("a key name is non-empty, with no space and no '+'")
        self.name = name
        self._private = private

    def __repr__(self) -> str:
        return f"CosignerKey({self.name!r})"

    @classmethod
    def generate(cls, name: str) -> CosignerKey:
        return cls(name, ed25519.Ed25519PrivateKey.from_private_bytes(secrets.token_bytes(32)))

    @classmethod
    def parse(cls, skey: str) -> CosignerKey:
        """Return the key in `skey`. Raises `NoteError` (never echoing the key)."""
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or len(parts[3]) != 8:
            raise NoteError("a witness key is PRIVATE+KEY+<name>+<hex ID>+<base64 key>")
        blob = _b64decode(parts[4], "the witness key")
        if len(blob) != 33 or blob[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise NoteError("a witness key is an Ed25519 seed of type 0x01 or 0x04")
        key = cls(parts[2], ed25519.Ed25519PrivateKey.from_private_bytes(blob[1:]))
        if int(parts[3], 16) != _key_id(parts[2], blob[0], key._public_bytes()):
            raise NoteError("the witness key's ID does not match the key")
        return key

    def _public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def encode(self) -> str:
        """Return the private key text (type 0x04). Write it only to a 0600 file."""
        seed = self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        key_id = _key_id(self.name, ALG_COSIGNATURE_V1, self._public_bytes())
        blob = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{key_id:08x}+{blob}"

    def verifier_key(self) -> VerifierKey:
        """Return the cosignature/v1 (type 0x04) vkey an auditor pins."""
        public = self._public_bytes()
        return VerifierKey(
            self.name, _key_id(self.name, ALG_COSIGNATURE_V1, public), ALG_COSIGNATURE_V1, public
        )

    def note_verifier_key(self) -> VerifierKey:
        """Return the plain Ed25519 (type 0x01) vkey of the same key (interop tests)."""
        public = self._public_bytes()
        return VerifierKey(self.name, _key_id(self.name, ALG_ED25519, public), ALG_ED25519, public)

    def sign_note(self, text: str) -> NoteSignature:
        """Return a plain Ed25519 (type 0x01) signature of note `text`."""
        return NoteSignature(
            self.name, self.note_verifier_key().key_id, self._private.sign(text.encode())
        )

    def cosign(self, text: str, timestamp: int) -> NoteSignature:
        """Return the cosignature/v1 of checkpoint `text` at `timestamp` (POSIX seconds)."""
        if not 0 < timestamp < 1 << 63:
            raise NoteError("a cosignature's timestamp must be positive")
        signature = self._private.sign(cosignature_message(timestamp, text))
        return NoteSignature(
            self.name, self.verifier_key().key_id, struct.pack(">Q", timestamp) + signature
        )
