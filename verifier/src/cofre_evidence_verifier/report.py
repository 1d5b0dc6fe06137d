"""The verdict on a bundle (`Report`) and its text rendering."""

from __future__ import annotations

import io
import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Final

# The checks every bundle must pass; a chained bundle (`--previous`) must pass two more,
# and a bundle that names a previous head must prove it (`previous_head`). `witnesses`
# and `origin` are required too unless the caller waived them by name (`verify`).
MAX_PROBLEMS: Final = 1000
REQUIRED_CHECKS: Final = frozenset(
    {
        "signature",
        "files",
        "heads",
        "entries",
        "boundaries",
        "policy",
        "custody",
        "dual_control",
        "key_registrations",
        "deleted_tokens",
    }
)
CHAIN_CHECKS: Final = frozenset({"previous", "chain"})
# What an `--unsafe-…` option left unpinned, as the verdict line names it: such a report
# is never the plain VERIFIED of a pinned run (session 36).
UNSAFE_VERDICTS: Final = {
    "witnesses": "no witness cosignature was checked",
    "origin": "the log's origin was not pinned",
}
# How a check line that says what was left unpinned begins: never drawn as a pass.
UNSAFE_MARK: Final = "UNSAFE: "


@dataclass
class Report:
    """The verdict on a bundle. It fails closed: `ok` holds only when no check failed
    and every check in `required` ran and passed, so a check that returns early
    without a verdict (or never runs) makes the report FAILED, never VERIFIED."""

    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    required: frozenset[str] = REQUIRED_CHECKS
    passed_checks: set[str] = field(default_factory=set)
    # The signed tree heads that verified (tree size, root, the key that verified it),
    # for the HTML timeline: a head of the file that did not verify, and a head's
    # unsigned fields (its time, its key label), are not shown (review 33).
    verified_heads: list[tuple[int, str, str]] = field(default_factory=list)
    # Signed heads left out of the timeline: not proven prefixes of the covering head.
    heads_not_shown: int = 0
    # What the caller chose not to pin (`UNSAFE_VERDICTS` keys): named in the verdict.
    unsafe: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.required <= self.passed_checks

    @property
    def verdict(self) -> str:
        """FAILED; VERIFIED; or, when something was left unpinned by name, VERIFIED with
        what was (`VERIFIED, UNSAFE: the log's origin was not pinned`)."""
        if not self.ok:
            return "FAILED"
        unsafe = "; ".join(UNSAFE_VERDICTS[name] for name in self.unsafe)
        return f"VERIFIED, UNSAFE: {unsafe}" if unsafe else "VERIFIED"

    def fail(self, message: str) -> None:
        # Bounded: a hostile file of a million bad lines made a million problems and
        # a 92 MB report (review 31). The verdict needs one.
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append(
                f"... and more problems (only the first {MAX_PROBLEMS} are listed)"
            )

    def passed(self, check: str, message: str) -> None:
        self.passed_checks.add(check)
        self.checks.append(message)

    def missing_checks(self) -> list[str]:
        """Required checks that did not pass (ran and failed, or never ran)."""
        return sorted(self.required - self.passed_checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verdict": self.verdict,  # names what an --unsafe-… option left unpinned
            "problems": self.problems,
            "missing_checks": self.missing_checks(),
            "checks": self.checks,
            "summary": self.summary,
            "unsafe": self.unsafe,
        }


# What a terminal or a viewer acts on, or draws as nothing, instead of showing, chosen by
# Unicode category rather than listed (review 33: a list of code points missed U+061C,
# U+200B-U+200D, U+2060-U+2064 and U+FEFF, which hide or reorder text around them):
# controls (Cc: C0, DEL, C1), format characters (Cf: bidirectional marks, overrides and
# isolates, zero-width characters, the BOM, tags), line and paragraph separators (Zl,
# Zp), private-use characters (Co, drawn as a font pleases), lone surrogates (Cs) and
# code points not yet assigned (Cn, which a newer viewer may act on).
# Controls, format characters, separators, private use, surrogates and unassigned code
# points; spaces other than U+0020 and combining marks (which change the character
# before them) too (review 35).
_UNPRINTABLE_CATEGORIES: Final = frozenset(
    {"Cc", "Cf", "Zl", "Zp", "Zs", "Co", "Cs", "Cn", "Mn", "Me"}
)
# Letters and symbols that draw as blank space: the Hangul fillers, the braille blank.
_BLANK: Final = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _shown(char: str) -> str:
    """`char` as it is, or as its Python escape when it is unprintable or blank; a
    backslash doubled, so that an escape in a report is always one this module wrote."""
    if char == "\\":
        return "\\\\"
    if char != " " and (unicodedata.category(char) in _UNPRINTABLE_CATEGORIES or char in _BLANK):
        return ascii(char)[1:-1]
    return char


def printable(text: str) -> str:
    """`text` with every control, format (invisible or bidirectional) and unassigned
    character, line break and private-use character shown as its Python escape
    (``\\x1b``, ``\\n``, ``\\u202e``, ``\\u200b``): a string from the bundle (a member's
    name, a log's origin, an exception message) cannot clear the screen, start a line of
    its own, hide a character or draw a verdict."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the usual case, spared a look at each character
    return "".join(map(_shown, text))


def render_text(report: Report) -> str:
    """The report as a person reads it: VERIFIED or FAILED, the summary, then one line
    per check passed and per problem. Every line from the report goes through
    `printable` (check and problem messages quote the bundle), so the verdict on the
    first line is the only one."""
    out = io.StringIO()
    out.write(report.verdict + "\n")
    for key, value in report.summary.items():
        out.write(f"  {printable(key)}: {printable(json.dumps(value))}\n")
    for check in report.checks:
        # An UNSAFE line is no check passed (review 36b: it was shown as `ok`).
        mark = "" if check.startswith(UNSAFE_MARK) else "ok    "
        out.write(f"  {mark}{printable(check)}\n")
    for problem in report.problems:
        out.write(f"  FAIL  {printable(problem)}\n")
    if not report.problems:
        for check in report.missing_checks():
            out.write(f"  FAIL  the {check} check did not run to a verdict\n")
    return out.getvalue()
