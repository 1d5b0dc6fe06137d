"""The policy entry records the text's SHA-256 exactly, even when the hex digest holds
a digit run that looks like a card number (masking it would break the evidence)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from datetime import UTC, datetime

from audit.log import canonical_payload
from cofre.redaction import mask_pan_like
from vault.policy_record import policy_event


def test_a_digest_that_looks_like_a_card_number_is_kept() -> None:
    # A policy text whose digest holds twelve decimal digits in a row (one in five does).
    text = next(
        candidate
        for candidate in (f"# policy {i}\n" for i in itertools.count())
        if re.search(r"[0-9]{12}", hashlib.sha256(candidate.encode()).hexdigest())
    )
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert mask_pan_like(digest) == digest  # the detector leaves digests whole, too
    event = policy_event("policy.reload", actor="cofre", source="/etc/cofre/policy.toml", text=text)
    entry = json.loads(canonical_payload(event, datetime(2026, 12, 1, tzinfo=UTC)))
    assert entry["details"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert entry["document"] == text
