"""The policy entry records the text's SHA-256 exactly, even when the hex digest holds
a digit run that looks like a card number (masking it would break the evidence)."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime

from audit.log import canonical_payload
from cofre.redaction import mask_pan_like
from vault.policy_record import policy_event


def test_a_digest_that_looks_like_a_card_number_is_kept() -> None:
    text = next(
        candidate
        for candidate in (f"# policy {i}\n" for i in itertools.count())
        if mask_pan_like(hashlib.sha256(candidate.encode()).hexdigest())
        != hashlib.sha256(candidate.encode()).hexdigest()
    )
    event = policy_event("policy.reload", actor="cofre", source="/etc/cofre/policy.toml", text=text)
    entry = json.loads(canonical_payload(event, datetime(2026, 12, 1, tzinfo=UTC)))
    assert entry["details"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert entry["document"] == text
