"""Review 27: attacks on the capture changes of f4d68cc..1ae8db7 (CORS only for the
session's origin, the session looked up again on a refusal; `capture_origins` required)
and on 58c2669 (a refused approval of a ceremony that is not pending is audited).

Real server TLS, a real vault, real sessions. A test named ``..._finding_...`` shows a
gap and fails on the reviewed main; the others pin a property that holds."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from cofre.settings import CaptureSettings
from hsm.provider import HSMProvider
from policies.errors import PolicyDenied
from tests.api.conftest import VaultServer, running_vault
from tests.api.test_forged_ceremony_rows import ROTATIONS, bobs_proposal_written
from tests.support.leakguard import record_responses
from tests.support.policies import TEST_CAPTURE_ORIGINS, with_capture_origins
from tests.support.postgres import free_port
from tests.support.statements import capture_session_reads
from vault.capture import CaptureSession, CaptureSessionRequest
from vault.service import CallContext

VISA = "4111111111111111"
SHOP = "https://shop.example"
EVIL = "https://evil.example"
PAYMENTS = CallContext("spiffe://cofre/payments", "req-rev27")
UNKNOWN_SESSION = "cs_" + "z" * 32  # the shape of a session id, of no session
ADDRESS_BURST = 4
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def tight_vault(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[VaultServer]:
    """A capture listener whose per-address limit is small (4, then one a ~day), so a
    test reaches it in a few requests; each test speaks from a loopback address of its
    own (127.0.0.x), so each has its own buckets."""
    settings = CaptureSettings(
        port=free_port(),
        session_per_second=0.001,
        session_burst=50,
        address_per_second=0.001,
        address_burst=ADDRESS_BURST,
    )
    with running_vault(tmp_path_factory.mktemp("rev27"), hsm_provider, capture=settings) as vault:
        yield vault


def _session(vault: VaultServer, **changes: Any) -> CaptureSession:
    fields: dict[str, Any] = {"origin": SHOP, "formats": ("pan_bin6_last4",), **changes}
    return vault.runtime.service.create_capture_session(PAYMENTS, CaptureSessionRequest(**fields))


def _client(vault: VaultServer, address: str) -> httpx.Client:
    """A browser-like client of the capture listener speaking from `address`."""
    assert vault.capture_url is not None
    context = ssl.create_default_context(cafile=str(vault.pki.ca))
    transport = httpx.HTTPTransport(verify=context, local_address=address)
    return httpx.Client(
        base_url=vault.capture_url,
        transport=transport,
        timeout=10,
        event_hooks=record_responses(vault.tmp / "responses.log"),
    )


def _post(
    client: httpx.Client,
    session_id: str,
    *,
    origin: str | None,
    secret: str | None,
    number: str = VISA,
) -> httpx.Response:
    payload: dict[str, Any] = {"number": number, "expiry": "12/29"}
    if secret is not None:
        payload["secret"] = secret
    headers = {"origin": origin} if origin is not None else {}
    return client.post(f"/v1/capture/{session_id}", json=payload, headers=headers)


def _preflight(client: httpx.Client, session_id: str, origin: str) -> httpx.Response:
    return client.options(
        f"/v1/capture/{session_id}",
        headers={"origin": origin, "access-control-request-method": "POST"},
    )


def _cors(response: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("access-")}


def _answer(response: httpx.Response) -> tuple[int, str, dict[str, str]]:
    """What a caller who is not a browser reads of an answer: status, code, CORS."""
    return response.status_code, str(response.json().get("code")), _cors(response)


def _spent(vault: VaultServer) -> CaptureSession:
    """A session whose one capture is done (from the fields' own page)."""
    session = _session(vault)
    with vault.capture_client() as client:
        done = _post(client, session.session_id, origin=vault.capture_url, secret=session.secret)
    assert done.status_code == 200, done.text
    return session


def _expire(vault: VaultServer, session: CaptureSession) -> None:
    with vault.runtime.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE capture_sessions SET expires_at = :past WHERE id = :id"),
            {"past": datetime.now(UTC) - timedelta(seconds=1), "id": session.session_id},
        )


@pytest.fixture
def session_reads(tight_vault: VaultServer) -> Iterator[list[str]]:
    """The SELECTs of `capture_sessions` the vault runs while the test does."""
    with capture_session_reads(tight_vault.runtime.engine) as seen:
        yield seen


# ---------------------------------------------------------------- findings (fail now)
def test_finding_a_wrong_secret_and_an_unknown_session_are_one_answer_to_every_origin(
    tight_vault: VaultServer,
) -> None:
    """`vault.operations.capture` rule 2: a wrong secret and an unknown session are one
    answer, "nothing about the session leaks to a guess". The refusal's CORS now depends
    on the session row looked up again (`bound_origin`): a caller that is not a browser
    (curl) sending `Origin: https://shop.example` reads `Access-Control-Allow-Origin`
    on the wrong-secret 401 of a real session and none on an unknown one, i.e. that the
    session exists and which origin it is bound to. Before 4097c49 both echoed the
    origin (the same answer)."""
    live = _session(tight_vault)
    spent = _spent(tight_vault)
    with _client(tight_vault, "127.0.0.11") as client:
        unknown = _answer(_post(client, UNKNOWN_SESSION, origin=SHOP, secret="cofre_cs_x"))
        answers = {
            "live": _answer(_post(client, live.session_id, origin=SHOP, secret="cofre_cs_x")),
            "spent": _answer(_post(client, spent.session_id, origin=SHOP, secret="cofre_cs_x")),
        }
    assert unknown[:2] == (401, "capture_unauthorized")
    for name, answer in answers.items():
        assert answer == unknown, name


def test_finding_a_card_refused_before_the_vault_tells_no_origin_the_session_exists(
    tight_vault: VaultServer,
) -> None:
    """A number that is not digits is refused before the vault runs (422 `invalid_pan`):
    no per-address or per-session charge in the database, no secret. Yet the listener
    reads the session for CORS, so with `Origin` set to the guessed origin a spent or
    expired session answers with `Access-Control-Allow-Origin` and an unknown one
    without. The hosted-fields page, the one place that already names a session's
    origin without a secret, says 404 for both: this is new information."""
    spent = _spent(tight_vault)
    expired = _session(tight_vault)
    _expire(tight_vault, expired)
    with _client(tight_vault, "127.0.3.12") as client:
        for session_id in (spent.session_id, expired.session_id, UNKNOWN_SESSION):
            page = client.get(f"/v1/hosted-fields/{session_id}")
            assert page.status_code == 404  # what it told before
    with _client(tight_vault, "127.0.0.12") as client:
        probes = {
            session_id: _answer(_post(client, session_id, origin=SHOP, secret=None, number="x"))
            for session_id in (spent.session_id, expired.session_id, UNKNOWN_SESSION)
        }
    assert probes[UNKNOWN_SESSION][:2] == (422, "invalid_pan")
    assert probes[spent.session_id] == probes[UNKNOWN_SESSION]
    assert probes[expired.session_id] == probes[UNKNOWN_SESSION]


def test_finding_an_address_past_its_limit_does_not_get_the_session_read(
    tight_vault: VaultServer, session_reads: list[str]
) -> None:
    """`capture_card` refuses an address past its limit (429) before it reads the
    session, so a limited address learns nothing and costs one charge. The listener
    then reads the session anyway (`bound_origin`) and answers CORS by it: the row the
    limit kept the address from is read and its existence told (bounded only by the
    per-process refusal limiter, which the limited 429s then fill)."""
    sessions = [_session(tight_vault) for _ in range(ADDRESS_BURST)]
    live = _session(tight_vault)
    with _client(tight_vault, "127.0.0.13") as client:
        for session in sessions:  # the address's whole burst, spent on real captures
            done = _post(client, session.session_id, origin=SHOP, secret=session.secret)
            assert done.status_code == 200, done.text
        session_reads.clear()
        real = _post(client, live.session_id, origin=SHOP, secret="cofre_cs_x")
        unknown = _post(client, UNKNOWN_SESSION, origin=SHOP, secret="cofre_cs_x")
    assert _answer(real)[:2] == (429, "rate_limited")
    assert len(session_reads) == 0, f"{len(session_reads)} reads after the limit refused"
    assert _answer(real) == _answer(unknown)


def test_finding_preflights_are_charged_to_the_client_address(tight_vault: VaultServer) -> None:
    """Pre-dates 4097c49, but on the path it touches: a preflight that passes (204)
    reads the session from the database and is charged to nothing (not the per-address
    limit, not the refusal limiter), unlike `GET /v1/hosted-fields/{id}`, which is
    charged before its read. Anyone who saw a shop's checkout page (its session id and
    origin are in the page) may make the vault read its database without limit."""
    live = _session(tight_vault)
    with _client(tight_vault, "127.0.0.14") as client:
        statuses = [
            _preflight(client, live.session_id, SHOP).status_code for _ in range(ADDRESS_BURST * 5)
        ]
    assert 429 in statuses, statuses


def test_finding_a_cross_origin_page_cannot_read_that_its_session_ended_as_documented(
    tight_vault: VaultServer,
) -> None:
    """docs/capture.md said the session's origin reads refusals "also once the session
    is spent or expired, so your page can read `capture_session_used` or
    `capture_session_expired`". A cross-origin JSON POST is preceded by a preflight, and
    the preflight of a spent or expired session is 403 without CORS: the browser never
    sends the POST, and the page sees a network error, not the code (unless a preflight
    of the same URL passed in the last 60 s, `Access-Control-Max-Age`).

    Rewritten (review 27 F5): a browser cannot do what the docs promised, and answering
    that preflight would tell a session from an unknown one to any page that knows its
    id and origin (F1 again). So this pins what the corrected docs state: the preflight
    of an ended session is the unknown session's answer, and the docs say a
    cross-origin page cannot read that its session ended."""
    spent = _spent(tight_vault)
    expired = _session(tight_vault)
    _expire(tight_vault, expired)
    with _client(tight_vault, "127.0.0.15") as client:
        answers = {
            session_id: _answer(_preflight(client, session_id, SHOP))
            for session_id in (spent.session_id, expired.session_id, UNKNOWN_SESSION)
        }
    assert answers[UNKNOWN_SESSION] == (403, "origin_not_allowed", {})
    assert answers[spent.session_id] == answers[UNKNOWN_SESSION]
    assert answers[expired.session_id] == answers[UNKNOWN_SESSION]
    docs = " ".join((DOCS / "capture.md").read_text().split())
    assert "so your page can read `capture_session_used`" not in docs
    assert "**cannot read that its session ended**" in docs


def test_finding_cancelling_a_ceremony_that_is_not_pending_is_recorded(
    vault_server: VaultServer,
) -> None:
    """58c2669 audits an approval refused because the ceremony is not pending ("the one
    trace of an operator's replay"); docs/key-ceremony.md then tells officers to
    *cancel* such a ceremony. A cancel of the replayed ceremony the vault shows expired
    is refused (409) as a plain error and leaves no `key.rotation.cancel` denial: the
    same refused officer action, no trace (PCI DSS 10.2.1.4 / 10.2.2)."""
    two_days_ago = int(datetime.now(UTC).timestamp()) - 2 * 86_400
    with bobs_proposal_written(vault_server, created=two_days_ago) as (ceremony, alice):
        cancelled = alice.post(f"{ROTATIONS}/{ceremony}/cancel")
    assert cancelled.status_code == 409, cancelled.text
    with vault_server.runtime.engine.connect() as connection:
        payloads = [
            json.loads(p)
            for p in connection.execute(
                sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p"),
                {"p": '%"action":"key.rotation.cancel"%'},
            ).scalars()
        ]
    denials = [e for e in payloads if e["key_id"] == ceremony and e["outcome"] == "denied"]
    assert denials, "a refused cancel of a ceremony that is not pending left no trace"


# ---------------------------------------------------------------- properties that hold
SPELLINGS = (
    "https://SHOP.example",
    "https://shop.example:443",
    "https://shop.example/",
    "http://shop.example",
    "null",
    "https://shop.example.",
    "https://evil.example",
)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_no_other_spelling_of_the_sessions_origin_reads_an_answer(
    tight_vault: VaultServer, spelling: str
) -> None:
    """Browsers send the origin serialised (lower case, no default port, no slash);
    the session stores it so. Any other text, and `null` (a sandboxed frame, a
    `file:` page), is another origin: refused 403 without CORS, its preflight too, with
    the right secret or a wrong one."""
    session = _session(tight_vault)
    index = SPELLINGS.index(spelling) + 1
    with _client(tight_vault, f"127.0.1.{index}") as client:
        for secret in (session.secret, "cofre_cs_x"):
            answer = _post(client, session.session_id, origin=spelling, secret=secret)
            assert answer.status_code in (401, 403), answer.text
            assert _cors(answer) == {}
        assert _cors(_preflight(client, session.session_id, spelling)) == {}
    # The session is still unspent: its own origin captures.
    with _client(tight_vault, f"127.0.2.{index}") as client:
        done = _post(client, session.session_id, origin=SHOP, secret=session.secret)
    assert done.status_code == 200
    assert _cors(done) == {"access-control-allow-origin": SHOP}


def test_refusals_before_the_route_carry_no_cors_for_any_origin(tight_vault: VaultServer) -> None:
    """413, 415 (the guard's), 404, 405 and 422 (the schema) carry no CORS header for
    any origin, the session's own included: nothing a page of another origin reads."""
    session = _session(tight_vault)
    url = f"/v1/capture/{session.session_id}"
    with _client(tight_vault, "127.0.0.16") as client:
        for origin in (SHOP, EVIL):
            answers = [
                client.post(url, content=b"number=1", headers={"origin": origin}),
                client.post(
                    url,
                    content=b"{" + b" " * 5000 + b"}",
                    headers={"origin": origin, "content-type": "application/json"},
                ),
                client.post(url, json={"number": VISA, "cvv": "1"}, headers={"origin": origin}),
                client.post("/v1/capture", json={"number": VISA}, headers={"origin": origin}),
                client.put(url, json={"number": VISA}, headers={"origin": origin}),
            ]
            for answer in answers:
                assert answer.status_code in (404, 405, 413, 415, 422, 429), answer.text
                assert _cors(answer) == {}, (origin, answer.status_code)


def test_cors_of_one_request_does_not_reach_the_next_on_its_connection(
    tight_vault: VaultServer,
) -> None:
    """The listener keeps a request's CORS in `scope["state"]`; uvicorn gives each
    request a fresh copy, so an answer readable by the shop's origin does not make the
    next request's refusal (on the same keep-alive connection) readable by another."""
    session = _session(tight_vault)
    with _client(tight_vault, "127.0.0.17") as client:
        done = _post(client, session.session_id, origin=SHOP, secret=session.secret)
        assert _cors(done) == {"access-control-allow-origin": SHOP}
        schema = client.post(
            f"/v1/capture/{session.session_id}", json={"bad": 1}, headers={"origin": EVIL}
        )
        refused = _post(client, session.session_id, origin=EVIL, secret=session.secret)
    assert schema.status_code == 422
    assert refused.status_code == 403
    assert _cors(schema) == {} == _cors(refused)


def test_the_fields_own_origin_never_gets_cors(tight_vault: VaultServer) -> None:
    """A capture from the listener's own origin (the fields' page) is same-origin: no
    CORS on its answer or its refusals, and no session read for them."""
    session = _session(tight_vault)
    own = tight_vault.capture_url
    with _client(tight_vault, "127.0.0.18") as client:
        wrong = _post(client, session.session_id, origin=own, secret="cofre_cs_x")
        done = _post(client, session.session_id, origin=own, secret=session.secret)
    assert (wrong.status_code, done.status_code) == (401, 200)
    assert _cors(wrong) == {} == _cors(done)


def test_finding_an_origin_taken_out_of_the_policy_stops_its_live_sessions(
    tight_vault: VaultServer,
) -> None:
    """An operator who finds a certificate opening sessions for a phishing origin (or
    upgrades from "no list, any origin") takes the origin out of `capture_origins` and
    reloads. New sessions for it are refused, but a session already open keeps taking
    cards into the shop's domain for its life (up to 15 minutes, 20 captures each):
    `capture_card` checks again that the creator may still `capture` and use the format,
    not that the policy still names the session's origin."""
    runtime = tight_vault.runtime
    policy_file = runtime.settings.policy_file
    assert policy_file is not None
    original = policy_file.read_text()
    phishing = "https://shop-example.net"
    widened = with_capture_origins(original, [*TEST_CAPTURE_ORIGINS, phishing])
    try:
        policy_file.write_text(widened)
        assert runtime.reload_policy()
        session = _session(tight_vault, origin=phishing)
        policy_file.write_text(original)
        assert runtime.reload_policy()
        with pytest.raises(PolicyDenied):
            _session(tight_vault, origin=phishing)
        with _client(tight_vault, "127.0.0.19") as client:
            captured = _post(client, session.session_id, origin=phishing, secret=session.secret)
    finally:
        policy_file.write_text(original)
        runtime.reload_policy()
    assert captured.status_code == 403, captured.text


def test_only_a_signed_approval_reaches_the_not_pending_denial(vault_server: VaultServer) -> None:
    """58c2669 writes a `key.rotation.approve` denial for each approval of a ceremony
    that is not pending. A stolen officer certificate without the officer's second
    factor is refused before the ceremony is read (no such denial), so the entries are
    bounded by an officer's own requests (`PERSON_REQUESTS`: 300, then 5 a second)."""
    two_days_ago = int(datetime.now(UTC).timestamp()) - 2 * 86_400
    # Only the stolen certificate's entries: a ceremony's id is derived from its
    # proposal's signature, so another test's proposal signed in the same second has
    # this id; and the set-up's clean-up cancels the (expired) ceremony, a refusal
    # audited since review 27 F8.
    with vault_server.runtime.engine.connect() as connection:
        before = connection.execute(sa.text("SELECT max(id) FROM audit_entries")).scalar()
    with (
        bobs_proposal_written(vault_server, created=two_days_ago) as (ceremony, _alice),
        vault_server.client("officer-alice", signed=False) as stolen,
    ):
        for _ in range(3):
            refused = stolen.post(f"{ROTATIONS}/{ceremony}/approve")
            assert refused.status_code in (401, 403), refused.text
        with vault_server.runtime.engine.connect() as connection:
            entries = [
                json.loads(p)
                for p in connection.execute(
                    sa.text("SELECT payload FROM audit_entries WHERE id > :id AND payload LIKE :p"),
                    {"id": before or 0, "p": f"%{ceremony}%"},
                ).scalars()
            ]
    assert [(e["action"], e["outcome"]) for e in entries] == []  # nothing about it at all
