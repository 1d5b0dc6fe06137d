"""Review 28: one stolen client certificate of each non-officer identity of the dev
policy (payments, store, ledger, getnet-adapter, auditor) against the real app (real
mutual TLS, a real vault, a fake acquirer for the relay).

A test named ``test_finding_...`` shows a gap and FAILS on the reviewed main (its
docstring: severity, what the attacker gains, the fix suggested); the others pin a
property that held when probed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.audit_trail import new_request_id, request_entries
from tests.support.fake_acquirer import FakeAcquirer

VISA = "4111111111111111"
AMEX = "378282246310005"
JSON = {"content-type": "application/json"}


def _untimed(line: str) -> object:
    """A JSON log line without its ``timestamp`` (any other line as it is)."""
    try:
        event = json.loads(line)
    except ValueError:
        return line
    return {k: v for k, v in event.items() if k != "timestamp"} if isinstance(event, dict) else line


def _relay_policy(acquirer: FakeAcquirer) -> str:
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    return f"""
[relay_routes.acq]
identities = ["spiffe://cofre/getnet-adapter"]
upstream = "{acquirer.url}/v1/authorize"
detokenize = ["/card/number"]
ca_bundle = "{ca}"
"""


@pytest.fixture
def relay_vault(
    tmp_path: Path, hsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> Iterator[tuple[VaultServer, FakeAcquirer]]:
    """A vault whose getnet-adapter (scope out) may relay to a fake acquirer that
    records what it receives (`received`) and answers ``{"status": "APPROVED"}``."""
    acquirer.answer = lambda body: (200, {"status": "APPROVED"})
    with running_vault(tmp_path, hsm_provider, extra_policy=_relay_policy(acquirer)) as vault:
        yield vault, acquirer


# --- R28-1: odd JSON in a relay *request* body is a 500 after the card was revealed ----

ODD_REQUEST_VALUES = {
    "NaN": "NaN",
    "Infinity": "Infinity",
    "1e999": "1e999",
    "lone surrogate": '"\\ud800"',
}


@pytest.mark.parametrize("odd", list(ODD_REQUEST_VALUES))
def test_odd_json_in_a_relay_request_is_refused_before_the_reveal(
    relay_vault: tuple[VaultServer, FakeAcquirer], odd: str
) -> None:
    """R28-1, Medium (fixed: refused ``422 invalid_relay_body`` before any reveal, and
    any failure of the send that is not the vault's own is audited as
    ``upstream_unavailable``, tests/vault/test_relay_send_failures.py). ``json.loads``
    (FastAPI's, and the hot routes') takes ``NaN``, ``Infinity``, ``1e999`` and a lone
    surrogate escape; the relay body is a free
    ``dict[str, Any]``, so they reach `vault.operations.relay.relay`, which detokenizes
    the card and commits the ``relay.send`` reveal entry (and, on a card route, deletes
    the held security code) and only then has httpx encode the outgoing body
    (``json.dumps(allow_nan=False)``, then UTF-8), which raises ``ValueError`` /
    ``UnicodeEncodeError``: not a `CofreError`, so the relay's outcome entry is never
    written and the caller gets ``500 internal_error`` (review 43 fixed the same values
    in the upstream's *answer*, not in the request). What a holder of the adapter's
    certificate (out of PCI scope) gains: a 500 at will on the relay route, and an audit
    trail that shows the card revealed for a relay with no outcome (PCI DSS 10.2.1:
    nothing says whether it went upstream). Fix: refuse such a body before the reveal
    (``422 invalid_relay_body``: parse relay bodies with ``parse_constant`` raising and
    reject lone surrogates, or check ``json.dumps(body, allow_nan=False)
    .encode("utf-8")`` in `_refuse_deep`), and answer any non-`CofreError` of `send`
    with an audited outcome (``upstream_unavailable``)."""
    vault, acquirer = relay_vault
    with vault.client("payments") as payments:
        token = payments.post("/v1/tokenize", json={"pan": VISA, "format": "pan_last4"}).json()[
            "token"
        ]
    rid = new_request_id()
    body = '{"card": {"number": "' + token + '"}, "amount": ' + ODD_REQUEST_VALUES[odd] + "}"
    with vault.client("getnet-adapter") as adapter:
        relayed = adapter.post("/v1/relay/acq", content=body, headers={**JSON, "x-request-id": rid})
        status = relayed.status_code
    entries = request_entries(vault.runtime.engine, rid)
    revealed = [e for e in entries if e.get("action") == "relay.send"]
    outcomes = [e for e in entries if e.get("action") == "relay"]
    assert acquirer.received == []
    # The finding was a 500, and a reveal with no outcome.
    assert status == 422, (status, [(e["action"], e["outcome"]) for e in entries])
    assert relayed.json()["code"] == "invalid_relay_body"
    assert relayed.headers["content-type"] == "application/problem+json"
    assert not revealed
    assert [(e["outcome"], e["details"]["error"]) for e in outcomes] == [
        ("failed", "invalid_relay_body")
    ]


def test_a_relay_body_of_odd_json_with_no_token_place_is_refused(
    relay_vault: tuple[VaultServer, FakeAcquirer],
) -> None:
    """Holds: a relay body whose token place is missing, not a string or nested past 64
    levels is 422 ``invalid_relay_body`` (problem+json) before any reveal; a token of no
    readable domain, or 10,000 digits long, is 404 ``token_not_found``."""
    vault, acquirer = relay_vault
    bodies = {
        '{"card": "x"}': 422,
        '{"card": {"number": 4111111111111111}}': 422,
        "{}": 422,
        '{"card": {"number": "tok"}, "x": ' + "[" * 200 + "1" + "]" * 200 + "}": 422,
        '{"card": {"number": "4111110000001111"}}': 404,
        '{"card": {"number": "' + "4" * 10_000 + '"}}': 404,
    }
    with vault.client("getnet-adapter") as adapter:
        for body, expected in bodies.items():
            refused = adapter.post("/v1/relay/acq", content=body, headers=JSON)
            assert refused.status_code == expected, (body[:40], refused.text)
            assert refused.headers["content-type"] == "application/problem+json"
    assert acquirer.received == []


# --- R28-4: one rate unit bought ~100 ms of the PAN detector on the worker's event loop -

# Digits in groups of one or two, joined by the loose separators (space, comma, hyphen):
# no 12-19 digit Luhn-valid window, so the value is accepted, but every chain is long:
# `_card_windows` / `_luhn_window` ran ~1,300 Luhn checks per 256-character value (3-5 ms
# a value, 16 a call on the event loop; a 60 KiB echoed relay answer 0.3 s). The review's
# timed tests are replaced by counted ones (the house rule: never pass or fail on the
# clock): tests/cofre/test_redaction_linear.py counts the detector's Luhn work, now linear
# in the text (at most ~9 reads a character), and proves it answers as the old rule did.
SLOW_VALUE = ("- 92,9" * 60)[:256]


def test_metadata_shaped_for_the_pan_detector_is_accepted_and_a_batch_of_it_refused_whole(
    vault_server: VaultServer,
) -> None:
    """R28-4 (what the API answers, unchanged by the linear detector): the shaped value is
    no card, so it is stored; a batch of 40 items carrying it whose last item is
    Luhn-invalid is refused ``422 batch_item_invalid`` at item 40. The refusal costs the
    detector's work on the 40 items, now linear in the body (bounded by its size)."""
    metadata = {f"k{index:02d}" + "x" * 50: SLOW_VALUE for index in range(16)}
    batch = [{"pan": "4000000000000051", "format": "uuid", "metadata": metadata}] * 40
    batch.append({"pan": "4000000000000052", "format": "uuid"})  # Luhn-invalid: refused
    with vault_server.client("payments") as client:
        stored = client.post(
            "/v1/tokenize", json={"pan": "4000000000000051", "format": "uuid", "metadata": metadata}
        )
        refused = client.post("/v1/tokenize/batch", json={"items": batch}, timeout=120)
    assert stored.status_code == 200, stored.text
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "batch_item_invalid"
    assert refused.json()["item"] == 40


# --- What held -------------------------------------------------------------------------

ODD_BODIES = {
    "a 5,000-digit integer": '{"pan": "4111111111111111", "format": "uuid", "ttl_seconds": '
    + "9" * 5000
    + "}",
    "1e400": '{"pan": "4111111111111111", "format": "uuid", "ttl_seconds": 1e400}',
    "NaN": '{"pan": "4111111111111111", "format": "uuid", "ttl_seconds": NaN}',
    "lone surrogate in a name": '{"pan": "4111111111111111", "format": "uuid", '
    '"cardholder_name": "Ana \\ud800"}',
    "lone surrogate in metadata": '{"pan": "4111111111111111", "format": "uuid", '
    '"metadata": {"\\ud800": "a"}}',
    "fullwidth digits": '{"pan": "\\uff14\\uff11\\uff11\\uff11\\uff11\\uff11\\uff11\\uff11'
    '\\uff11\\uff11\\uff11\\uff11\\uff11\\uff11\\uff11\\uff11", "format": "uuid"}',
    "Arabic-Indic digits": '{"pan": "\\u0664\\u0661\\u0661\\u0661\\u0661\\u0661\\u0661'
    '\\u0661\\u0661\\u0661\\u0661\\u0661\\u0661\\u0661\\u0661\\u0661", "format": "uuid"}',
    "a number for the card": '{"pan": 4111111111111111, "format": "uuid"}',
    "null": "null",
    "nested 30,000 deep": "[" * 30_000 + "]" * 30_000,
}


def test_odd_bodies_on_the_token_routes_are_problems_never_500s(vault_server: VaultServer) -> None:
    """Holds: huge integers, NaN, 1e400, lone surrogates in any field, non-ASCII digits,
    a number for a string, ``null`` and deep nesting are 400/413/422 problem+json on the
    single, hot and batch routes, and on the media types FastAPI parses (``+json``)."""
    with vault_server.client("payments") as client:
        for name, body in ODD_BODIES.items():
            for path, media in (
                ("/v1/tokenize", "application/json"),
                ("/v1/tokenize", "application/vnd.cofre+json"),
                ("/v1/lookup", "application/json"),
                ("/v1/detokenize-masked", "application/json"),
                ("/v1/tokenize/batch", "application/json"),
            ):
                answer = client.post(path, content=body, headers={"content-type": media})
                assert answer.status_code in {400, 413, 422}, (name, path, answer.text)
                assert answer.headers["content-type"] == "application/problem+json"


def test_another_domains_token_is_answered_as_one_that_does_not_exist(
    vault_server: VaultServer,
) -> None:
    """Holds: a token of the store's domain is, to payments, ledger and getnet-adapter
    (whose `read_domains` name payments only), the same 404 ``token_not_found`` as a
    token that never existed, on every read route they have; payments' own token is read
    by the store (its `read_domains`), masked."""
    with vault_server.client("store") as store:
        theirs = store.post("/v1/tokenize", json={"pan": VISA, "format": "uuid"}).json()["token"]
    with vault_server.client("payments") as payments:
        ours = payments.post("/v1/tokenize", json={"pan": AMEX, "format": "pan_bin6_last4"})
    never = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"
    reads = {
        "payments": [
            ("POST", "/v1/detokenize-masked"),
            ("GET", "/v1/tokens/"),
            ("DELETE", "/v1/tokens/"),
        ],
        "ledger": [
            ("POST", "/v1/detokenize"),
            ("POST", "/v1/detokenize-masked"),
            ("GET", "/v1/tokens/"),
        ],
        "getnet-adapter": [("POST", "/v1/detokenize-masked")],
    }
    for name, routes in reads.items():
        with vault_server.client(name) as client:
            for method, path in routes:
                seen = []
                for token in (theirs, never):
                    if method == "POST":
                        answer = client.post(path, json={"token": token})
                    else:
                        answer = client.request(method, path + token)
                    body = answer.json()
                    body.pop("request_id")
                    seen.append((answer.status_code, body))
                assert seen[0] == seen[1], (name, path, seen)
                assert seen[0][0] == 404
    with vault_server.client("store") as store:
        shown = store.post("/v1/detokenize-masked", json={"token": ours.json()["token"]})
    assert shown.json()["masked_pan"] == "37828******0005"


def test_a_security_code_refused_in_metadata_reaches_neither_audit_nor_logs(
    vault_server: VaultServer,
) -> None:
    """Holds: a code riding in a metadata key (``cvv_7391``) or value (``cvv: 2648``) is
    refused ``422 sensitive_authentication_data``; the refusal's audit entry carries the
    error code only and no log line holds the code (the key is echoed to its own sender
    in the problem's detail, nowhere else)."""
    rid = new_request_id()
    with vault_server.client("payments") as client:
        for metadata in ({"cvv_7391": "x"}, {"note": "cvv: 2648"}, {"pin.5937": "z"}):
            refused = client.post(
                "/v1/tokenize",
                json={"pan": VISA, "format": "uuid", "metadata": metadata},
                headers={"x-request-id": rid},
            )
            assert refused.status_code == 422
            assert refused.json()["code"] == "sensitive_authentication_data"
    # Every entry but its time, as the log lines below: an entry's microseconds hold any
    # four digits now and then ("17:57:13.739187Z" holds 7391, session 34's CI).
    entries = json.dumps(
        [
            {k: v for k, v in entry.items() if k != "time"}
            for entry in request_entries(vault_server.runtime.engine, rid)
        ]
    )
    # Every log line but its time: a line's microseconds hold any four digits now and
    # then ("00:29:39.173914Z" holds 7391).
    logs = json.dumps([_untimed(line) for line in vault_server.logs.getvalue().splitlines()])
    for code in ("7391", "2648", "5937"):
        assert code not in entries
        assert code not in logs
