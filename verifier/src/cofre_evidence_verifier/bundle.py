"""Reading an evidence bundle: the format's names, the archive, its JSON and signatures.

A bundle is a gzip-compressed tar (`cofre-evidence/1`): the files its signed
`manifest.json` lists with their sizes and SHA-256, plus the manifest and its signature
`manifest.sig` (ECDSA P-256 with SHA-256, or Ed25519, by the vault's audit key).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cofre_evidence_verifier import _ustar
from cofre_evidence_verifier.errors import MalformedBundle, UnsafeBundle

if TYPE_CHECKING:
    from cofre_evidence_verifier.report import Report

BUNDLE_FORMAT: Final = "cofre-evidence/1"
MANIFEST: Final = "manifest.json"
SIGNATURE: Final = "manifest.sig"
# Bounds on what a bundle may make the verifier hold in memory (it keeps every file):
# one member, all of them decompressed (the tar stream: members, headers, padding), and
# the number of members. A real bundle's size is its entries file (about 350 bytes an
# entry; the inclusion proofs are sampled above 5,000 entries), then its heads (340
# bytes each, one per 10 s or per 1,000 entries: under 100 MB for a 31-day period of
# 1.5 million entries): a bundle at the per-member cap (about 1.5 million entries)
# stays well under the total. The exporter writes 21 members at most.
MAX_FILE: Final = 512 * 1024 * 1024
MAX_TOTAL: Final = 1024 * 1024 * 1024
# Lines read of one JSON-lines file: above the entries a member of MAX_FILE holds
# (about 350 bytes each), far below what a file of tiny lines would parse to.
MAX_LINES: Final = 2_000_000
MAX_MEMBERS: Final = 1000
# A member's name: relative, ASCII letters, digits, '.', '_' and '-' between single
# slashes, no '.' or '..' component, as the exporter writes them. Any other spelling
# (`./x`, `a//x`, `a/./x`, `a\\x`) names, on the auditor's disk, a file another
# member may also name, and `tar -xzf` keeps the later one: the checks would read one
# copy and the auditor the other. No component ends with '.' either (review 35): Windows
# drops a trailing dot, so `entries.jsonl.` is `entries.jsonl` to its file APIs (and
# '.' and '..' end with one).
_MEMBER_NAME: Final = re.compile(r"[A-Za-z0-9_.-]*[A-Za-z0-9_-](/[A-Za-z0-9_.-]*[A-Za-z0-9_-])*")
# The audit actions that record the policy put in force (with its SHA-256 and text).
POLICY_ACTIONS: Final = ("policy.load", "policy.reload")
# The names the vault took as its own for officers' signed @authority (check 6c).
OFFICER_AUTHORITIES: Final = "keys/officer_authorities.json"

# Deeper than any file of a bundle (an audit entry's details nest a few levels), far
# below where the standard parser recurses too deep.
MAX_JSON_DEPTH: Final = 64
# Arrays and objects: each costs the parser 56 to 200 bytes, from two bytes of JSON
# (``[{},{},…]`` held 25 times its size: a manifest at the member cap, 13 GB). One
# document may hold `MAX_JSON_CONTAINERS` (the largest a vault writes, its custody
# file, holds a few per custodian), the lines of one JSON-lines file
# `MAX_LINES_BRACKETS` brackets in all, strings included (an audit entry's line holds
# about three: at the member cap, about 5 million).
MAX_JSON_CONTAINERS: Final = 1_000_000
MAX_LINES_BRACKETS: Final = 4 * MAX_LINES
_JSON_SYNTAX: Final = re.compile(r'[\[\]{}"\\]')

Files = dict[str, bytes]
Heads = dict[int, dict[str, Any]]


def _checked(seen: set[str]) -> Callable[[str, int], None]:
    """The check of each member's name and size before its data is read (`_ustar`):
    spelt as the exporter spells it (`_MEMBER_NAME`), not over `MAX_FILE`, not twice (in
    any case)."""

    def check(name: str, size: int) -> None:
        if _MEMBER_NAME.fullmatch(name) is None:
            # Quoted as it is: the reports escape what a terminal would act on.
            raise UnsafeBundle(f"unsafe member in bundle: '{name}'")
        if size > MAX_FILE:
            raise UnsafeBundle(f"member too large: {name!r}")
        if name.casefold() in seen:
            # Which copy a reader keeps is up to the reader: refused, not guessed. A
            # case-insensitive disk (macOS, Windows) writes both names to one file.
            raise UnsafeBundle(f"member twice in bundle: {name!r}")
        seen.add(name.casefold())

    return check


def read_bundle(path: Path) -> Files:
    """Return the bundle's files by name.

    The archive is read as the exporter writes it (`_ustar`: plain POSIX ustar members
    in one gzip stream, zero blocks to the end; review 35) and walked twice: first
    keeping nothing, so that anything else (a link, a directory, an extended header, a
    header other tools read otherwise, a mode tar would restore, data after the end)
    and more than `MAX_MEMBERS` members or `MAX_TOTAL` bytes decompressed is refused
    (`UnsafeBundle`) before anything in it is kept, as are a name not spelt as the
    exporter spells it (`_MEMBER_NAME`: no absolute path, no '..'), a member twice (in
    any case) and one over `MAX_FILE`. Then its files are read. Raises `OSError` for a
    file that cannot be read.
    """
    for keep in (False, True):
        walk = _ustar.members(
            path, limit=MAX_TOTAL, max_members=MAX_MEMBERS, keep=keep, check=_checked(set())
        )
        files = dict(walk)
    return files


def signature_verifies(public_key_pem: bytes, signature: bytes, message: bytes) -> bool:
    """Whether `signature` over `message` verifies with the PEM public key (ECDSA with
    SHA-256 or Ed25519; any other key type does not verify)."""
    public = serialization.load_pem_public_key(public_key_pem)
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, message)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _refuse_constant(name: str) -> Any:
    raise MalformedBundle(f"{name} is not a number a bundle holds")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: as infinite as Infinity
        raise MalformedBundle(f"{text[:30]} is not a finite number")
    return value


def _too_deep(text: str) -> str | None:
    """What makes `text` too costly to parse, if anything: arrays and objects nested
    deeper than `MAX_JSON_DEPTH`, or more than `MAX_JSON_CONTAINERS` of them, counted
    in one pass without recursion (brackets inside strings do not count). Only the
    characters that matter are visited, so a long line costs little."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return None
    depth, containers, in_string, escaped = 0, 0, False, -1
    for match in _JSON_SYNTAX.finditer(text):
        at, char = match.start(), match.group()
        if at == escaped:
            continue
        if in_string:
            if char == "\\":
                escaped = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            containers += 1
            if depth > MAX_JSON_DEPTH:
                return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
            if containers > MAX_JSON_CONTAINERS:
                return f"JSON of more than {MAX_JSON_CONTAINERS} arrays and objects"
        elif char in "]}":
            depth -= 1
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members as a dict. Raises `MalformedBundle` for a key given twice:
    the standard parser keeps the last value, another reader (a QSA's tool, the vault's
    own code in another language) may keep the first, so the two would check different
    content under one signature (review 33)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        twice = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise MalformedBundle(
            f"a JSON object has the key {twice[:40]!r} twice (readers differ on which value counts)"
        )
    return value


def load_json(data: str | bytes) -> Any:
    """The JSON value in `data` (UTF-8). Raises `ValueError` for malformed JSON, and
    `MalformedBundle` (a `ValueError`) for what the standard parser would accept but a
    bundle never holds and must not be followed: an object with a key twice, NaN,
    Infinity or a number too large for a float (int() of it raises OverflowError) and
    nesting deeper than `MAX_JSON_DEPTH` (the parser recurses, and raises
    RecursionError, at about a thousand)."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if (problem := _too_deep(text)) is not None:
        raise MalformedBundle(problem)
    return json.loads(
        text,
        parse_constant=_refuse_constant,
        parse_float=_finite,
        object_pairs_hook=_unique_keys,
    )


def json_object(data: str | bytes, what: str) -> dict[str, Any]:
    """The JSON object in `data`. Raises `MalformedBundle` (a `ValueError`) naming
    `what` when it is not one."""
    try:
        value = load_json(data)
    except MalformedBundle as exc:  # JSON, but JSON a bundle never holds: say which
        raise MalformedBundle(f"{what} is not a JSON object a bundle holds: {exc}") from None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise MalformedBundle(f"{what} is not a JSON object")
    return value


def entry_object(payload: object) -> dict[str, Any] | None:
    """An audit entry's payload as its JSON object, or None when it is not one (a
    check reading entries for one kind of record skips it: the entries check reports
    it)."""
    if not isinstance(payload, str):
        return None
    try:
        return json_object(payload, "an entry")
    except ValueError:
        return None


def integer(value: object, what: str) -> int:
    """`value` if it is an integer (not a bool, a float or a string). Raises
    `MalformedBundle` (a `ValueError`) naming `what` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedBundle(f"{what} is not an integer")
    return value


def string(value: object, what: str) -> str:
    """`value` if it is a string. Raises `MalformedBundle` naming `what` otherwise."""
    if not isinstance(value, str):
        raise MalformedBundle(f"{what} is not a string")
    return value


def base64_bytes(value: object, what: str) -> bytes:
    """The bytes of the base64 string `value`. Raises `MalformedBundle` naming `what`
    when it is not one."""
    try:
        return base64.b64decode(string(value, what), validate=True)
    except binascii.Error:
        raise MalformedBundle(f"{what} is not base64") from None


def hash_list(value: object, what: str) -> list[bytes]:
    """The hashes of a proof, a list of base64 strings. Raises `MalformedBundle`."""
    if not isinstance(value, list):
        raise MalformedBundle(f"{what} is not a list of base64 hashes")
    return [base64_bytes(item, what) for item in value]


def member_lines(data: bytes) -> Iterator[bytes]:
    """The lines of a JSON-lines file, split at newlines only (a CR before one is JSON
    whitespace; U+2028 is a character of a JSON string, not a line break), one at a
    time: what a member holds past the lines read is never split up (review 31 bounded
    the lines parsed, but `splitlines` first made every line a string: a member at the
    cap of two-byte lines was 180 million of them)."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        yield data[start:end]
        start = end + 1


def json_lines(
    data: bytes, name: str = "", report: Report | None = None, *, most: int = MAX_LINES
) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a malformed line (see `load_json`) is
    reported (when a `report` is given) and skipped. A file of more than `most` lines is
    reported and read no further (review 31: a 3 MB file of ``{}`` lines held 158 MB
    once parsed)."""
    out: list[dict[str, Any]] = []
    brackets = 0
    for number, line in enumerate(member_lines(data), 1):
        if number > most:
            if report is not None:
                report.fail(f"{name}: more than the {most} lines it can hold")
            break
        brackets += line.count(b"[") + line.count(b"{")
        if brackets > MAX_LINES_BRACKETS:
            if report is not None:
                report.fail(
                    f"{name}: more than the {MAX_LINES_BRACKETS} arrays and objects it can "
                    f"hold (line {number})"
                )
            break
        if not line.strip():
            continue
        reason = ""
        try:
            value = load_json(line)  # UTF-8 or a ValueError: named below
        except MalformedBundle as exc:  # a key twice, NaN, too deep: named
            value, reason = None, f" ({exc})"
        except ValueError:
            value = None
        if isinstance(value, dict):
            out.append(value)
        elif report is not None:
            report.fail(f"{name}: line {number} is not a JSON object{reason}")
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The manifest's fields the checks read, with the type of each of their members.
_MANIFEST_FIELDS: Final[dict[str, dict[str, type]]] = {
    "period": {"from": str, "to": str},
    "entries": {"first_index": int, "end_index": int, "count": int},
    "covering_head": {"tree_size": int, "root_hash": str},
    "previous_head": {"tree_size": int, "root_hash": str},
}


def manifest_problem(manifest: object) -> str | None:
    """What makes `manifest` (parsed JSON) no manifest of this format, if anything: its
    format, and the type of every field the checks read (a manifest of another shape
    is refused whole, signed or not, before any check relies on it)."""
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        return f"manifest.json: unknown format {repr(found)[:80]}"
    files = manifest.get("files")
    if not isinstance(files, list) or not all(
        isinstance(f, dict)
        and isinstance(f.get("path"), str)
        and _is_int(f.get("size"))
        and isinstance(f.get("sha256"), str)
        for f in files
    ):
        return "manifest.json: files is not a list of {path, size, sha256}"
    # One listing a path: the verifier read the last, `sha256sum -c` checks every one
    # (the verifier review: two tools must not disagree on what the key signed).
    seen: set[str] = set()
    for listed in files:
        if listed["path"] in seen:
            return f"manifest.json: {listed['path'][:200]} is listed more than once"
        seen.add(listed["path"])
    for name, members in _MANIFEST_FIELDS.items():
        value = manifest.get(name)
        if name == "previous_head" and value is None:
            continue
        if not isinstance(value, dict) or not all(
            _is_int(value.get(key)) if kind is int else isinstance(value.get(key), kind)
            for key, kind in members.items()
        ):
            shape = ", ".join(f"{key}: {kind.__name__}" for key, kind in members.items())
            return f"manifest.json: {name} is not an object of {{{shape}}}"
    # The reports show the count: it must be the range's, which the entries check binds
    # (review 33: a count nothing checked was shown as the bundle's).
    entries = manifest["entries"]
    if entries["count"] != entries["end_index"] - entries["first_index"]:
        return (
            f"manifest.json: entries.count {entries['count']} is not the number of entries "
            f"from first_index to end_index ({entries['end_index'] - entries['first_index']})"
        )
    return None


def checked_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the reports show of a manifest (of the shape `manifest_problem` accepts):
    the exporter's signed statements of itself (version, time, identity), and of the
    period, entries and covering head only the members the checks bind, so that no
    value the bundle adds beside them is shown as if it were verified."""
    summary = {key: manifest.get(key) for key in ("vault_version", "generated_at", "generator")}
    for name in ("period", "entries", "covering_head"):
        summary[name] = {key: manifest[name][key] for key in _MANIFEST_FIELDS[name]}
    return summary
