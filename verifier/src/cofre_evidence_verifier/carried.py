"""Check 6d's part for the key registrations retention carried forward.

`cofre audit retire` drops a monthly partition of the log once archived, and appends
again, in the same transaction, each key's latest `key.register` found in it, marked
``details.carried_forward_from`` with the original's leaf index: the vault reads its
key registry from the log. Such a record is neither a ceremony's registration nor the
first start's, so check 6d would fail every bundle whose period covered a retire
(session 37). It is accepted only as a copy: the bundle carries the original
(`audit/carried.jsonl`, read by the exporter from the database or the archive) with its
inclusion proof in the covering head, and the original must lie before the copy, be a
successful registration of the same label, and have the same details but
``carried_forward_from`` and ``registered_at`` (since session 49: the original's time,
which the copy must say, or nothing, as before): a carry never registers another key.
Anything else, an original the exporter could not read included, fails the bundle, named.
"""

from __future__ import annotations

from typing import Any, Final

from cofre_evidence_verifier.bundle import Files, hash_list, json_lines, string
from cofre_evidence_verifier.dual_control_log import audit_entry, entry_details, succeeded
from cofre_evidence_verifier.errors import MalformedBundle
from cofre_evidence_verifier.merkle import included, leaf_hash

NAME: Final = "audit/carried.jsonl"
FROM: Final = "carried_forward_from"
# When the copy says its key was registered (since session 49): its original's time, or
# the one the original carries on; the vault's cryptoperiods count from it.
AT: Final = "registered_at"
_REGISTER: Final = "key.register"

# An original proven in the log (its entry), or why it is not (a sentence).
Originals = dict[int, dict[str, Any] | str]


def proven_originals(files: Files, size: int, root: bytes) -> Originals:
    """The originals `NAME` carries by leaf index: each entry proven in the tree of
    `size` with `root`, or why it is not."""
    out: Originals = {}
    for row in json_lines(files.get(NAME, b"")):
        index = row.get("index")
        if type(index) is not int or index in out:
            continue  # a later line never replaces the first
        if "unavailable" in row:
            out[index] = f"the exporter could not read entry {index}: {row['unavailable']!s}"
            continue
        try:
            payload = string(row.get("payload"), f"{NAME}: a payload")
            proof = hash_list(row.get("proof"), f"{NAME}: a proof")
        except MalformedBundle as exc:
            out[index] = str(exc)
            continue
        if included(leaf_hash(payload.encode("utf-8")), index, size, proof, root):
            out[index] = audit_entry(payload)
        else:
            out[index] = (
                f"{NAME}: entry {index} is not in the log (its inclusion proof in signed "
                f"head {size} fails)"
            )
    return out


def is_carried(entry: dict[str, Any]) -> bool:
    """Whether the registration `entry` says retention carried it forward."""
    return FROM in entry_details(entry)


def _label(entry: dict[str, Any]) -> object:
    return entry_details(entry).get("label", entry.get("key_id"))


def carry_problem(originals: Originals, index: int, entry: dict[str, Any]) -> str | None:
    """Why the carried registration `entry` at leaf `index` is not a copy of a proven
    earlier registration of its label; None when it is."""
    label = _label(entry)
    source = entry_details(entry).get(FROM)
    shown = (
        f"key registrations: entry {index} registers {label}, carried forward by retention "
        f"from entry {source!r}, but"
    )
    if type(source) is not int or source < 0 or source >= index:
        return (
            f"{shown} that is not a leaf index: a key put into use without a key ceremony"
            if type(source) is not int or source < 0
            else f"{shown} that entry does not lie before it: not a copy of an earlier one"
        )
    original = originals.get(source)
    if original is None:
        return (
            f"{shown} the bundle does not carry entry {source} with its inclusion proof "
            f"({NAME}): the copy is not proven"
        )
    if isinstance(original, str):
        return f"{shown} {original}: the copy is not proven (fails closed)"
    if not succeeded(original, _REGISTER) or _label(original) != label:
        return (
            f"{shown} entry {source} is not a registration of {label}: a key put into use "
            "without a key ceremony"
        )
    return _copy_problem(shown, source, entry_details(entry), original)


def _copy_problem(
    shown: str, source: int, details: dict[str, Any], original: dict[str, Any]
) -> str | None:
    """Why the carried registration's `details` are not a copy of those of `original`
    (entry `source`); None when they are."""
    copied = {k: v for k, v in details.items() if k not in (FROM, AT)}
    if copied != {k: v for k, v in entry_details(original).items() if k not in (FROM, AT)}:
        return (
            f"{shown} it is not a copy of entry {source} (their details differ: another key "
            "under that label, put into use without a key ceremony)"
        )
    said = details.get(AT)
    registered = entry_details(original).get(AT, original.get("time"))
    if said is not None and said != registered:
        # A copy written before session 49 says nothing; one that says a later time
        # restarts the key's cryptoperiod in the vault (PCI DSS 3.6.1.1).
        return (
            f"{shown} it says the key was registered at {said!r}, where entry {source} says "
            f"{registered!r}: the key's cryptoperiod restarted"
        )
    return None
