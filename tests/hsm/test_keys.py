"""The key hierarchy: labels and idempotent initialisation."""

from __future__ import annotations

import pytest

from hsm.keys import KeyHierarchy, KeyKind, key_label, parse_key_label
from hsm.provider import HSMProvider


def test_labels() -> None:
    assert key_label(KeyKind.KEK, 1) == "cofre-kek-v1"
    assert parse_key_label("cofre-fp-v12") == (KeyKind.FINGERPRINT, 12)
    assert parse_key_label("cofre-kek-v0") is None
    assert parse_key_label("cofre-kek-test-abc") is None
    with pytest.raises(ValueError, match="start at 1"):
        key_label(KeyKind.AUDIT, 0)


def test_initialize_is_idempotent(hsm_provider: HSMProvider) -> None:
    hierarchy = KeyHierarchy(hsm_provider)
    assert hierarchy.initialize() == []
    for kind in KeyKind:
        assert hierarchy.versions(kind) == [1]
        assert hierarchy.current_label(kind) == key_label(kind, 1)
