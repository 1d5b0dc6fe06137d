"""Reading a policy file (TOML or YAML), with a message that says what is wrong.

IN PCI SCOPE. A missing policy file, or an empty one, gives the empty policy, which
denies everything (fail closed).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError

from cofre.redaction import mask_pan_like
from policies.errors import PolicyInvalid
from policies.models import Policy

# The audit log records a policy's whole text as the document of its `policy.load` /
# `policy.reload` entry, and refuses a document over 64 KiB (`audit.log.MAX_DOCUMENT`;
# pinned equal by tests/policies/test_res36_masked_policy_text.py: `policies` may not
# import `audit`). A longer text would fail at the entry's write, not here with a reason.
MAX_POLICY_TEXT: Final = 64 * 1024
# How much of the offending line a refusal shows (as the log would record it).
_SHOWN: Final = 120
_SHORT_NUMBER: Final = re.compile(r"(?<![0-9])[0-9]{2}(?![0-9])")
# A line that only goes on a list begun above (numbers, commas, brackets, a comment).
_LIST_CONTINUED: Final = re.compile(r"[\s0-9,\[\]-]*(#.*)?")


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    source: str
    sha256: str
    # The exact text the hash is of: recorded in the audit log at each load and reload.
    text: str = ""


def _recorded_as_written(text: str, source: str, kind: str) -> None:
    """Refuse a text the audit log would record otherwise than written (session 36).

    The `policy.load`/`policy.reload` entry carries the text as its document and the
    SHA-256 of the text as read; the log masks card-like digits in all it records
    (`cofre.redaction.mask_pan_like`: 12 or more in a row, grouped, across a line
    break), so a comment with a merchant number or an upstream URL with one was recorded
    masked, no longer matched its hash, and the offline verifier's check 6 failed every
    bundle covering the policy. Session 35 refused such identities (`policies.models`);
    this is the rest of the text. The refusal names the line and column of the run and
    shows the line as the log would record it (masking keeps every character in place),
    never the run in clear: the message reaches the terminal and the log.
    """
    if len(text) > MAX_POLICY_TEXT:
        raise PolicyInvalid(
            f"policy {source} is {len(text):,} characters; the audit log records a policy "
            f"whole, at most {MAX_POLICY_TEXT:,} characters"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        raise PolicyInvalid(
            f"policy {source}, line {line}: a character UTF-8 cannot carry (the audit log "
            "would record it escaped, and the text would not match its SHA-256)"
        ) from None
    masked = mask_pan_like(text)
    if masked == text:
        return
    first = next(i for i, (a, b) in enumerate(zip(text, masked, strict=False)) if a != b)
    # Back to where the digits start: a mask keeps up to six leading digits in place.
    while first > 0 and text[first - 1].isdecimal():
        first -= 1
    start = text.rfind("\n", 0, first) + 1
    end = masked.find("\n", first)
    shown = masked[start : end if end >= 0 else len(masked)]
    raise PolicyInvalid(
        _masked_run_message(source, text, first, start, shown) + _hint(text, first, kind)
    )


def _hint(text: str, first: int, kind: str) -> str:
    """A way out for the one list the policy's own fields make masked: six or more PAN
    lengths (``pan_lengths = [14, 15, 16, 17, 18, 19]``), already validated 12 to 19.
    The list may span lines (``pan_lengths = [`` then the numbers, as a formatter lays
    it out; session 36 review: such a list got no hint): read from the line where it
    starts to its ``]``. Said in the policy's own syntax (TOML ``=``, YAML ``:``). None
    for a run in a comment (`first`, where the run starts, after a ``#``): the lengths
    are not what the log masked."""
    lines = text.split("\n")
    at = head = text.count("\n", 0, first)
    if "#" in text[text.rfind("\n", 0, first) + 1 : first]:
        return ""
    while head > 0 and lines[head].strip() and _LIST_CONTINUED.fullmatch(lines[head]):
        head -= 1
    if not lines[head].lstrip().lstrip("-").lstrip().startswith("pan_lengths"):
        return ""
    last = at
    while (
        "]" not in lines[last].partition("#")[0]
        and last + 1 < len(lines)
        and _LIST_CONTINUED.fullmatch(lines[last + 1])
    ):
        last += 1
    written = " ".join(line.partition("#")[0] for line in lines[head : last + 1])
    lengths = sorted({int(n) for n in _SHORT_NUMBER.findall(written)})
    if lengths and lengths == list(range(lengths[0], lengths[-1] + 1)):
        low, high = lengths[0], lengths[-1]
        equals = " =" if kind == "toml" else ":"
        return f'. For a list of PAN lengths write the range: pan_lengths{equals} "{low}-{high}"'
    return ". Six or more PAN lengths in one list read as a card's groups: split the format"


def _masked_run_message(source: str, text: str, first: int, start: int, shown: str) -> str:
    return (
        f"policy {source}, line {text.count(chr(10), 0, first) + 1}, column "
        f"{first - start + 1}: 12 digits or more in a row (or a card number's groups), "
        "which the audit log masks in the policy text it records: its policy.load entry "
        "would not match the SHA-256 of this file and no evidence bundle covering it "
        "would verify (check 6). As the log would record the line: "
        f"{shown[:_SHOWN]!r}. Remove the number, or split it (a comment may say where to "
        "find it)"
    )


def parse_policy(text: str, *, kind: str, source: str = "<string>") -> LoadedPolicy:
    """Parse policy text of `kind` ``"toml"`` or ``"yaml"``.

    Raises `PolicyInvalid` naming the offending field and the reason, or the line and
    column of anything the audit log would record otherwise than written (a card-like
    digit run anywhere in the text, `_recorded_as_written`).
    """
    try:
        data: Any = tomllib.loads(text) if kind == "toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        # Masked too (review 35c): YAML's message quotes the offending line, a snippet
        # that may hold an identity's 12-digit run or a card pasted into the file.
        problem = mask_pan_like(f"{exc}")
        raise PolicyInvalid(f"policy {source} is not valid {kind.upper()}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyInvalid(f"policy {source} must be a mapping at the top level")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors(include_input=False)
        )
        # Masked as the log and the terminal would mask it, here where it is made: a
        # field error's location is an identity's key, and some checks quote a name.
        raise PolicyInvalid(f"policy {source} is invalid: {mask_pan_like(problems)}") from None
    # After the fields: an identity with such a run is named by its position there.
    _recorded_as_written(text, source, kind)
    return LoadedPolicy(policy, source, hashlib.sha256(text.encode()).hexdigest(), text)


def load_policy(path: Path | None) -> LoadedPolicy:
    """Load the policy at `path`; ``None`` or a missing file gives the deny-all policy.

    Raises `PolicyInvalid` for a file that exists but does not parse or validate.
    """
    if path is None or not path.exists():
        return LoadedPolicy(Policy(), str(path) if path else "<none>", hashlib.sha256().hexdigest())
    kind = "yaml" if path.suffix in (".yaml", ".yml") else "toml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyInvalid(f"cannot read policy {path}: {exc.strerror}") from None
    return parse_policy(text, kind=kind, source=str(path))
