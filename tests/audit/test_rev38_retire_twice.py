"""Review rev38 of 6fbdbfd against `cofre audit retire`: a KEK, fingerprint or audit
key label recorded as two different keys is never used (the operator holding the PIN
and the log's writer destroyed the ceremony's key, made another under its label and
registered it). But retire carried forward only each label's latest record, and only
when it lay in the dropped partition: once the partition holding the ceremony's own
registration was retired (the oldest first, and `cofre-*-v1` lie there), only the
substitute's record was left, the label named one key again, and the vault used the
key no ceremony made, silently (readiness passing). Retire now carries forward every
key a dropped partition registers under a label that no record left online names,
then the label's latest again, so the registry reads as it did before the retire.
Real PostgreSQL partitions and moto's S3 as the archive."""

from __future__ import annotations

from sqlalchemy import Engine

from audit.archive import archive_log
from audit.retention import retire_partitions
from hsm.provider import HSMProvider
from infra_pci.objectstore import S3ObjectStore
from tests.audit.test_archive import PREFIX, sequence
from tests.audit.test_retention import NOW, _old_log, _registry, pg  # noqa: F401 - fixture
from vault.key_registry import KeyRegistry
from vault.signing import HSMTreeHeadSigner


def test_a_label_registered_as_two_keys_stays_refused_after_retire(
    pg: Engine,  # noqa: F811 - the fixture
    signer: HSMTreeHeadSigner,
    s3: S3ObjectStore,
    hsm_provider: HSMProvider,
) -> None:
    _old_log(pg)  # cofre-fp-v1 registered as "f-old", then as "f-new" a month later
    registry = KeyRegistry(pg, hsm_provider)
    before = registry.registered(fresh=True)
    assert before["cofre-fp-v1"].cka_id is None, "registered as two keys: never used"
    sequence(pg, signer)
    archive_log(pg, s3, prefix=PREFIX, max_entries=8)
    retire_partitions(pg, s3, PREFIX, signer.public_key_pem(), online_months=3, now=NOW)
    after = registry.registered(fresh=True)
    assert after["cofre-fp-v1"] == before["cofre-fp-v1"], (
        f"after retire the label names one key again: {after['cofre-fp-v1']}"
    )
    assert after == before
    assert _registry(pg)["cofre-fp-v1"] == "f-new"  # the latest record is still last
