"""Masking of anything that looks like a card number, for text that leaves the vault.

IN PCI SCOPE. The `Pan` type already masks itself; this is the safety net for text that
did not come through it (a log message, a header a client sent, an exception from a
library): every run of 12 to 19 ASCII digits becomes its first six digits, asterisks
and last four, the most PCI DSS 4.0.1 req. 3.4.1 allows to be shown. Longer digit runs
(not PANs) are masked entirely.
"""

from __future__ import annotations

import re
from typing import Final

_DIGIT_RUN: Final = re.compile(r"(?<![0-9])[0-9]{12,}(?![0-9])")
# Card numbers printed in groups: 4111 1111 1111 1111, 4111-1111-1111-1111.
_GROUPED: Final = re.compile(r"(?<![0-9])[0-9]{4}(?:[ -][0-9]{2,6}){2,4}(?![0-9])")


def _mask(match: re.Match[str]) -> str:
    run = match.group(0)
    digits = re.sub(r"[^0-9]", "", run)
    if not 12 <= len(digits) <= 19:
        return run if len(digits) < 12 else "*" * len(run)
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


def mask_pan_like(text: str) -> str:
    """Return `text` with every PAN-like digit run masked to BIN6 and last four."""
    return _GROUPED.sub(_mask, _DIGIT_RUN.sub(_mask, text))
