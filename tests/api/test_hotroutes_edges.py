"""The hot routes (`api.hotroutes`) and FastAPI's routing answer JSON edge cases alike.

The same bytes go once as ``application/json`` (served past FastAPI's routing) and once
as ``application/vnd.cofre+json`` (which the hot routes hand to FastAPI): same status,
same problem code, never a 500, no card echoed in a refusal (review 9)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.conftest import VaultServer

PAN = "4000000000000010"
CASES = [
    ("/v1/tokenize", b'\xef\xbb\xbf{"pan": "4000000000000010", "format": "uuid"}'),
    ("/v1/tokenize", b'{"pan": "4000000000000010", "format": "uuid"} trailing'),
    ("/v1/tokenize", b'{"pan": "4000000000000010", "format": "uuid", "pan": "4111111111111111"}'),
    ("/v1/tokenize", b'{"pan": "4000000000000010", "format": "uuid", "ttl_seconds": NaN}'),
    ("/v1/tokenize", b'{"pan": "4000000000000010", "format": "uuid", "ttl_seconds": 1e400}'),
    (
        "/v1/tokenize",
        b'{"pan": "4000000000000010", "format": "uuid", "ttl_seconds": ' + b"9" * 5000 + b"}",
    ),
    ("/v1/tokenize", b'{"pan": "4000000000000010", "format": "uuid", "metadata": {"a": NaN}}'),
    ("/v1/tokenize", b'{"pan": "4000000000000011", "format": "uuid"}'),
    ("/v1/tokenize", b'{"pan": 4000000000000010, "format": "uuid"}'),
    ("/v1/tokenize", b'{"pan": "4000 0000 0000 0010", "format": "uuid"}'),
    ("/v1/tokenize", '{"pan": "4000000000000010", "format": "uuid"}'.encode("utf-16")),
    ("/v1/tokenize", b'"4000000000000010"'),
    ("/v1/detokenize", b'{"token": "4000000000000010"}'),
    ("/v1/detokenize", b'{"token": "x", "extra": "4000000000000010"}'),
    ("/v1/detokenize-masked", b'{"token": ["4000000000000010"]}'),
]


@pytest.mark.parametrize("ctype", ["application/json; charset=latin-1", "application/json"])
@pytest.mark.parametrize(("path", "data"), CASES)
def test_hot_and_routed_agree_on_edges(
    vault_server: VaultServer, path: str, data: bytes, ctype: str
) -> None:
    with vault_server.client("payments") as c:
        hot = c.post(path, content=data, headers={"content-type": ctype})
        routed = c.post(path, content=data, headers={"content-type": "application/vnd.cofre+json"})
    assert hot.status_code == routed.status_code, (hot.text, routed.text)
    assert hot.status_code != 500
    assert (PAN not in hot.text and "4111111111111111" not in hot.text) or hot.status_code == 200
    if hot.status_code >= 400:
        h, r = hot.json(), routed.json()
        assert h["code"] == r["code"], (h, r)


@pytest.mark.parametrize("ctype", ["application/json", "application/vnd.cofre+json"])
def test_an_oversized_chunked_body_is_413_on_both_paths(
    vault_server: VaultServer, ctype: str
) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the guard's limit meets it while reading
        yield b'{"pan": "4000000000000010", "format": "uuid", "metadata": {"a": "'
        for _ in range(200):
            yield b"x" * 1024
        yield b'"}}'

    with vault_server.client("payments") as c:
        answer = c.post("/v1/tokenize", content=chunks(), headers={"content-type": ctype})
    assert answer.status_code == 413, answer.text
    assert answer.json()["code"] == "payload_too_large"
