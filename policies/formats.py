"""Token format definitions: what a format is called and what shape its tokens have.

IN PCI SCOPE. This module only *describes* formats and checks that a description makes
sense (for example that an FF1 format has a domain of at least 10^6 for every PAN length
it accepts); `vault.tokens` draws and encrypts tokens to these descriptions.

Built-in formats (a policy may define more under its own names):

| name            | type      | kept                | middle          | Luhn |
|-----------------|-----------|---------------------|-----------------|------|
| pan_bin6_last4  | random    | first 6, last 4     | random digits   | fail |
| pan_bin8_last4  | random    | first 8, last 4     | random digits   | fail |
| pan_last4       | random    | last 4              | random digits   | fail |
| pan_fpe         | fpe       | first 6, last 4     | FF1 (tweak = kept digits) | fail |
| uuid            | uuid      | nothing             | random UUID4    | n/a  |
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

FPE_MIN_DOMAIN: Final = 1_000_000  # NIST SP 800-38G Rev. 1: radix^minlen >= 10^6
PAN_LENGTHS: Final = tuple(range(12, 20))


class FormatType(StrEnum):
    RANDOM = "random"  # kept digits + random middle, stored mapping
    FPE = "fpe"  # kept digits + FF1 over the middle: deterministic, still stored
    UUID = "uuid"  # opaque, not format-preserving


class LuhnMode(StrEnum):
    FAIL = "fail"  # the default: a token can never pass for a card number
    PASS = "pass"  # noqa: S105 - not a password. For downstream systems that validate the check digit
    ANY = "any"


class Dedup(StrEnum):
    CONVERGENT = "convergent"  # the same PAN and format give the same token
    RANDOM = "random"  # a new token every time


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

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        if not self.pan_lengths:
            raise ValueError("pan_lengths must name at least one PAN length")
        if self.type is FormatType.UUID:
            return self
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


BUILTIN_FORMATS: Final[dict[str, FormatSpec]] = {
    "pan_bin6_last4": FormatSpec(type=FormatType.RANDOM, keep_leading=6, keep_trailing=4),
    "pan_bin8_last4": FormatSpec(
        type=FormatType.RANDOM, keep_leading=8, keep_trailing=4, pan_lengths=tuple(range(14, 20))
    ),
    "pan_last4": FormatSpec(type=FormatType.RANDOM, keep_leading=0, keep_trailing=4),
    "pan_fpe": FormatSpec(
        type=FormatType.FPE, keep_leading=6, keep_trailing=4, pan_lengths=tuple(range(16, 20))
    ),
    "uuid": FormatSpec(type=FormatType.UUID, keep_leading=0, keep_trailing=0),
}
