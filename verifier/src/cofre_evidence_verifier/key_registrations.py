"""Check 6d: every key the period brought into use came from a key ceremony.

The vault's key registry is its `key.register` audit entries: the newest registered
version of a kind is the one in use (the vault's `vault.key_registry`). Whoever holds
the HSM PIN and the database can make the next version on the token and write its
`key.register` entry: the vault then uses it, with no proposal, approval or start, and
check 6c, which counts the officers of each rotation *started* in the period, had
nothing to count (audit 36: such a bundle was VERIFIED, its report silent).

So each registration of the period of a key that only a ceremony makes (a KEK,
fingerprint or audit key of version 2 or later: version 1 of each is made by
`cofre hsm init`) must say it was made by a key ceremony (``details.how``, "created by
key ceremony <id>", as the vault writes it in the start's own transaction), and that
ceremony's `key.rotation.start` must be among the period's entries, of the key's kind,
to that version, and after the registration: then check 6c proves its officers. One
start accounts for one registration. The one other way is the vault's first start on a
token that already holds the keys (its registry empty, it adopts them as found): such an
adoption counts only in a bundle that holds the log from its first entry, with nothing
before it but what a first start writes (its policy load, CRL loads, key creations and
the same adoption), so never after an operation or another registration. Anything else
is named and fails the bundle, a later adoption included (a vault upgraded to the key
registry on a token that held later versions: ask the officers to show the token's
keys, `cofre hsm status --json`, and record it; that period cannot be VERIFIED on the
log alone).

Version 1 of each kind is made once, at the log's first start (`cofre hsm init`, or
the first start's adoption): a version-1 registration counts only there, in the same
first-start prefix as an adoption. Any later one, of a label already registered or of a
kind first registered after that start, is a key put into use with no ceremony (session
37: the operator destroyed `cofre-fp-v1`, made it again with the PIN and registered it;
the label's last record wins, so the vault used the new key, and the bundle VERIFIED).
The kinds are fixed by the software version, and a lost version-1 key is restored from
the HSM's backup, never made again (docs/key-ceremony.md).

A registration `cofre audit retire` carried forward (``details.carried_forward_from``)
is neither: it counts only as an exact copy of an earlier registration of its label
that the bundle proves in the log (`cofre_evidence_verifier.carried`).
"""

from __future__ import annotations

import base64
import binascii
import re
from bisect import bisect_right
from typing import Any, Final

from cofre_evidence_verifier.bundle import Files, Heads, load_json
from cofre_evidence_verifier.carried import FROM, Originals, carry_problem, proven_originals
from cofre_evidence_verifier.dual_control_log import (
    PROPOSE,
    START,
    entry_details,
    proven_entries,
    succeeded,
)
from cofre_evidence_verifier.report import Report

REGISTER: Final = "key.register"
# The labels of the token keys a ceremony makes, as the vault parses them
# (`hsm.keys._LABEL` with `re.match`, whose `$` also takes a label ending in a newline:
# whatever the vault takes for a version of a kind is checked here too).
_LABEL: Final = re.compile(r"^cofre-(kek|fp|audit)-v([1-9][0-9]{0,5})$")
_KIND: Final = {"kek": "kek", "fp": "fingerprint", "audit": "audit"}
_BY_CEREMONY: Final = "created by key ceremony "
# A ``register`` ceremony's registration (session 39): no key made, the officers' signed
# record that a label is the key the token holds (the vault's `vault._signed_registration`).
_BY_REGISTER: Final = "registered by key ceremony "
# What the vault's `KeyRegistry.adopt_if_empty` writes: the token's keys as found, once,
# when the registry is empty (a vault's first start).
_ADOPTED: Final = "adopted at first start"
# How many registrations the report line names (a hostile bundle may hold a million).
MAX_LISTED: Final = 20


def _governed(entry: dict[str, Any]) -> tuple[str, str, int] | None:
    """(label, rotation kind, version) of a successful registration of a KEK,
    fingerprint or audit key, of any version; None for any other entry."""
    if not succeeded(entry, REGISTER):
        return None
    details = entry_details(entry)
    label = details.get("label", entry.get("key_id"))
    match = _LABEL.match(label) if isinstance(label, str) else None
    if match is None:
        return None
    return str(label), _KIND[match.group(1)], int(match.group(2))


# What a vault's first start writes around its adoption of the token's keys: its
# process's policy load, the client CRLs it puts in force, the keys it creates.
_FIRST_START: Final = frozenset({"policy.load", "crl.load", "key.create"})


def _at_first_start(entry: dict[str, Any], adopting: bool | None) -> bool:
    """Whether `entry` may be part of a vault's first start: what the start writes
    (`_FIRST_START`), and registrations of one way only (`adopting`: None before the
    first): `cofre hsm init`'s (or `cofre dev`'s) of version 1 of each kind, or the
    first start's adoption of the token's keys, which the vault writes only into an
    empty registry."""
    if entry.get("action") != REGISTER:
        return entry.get("action") in _FIRST_START
    adopted = entry_details(entry).get("how") == _ADOPTED
    found = _governed(entry)
    if adopting is not None and adopted != adopting:
        return False
    return adopted or (found is not None and found[2] == 1)


def _starts(pool: dict[int, dict[str, Any]], period: set[int]) -> dict[str | None, list[int]]:
    """The period's successful starts by ceremony id, and all of them under None,
    ascending. Made once: a scan of the period per registration made a hostile bundle's
    registrations times its entries (as review 35 found of check 6c)."""
    out: dict[str | None, list[int]] = {None: []}
    for index in sorted(period):
        ceremony = pool[index].get("key_id")
        if succeeded(pool[index], START) and isinstance(ceremony, str):
            out[None].append(index)
            out.setdefault(ceremony, []).append(index)
    return out


def _shown_as(shown: str, ceremony: str) -> bool:
    """Whether `shown` is the id `ceremony` as the audit log's PAN mask writes it in a
    detail: same length, differing only where `shown` has an asterisk (an id whose last
    group is twelve decimal digits is shown ``…-12******9012``; the start's `key_id`,
    an identifier, is kept whole)."""
    return len(shown) == len(ceremony) and all(
        a in {b, "*"} for a, b in zip(shown, ceremony, strict=True)
    )


def _next_start(
    pool: dict[int, dict[str, Any]], starts: dict[str | None, list[int]], index: int, shown: str
) -> int | None:
    """The first start of the ceremony `shown` (as the registration names it) after leaf
    `index`; None when there is none. A masked id is matched against the next
    `MAX_LISTED` starts only: the vault writes the start in the registration's own
    transaction, so it comes next, and a hostile bundle's many starts are not scanned
    once per registration."""
    if "*" not in shown:
        candidates = starts.get(shown, [])
        at = bisect_right(candidates, index)
        return candidates[at] if at < len(candidates) else None
    every = starts[None]
    at = bisect_right(every, index)
    for start in every[at : at + MAX_LISTED]:
        if _shown_as(shown, str(pool[start].get("key_id"))):
            return start
    return None


def _unsigned_problem(
    pool: dict[int, dict[str, Any]],
    proposed: dict[object, list[int]],
    index: int,
    start: int,
    kind: str,
) -> str | None:
    """Why the registration at `index` of a version 2 or later, tied to the start at
    `start`, does not carry its ceremony's signed requests as a vault since session 40
    writes them; None when it does, or when neither it nor its start carries any (a vault
    before session 40, which wrote neither: judged by its start alone, as then). Its
    document must carry the one proposal of that ceremony before the start, whose
    signature check 6c proves, and that proposal's signed body must propose a rotation
    of the key's kind."""
    document = pool[index].get("document")
    if document is None and pool[start].get("document") is None:
        return None
    proposals = [pool[at] for at in proposed.get(pool[start].get("key_id"), []) if at < start]
    signed = _signed_proposal(document)
    if len(proposals) != 1 or signed is None or proposals[0].get("document") != signed[0]:
        return (
            "but its document does not carry that ceremony's one proposal, whose signature "
            "check 6c proves (a vault since session 40 writes it on the registration): not "
            "proven to be the officers' key"
        )
    if signed[1] != {"kind": kind}:
        return (
            f"but that ceremony's signed proposal is not of a {kind} rotation: a key put "
            "into use with no officer's approval"
        )
    return None


def _problem(  # noqa: PLR0917 - what the check found, in order
    pool: dict[int, dict[str, Any]],
    starts: dict[str | None, list[int]],
    proposed: dict[object, list[int]],
    index: int,
    found: tuple[str, str, int],
    used: set[int],
    first_adoption: bool,
    carried: Originals | None,
) -> str | None:
    """Why the registration at `index` is not proven to come from a ceremony (or from
    the log's first start, `first_adoption`); None when it is (its start is then added
    to `used`). A registration retention carried forward is judged by `carried`, the
    bundle's proven originals (`cofre_evidence_verifier.carried`), else None."""
    label, kind, version = found
    if carried is not None:
        # A copy retention appended (`carried`): only as a copy of a proven original.
        return carry_problem(carried, index, pool[index])
    how = entry_details(pool[index]).get("how")
    shown = f"entry {index} registers {label}"
    if (how == _ADOPTED or version == 1) and first_adoption:
        return None
    if version == 1:
        return (
            f"key registrations: {shown} ({how!r}) after the log's first start: a key put "
            "into use without a key ceremony (version 1 of each kind is made only at the "
            "log's first start; a lost key is restored from the HSM's backup, never made "
            "again, and the vault uses the label's last registration)"
        )
    if not isinstance(how, str) or not how.startswith(_BY_CEREMONY):
        return (
            f"key registrations: {shown} ({how!r}) outside any key ceremony: a key put into "
            "use with no officer's approval (the vault uses the newest registered version)"
        )
    ceremony = how.removeprefix(_BY_CEREMONY)
    # The first start of the ceremony after the registration: the vault writes both in
    # one transaction, and a ceremony started twice fails check 6c anyway.
    start = _next_start(pool, starts, index, ceremony)
    details = {} if start is None else entry_details(pool[start])
    same = (details.get("kind"), details.get("new_version")) == (kind, version)
    if start is not None and start not in used and same:
        unsigned = _unsigned_problem(pool, proposed, index, start, kind)
        if unsigned is None:
            used.add(start)
        return unsigned and f"key registrations: {shown}, by key ceremony {ceremony}, {unsigned}"
    return (
        f"key registrations: {shown}, made by key ceremony {ceremony}, but no start of that "
        f"ceremony rotating {kind} to version {version} follows it in the period (or its "
        "start already accounts for another registration): a key put into use with no "
        "officer's approval"
    )


def _proposals(pool: dict[int, dict[str, Any]]) -> dict[object, list[int]]:
    """The successful proposals of `pool` by ceremony id, ascending (made once)."""
    out: dict[object, list[int]] = {}
    for at in sorted(pool):
        if succeeded(pool[at], PROPOSE):
            out.setdefault(pool[at].get("key_id"), []).append(at)
    return out


def _signed_proposal(document: object) -> tuple[str, dict[str, Any]] | None:
    """The stored proposal a register ceremony's registration document carries, and the
    body it signed; None when the document holds none."""
    if not isinstance(document, str):
        return None
    try:
        proof = load_json(document)["proposal"]["proof"]
        if not isinstance(proof, str):
            return None
        body = load_json(base64.b64decode(load_json(proof)["body"], validate=True))
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    return (proof, body) if isinstance(body, dict) else None


def _register_problem(  # noqa: PLR0917 - what the check found, in order
    pool: dict[int, dict[str, Any]],
    starts: dict[str | None, list[int]],
    proposed: dict[object, list[int]],
    index: int,
    label: str,
    ceremony: str,
    used: set[int],
) -> str | None:
    """Why the registration at `index`, of `label` by register ceremony `ceremony`, is not
    proven to be the officers' (session 39); None when it is (its start added to `used`).
    Its start must follow it in the period, of kind ``register`` naming `label`; the
    proposal its document carries must be the one proposal of that ceremony before the
    start, whose signature and officers check 6c proves, and its signed body must name
    exactly this label, CKA_ID and check value. `proposed`: the bundle's successful
    proposals by ceremony id, made once."""
    shown = f"key registrations: entry {index} registers {label} by key ceremony {ceremony}"
    start = _next_start(pool, starts, index, ceremony)
    details = {} if start is None else entry_details(pool[start])
    if (
        start is None
        or start in used
        or (details.get("kind"), details.get("label"))
        != (
            "register",
            label,
        )
    ):
        return (
            f"{shown}, but no start of that ceremony registering {label} follows it in the "
            "period (or its start already accounts for another registration): a key put "
            "into use with no officer's approval"
        )
    proposals = [pool[at] for at in proposed.get(pool[start].get("key_id"), []) if at < start]
    signed = _signed_proposal(pool[index].get("document"))
    registered = entry_details(pool[index])
    wanted: dict[str, object] = {"kind": "register", "label": label}
    wanted |= {"cka_id": registered.get("cka_id"), "check": registered.get("check")}
    if len(proposals) != 1 or signed is None or proposals[0].get("document") != signed[0]:
        return (
            f"{shown}, but its document does not carry that ceremony's one proposal, whose "
            "signature check 6c proves: not proven to be the officers' registration"
        )
    if signed[1] != wanted:
        return (
            f"{shown}, but that ceremony's signed proposal names another key: a key put "
            "into use with no officer's approval"
        )
    used.add(start)
    return None


def check_key_registrations(
    files: Files, manifest: dict[str, Any], heads: Heads, report: Report
) -> None:
    """Pass `key_registrations` when every registration of the period of a KEK,
    fingerprint or audit key is tied to the ceremony's start that made it, or to the
    log's first start (see the module docstring)."""
    size = manifest["covering_head"]["tree_size"]
    head = heads.get(size)
    if head is None:
        return  # already reported by the entries check
    # The records' own problems are check 6c's to report.
    pool = proven_entries(files, size, base64.b64decode(head["root_hash"]), [])
    first, end = manifest["entries"]["first_index"], manifest["entries"]["end_index"]
    period = {index for index in pool if first <= index < end}
    starts, used = _starts(pool, period), set[int]()
    proposed = _proposals(pool)
    originals = proven_originals(files, size, base64.b64decode(head["root_hash"]))
    problems, tied = [], []
    # The vault adopts only into an empty registry, at its first start: an adoption is
    # that start's only while the bundle holds the log from its first entry and nothing
    # but the start's own entries came before it (no other registration, no operation).
    first_adoption, adopting = first == 0, None
    for index in sorted(period):
        first_adoption = first_adoption and _at_first_start(pool[index], adopting)
        if first_adoption and pool[index].get("action") == REGISTER:
            adopting = entry_details(pool[index]).get("how") == _ADOPTED
        found = _governed(pool[index])
        if found is None:
            continue
        carried = FROM in entry_details(pool[index])
        how = entry_details(pool[index]).get("how")
        if not carried and isinstance(how, str) and how.startswith(_BY_REGISTER):
            ceremony = how.removeprefix(_BY_REGISTER)
            problem = _register_problem(pool, starts, proposed, index, found[0], ceremony, used)
        else:
            via = originals if carried else None
            problem = _problem(pool, starts, proposed, index, found, used, first_adoption, via)
        if problem is None:
            via = entry_details(pool[index])[FROM] if carried else None
            retained = "" if via is None else f", carried forward by retention from entry {via}"
            tied.append(f"{found[0]} (entry {index}{retained})")
        else:
            problems.append(problem)
    for problem in problems[:MAX_LISTED]:
        report.fail(problem)
    if len(problems) > MAX_LISTED:
        report.fail(f"key registrations: {len(problems) - MAX_LISTED} more not shown")
    if not problems:
        named = ": " + ", ".join(tied[:MAX_LISTED]) if tied else ""
        report.passed(
            "key_registrations",
            f"key registrations: {len(tied)} key{'' if len(tied) == 1 else 's'} put into use "
            f"in the period, each by the key ceremony whose start follows it (or registered "
            "at the log's first start, or a proven copy of an earlier registration that "
            f"retention carried forward){named}",
        )
