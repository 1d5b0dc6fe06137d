"""A background loop's failures: kept for readiness, logged once per change."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs

from cofre.background import LoopHealth, describe_failure
from cofre.errors import CofreError


class _Refused(CofreError):
    pass


def test_a_loop_failing_every_tick_logs_once_and_once_more_when_it_recovers() -> None:
    health = LoopHealth("token purge")
    with capture_logs() as logs:
        for _ in range(5):
            health.failed(_Refused("the database is unavailable"))
        assert health.check().startswith("failing since ")
        assert health.check().endswith("_Refused: the database is unavailable")
        health.failed(TimeoutError())  # another failure: said again
        for _ in range(3):
            health.succeeded()
    assert [(e["event"], e.get("error")) for e in logs] == [
        ("background loop failing", "_Refused: the database is unavailable"),
        ("background loop failing", "TimeoutError"),
        ("background loop recovered", None),
    ]
    assert all(e["loop"] == "token purge" for e in logs)
    assert health.check() == "ok"
    assert health.last_error is None


def test_a_database_error_is_named_by_its_driver_class_without_its_statement() -> None:
    """SQLAlchemy's message carries the statement and its parameters."""
    error = OperationalError(
        "UPDATE tokens SET x = ? WHERE y = ?", ("secret-parameter", 1), sqlite3.OperationalError()
    )
    assert describe_failure(error) == "OperationalError"
    assert "secret-parameter" not in describe_failure(error)
    assert describe_failure(ValueError("anything at all")) == "ValueError"


def test_recovered_line_gives_when_failing_began_as_iso_8601() -> None:
    """The JSON log rendered the datetime with repr, `datetime.datetime(2026, 12, 5, …)`,
    which no log pipeline parses as a time (drill of session 33)."""
    health = LoopHealth("key rotation")
    with capture_logs() as logs:
        health.failed(_Refused("the key store is unavailable"))
        since = health.check().removeprefix("failing since ").split(": ")[0]
        health.succeeded()
    recovered = logs[-1]
    assert recovered["event"] == "background loop recovered"
    assert isinstance(recovered["failing_since"], str)
    assert datetime.fromisoformat(recovered["failing_since"]) == datetime.fromisoformat(since)
