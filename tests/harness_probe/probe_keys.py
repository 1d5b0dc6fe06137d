"""Run only by tests/test_harness.py in a child pytest: this module rotates a key on the
token the session shares and passes; the guard must fail it by name. Not collected by
the main suite (no test_ prefix)."""

from __future__ import annotations

from hsm.keys import KeyHierarchy, KeyKind
from hsm.provider import HSMProvider


def test_rotates_the_shared_token_s_key_encryption_key(hsm_provider: HSMProvider) -> None:
    KeyHierarchy(hsm_provider).create(KeyKind.KEK, 2)
