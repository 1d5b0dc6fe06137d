"""The suite-wide PAN leak scan, run once when every test session ends.

Everything the suite produces lands under pytest's base temp directory: the SQLite files
and their WALs, the logs of every `cofre serve` process, evidence bundles, the CLI's
output files, a pg_dump of every PostgreSQL database a test used (taken before the
database is dropped, `dump_database`), each PostgreSQL server's log, and, from the
in-process API servers, their JSON logs, exported spans, metrics and every response
body (`record_responses`, `VaultServer`). What pytest captured from each test (stdout,
stderr, log records, failure tracebacks) is kept in memory. When the session ends,
`tests.support.leakscan` walks all of it for every test PAN (each Luhn-valid card
number literal in the tests' sources, and every number `tests.support.pans` generated)
and for every 13-19 digit Luhn-valid run. An SQLite database is read twice: its raw
pages (and WAL) for the test PANs, every value it stores for both rules. Token values
are Luhn-valid by design for ``luhn = "pass"`` formats, so every token any database
holds is allowed. Any finding fails the run.

The one answer allowed to carry a PAN, a successful reveal to an identity whose policy
allows it, is the only thing not recorded. The one place allowed to *hold* a PAN is the
acquirer's side of a relay (where the vault is meant to send it): a directory named
`ACQUIRER_SIDE` (a fake acquirer's journal) is excluded from the scan by that name.
SoftHSM2's own files (``*.object``) get the known-PAN rule only: their random serials and
key bytes are digit noise to the Luhn rule.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.leakscan import VALUES_APART, LeakScanner, files_under
from tests.support.pans import GENERATED
from vault.pan import luhn_valid

REPO = Path(__file__).resolve().parents[2]
REVEALS = frozenset({"/v1/detokenize", "/v1/detokenize/batch"})
DUMPS = "leakscan"  # under the base temp: pg dumps, server logs, token lists
_SOFTHSM_OBJECT = ".object"  # SoftHSM2's file store: token.object and one per key
ACQUIRER_SIDE = "acquirer-side"  # a directory the scan skips: what an acquirer received
_SQLITE_MAGIC = b"SQLite format 3\x00"
_LITERAL = re.compile(r"(?<![0-9])[0-9]{13,19}(?![0-9])")


def pans_in_test_sources() -> set[str]:
    """Every Luhn-valid 13-19 digit literal in the tests' Python sources."""
    found: set[str] = set()
    for source in (REPO / "tests").rglob("*.py"):
        found.update(d for d in _LITERAL.findall(source.read_text()) if luhn_valid(d))
    return found


def record_responses(path: Path) -> dict[str, list[Callable[[httpx.Response], None]]]:
    """httpx event hooks that append every response body to `path` (the session scan
    reads it), except a successful reveal, the one answer that may hold a PAN."""

    def record(response: httpx.Response) -> None:
        response.read()
        record_body(path, response.request.url.path, response.is_success, response.content)

    return {"response": [record]}


def record_body(path: Path, url_path: str, success: bool, body: bytes) -> None:
    """Append a response `body` to `path`, unless it is a successful reveal."""
    if success and url_path in REVEALS:
        return
    if body.startswith(b"\x1f\x8b"):  # a gzip body (a bundle): a stream of its own,
        path = path.with_name(path.name + ".gz")  # members appended, scanned as content
        end = b""
    else:
        end = b"\n"
    with path.open("ab") as out:
        out.write(body + end)


def dump_database(dsn: str, dbname: str, bindir: Path, dest: Path) -> None:
    """pg_dump `dbname` into `dest`/<dbname>.sql, and its tokens into <dbname>.tokens."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = f"{dbname}-{time.monotonic_ns()}"
    base, _, _ = dsn.rpartition("/")
    with psycopg.connect(f"{base}/{dbname}", connect_timeout=10) as conn:
        tables = conn.execute("SELECT to_regclass('public.tokens')").fetchone()
        tokens = (
            [t for (t,) in conn.execute("SELECT token FROM tokens")] if tables and tables[0] else []
        )
    write_token_list(dest, stem, tokens)
    with (dest / f"{stem}.sql").open("wb") as out:
        subprocess.run(
            [str(bindir / "pg_dump"), "--no-owner", "-d", f"{base}/{dbname}"],
            stdout=out,
            stderr=subprocess.PIPE,
            check=True,
            timeout=300,
        )


def write_token_list(dest: Path, stem: str, tokens: list[str]) -> Path:
    """`tokens` into `dest`/<stem>.tokens, for the session scan to set aside. The list
    is scanned too: `VALUES_APART`, so that no two tokens read as one number (one line
    break apart, ``...41234`` and ``50000057142...`` read as the generated test PAN
    4123450000057142: session 43's CI run), as `sqlite_values` keeps stored values."""
    listed = dest / f"{stem}.tokens"
    listed.write_bytes(VALUES_APART.join(t.encode() for t in tokens))
    return listed


_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(16) == _SQLITE_MAGIC


def sqlite_values(path: Path) -> tuple[list[str], list[bytes]]:
    """The tokens and every stored value of an SQLite database (with its WAL): text and
    numbers as text, one per line, and blobs as they are. Raw pages are no place for
    the Luhn rule: a record's bytes glue a UUID's digit tail to an integer that happens
    to be an ASCII digit, and freed cells keep fragments of old values."""
    # A copy, so that neither a hot WAL nor a read-only directory stops the read.
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / path.name
        copy.write_bytes(path.read_bytes())
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            copy.with_name(copy.name + "-wal").write_bytes(wal.read_bytes())
        with sqlite3.connect(copy) as conn:
            tables = [
                t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            lines: list[bytes] = []
            blobs: list[bytes] = []
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    for value in row:
                        if isinstance(value, bytes):
                            blobs.append(value)
                        elif value is not None:
                            lines.append(str(value).encode("utf-8", "surrogatepass"))
            tokens = (
                [t for (t,) in conn.execute("SELECT token FROM tokens")]
                if "tokens" in tables
                else []
            )
    # Apart, so that no two values join into one: a line break ends a digit run, and
    # five of them end a chain too (`leakscan._CHAIN` joins digit groups across up to
    # four separator bytes: "4111 1111 1111 1111" in one value). With one line break,
    # a value ending in "...940" glued to the token "5000000270499897" on the next line
    # read as the test PAN 4050000002704998 (a clean-clone run's findings, session 11).
    return tokens, [VALUES_APART.join(lines), VALUES_APART.join(blobs)]


@dataclass(eq=False)  # a plugin: pluggy keeps it in sets
class LeakGuard:
    """Collects what the session produced and scans it when the session ends."""

    root: Path | None = None
    captured: dict[str, str] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    summary: str = ""

    @classmethod
    def of(cls, config: pytest.Config, root: Path) -> LeakGuard:
        """The session's guard, now that its base temp directory is known."""
        guard = config.stash[_GUARD]
        guard.root = root
        return guard

    @property
    def dumps(self) -> Path:
        assert self.root is not None
        return self.root / DUMPS

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # A phase's report repeats the sections of the phases before it: keyed, once.
        for title, content in report.sections:
            self.captured[f"{report.nodeid} ({title})"] = content
        if report.failed:
            self.captured[f"{report.nodeid} ({report.when} failure)"] = report.longreprtext

    def scan(self) -> None:
        if self.root is None:
            return  # no test ran: nothing was produced
        started = time.monotonic()
        pans = pans_in_test_sources() | GENERATED
        files = [f for f in files_under(self.root) if ACQUIRER_SIDE not in f.parts]
        allowed: set[str] = set()
        databases: set[Path] = set()
        listed = _in_workers(_tokens_of, files, (pans, set(), self.root), chunksize=16)
        for file, (is_database, tokens) in zip(files, listed, strict=True):
            allowed.update(tokens)
            if is_database:
                databases.add(file)
        allowed -= pans  # a test PAN stored as a token value is a leak, not a token
        scanner = LeakScanner.of(pans, allowed)
        items = [(file, file in databases) for file in files]
        found = _in_workers(_findings_of, items, (pans, allowed, self.root), chunksize=8)
        self.findings = [hit for hits in found for hit in hits]
        self.findings += [
            f"{where}: {hit}"
            for where, text in self.captured.items()
            # A test may print a lone surrogate (the verifier's escaping tests do): scan
            # its bytes rather than crash the session's report.
            for hit in scanner.scan(text.encode("utf-8", "surrogatepass"))
        ]
        size = sum(f.stat().st_size for f in files)
        dumps = len(list(self.dumps.glob("*.sql"))) if self.dumps.exists() else 0
        self.summary = (
            f"{len(files)} files ({size / 1e6:.0f} MB, {len(databases)} SQLite databases, "
            f"{dumps} PostgreSQL dumps) under "
            f"{self.root} and {len(self.captured)} captured outputs, for {len(pans)} test "
            f"PANs and every Luhn-valid 13-19 digit run ({len(allowed)} tokens allowed): "
            f"{len(self.findings)} findings in {time.monotonic() - started:.1f} s"
        )

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.USAGE_ERROR):
            return
        self.scan()
        if self.findings:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.summary:
            return
        terminalreporter.section("PAN leak scan")
        terminalreporter.write_line(self.summary, red=bool(self.findings))
        for finding in self.findings[:50]:
            terminalreporter.write_line(f"  {finding}", red=True)


_GUARD = pytest.StashKey[LeakGuard]()


def install_leak_guard(config: pytest.Config) -> None:
    """Register the guard as a plugin (from the root conftest's pytest_configure)."""
    guard = LeakGuard()
    config.stash[_GUARD] = guard
    config.pluginmanager.register(guard, "cofre-leak-guard")


# The scan's state in a worker process (`_in_workers`' initializer sets it).
_STATE: dict[str, Any] = {}


def _worker_count() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _in_workers(
    function: Callable[[Any], Any],
    items: list[Any],
    initargs: tuple[set[str], set[str], Path],
    *,
    chunksize: int,
) -> list[Any]:
    """`function` over `items`, in order, on one worker process per core (session 43:
    the scan took 134 s of the session's end on one of CI's two cores, which nothing
    else uses then). Spawned, not forked: a thread a test left running may hold a lock
    (SQLite's, a logger's) that a forked child would wait on for ever."""
    workers = _worker_count()
    if workers == 1 or len(items) < 2 * chunksize:
        _start_worker(*initargs)
        return [function(item) for item in items]
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_start_worker, initargs=initargs) as pool:
        return pool.map(function, items, chunksize=chunksize)


def _start_worker(pans: set[str], allowed: set[str], root: Path) -> None:
    _STATE["scanner"] = LeakScanner.of(pans, allowed)
    _STATE["root"] = root


def _tokens_of(file: Path) -> tuple[bool, list[str]]:
    """The first pass, for one file: (whether it is an SQLite database, the token values
    it lists or holds)."""
    if file.suffix == ".tokens":
        return False, file.read_text().split()
    if _is_sqlite(file):
        return True, sqlite_values(file)[0]
    return False, []


def _findings_of(item: tuple[Path, bool]) -> list[str]:
    """The second pass, for one file (and whether it is an SQLite database)."""
    file, is_database = item
    scanner: LeakScanner = _STATE["scanner"]
    where = file.relative_to(_STATE["root"])
    if is_database or file.name.endswith(_SQLITE_SIDE_FILES):
        # Raw pages: the known PANs; the stored values: both rules.
        hits = [f"{where}: {h}" for h in scanner.known_pans(file.read_bytes())]
        chunks = sqlite_values(file)[1] if is_database else []
        return hits + [f"{where} (stored values): {h}" for c in chunks for h in scanner.scan(c)]
    if file.suffix == _SOFTHSM_OBJECT:
        # A SoftHSM token's files hold key material and the token's serial: 16 hex
        # digits of a random UUID, all decimal and Luhn-valid about once in 3,000 tokens
        # (seen: 36ba-488528668753's neighbours). No PAN goes into the HSM; the known
        # PANs are still looked for byte for byte.
        return [f"{where}: {h}" for h in scanner.known_pans(file.read_bytes())]
    return [f"{where}: {h}" for h in scanner.scan_file(file)]
