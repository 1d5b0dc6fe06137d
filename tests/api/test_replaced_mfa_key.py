"""Review cer: an officer's MFA key replaced in the policy (their token reported lost or
stolen) mid-ceremony. The proposal the old key signed kept its force: one other
officer's approval ran the rotation, though the only second factor behind the proposal
is a key the policy in force no longer trusts. An action counts only while the key that
signed it is still the officer's registered key, as an officer removed from the policy
no longer counts (review 38)."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.api.conftest import VaultServer
from tests.support.officers import software_officers

ROTATIONS = "/v1/admin/keys/rotations"


def _fresh_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_a_proposal_signed_by_a_replaced_mfa_key_cannot_run(vault_server: VaultServer) -> None:
    runtime = vault_server.runtime
    policy_file = runtime.settings.policy_file
    assert policy_file is not None
    original = policy_file.read_text()
    alice = software_officers()["officer-alice"]
    assert alice.pem in original
    with vault_server.client("officer-alice") as client:  # the thief, with Alice's token
        proposed = client.post(ROTATIONS, json={"kind": "fingerprint"})
    assert proposed.status_code == 201, proposed.text
    ceremony = proposed.json()["id"]
    try:
        # Alice reports her token stolen: the policy owner registers her new token's key.
        policy_file.write_text(original.replace(alice.pem, _fresh_pem()))
        assert runtime.reload_policy()
        with vault_server.client("officer-bob") as bob:
            approved = bob.post(f"{ROTATIONS}/{ceremony}/approve")
            state = bob.get(f"{ROTATIONS}/{ceremony}").json()["state"]
        assert approved.status_code == 409, approved.text
        assert approved.json()["code"] == "ceremony_invalid"
        assert state == "pending"
    finally:
        policy_file.write_text(original)
        runtime.reload_policy()
        with vault_server.client("officer-bob") as bob:
            bob.post(f"{ROTATIONS}/{ceremony}/cancel")
