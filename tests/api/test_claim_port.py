"""Review 37: `claim_port` was keyed by the host as written: other spellings of one
address got their own claim, both nodes bound with SO_REUSEPORT and the kernel split
connections between vaults (review 34's 20/20 tokens). It is keyed by the port now."""

from __future__ import annotations

import contextlib

import pytest

from api.errors import ApiError
from api.lifecycle import bind_reuse_port, claim_port
from tests.support.postgres import free_port


@pytest.mark.parametrize("other", ["localhost", "127.1", "127.0.0.01", "0.0.0.0"])  # noqa: S104
def test_a_second_node_on_another_spelling_of_the_address_is_refused(other: str) -> None:
    port = free_port()
    with contextlib.ExitStack() as held:
        held.enter_context(contextlib.closing(claim_port("127.0.0.1", port)))
        for sock in bind_reuse_port("127.0.0.1", port):
            held.enter_context(contextlib.closing(sock))
        with pytest.raises(ApiError):
            held.enter_context(contextlib.closing(claim_port(other, port)))
            for sock in bind_reuse_port(other, port):  # it binds: same uid, SO_REUSEPORT
                held.enter_context(contextlib.closing(sock))
