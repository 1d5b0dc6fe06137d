"""Review 29c: PATCH /v1/tokens/{token} attacked over HTTP by the holder of a stolen
certificate granted ``update`` (payments in the dev policy). These found nothing; they
stay as regression tests (the vault-level findings are in
tests/vault/test_rev29c_update.py).

- an odd token in the path (too long, other scripts' digits, invalid UTF-8, an encoded
  slash, dots, a NUL) gets from PATCH what GET gives it: never a 500, never an answer
  that depends on the method;
- a method-override header or query does not turn a POST into an update;
- a body in another media type, or a chunked one past the limit, changes nothing;
- duplicate JSON keys: the last one counts, and is checked as any value is, so a card
  number in either never reaches the clear metadata.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import VaultServer

PAN = "4111111111111111"
ODD_TOKENS = [
    "x" * 65,
    "\uff14" * 16,  # full-width digits
    "%ff",
    "%ED%A0%80",  # a lone surrogate in UTF-8
    "a%2Fb",
    "%2E%2E",
    "%00",
    "tok%20",
    "%E2%80%AE",  # right-to-left override
]


@pytest.fixture
def client(vault_server: VaultServer) -> Iterator[httpx.Client]:
    with vault_server.client("payments") as client:
        yield client


def _token(client: httpx.Client) -> str:
    answer = client.post(
        "/v1/tokenize", json={"pan": PAN, "format": "uuid", "metadata": {"order": "1"}}
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def _metadata(client: httpx.Client, token: str) -> object:
    return client.get(f"/v1/tokens/{token}").json()["metadata"]


def test_an_odd_token_gets_from_patch_what_get_gives(client: httpx.Client) -> None:
    for odd in ODD_TOKENS:
        path = f"/v1/tokens/{odd}"
        got = client.get(path)
        patched = client.patch(path, json={"metadata": {"order": "2"}})
        assert patched.status_code == got.status_code, (odd, patched.text, got.text)
        assert patched.status_code in {404, 422}, (odd, patched.text)
        assert patched.json()["code"] == got.json()["code"], odd


def test_a_method_override_does_not_make_a_post_an_update(client: httpx.Client) -> None:
    token = _token(client)
    body = {"metadata": {"order": "2"}}
    for header in ("x-http-method-override", "x-http-method", "x-method-override"):
        answer = client.post(f"/v1/tokens/{token}", json=body, headers={header: "PATCH"})
        assert answer.status_code == 405, answer.text
    answer = client.post(f"/v1/tokens/{token}?_method=PATCH", json=body)
    assert answer.status_code == 405, answer.text
    assert _metadata(client, token) == {"order": "1"}


def test_other_media_types_and_oversized_chunked_bodies_change_nothing(
    client: httpx.Client,
) -> None:
    token = _token(client)
    body = json.dumps({"metadata": {"order": "2"}}).encode()
    for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        answer = client.patch(f"/v1/tokens/{token}", content=body, headers={"content-type": media})
        assert answer.status_code == 415, (media, answer.text)
    answer = client.patch(f"/v1/tokens/{token}", content=body)  # no content-type
    assert answer.status_code in {415, 422}, answer.text

    def chunks() -> Iterator[bytes]:
        yield b'{"metadata": {"order": "'
        for _ in range(80):
            yield b"a" * 1024
        yield b'"}}'

    answer = client.patch(
        f"/v1/tokens/{token}", content=chunks(), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413, answer.text
    assert _metadata(client, token) == {"order": "1"}


def test_duplicate_keys_count_the_last_and_a_card_in_either_is_never_stored(
    client: httpx.Client,
) -> None:
    token = _token(client)
    path = f"/v1/tokens/{token}"
    headers = {"content-type": "application/json"}
    card_last = '{"metadata": {"order": "2", "order": "' + PAN + '"}}'
    answer = client.patch(path, content=card_last, headers=headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "invalid_metadata"
    assert PAN not in answer.text
    assert _metadata(client, token) == {"order": "1"}
    card_first = '{"metadata": {"order": "' + PAN + '", "order": "2"}}'
    answer = client.patch(path, content=card_first, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["metadata"] == {"order": "2"}
    assert PAN not in answer.text
    # A null last is the null it reads as: refused, not an "unset".
    answer = client.patch(path, content='{"expiry": "03/30", "expiry": null}', headers=headers)
    assert answer.status_code == 422, answer.text
