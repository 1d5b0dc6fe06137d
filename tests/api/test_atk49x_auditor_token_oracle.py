"""Attack review atk49x: one stolen auditor certificate (no second factor) asks whether
the vault holds a token of its choosing, and which record it is.

A refusal that names a token names that token's record in its audit entry when the
vault holds it, in any domain (session 40, `vault._named_refusals`); session 41 made the
work and the answer of such a denial the same whether the token is held or not, since
the prober cannot read the log. An auditor can: `audit_read` gives it every entry
through `GET /v1/audit/proof/inclusion`, its own denials included. So the auditor sent
`GET /v1/tokens/<guess>` (403 `policy_denied`, as for any guess), read its own denial's
entry, and its `token_id` said whether the guess is a live token of any identity and
which record it is: the token's value tied to its whole history in the log (who
tokenized it, its reads, its security code). Not documented: the session 41 bound says
only that the held token's entry is 34 bytes longer, to a caller that cannot read it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.support.pans import card_number


def _size(auditor: httpx.Client) -> int:
    answer = auditor.get("/v1/audit/proof/inclusion", params={"index": 0})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["tree_size"])


def _own_denials(auditor: httpx.Client, start: int, wanted: int) -> list[dict[str, Any]]:
    """The auditor's own denied entries from leaf `start` on, read as it reads any entry."""
    deadline = time.monotonic() + 20
    while True:
        found: list[dict[str, Any]] = []
        index = start
        while True:
            answer = auditor.get("/v1/audit/proof/inclusion", params={"index": index})
            if answer.status_code != 200:
                break
            entry = json.loads(answer.json()["entry"])
            if entry["actor"] == "spiffe://cofre/auditor" and entry["outcome"] == "denied":
                found.append(entry)
            index += 1
        if len(found) >= wanted or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_an_auditor_cannot_tell_from_its_own_denials_whether_a_token_is_held(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    with running_vault(tmp_path, hsm_provider, database_url) as vault:
        with vault.client("payments") as shop:
            made = shop.post(
                "/v1/tokenize", json={"pan": card_number("411111", 4901), "format": "uuid"}
            )
        assert made.status_code == 200, made.text
        held = made.json()["token"]
        # The same shape, held by nobody.
        unheld = "0" * 8 + held[8:] if not held.startswith("0" * 8) else "1" * 8 + held[8:]

        with vault.client("auditor", signed=False) as auditor:
            start = _size(auditor)
            answers = [auditor.get(f"/v1/tokens/{token}") for token in (held, unheld)]
            assert [a.status_code for a in answers] == [403, 403]
            assert answers[0].json()["detail"] == answers[1].json()["detail"]
            denials = _own_denials(auditor, start, 2)

        assert len(denials) == 2, denials
        # What the auditor reads of its own two probes: the same, but for the request.
        assert [d["token_id"] for d in denials] == [None, None], (
            f"the auditor's denial entry names the record of the token it guessed: {denials}"
        )
        assert made.json()["token_id"] not in json.dumps(denials)
