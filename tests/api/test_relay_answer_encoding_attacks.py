"""Attacks on what the relay hands back of an upstream's JSON answer (`vault.relay_client
._answer`, review 43's encodings).

`json.loads` takes more than JSON: ``NaN``, ``Infinity`` and ``-Infinity``, numbers so
large they become ``inf`` (``1e999``), and ``\\ud800`` escapes (or, decoded with
``surrogatepass``, their UTF-8 and UTF-16 bytes) that make a lone surrogate. The relay
answered what it parsed with Starlette's `JSONResponse`, which refuses all of them
(``allow_nan=False``, then UTF-8 encoding): an upstream that answers one (a hostile or
broken acquirer, or one that echoes the caller's body, which takes ``NaN`` too) turned
every relay to it into a 500 with no problem+json, after the card had gone upstream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from api.pki import issue_client
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.fake_acquirer import FakeAcquirer

VISA = "4111111111111111"


def _policy(acquirer: FakeAcquirer) -> str:
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    return f"""
[identities."spiffe://cofre/checkout"]
description = "A relaying service"
scope = "out"
operations = ["relay", "detokenize_masked"]
reveal = "masked"
read_domains = ["spiffe://cofre/payments"]

[relay_routes.acq]
identities = ["spiffe://cofre/checkout"]
upstream = "{acquirer.url}/v1/authorize"
detokenize = ["/card/number"]
ca_bundle = "{ca}"
"""


def relay_card(vault: VaultServer) -> dict[str, str]:
    """A relay body's card: a VISA tokenized by `payments`, with a certificate issued to
    `checkout`, the relaying identity of `_policy`'s route."""
    issue_client(vault.pki, "checkout")
    with vault.client("payments") as client:
        tokenized = client.post("/v1/tokenize", json={"pan": VISA, "format": "pan_last4"})
    assert tokenized.status_code == 200, tokenized.text
    return {"number": tokenized.json()["token"]}


ODD_VALUES: dict[str, Any] = {
    "nan": float("nan"),
    "infinity": float("inf"),
    "minus_infinity": float("-inf"),
    "lone_surrogate": "approved \ud800",
    "surrogate_key": {"\udfff": 1},
}


def test_odd_json_in_an_upstreams_answer_is_never_a_500(
    tmp_path: Path, hsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> None:
    which: list[str] = []

    def answer(body: dict[str, Any]) -> tuple[int, Any]:
        # The card the vault sent, echoed: answered as text, it is masked as text is.
        return 200, {"card": body["card"], "detail": ODD_VALUES[which[-1]]}

    acquirer.answer = answer
    with running_vault(tmp_path, hsm_provider, extra_policy=_policy(acquirer)) as vault:
        card = relay_card(vault)
        answers: dict[str, tuple[int, str | None]] = {}
        for name in ODD_VALUES:
            which.append(name)
            with vault.client("checkout") as checkout:
                try:
                    relayed = checkout.post("/v1/relay/acq", json={"card": card})
                except httpx.HTTPError:  # the connection dropped without an answer
                    answers[name] = (500, None)
                    continue
            answers[name] = (relayed.status_code, relayed.headers.get("content-type"))
            assert VISA not in relayed.text
    assert all(status != 500 for status, _ in answers.values()), answers
    for status, content_type in answers.values():
        assert status == 200 or content_type == "application/problem+json"
