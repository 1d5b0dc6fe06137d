"""Review 35: a `cofre` process drops ``SSLKEYLOGFILE`` from its environment before any
command runs, so that no library Cofre does not configure writes its TLS secrets.

Cofre's own contexts write no key log (`cofre.tls`; tests/cofre/test_rev35_tls_keylog.py),
but botocore makes its own, and copies ``SSLKEYLOGFILE`` into them: the vault's RDS IAM
tokens are signed with credentials botocore fetches over TLS (STS, for IRSA), the audit
archive goes to an object store, `cofre infra` speaks to AWS. With the variable set,
those sessions' secrets went to its file. Here `cofre infra plan` is driven, in
process, against a real TLS peer standing in for AWS (``AWS_ENDPOINT_URL``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.pki import ensure_dev_pki
from cofre_cli.main import app
from tests.support.tls_peer import key_log_secrets, running_peer


def test_a_cofre_command_writes_no_tls_secrets_through_a_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = ensure_dev_pki(tmp_path / "pki", identities=())
    keylog = tmp_path / "tls-secrets.log"
    config = tmp_path / "infra.toml"
    config.write_text('peer_vpc_id = "vpc-0rev35"\nallowed_source_cidrs = ["10.0.8.0/22"]\n')
    with running_peer(pki, content_type="text/xml", body=b"<nothing/>") as peer:
        for name, value in {
            "SSLKEYLOGFILE": str(keylog),
            "AWS_ENDPOINT_URL": peer.url,
            "AWS_CA_BUNDLE": str(pki.ca),
            "AWS_ACCESS_KEY_ID": "AKIAREV35TESTONLY",
            "AWS_SECRET_ACCESS_KEY": "rev35-test-only",
            "AWS_MAX_ATTEMPTS": "1",
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            monkeypatch.setenv(name, value)
        result = CliRunner().invoke(app, ["infra", "plan", "--config", str(config)])
        # What the stand-in answered is no EC2 answer; the call itself reached it.
        assert peer.received, result.output
    assert key_log_secrets(keylog) == []
