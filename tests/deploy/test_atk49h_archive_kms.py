"""deploy/k8s and docs/operations.md, atk49h: every reader of the audit archive may
decrypt it.

docs/operations.md "Audit growth" has the operator encrypt the archive bucket by default
under a customer-managed KMS key (`put-bucket-encryption`, `SSEAlgorithm` `aws:kms`),
so that CloudTrail records each use of the key (PCI DSS 10.3.2, 10.3.3). S3 then asks
`kms:Decrypt` on that key of whoever GETs an object. The archive job's policy has it;
the two roles that only read the archive were documented with `s3:GetObject` and
`s3:ListBucket` alone: `cofre-audit-retire` (the docs and both overlays' annotations:
"the two read actions on the prefix alone") and the vault's (`cofre-vault`: "Secrets from
files and RDS IAM" and both overlays). A role made as written gets AccessDenied from KMS
on the first segment: every monthly `cofre audit retire` fails (the online log is never
retired and PostgreSQL grows without bound, 10.5.1's machinery stopped), and an evidence
export covering a retired registration cannot read the originals it carries. The
sentence by the bucket's encryption also gave "the vault's role" `kms:GenerateDataKey`,
which a role that never writes does not need (7.2.2 least privilege)."""

from __future__ import annotations

import re

import pytest

from tests.deploy.test_manifests import ROOT

OVERLAYS = ("staging", "production")
# The accounts whose IRSA role only reads the archive.
READERS = {"serviceaccount.yaml": "cofre", "serviceaccount-audit-retire.yaml": "cofre-audit-retire"}


def _docs() -> str:
    return (ROOT / "docs" / "operations.md").read_text()


def _between(text: str, start: str, end: str) -> str:
    assert start in text, start
    return text.split(start, 1)[1].split(end, 1)[0]


def test_the_archive_bucket_is_encrypted_under_a_customer_kms_key() -> None:
    # The premise: what makes kms:Decrypt necessary for every reader.
    encryption = _between(_docs(), "aws s3api put-bucket-encryption", "aws s3api put-bucket-policy")
    assert '"SSEAlgorithm": "aws:kms"' in encryption
    assert '"KMSMasterKeyID": "arn:aws:kms:' in encryption


def test_the_retire_role_is_documented_with_kms_decrypt() -> None:
    section = _docs().split("## Deploy on Kubernetes", 1)[1]
    said = _between(section, "The archive's role", "```json")
    retire = said.split("`cofre-audit-retire`'s", 1)[1]
    assert "kms:Decrypt" in retire, said


def test_the_vault_role_is_documented_with_kms_decrypt() -> None:
    section = _docs().split("### Secrets from files and RDS IAM", 1)[1]
    said = _between(section, "Give the IRSA role", "```json")
    assert "kms:Decrypt" in said, said


def test_a_role_that_only_reads_is_not_given_generate_data_key() -> None:
    said = _between(_docs(), "The last three make the audit trail private", "366 days")
    # Whatever this sentence grants the vault's role, it is a reader's.
    for match in re.finditer(r"vault's role[^.]*", said):
        assert "kms:GenerateDataKey" not in match.group(0), match.group(0)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("path", sorted(READERS))
def test_each_overlay_s_reader_role_names_kms_decrypt(overlay: str, path: str) -> None:
    text = (ROOT / "deploy" / "k8s" / "overlays" / overlay / path).read_text()
    assert f"name: {READERS[path]}\n" in text
    assert "eks.amazonaws.com/role-arn" in text
    assert "kms:Decrypt" in text, (overlay, path)
