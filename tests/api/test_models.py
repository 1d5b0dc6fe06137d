"""The API's response models that mirror a vault type stay its exact wire form.

`CeremonyResponse` is the documented shape (docs/openapi.json) of `vault.ceremony.Ceremony`:
the two are kept apart on purpose (the API's models are the HTTP contract, strict and
frozen; the vault's are plain values), and this test makes the copy a mirror, so a field
added to one fails here until the other has it.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import UTC, datetime, timedelta

import pytest

from api import models
from api.models import CeremonyResponse, no_card
from vault.ceremony import Ceremony


def test_ceremony_response_has_the_fields_of_a_ceremony() -> None:
    hints = typing.get_type_hints(Ceremony)
    vault_fields = {f.name: hints[f.name] for f in dataclasses.fields(Ceremony)}
    wire_fields = {name: f.annotation for name, f in CeremonyResponse.model_fields.items()}
    assert wire_fields == vault_fields


def test_a_ceremony_goes_out_unchanged() -> None:
    now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    ceremony = Ceremony(
        id="c-1",
        kind="kek",
        state="running",
        proposer="spiffe://cofre/officer-alice",
        approvers=["spiffe://cofre/officer-bob"],
        approvals_needed=1,
        approvals_counting=["spiffe://cofre/officer-bob"],
        created_at=now,
        expires_at=now + timedelta(hours=24),
        old_version=1,
        new_version=2,
        progress_done=3,
        progress_total=10,
        destroy_after=None,
        completed_at=None,
    )
    wire = CeremonyResponse.model_validate(ceremony.as_json())
    assert wire.model_dump() == dataclasses.asdict(ceremony)


def test_names_found_clean_are_kept_and_cards_never_are() -> None:
    # `no_card` keeps the names it found clean (a batch sends one format name a
    # thousand times); a name holding a card is refused every time and never kept, and
    # a full set of made-up names is emptied, not grown.
    card_name = "fmt_4111111111111111"
    for _ in range(2):
        with pytest.raises(ValueError, match="card number"):
            no_card(card_name)
        assert card_name not in models._CLEAN_NAMES
    assert no_card("pan_bin6_last4") == "pan_bin6_last4"
    assert "pan_bin6_last4" in models._CLEAN_NAMES
    for n in range(models._CLEAN_NAMES_MAX + 10):
        no_card(f"made_up_{n}")
    assert len(models._CLEAN_NAMES) <= models._CLEAN_NAMES_MAX
    with pytest.raises(ValueError, match="card number"):
        no_card(card_name)
