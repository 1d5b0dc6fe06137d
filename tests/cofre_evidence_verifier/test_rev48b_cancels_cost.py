"""rev48b (review of 4991274): `dual_control_log.cancels` parses its ceremony's first
proposal document again for every cancel entry.

A hostile bundle holds one proposal entry whose ``document`` is a stored signed request
of the log's largest size (64 KiB: `audit.log.MAX_DOCUMENT`; it need not verify to be
parsed) and N small ``key.rotation.cancel`` entries naming that ceremony. Each cancel
costs a strict JSON parse and a base64 decode of the 64 KiB document: N x 64 KiB of work
for N x ~200 bytes of bundle (an amplification of ~300). `proposal_runs` does the same
per start (pre-existing). Memoizing the digest by proposal index makes it one parse per
ceremony (`_first_proposal`). Failed on 4991274: 5,000 parses. Counted, not timed.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from cofre_evidence_verifier import dual_control_log
from cofre_evidence_verifier.dual_control_log import cancels, index_pool

CEREMONY = "5b8e0f6a-3c2d-4e1f-9a7b-2c3d4e5f6a7b"
N = 5_000


def _document() -> str:
    return json.dumps(
        {
            "method": "POST",
            "authority": "localhost",
            "path": "/v1/admin/keys/rotations",
            "query": "",
            "content_digest": "x",
            "signature_input": 'cofre=("@method");created=1;nonce="n";keyid="k"',
            "signature": "cofre=:AAAA:",
            "body": base64.b64encode(b"{" + b" " * 47_000 + b"}").decode(),
        }
    )


def test_cancels_parse_each_proposal_once(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = {
        0: {
            "action": "key.rotation.propose",
            "outcome": "success",
            "key_id": CEREMONY,
            "document": _document(),
        }
    }
    for i in range(1, N + 1):
        pool[i] = {"action": "key.rotation.cancel", "outcome": "success", "key_id": CEREMONY}
    by = index_pool(pool)
    calls = 0
    real = dual_control_log.signed_proposal_digest

    def counted(entry: dict[str, Any]) -> str | None:
        nonlocal calls
        calls += 1
        return real(entry)

    monkeypatch.setattr(dual_control_log, "signed_proposal_digest", counted)
    cancels(pool, by)
    assert calls <= 1, f"{calls} parses of one proposal document for {N} cancel entries"
