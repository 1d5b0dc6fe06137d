"""Session 46's on-call drill: PostgreSQL stopped, reached over a unix socket, read a
bare `(OperationalError)` in every 503 and log line, where the runbooks say a stopped
server reads `connection refused` and a bare `OperationalError` is a dropped
connection. Over a socket, a stopped server is a socket file that is not there.
A real psycopg connection attempt, to a socket directory with no server."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from cofre.dberrors import db_error_name


def test_a_missing_server_socket_is_named(tmp_path: Path) -> None:
    engine = sa.create_engine(f"postgresql+psycopg://postgres@/cofre?host={tmp_path}")
    try:
        with pytest.raises(OperationalError) as raised, engine.connect():
            pass
    finally:
        engine.dispose()
    assert db_error_name(raised.value) == "OperationalError: no server socket"
