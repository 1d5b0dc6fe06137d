"""`cofre evidence export` and `verify` as a QSA runs them, against `cofre serve` in its
own process: a chain of bundles made with `--previous` meets exactly."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hsm.provider import HSMProvider
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

VISA = "4111111111111111"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: SoftHSMToken
) -> Iterator[VaultProcess]:
    vault = make_vault(tmp_path_factory.mktemp("evidence-cli") / "v", softhsm_token, None)
    vault.start()
    yield vault
    vault.stop()


def _traffic(vault: VaultProcess) -> None:
    with vault.client() as c:
        token = c.post("/v1/tokenize", json={"pan": VISA, "format": "pan_last4"}).json()["token"]
    with vault.client("getnet-adapter") as c:
        assert c.post("/v1/detokenize", json={"token": token}).status_code == 200


def _later() -> str:
    return (datetime.now(UTC) + timedelta(minutes=1)).isoformat()


def test_chained_exports_meet_exactly(
    served: VaultProcess, tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    _traffic(served)
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    made = served.cofre(
        "evidence", "export", "--from", since, "--to", _later(), "--out", str(first)
    )
    assert made.returncode == 0, made.stderr
    _traffic(served)
    made = served.cofre(
        "evidence", "export", "--previous", str(first), "--to", _later(), "--out", str(second)
    )
    assert made.returncode == 0, made.stderr
    key = tmp_path / "audit.pem"
    # The vault serves a copy of the session's token: the same audit key.
    key.write_bytes(hsm_provider.public_key_pem("cofre-audit-v1"))
    checked = served.cofre(
        "evidence", "verify", str(second), "--public-key", str(key), "--previous", str(first)
    )
    assert checked.returncode == 0, checked.stdout
    assert "starts exactly where the previous bundle ended" in checked.stdout
    # A chained export that starts later than the previous ended is refused by name.
    _traffic(served)
    gap = served.cofre(
        "evidence",
        "export",
        "--previous",
        str(first),
        "--from",
        datetime.now(UTC).isoformat(),
        "--to",
        _later(),
        "--out",
        str(tmp_path / "c.tar.gz"),
    )
    assert gap.returncode == 1
    assert "evidence_chain_broken" in gap.stderr
    assert "in neither bundle" in gap.stderr
