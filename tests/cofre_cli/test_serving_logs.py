"""What a serving process writes to stderr from its first line: masked JSON, with its
worker, whatever wrote it (structlog, a stdlib logger, `warnings`), before uvicorn has
built a server and applied its own logging configuration."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

PAN = "4111111111111111"
ROOT = Path(__file__).resolve().parents[2]

# As `serve_worker` begins (then the exporters, the database and the HSM start, and only
# then uvicorn's Config applies `log_config` again): a pydantic-style serializer warning
# quoting its input, an OTLP exporter's retry, and the same after uvicorn's dictConfig.
_WORKER = textwrap.dedent(
    """
    import logging, logging.config, warnings
    import structlog
    from api.server import log_config
    from cofre_cli.serving import _configure_logs
    _configure_logs("INFO", 1)
    structlog.get_logger("cofre.vault").info("starting")
    warnings.warn("Pydantic serializer warnings: input_value='PAN'")
    logging.getLogger("opentelemetry.exporter.otlp").warning("retrying PAN in 1s")
    logging.config.dictConfig(log_config("INFO", worker=1))
    warnings.warn("after uvicorn: PAN", UserWarning, stacklevel=1)
    logging.getLogger("sqlalchemy.pool").error("checkout failed for PAN")
    """
).replace("PAN", PAN)


def test_every_line_of_a_worker_is_masked_json_naming_it_from_the_first() -> None:
    """Review 23: before, the root logger had a handler only once uvicorn built a
    server, and `warnings` never reached logging: plain text, no worker, no mask."""
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", _WORKER],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert PAN not in done.stderr, done.stderr.replace(PAN, "<PAN>")
    events = [json.loads(line) for line in lines]
    assert [e["worker"] for e in events] == [1] * 5, events
    assert events[0]["event"] == "starting"


def test_a_lower_case_log_level_is_accepted() -> None:
    """COFRE_LOG_LEVEL=info: structlog took it, the stdlib configuration raised (now at
    the first line of `serve`, before, when uvicorn built its server)."""
    script = "from cofre_cli.serving import _configure_logs\n_configure_logs('info', None)\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
