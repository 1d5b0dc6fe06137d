"""`cofre keys approve ID --kind register` signs an approval of a key registration
without showing which key it registers (atk49o).

An approval's signature covers its path, `/v1/admin/keys/rotations/<id>/approve`, and the
id derives from the proposal's signature, whose signed body names the label, CKA_ID and
check value the registry will take as that label's key, over every unsigned record of it
(docs/key-ceremony.md, "A label a forged registration took"). So the approving officer's
token commits to that exact key. The CLI shows the ceremony before signing (the ceremony
review: `keys approve` signed blind), but for a `register` ceremony it shows only "key
registration": neither the API's ceremony view nor the CLI names the label or the key,
and `--kind register` (the page's procedure) checks only the kind. The second officer,
asked to repair `cofre-kek-v2`, approves whatever label and key the proposer named.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

# What the proposer names: a Cofre label and a key id and check value the approver is
# never shown (any values: the approval is signed before the vault looks at the token).
LABEL, CKA_ID, CHECK = "cofre-fp-v1", "0badc0ffee", "abcdef"


@pytest.fixture
def vault(tmp_path: Path, softhsm_token: SoftHSMToken) -> Iterator[VaultProcess]:
    process = make_vault(tmp_path / "v", softhsm_token, None)
    process.start()
    yield process
    process.stop()


def test_the_approver_is_shown_the_key_a_registration_names(vault: VaultProcess) -> None:
    vault.acknowledge_custody()
    proposed = vault.cofre(
        "keys", "register", "--label", LABEL, "--cka-id", CKA_ID, "--check", CHECK,
        "--as", "officer-alice",
    )  # fmt: skip
    assert proposed.returncode == 0, proposed.stderr
    ceremony = proposed.stdout.split()[1].rstrip(":")

    # Bob means to repair the KEK's label: told what this one registers, he signs nothing.
    other = vault.cofre(
        "keys", "approve", ceremony, "--kind", "register", "--label", "cofre-kek-v1",
        "--as", "officer-bob",
    )  # fmt: skip
    assert other.returncode == 1
    assert f"registers {LABEL}, not cofre-kek-v1: not approved" in other.stderr
    shown = vault.cofre("keys", "status", ceremony, "--as", "officer-bob")
    assert "approved by nobody yet" in shown.stdout, shown.stdout
    assert shown.returncode == 0, shown.stderr
    approved = vault.cofre("keys", "approve", ceremony, "--kind", "register", "--as", "officer-bob")
    # Whatever the vault then answers, what Bob's token signed for was shown first.
    for printed in (shown.stdout, approved.stdout):
        assert "key registration" in printed, printed
        assert LABEL in printed, f"the label the approval registers is not shown: {printed}"
        assert CKA_ID in printed, f"nor the key: {printed}"
        assert CHECK in printed, f"nor its check value: {printed}"
