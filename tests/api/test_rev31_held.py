"""Review 31: multi-step attacks by the holder of one stolen certificate at a time,
combining endpoints and identities. These held when probed and stay as regression
tests (the finding, R31-1, is in test_rev31_expiry.py).

`stranger` is a second in-scope service with a token domain of its own and every token
operation; `payments` is the victim domain; `getnet-adapter` is the out-of-scope
adapter tier (relay, masked reads of payments' tokens). An answer about a token the
attacker may not read must be the answer about a token that never existed: status,
code, body and headers, whatever the sequence of calls before it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.pki import issue_client
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.fake_acquirer import FakeAcquirer, running_acquirer

VICTIM = "4556737586899855"
OTHER = "4012888888881881"
ALL_FORMATS = '["pan_bin6_last4", "pan_bin8_last4", "pan_last4", "pan_fpe", "uuid"]'

STRANGER = f"""
[identities."spiffe://cofre/stranger"]
description = "Review 31: a second in-scope service with a domain of its own"
operations = ["tokenize", "detokenize", "detokenize_masked", "lookup", "metadata",
              "delete", "update"]
formats = {ALL_FORMATS}
reveal = "masked"
rate_limit = {{ per_second = 2000, burst = 4000 }}
quota = {{ detokenize_per_day = 1000000 }}
"""

# Two identical probes with small limits: one spends them on payments' tokens, the
# other on tokens that never existed.
PROBES = "".join(
    f"""
[identities."spiffe://cofre/{name}"]
operations = ["tokenize", "detokenize", "detokenize_masked", "metadata", "delete", "update"]
formats = ["uuid"]
reveal = "masked"
rate_limit = {{ per_second = 0.001, burst = 12 }}
quota = {{ detokenize_per_day = 3 }}
"""
    for name in ("probe-a", "probe-b")
)

# Headers that differ between any two answers, whatever they are about.
_VOLATILE = {"date", "x-request-id", "content-length"}


def _route(acquirer: FakeAcquirer) -> str:
    return f"""
[relay_routes.acq31]
identities = ["spiffe://cofre/getnet-adapter"]
upstream = "{acquirer.url}/v1/authorize"
detokenize = ["/card/number"]
ca_bundle = "{acquirer.ca}"
timeout_seconds = 5
"""


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[tuple[VaultServer, FakeAcquirer]]:
    tmp = tmp_path_factory.mktemp("rev31")
    with (
        running_acquirer(tmp / "acquirer-pki") as acquirer,
        running_vault(
            tmp / "vault", hsm_provider, extra_policy=STRANGER + PROBES + _route(acquirer)
        ) as vault,
    ):
        for name in ("stranger", "probe-a", "probe-b"):
            issue_client(vault.pki, name)
        yield vault, acquirer


def _shape(answer: httpx.Response, token: str) -> tuple[Any, ...]:
    """What an answer tells, with what every answer varies by taken out."""
    headers = sorted((k, v) for k, v in answer.headers.items() if k.lower() not in _VOLATILE)
    body: Any
    try:
        body = answer.json()
    except ValueError:
        body = answer.text
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "request_id"}
        body = {k: (v.replace(token, "T") if isinstance(v, str) else v) for k, v in body.items()}
    return answer.status_code, headers, body


def _tokenize(client: httpx.Client, pan: str, fmt: str, **extra: Any) -> dict[str, Any]:
    answer = client.post("/v1/tokenize", json={"pan": pan, "format": fmt, **extra})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _unheld_like(token: str) -> str:
    """A token of the same shape as `token` that no domain holds (its middle changed)."""
    if "-" in token:
        return "00000000-0000-4000-8000-000000000000"
    digits = list(token)
    for i in range(6, len(digits) - 4):
        digits[i] = str((int(digits[i]) + 5) % 10)
    return "".join(digits)


def test_another_domains_token_answers_a_stranger_as_a_token_that_never_existed(
    rig: tuple[VaultServer, FakeAcquirer],
) -> None:
    """Every token route, and the sequences a stranger can chain on them (delete then
    read, update then read, batch with a readable token), answers payments' live token
    as one that never existed, and leaves it as it was."""
    vault, _ = rig
    with vault.client("payments") as payments:
        held = _tokenize(payments, VICTIM, "pan_bin6_last4", metadata={"k": "v"})["token"]
        uuid_held = _tokenize(payments, VICTIM, "uuid")["token"]
    with vault.client("stranger") as stranger:
        own = _tokenize(stranger, OTHER, "pan_bin6_last4")["token"]
        for token in (held, uuid_held):
            _probe_sequences(stranger, token, own)
    with vault.client("payments") as payments:
        got = payments.get(f"/v1/tokens/{held}")
        assert got.status_code == 200, got.text
        assert got.json()["metadata"] == {"k": "v"}
        assert payments.get(f"/v1/tokens/{uuid_held}").status_code == 200


def _probe_sequences(stranger: httpx.Client, token: str, own: str) -> None:
    """Every token route, one after another, on `token` and on a token that never
    existed: the same answers."""
    never = _unheld_like(token)
    calls: list[tuple[str, str, Any]] = [
        ("GET", "/v1/tokens/{}", None),
        ("PATCH", "/v1/tokens/{}", {"metadata": {"a": "b"}}),
        ("PATCH", "/v1/tokens/{}", {"ttl_seconds": None}),
        ("POST", "/v1/detokenize", {"token": "{}"}),
        ("POST", "/v1/detokenize-masked", {"token": "{}"}),
        ("POST", "/v1/detokenize/batch", {"tokens": [own, "{}"]}),
        ("DELETE", "/v1/tokens/{}", None),
        ("GET", "/v1/tokens/{}", None),
    ]
    for method, path, body in calls:
        shapes = [
            _shape(
                stranger.request(
                    method, path.format(t), json=None if body is None else _fill(body, t)
                ),
                t,
            )
            for t in (token, never)
        ]
        assert shapes[0] == shapes[1], (method, path, body, shapes)


def test_another_domains_deleted_or_expired_token_is_one_that_never_existed(
    rig: tuple[VaultServer, FakeAcquirer],
) -> None:
    """A tombstone (payments deleted the token) and an expired token of payments' are,
    to a stranger, tokens that never existed: no `"deleted": false`, no 410."""
    vault, _ = rig
    with vault.client("payments") as payments:
        gone = _tokenize(payments, "4000056655665556", "pan_bin6_last4")["token"]
        assert payments.delete(f"/v1/tokens/{gone}").json()["deleted"] is True
        short = _tokenize(payments, "5105105105105100", "pan_last4", ttl_seconds=1)["token"]
        for _ in range(400):  # bounded: fails only if the token never expires
            if payments.get(f"/v1/tokens/{short}").status_code == 410:
                break
            time.sleep(0.05)
        assert payments.get(f"/v1/tokens/{short}").status_code == 410
    with vault.client("stranger") as stranger:
        own = _tokenize(stranger, OTHER, "uuid")["token"]
        _probe_sequences(stranger, gone, own)
        _probe_sequences(stranger, short, own)


def _fill(body: Any, token: str) -> Any:
    if isinstance(body, dict):
        return {k: _fill(v, token) for k, v in body.items()}
    if isinstance(body, list):
        return [_fill(v, token) for v in body]
    if body == "{}":
        return token
    return body


def test_an_idempotency_key_is_no_oracle_across_domains(
    rig: tuple[VaultServer, FakeAcquirer],
) -> None:
    """payments' idempotency key, sent by a stranger with payments' card, another card,
    and after payments deleted its token, is a key the stranger never used: a fresh
    token of its own domain every time, never 409 or 410, never payments' token."""
    vault, _ = rig
    key = "rev31-order-0001"
    with vault.client("payments") as payments:
        first = _tokenize(payments, VICTIM, "pan_last4", idempotency_key=key)
    with vault.client("stranger") as stranger:
        a = stranger.post(
            "/v1/tokenize", json={"pan": VICTIM, "format": "pan_last4", "idempotency_key": key}
        )
        assert a.status_code == 200, a.text
        assert a.json()["token"] != first["token"]
        assert a.json()["existing"] is False
        key2 = "rev31-order-0002"
    with vault.client("payments") as payments:
        second = _tokenize(payments, OTHER, "pan_bin6_last4", idempotency_key=key2)
        assert payments.delete(f"/v1/tokens/{second['token']}").json()["deleted"] is True
        # payments' own retry is 410 (the card went with the token).
        retry = payments.post(
            "/v1/tokenize", json={"pan": OTHER, "format": "pan_bin6_last4", "idempotency_key": key2}
        )
        assert retry.status_code == 410, retry.text
    with vault.client("stranger") as stranger:
        b = stranger.post(
            "/v1/tokenize",
            json={"pan": VICTIM, "format": "pan_bin6_last4", "idempotency_key": key2},
        )
        assert b.status_code == 200, b.text
        batch = stranger.post(
            "/v1/tokenize/batch",
            json={
                "items": [
                    {"pan": OTHER, "format": "pan_bin6_last4", "idempotency_key": key},
                    {"pan": VICTIM, "format": "pan_bin6_last4", "idempotency_key": key2},
                ]
            },
        )
        # key2 is now the stranger's own key for VICTIM (call b): the batch item that
        # sends it with VICTIM is a retry; key with OTHER conflicts only with the
        # stranger's own use of it (VICTIM in pan_last4).
        assert batch.status_code == 422, batch.text
        assert batch.json()["item_code"] == "idempotency_conflict", batch.text
        assert batch.json()["item"] == 0


def test_lookup_and_convergence_do_not_see_another_domains_cards(
    rig: tuple[VaultServer, FakeAcquirer],
) -> None:
    """A card payments holds, in every convergent format, is one the stranger's lookup
    does not find and its tokenize converges on no token of payments'. FF1 tokens are
    bound to the domain: the same card in pan_fpe gives two domains two tokens."""
    vault, _ = rig
    card = "5555555555554444"
    with vault.client("payments") as payments:
        held = {
            fmt: _tokenize(payments, card, fmt)["token"]
            for fmt in ("pan_bin6_last4", "pan_bin8_last4", "pan_fpe")
        }
    with vault.client("stranger") as stranger:
        for fmt, token in held.items():
            found = stranger.post("/v1/lookup", json={"pan": card, "format": fmt})
            assert found.status_code == 200, found.text
            assert found.json()["tokens"] == [], (fmt, found.text)
            mine = _tokenize(stranger, card, fmt)
            assert mine["token"] != token, fmt
            assert mine["existing"] is False, fmt


def test_the_relay_answers_an_unreadable_token_as_one_that_never_existed(
    rig: tuple[VaultServer, FakeAcquirer],
) -> None:
    """The adapter (out of scope) relays a token of the stranger's domain, which it may
    not read, and one that never existed: one answer, nothing sent upstream."""
    vault, acquirer = rig
    with vault.client("stranger") as stranger:
        foreign = _tokenize(stranger, "378282246310005", "pan_last4")["token"]
    sent = len(acquirer.received)
    with vault.client("getnet-adapter") as adapter:
        shapes = [
            _shape(adapter.post("/v1/relay/acq31", json={"card": {"number": t}}), t)
            for t in (foreign, _unheld_like(foreign))
        ]
    assert shapes[0] == shapes[1], shapes
    assert len(acquirer.received) == sent


def _spend(client: httpx.Client, target: str) -> list[tuple[int, str | None, bool]]:
    """Spend the caller's quota and rate limit on `target` between its own calls; what
    each answer was (status, code, whether it has Retry-After)."""
    own = _tokenize(client, OTHER, "uuid")["token"]
    answers = [
        client.post("/v1/detokenize", json={"token": target}),
        client.post("/v1/detokenize/batch", json={"tokens": [target, target]}),
        client.post("/v1/detokenize", json={"token": own}),
        client.post("/v1/detokenize-masked", json={"token": target}),
        client.patch(f"/v1/tokens/{target}", json={"metadata": {}}),
        client.delete(f"/v1/tokens/{target}"),
        client.get(f"/v1/tokens/{target}"),
        client.post("/v1/detokenize", json={"token": own}),
    ]
    answers += [client.get(f"/v1/tokens/{own}") for _ in range(6)]
    return [(a.status_code, a.json().get("code"), "retry-after" in a.headers) for a in answers]


def test_limits_spent_on_another_domains_token_tell_nothing(
    rig: tuple[VaultServer, FakeAcquirer],
) -> None:
    """The quota and rate limit a caller spends probing payments' token run out on the
    same call as when it probes a token that never existed."""
    vault, _ = rig
    with vault.client("payments") as payments:
        held = _tokenize(payments, "6011111111111117", "uuid")["token"]
    with vault.client("probe-a") as a, vault.client("probe-b") as b:
        spent_a = _spend(a, held)
        spent_b = _spend(b, _unheld_like(held))
    assert spent_a == spent_b
    assert (429, "rate_limited", True) in spent_a


def _bucket_guesses(card: str, count: int) -> list[str]:
    """`count` Luhn-valid cards of `card`'s BIN and last four, other than `card`."""
    from vault.pan import Pan  # noqa: PLC0415

    out: list[str] = []
    middle = 0
    while len(out) < count:
        guess = card[:6] + f"{middle:06d}" + card[-4:]
        middle += 1
        if guess != card and Pan(guess).luhn_valid():
            out.append(guess)
    return out


def test_an_idempotency_conflict_in_a_batch_counts_against_the_oracle_guard(
    rig: tuple[VaultServer, FakeAcquirer],
) -> None:
    """A key payments' domain used for a card, sent with guesses one batch item at a
    time: a conflict must cost the guess as a single call's 409 does, so the guard
    stops the guessing within `max_pans_per_bucket`."""
    vault, _ = rig
    card = "4916338506082832"
    key = "rev31-batch-guess"
    with vault.client("payments") as payments:
        _tokenize(payments, card, "pan_bin6_last4", idempotency_key=key)
        codes = []
        for guess in _bucket_guesses(card, 14):
            answer = payments.post(
                "/v1/tokenize/batch",
                json={
                    "items": [{"pan": guess, "format": "pan_bin6_last4", "idempotency_key": key}]
                },
            )
            body = answer.json()
            codes.append(body.get("item_code") or body.get("code"))
    assert "oracle_suspected" in codes, codes


def test_guesses_spread_over_endpoints_and_formats_meet_one_guard(
    rig: tuple[VaultServer, FakeAcquirer],
) -> None:
    """The holder of payments' certificate spreads guesses of one BIN and last four over
    single calls, a batch, lookups, an idempotency key and every convergent format: they
    meet one count, so the 11th different card is refused wherever it is sent."""
    vault, _ = rig
    card = "4485275742308327"
    guesses = _bucket_guesses(card, 12)
    with vault.client("payments") as payments:
        sent = [
            payments.post("/v1/tokenize", json={"pan": guesses[0], "format": "pan_bin6_last4"}),
            payments.post("/v1/tokenize", json={"pan": guesses[1], "format": "pan_fpe"}),
            payments.post("/v1/tokenize", json={"pan": guesses[2], "format": "uuid"}),
            payments.post("/v1/lookup", json={"pan": guesses[3]}),
            payments.post("/v1/lookup", json={"pan": guesses[4], "format": "pan_last4"}),
            payments.post(
                "/v1/tokenize/batch",
                json={"items": [{"pan": g, "format": "pan_bin6_last4"} for g in guesses[5:8]]},
            ),
            payments.post(
                "/v1/tokenize",
                json={"pan": guesses[8], "format": "pan_bin6_last4", "idempotency_key": "r31-g"},
            ),
            payments.post("/v1/lookup", json={"pan": guesses[9], "format": "pan_fpe"}),
        ]
        assert [a.status_code for a in sent] == [200] * len(sent), [a.text for a in sent]
        past = [
            # A card the full count holds is refused too (atk47: an answer for it, and a
            # refusal for any other, told the bucket's cards from guesses).
            payments.post("/v1/lookup", json={"pan": guesses[0], "format": "pan_bin6_last4"}),
            payments.post("/v1/tokenize", json={"pan": guesses[10], "format": "pan_last4"}),
            payments.post("/v1/lookup", json={"pan": guesses[10]}),
            payments.post(
                "/v1/tokenize/batch",
                json={"items": [{"pan": guesses[11], "format": "pan_bin6_last4"}]},
            ),
        ]
    assert [a.json()["code"] for a in past] == ["oracle_suspected"] * 4, [a.text for a in past]
