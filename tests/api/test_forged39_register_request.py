"""Session 39: a ``register`` ceremony through the API. Its proposal names exactly one
token key (label, CKA_ID, check value), and no other kind names one: the signed body is
what the key registry later compares its record with (`vault._signed_registration`).
Then the whole repair over mTLS with the officers' tokens: a forged `key.register` of
the KEK's label stops tokenize, the officers' ceremony restores it."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from api.models import RotationRequest
from hsm.keys import KeyKind
from tests.api.conftest import VaultServer
from tests.api.test_forged_ceremony_rows import ROTATIONS
from tests.support.audit_trail import append_registration
from tests.support.pans import card_number
from tests.support.registrations import served_registration_report

KEY = {"label": "cofre-kek-v2", "cka_id": "a2Vr", "check": "kcv:1a2b3c"}


def test_a_register_proposal_names_label_cka_id_and_check() -> None:
    assert RotationRequest.model_validate({"kind": "register", **KEY}).label == "cofre-kek-v2"
    for missing in KEY:
        named = {k: v for k, v in KEY.items() if k != missing}
        with pytest.raises(ValidationError, match="names label, cka_id and check"):
            RotationRequest.model_validate({"kind": "register", **named})


def test_no_other_kind_names_a_key() -> None:
    assert RotationRequest.model_validate({"kind": "kek"}).label is None
    with pytest.raises(ValidationError, match="only a register ceremony names a key"):
        RotationRequest.model_validate({"kind": "kek", **KEY})


def _tokenize(vault_server: VaultServer) -> httpx.Response:
    with vault_server.client("payments") as client:
        pan = card_number("411111", 3939)
        return client.post("/v1/tokenize", json={"pan": pan, "format": "pan_bin6_last4"})


def test_officers_repair_a_forged_kek_registration_through_the_api(
    vault_server: VaultServer,
) -> None:
    """The whole path: a forged row stops tokenize (503 `hsm_key_unregistered`); Alice
    proposes with her certificate and token, Bob approves with his; tokenize answers."""
    registry = vault_server.runtime.service.keyring.registry
    label = registry.current_label(KeyKind.KEK)
    genuine = registry.registered(fresh=True)[label].as_details()
    engine = vault_server.runtime.engine
    append_registration(engine, label, {"label": label, "cka_id": "00", "check": "000000"})
    registry.registered(fresh=True)
    refused = _tokenize(vault_server)
    assert (refused.status_code, refused.json()["code"]) == (503, "hsm_key_unregistered")
    with vault_server.client("officer-alice") as alice:
        proposed = alice.post(ROTATIONS, json={"kind": "register", **genuine})
    assert proposed.status_code == 201, proposed.text
    with vault_server.client("officer-bob") as bob:
        approved = bob.post(f"{ROTATIONS}/{proposed.json()['id']}/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "completed"
    registry.registered(fresh=True)
    answered = _tokenize(vault_server)
    # Session 45: CI once answered 503 here; the report names why the record was not
    # counted, should it happen again.
    why = served_registration_report(vault_server, label)
    assert answered.status_code == 200, f"{answered.text}\n{why}"
