"""The base of every section of `cofre.settings.Settings`.

IN PCI SCOPE. Moved out of `cofre.settings` (with the sections, in `cofre._settings_*`)
to keep that module small; import the settings from `cofre.settings`.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict

# The least rate an allowance of refusal entries may have: one a day.
MIN_ALLOWANCE_PER_SECOND: Final = 1 / 86_400


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_allowance(
    variable: str,
    burst: int,
    per_second: float,
    *,
    max_burst: int,
    max_per_second: float,
    why: str,
) -> None:
    """Raise `ValueError` naming ``<variable>_BURST`` or ``<variable>_PER_SECOND`` when an
    allowance of refusal entries is outside its bounds (at least 1 at once and one a
    day; at most `max_burst` and `max_per_second`): the audit section's and the capture
    listener's allowances (sessions 41, 42)."""
    if not 1 <= burst <= max_burst:
        raise ValueError(f"{variable}_BURST is {burst}: it must be from 1 to {max_burst:,}; {why}")
    # `not (... <= ...)`: NaN is refused too.
    if not MIN_ALLOWANCE_PER_SECOND <= per_second <= max_per_second:
        raise ValueError(
            f"{variable}_PER_SECOND is {per_second}: it must be from one a day "
            f"({MIN_ALLOWANCE_PER_SECOND:.6g}) to {max_per_second:g}; {why}"
        )
