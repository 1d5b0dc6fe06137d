"""Run only by tests/test_harness.py after probe_keys.py: a module that changes nothing
passes, so the guard reports a change once, against the module that made it."""

from __future__ import annotations

from hsm.keys import KeyHierarchy, KeyKind
from hsm.provider import HSMProvider


def test_finds_the_key_the_previous_module_left(hsm_provider: HSMProvider) -> None:
    assert KeyHierarchy(hsm_provider).versions(KeyKind.KEK) == [1, 2]
