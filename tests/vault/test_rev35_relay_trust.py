"""Review 35 (attack review of session 34's trust rebuild, `vault.relay_client._trust_of`).

A route's client is rebuilt when its CA bundle's file changes, judged by its device,
inode, size and modification time. A bundle rewritten in place (same inode) with a
bundle of the same size, its modification time kept as the copy tools keep it (``cp
-p``, ``install -p``, ``rsync -t --inplace``, ``touch -r``), looked unchanged: the
route kept the client of its old trust, and its kept-alive connection, and the card
went on to an upstream the bundle no longer vouched for. Two CA certificates of one
key type differ in size by a few bytes only; the new file's change time (which no
user tool can set) now counts too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies.models import RelayRoute
from tests.support.fake_acquirer import FakeAcquirer, running_acquirer
from vault.errors import UpstreamUnavailable
from vault.relay_client import RelayClient

VISA = "4111111111111111"


@pytest.fixture
def acquirers(tmp_path: Path) -> Iterator[tuple[FakeAcquirer, Path]]:
    """An acquirer whose certificate comes from its own CA, and another PKI's CA."""
    with (
        running_acquirer(tmp_path / "trusted") as acquirer,
        running_acquirer(tmp_path / "other") as other,
    ):
        yield acquirer, other.ca  # type: ignore[attr-defined]


def _card() -> dict[str, object]:
    return {"card": {"number": VISA}, "amount": "1.00"}


def test_a_bundle_rewritten_in_place_with_its_size_and_time_kept_is_in_force(
    acquirers: tuple[FakeAcquirer, Path], tmp_path: Path
) -> None:
    acquirer, other_ca = acquirers
    trusted = Path(acquirer.ca).read_bytes()  # type: ignore[attr-defined]
    untrusted = other_ca.read_bytes()
    size = max(len(trusted), len(untrusted))
    # Blank lines after the certificate: ignored by the PEM reader, they make the sizes equal.
    trusted, untrusted = (pem + b"\n" * (size - len(pem)) for pem in (trusted, untrusted))
    bundle = tmp_path / "acquirer-ca.pem"
    bundle.write_bytes(trusted)
    route = RelayRoute(
        upstream=f"{acquirer.url}/v1/authorize",
        identities=frozenset({"spiffe://cofre/getnet-adapter"}),
        ca_bundle=str(bundle),
        timeout_seconds=10,
    )
    client = RelayClient()
    try:
        assert client.send("acq", route, _card()).status == 200
        before = bundle.stat()
        # The acquirer's CA taken out (compromised), rewritten in place by a tool that
        # keeps the modification time. Its change time is the kernel's: wait until it
        # moved on (the clock's tick), as it has whenever a person rewrites a file.
        with bundle.open("r+b") as rewritten:
            rewritten.write(untrusted)
        for _ in range(10_000):
            os.utime(bundle, ns=(before.st_atime_ns, before.st_mtime_ns))
            if bundle.stat().st_ctime_ns != before.st_ctime_ns:
                break
        after = bundle.stat()
        assert after.st_ctime_ns != before.st_ctime_ns, "the change time never moved"
        same = ("st_dev", "st_ino", "st_size", "st_mtime_ns")
        assert [getattr(after, f) for f in same] == [getattr(before, f) for f in same]
        with pytest.raises(UpstreamUnavailable):
            client.send("acq", route, _card())
    finally:
        client.close()
    assert len(acquirer.received) == 1, "the card went where the bundle no longer vouches"
