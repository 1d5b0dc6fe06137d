"""The vault's calls handed to the group committer without a wait (`Pending`, issue 21):
what they answer, raise and audit is what the synchronous calls do."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied
from policies.loader import parse_policy
from tests.vault.conftest import LEDGER, PAYMENTS, STRANGER, TEST_POLICY
from vault.errors import IdempotencyConflict, StorageUnavailable, TokenNotFound
from vault.models import Pending
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

VISA = Pan("4111111111111111")
MC = Pan("5555555555554444")


def _entries(engine: Engine, action: str) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        payloads = connection.execute(sa.text("SELECT payload FROM audit_entries")).scalars()
        return [e for p in payloads if (e := json.loads(p)).get("action") == action]


def _refused_and_audited(
    pending: Pending[Any], error: type[Exception], engine: Engine, action: str, code: str
) -> None:
    """Once committed `pending` is no plain answer; finishing raises `error` and audits
    one failed `action` entry with `code`."""
    pending.committed.result(10)
    assert pending.answer() is None
    with pytest.raises(error):
        pending.finish()
    failed = [e for e in _entries(engine, action) if e["outcome"] == "failed"]
    assert [e["details"]["error"] for e in failed] == [code]


def test_a_tokenize_is_answered_once_committed_as_the_call_would(service: VaultService) -> None:
    pending = service.tokenize_pending(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4"))
    pending.committed.result(10)
    record = pending.answer()
    assert record is not None
    assert pending.finish() == record
    again = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4"))
    assert again.token == record.token  # stored and convergent


def test_a_conflict_is_not_a_plain_answer_and_finishing_raises_and_audits_it(
    service: VaultService, engine: Engine
) -> None:
    service.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random", idempotency_key="k1"))
    pending = service.tokenize_pending(
        PAYMENTS, TokenizeRequest(MC, "card_random", idempotency_key="k1")
    )
    _refused_and_audited(pending, IdempotencyConflict, engine, "tokenize", "idempotency_conflict")


def test_a_refusal_before_the_transaction_is_raised_at_once(service: VaultService) -> None:
    with pytest.raises(PolicyDenied):
        service.tokenize_pending(STRANGER, TokenizeRequest(VISA, "pan_bin6_last4"))
    with pytest.raises(PolicyDenied):
        service.detokenize_pending(STRANGER, "tok_nothing")


def test_detokenize_is_answered_once_committed_and_a_miss_is_finished_and_audited(
    service: VaultService, engine: Engine
) -> None:
    token = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4")).token
    masked = service.detokenize_pending(LEDGER, token)
    masked.committed.result(10)
    answer = masked.answer()
    assert answer is not None
    assert answer.pan is None
    assert answer.masked == VISA.masked()
    only_masked = service.detokenize_pending(PAYMENTS, token, masked_only=True)
    only_masked.committed.result(10)
    assert only_masked.finish() == only_masked.answer()
    missing = service.detokenize_pending(LEDGER, "4111110000001111")
    _refused_and_audited(missing, TokenNotFound, engine, "detokenize", "token_not_found")


def test_without_a_committer_a_failed_commit_is_storage_unavailable_and_audited(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """With no group committer (`cofre tokens purge`'s service) the transaction runs at
    once; its result counts only once committed, and a failed COMMIT is the storage
    error the call raises, audited as a failure (review 11)."""
    service = VaultService(
        engine,
        hsm_provider,
        PolicyEngine(parse_policy(TEST_POLICY, kind="toml").policy),
        group_commit=False,
    )
    service.initialize()
    failing = [True]

    def refuse_commit(_connection: object) -> None:
        if failing[0]:
            failing[0] = False  # this COMMIT only; the refusal's audit entry commits
            raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    event.listen(engine, "commit", refuse_commit)
    try:
        with pytest.raises(StorageUnavailable):
            service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4"))
    finally:
        event.remove(engine, "commit", refuse_commit)
        service.close()
    failed = [e for e in _entries(engine, "tokenize") if e["outcome"] == "failed"]
    assert [e["details"]["error"] for e in failed] == ["storage_unavailable"]
