"""Token format definitions: what a format is called and what shape its tokens have.

IN PCI SCOPE. This module only *describes* formats and checks that a description makes
sense (for example that an FF1 format has a domain of at least 10^6 for every PAN length
it accepts); `vault.tokens` draws and encrypts tokens to these descriptions.

Built-in formats (a policy may define more under its own names):

| name            | type      | kept                | middle          | Luhn | PAN lengths |
|-----------------|-----------|---------------------|-----------------|------|-------------|
| pan_bin6_last4  | random    | first 6, last 4     | random digits   | fail | 12-19       |
| pan_bin8_last4  | random    | first 8, last 4     | random digits   | fail | 16-19       |
| pan_last4       | random    | last 4              | random digits   | fail | 12-19       |
| pan_fpe         | fpe       | first 6, last 4     | FF1 (tweak: domain, kept) | fail | 16-19 |
| uuid            | uuid      | nothing             | random UUID4    | n/a  | 12-19       |

**Convergence only where guessing is hopeless.** A convergent (or FF1) token answers the
same token for the same PAN, so whoever may tokenize can test a guess: tokenize a
candidate and compare. `convergent_lengths` returns the PAN lengths for which a format may
converge: those where the digits an attacker does not know leave at least
`MIN_CANDIDATES` (10^5) Luhn-valid PANs. We assume the attacker knows the first six and
the last four digits whatever the format keeps (a masked reveal shows them, and so do
receipts), and the digits the format keeps if it keeps more. On shorter PANs a format's
`on_small_space` decides: ``random`` issues a fresh token on every call (no convergence,
so nothing to compare), ``refuse`` answers `format_not_applicable`. FF1 is deterministic
by construction, so an FF1 format must refuse.

**BIN-8 only on 16 digits or more** (PCI SSC FAQ 1091 on truncation: first eight and last
four are acceptable only for PANs of 16 or more digits; shorter PANs keep at most the
first six and last four).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FPE_MIN_DOMAIN: Final = 1_000_000  # NIST SP 800-38G Rev. 1: radix^minlen >= 10^6
PAN_LENGTHS: Final = tuple(range(12, 20))
# A convergent answer is a guess-checking oracle; it is allowed only when the digits an
# attacker cannot see leave at least this many Luhn-valid PANs.
MIN_CANDIDATES: Final = 100_000
# What an attacker is assumed to know of any PAN whatever the token shows: a masked
# reveal (and a receipt) shows the first six and the last four digits.
ASSUMED_KNOWN_LEADING: Final = 6
ASSUMED_KNOWN_TRAILING: Final = 4
# PCI SSC FAQ 1091: BIN-8 truncation only for PANs of 16 digits or more.
BIN8_MIN_PAN_LENGTH: Final = 16
# `pan_lengths` written as a range (`FormatSpec._lengths_from_range`).
_LENGTH_RANGE: Final = re.compile(r"([0-9]{2})-([0-9]{2})")


class FormatType(StrEnum):
    RANDOM = "random"  # kept digits + random middle, stored mapping
    FPE = "fpe"  # kept digits + FF1 over the middle: deterministic, still stored
    UUID = "uuid"  # opaque, not format-preserving


class LuhnMode(StrEnum):
    FAIL = "fail"  # the default: a token can never pass for a card number
    PASS = "pass"  # noqa: S105 - not a password. For downstream systems that validate the check digit
    ANY = "any"


class Dedup(StrEnum):
    CONVERGENT = "convergent"  # the same PAN and format give the same token (per domain)
    RANDOM = "random"  # a new token every time


class SmallSpace(StrEnum):
    """What a convergent format does with a PAN too short for safe convergence."""

    RANDOM = "random"  # a fresh token on every call: nothing to compare a guess with
    REFUSE = "refuse"  # 422 format_not_applicable


class SecurityCodeRule(StrEnum):
    """Whether tokenize calls in a format may carry a card security code (held once,
    for the next relay call; never stored with the token)."""

    ACCEPT = "accept"
    FORBID = "forbid"  # 422 security_code_forbidden, nothing stored


class FormatSpec(BaseModel):
    """One named token format.

    `pan_lengths` are the PAN lengths the format accepts; a PAN of another length is
    refused at tokenize time with `format_not_applicable`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: FormatType
    keep_leading: Annotated[int, Field(ge=0, le=8)] = 6
    keep_trailing: Annotated[int, Field(ge=0, le=4)] = 4
    luhn: LuhnMode = LuhnMode.FAIL
    pan_lengths: tuple[Annotated[int, Field(ge=12, le=19)], ...] = PAN_LENGTHS
    dedup: Dedup = Dedup.CONVERGENT
    on_small_space: SmallSpace | None = None  # default: refuse for FF1, random otherwise
    security_code: SecurityCodeRule = SecurityCodeRule.ACCEPT

    @field_validator("pan_lengths", mode="before")
    @classmethod
    def _lengths_from_range(cls, value: Any) -> Any:
        """``"14-19"`` is every length from 14 to 19 (session 36): the audit log records
        the policy's text and takes six or more short numbers in one list
        (``[14, 15, 16, 17, 18, 19]``) for a card number's groups, masking them, so such
        a list cannot be in a policy (`policies.loader`)."""
        if not isinstance(value, str):
            return value
        found = _LENGTH_RANGE.fullmatch(value)
        low, high = (int(found[1]), int(found[2])) if found else (0, 0)
        if not (PAN_LENGTHS[0] <= low <= high <= PAN_LENGTHS[-1]):
            raise ValueError(
                f'pan_lengths as text is a range "LOW-HIGH" of PAN lengths '
                f"({PAN_LENGTHS[0]} to {PAN_LENGTHS[-1]}), or give a list"
            )
        return tuple(range(low, high + 1))

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        if not self.pan_lengths:
            raise ValueError("pan_lengths must name at least one PAN length")
        if self.type is FormatType.FPE and self.on_small_space is SmallSpace.RANDOM:
            raise ValueError("an FF1 format is deterministic: on_small_space must be 'refuse'")
        if self.type is FormatType.UUID:
            return self
        if self.keep_leading > ASSUMED_KNOWN_LEADING and (
            short := sorted(n for n in set(self.pan_lengths) if n < BIN8_MIN_PAN_LENGTH)
        ):
            raise ValueError(
                f"keeping {self.keep_leading} leading digits is allowed only on PANs of "
                f"{BIN8_MIN_PAN_LENGTH} digits or more (PCI SSC FAQ 1091); drop lengths {short}"
            )
        if self.type is FormatType.FPE and self.dedup is Dedup.RANDOM:
            raise ValueError("an FF1 format is deterministic: dedup must be 'convergent'")
        for length in sorted(set(self.pan_lengths)):
            free = length - self.keep_leading - self.keep_trailing
            if self.type is FormatType.FPE and 10**free < FPE_MIN_DOMAIN:
                raise ValueError(
                    f"an FF1 format keeping {self.keep_leading} leading and "
                    f"{self.keep_trailing} trailing digits leaves {free} free digits on "
                    f"{length}-digit PANs, a domain of 10^{free}, under the 10^6 minimum of "
                    "NIST SP 800-38G; keep fewer digits or drop that length"
                )
            if free < 2:
                raise ValueError(
                    f"keeping {self.keep_leading} leading and {self.keep_trailing} trailing "
                    f"digits leaves {free} free digits on {length}-digit PANs: too few tokens"
                )
        return self

    def free_digits(self, pan_length: int) -> int:
        """How many digits of a `pan_length`-digit PAN the token replaces."""
        return pan_length - self.keep_leading - self.keep_trailing

    @property
    def small_space(self) -> SmallSpace:
        """What this format does below `MIN_CANDIDATES` (FF1 always refuses)."""
        if self.type is FormatType.FPE:
            return SmallSpace.REFUSE
        return self.on_small_space or SmallSpace.RANDOM

    @property
    def deterministic(self) -> bool:
        """True when the same PAN gives the same token (convergent or FF1)."""
        return self.dedup is Dedup.CONVERGENT or self.type is FormatType.FPE


def hidden_candidates(spec: FormatSpec, pan_length: int) -> int:
    """How many Luhn-valid PANs of `pan_length` digits an attacker who sees the token
    (and a masked reveal) cannot tell apart from the real one."""
    known = max(spec.keep_leading, ASSUMED_KNOWN_LEADING) + max(
        spec.keep_trailing, ASSUMED_KNOWN_TRAILING
    )
    hidden = max(pan_length - known, 0)
    # The last digit of a Luhn-valid PAN is fixed by the others.
    return int(10 ** max(hidden - 1, 0)) if hidden else 1


def may_converge(spec: FormatSpec, pan_length: int) -> bool:
    """True when `spec` may answer convergently for PANs of `pan_length` digits."""
    return spec.deterministic and hidden_candidates(spec, pan_length) >= MIN_CANDIDATES


BUILTIN_FORMATS: Final[dict[str, FormatSpec]] = {
    "pan_bin6_last4": FormatSpec(type=FormatType.RANDOM, keep_leading=6, keep_trailing=4),
    "pan_bin8_last4": FormatSpec(
        type=FormatType.RANDOM,
        keep_leading=8,
        keep_trailing=4,
        pan_lengths=tuple(range(BIN8_MIN_PAN_LENGTH, 20)),
    ),
    "pan_last4": FormatSpec(type=FormatType.RANDOM, keep_leading=0, keep_trailing=4),
    "pan_fpe": FormatSpec(
        type=FormatType.FPE, keep_leading=6, keep_trailing=4, pan_lengths=tuple(range(16, 20))
    ),
    "uuid": FormatSpec(type=FormatType.UUID, keep_leading=0, keep_trailing=0),
}
