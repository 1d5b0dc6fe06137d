"""The dev PKI is written private from the start, whatever the shell's umask: `cofre pki
issue-client` once left a 0644 certificate in the data directory, and the next `make
run` warned "data directory permissions tightened" about it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.pki import ensure_dev_pki, issue_client
from cofre.filemodes import secure_data_dir


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # a shell's usual umask
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_issued_client_certificate_needs_no_tightening(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)  # as `cofre dev` leaves it
    pki = ensure_dev_pki(data_dir / "pki", identities=("payments",))
    issue_client(pki, "newbie")

    assert pki.client_cert("newbie").exists()
    wide = {
        str(path.relative_to(data_dir)): oct(stat.S_IMODE(path.stat().st_mode))
        for path in data_dir.rglob("*")
        if path.is_file() and stat.S_IMODE(path.stat().st_mode) & 0o077
    }
    assert wide == {}
    assert secure_data_dir(data_dir) == []
