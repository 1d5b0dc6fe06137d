"""Is a card security code in this text? A three- or four-digit code also turns up by
chance inside timestamps (``41.737246Z``), request ids, UUIDs and digit tokens, so a
plain substring test fails about one run in a hundred. The code counts as shown when it
stands alone: not glued to a letter, a digit or the ``.:-_`` of those identifiers, the
way it would appear as a JSON value (``"737"``, ``: 737``) or a form field (``=737``)."""

from __future__ import annotations

import re


def shows_code(text: str | bytes, code: str) -> bool:
    """True when `code` appears in `text` as a value of its own."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    pattern = rf"(?<![0-9A-Za-z.:_\-]){re.escape(code)}(?![0-9A-Za-z])"
    return re.search(pattern, text) is not None
