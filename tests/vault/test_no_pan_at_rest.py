"""After real traffic, neither the SQLite files nor a pg_dump hold a PAN in clear."""

from __future__ import annotations

import gzip
import sqlite3
import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import Engine

from tests.support.leakguard import sqlite_values, write_token_list
from tests.support.leakscan import LeakScanner, find_leaks, find_leaks_in_dump, scan_files
from tests.support.postgres import find_bindir
from tests.vault.conftest import GETNET, LEDGER, PAYMENTS
from vault.pan import Pan, luhn_check_digit
from vault.service import TokenizeRequest, VaultService

FORMATS = [
    "pan_bin6_last4",
    "pan_bin8_last4",
    "pan_last4",
    "pan_fpe",
    "uuid",
    "card_random",
    "card_pass",
    "card_fpe_any",
]


def _pans() -> list[str]:
    out = []
    for i in range(40):
        body = f"{4 + i % 3}{i * 7919:014d}"
        out.append(body + luhn_check_digit(body))
    return [*out, "4111111111111111", "5555555555554444"]


def _traffic(service: VaultService, pans: list[str]) -> list[str]:
    tokens = []
    for i, digits in enumerate(pans):
        pan = Pan(digits)
        record = service.tokenize(
            PAYMENTS,
            TokenizeRequest(
                pan, FORMATS[i % len(FORMATS)], metadata={"order": f"o-{i}"}, ttl_seconds=3600
            ),
        )
        tokens.append(record.token)
        service.detokenize(GETNET, record.token)
        service.detokenize(LEDGER, record.token)
        service.lookup(PAYMENTS, pan)
    service.tokenize_batch(PAYMENTS, [TokenizeRequest(Pan(p), "pan_bin6_last4") for p in pans])
    for token in tokens[:5]:
        service.delete(PAYMENTS, token)
    return tokens


def test_no_pan_in_database_files_or_dump(
    service: VaultService, engine: Engine, tmp_path: Path
) -> None:
    pans = _pans()
    tokens = _traffic(service, pans)
    with engine.connect() as c:
        all_tokens = [t for (t,) in c.execute(sa.text("SELECT token FROM tokens"))]
    assert set(tokens) <= set(all_tokens)
    if engine.dialect.name == "sqlite":
        database = Path(engine.url.database or "")
        files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
        assert database.stat().st_size > 0
        hits = scan_files(files, pans, allowed=all_tokens)
    else:
        url = engine.url
        dump = subprocess.run(
            [
                str(find_bindir() / "pg_dump"),
                "-h",
                str(url.host),
                "-p",
                str(url.port),
                "-U",
                str(url.username),
                "-d",
                str(url.database),
                "--no-owner",
            ],
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout
        assert b"CREATE TABLE public.tokens" in dump
        hits = find_leaks_in_dump(dump, pans, allowed=all_tokens)
    assert hits == []


def test_scanner_catches_a_planted_pan() -> None:
    # Outside pytest's base temp: the session's own leak scan must not see the plant.
    with tempfile.TemporaryDirectory() as scratch:
        planted = Path(scratch) / "planted.bin"
        planted.write_bytes(b"\x00noise 4111111111111111 more\x00" + b"5555555555554444")
        assert len(scan_files([Path(scratch)], ["4111111111111111"])) == 3
    assert find_leaks(b"x4111111111111112x", []) == []  # fails Luhn: not a card
    # A PAN stored in clear in a bytea column shows up decoded from the dump's hex.
    dump = b"COPY t (b) FROM stdin;\n\\\\x" + b"4111111111111111".hex().encode() + b"\n"
    assert len(find_leaks_in_dump(dump, [])) == 1


def test_digit_runs_inside_hex_digests_are_noise_but_test_pans_are_not() -> None:
    digest = b"ab" + b"4111111111111111" + b"cd" * 23  # 64 hex characters, like a SHA-256
    assert find_leaks(digest, []) == []
    assert find_leaks(digest, ["4111111111111111"]) == ["test PAN 411111******1111"]
    assert find_leaks(b"0x" + digest, []) == []
    # Short hex (a span id) and plain words do not hide a card number.
    assert len(find_leaks(b"ab4111111111111111cd", [])) == 1
    assert len(find_leaks(b"pan=4111111111111111;", [])) == 1


def test_a_uuid_against_the_next_columns_byte_is_noise_but_a_card_beside_it_is_not() -> None:
    """SQLite writes a UUID and then the next column's bytes: a one-byte integer 55 reads
    "7". A clean-clone run (session 16) read the WAL's "...-963826994417" + "7" as a
    13-digit Luhn-valid card. The digits of a UUID are set aside, the rest still judged."""
    record = b"(\x03U\x0112846223-a2a9-49e8-bbfa-963826994417" + bytes([55]) + b"(\x03"
    assert find_leaks(record, []) == []
    after = b"\x0112846223-a2a9-49e8-bbfa-963826994417" + b"4111111111111111\x00"
    assert find_leaks(after, []) == ["Luhn-valid run 411111******1111 at byte 37"]
    before = b"\x014111111111111111-a2a9-49e8-bbfa-963826994417\x00"
    assert len(find_leaks(before, [])) == 1
    # A digest's digits the same: the run past its end is judged alone.
    digest = b"ab" + b"cd" * 23 + b"4111111111111111"  # 64 hex characters
    assert find_leaks(digest + b"\x00", []) == []
    assert find_leaks(digest + b"\x00" + b"4111111111111111", []) != []


def test_a_number_of_one_repeated_digit_is_looked_for_only_as_a_luhn_valid_run() -> None:
    zeros = "0000000000000000"
    pages = b"\x0f0\x0e0\x0d0\x0c0" * 4 + b"\x00" + b"0" * 20 + b"\x01"
    assert LeakScanner.of([zeros]).known_pans(pages) == []
    assert find_leaks(b"card " + zeros.encode() + b" end", [zeros]) == [
        "Luhn-valid run 000000******0000 at byte 5"
    ]


def test_two_stored_values_never_read_as_one_number() -> None:
    """The chain rule joins digit groups across a few separator bytes ("4111 1111 1111
    1111" in one value); it must not join two columns. A clean-clone run (session 11)
    read a value ending in "...940" and the token after it as the test PAN
    4050000002704998, in an SQLite database and in a PostgreSQL dump."""
    glued, visa = "4050000002704998", "4111111111111111"
    # Outside pytest's base temp, as the plant above: the session's own leak scan reads
    # raw SQLite pages there, where the planted card is found on purpose.
    with tempfile.TemporaryDirectory() as scratch:
        database = Path(scratch) / "v.sqlite3"
        conn = sqlite3.connect(database)
        with conn:
            conn.execute("CREATE TABLE tokens (id TEXT, token TEXT, note TEXT)")
            conn.execute("INSERT INTO tokens VALUES ('ab-940', '5000000270499897', 'x')")
            conn.execute("INSERT INTO tokens VALUES ('cd', 't', '4111 1111 1111 1111')")
        conn.close()
        tokens, chunks = sqlite_values(database)
    found = [h for chunk in chunks for h in find_leaks(chunk, [glued, visa], tokens)]
    assert found == ["test PAN 411111******1111"]
    dump = b"COPY t (id, v) FROM stdin;\nab-940\t5000000270499897\n940\t4111 1111 1111 1111\n"
    assert find_leaks_in_dump(dump, [glued, visa], tokens) == ["test PAN 411111******1111"]


def test_two_tokens_of_a_dumped_database_never_read_as_one_number() -> None:
    """A PostgreSQL database's tokens are listed beside its dump, to be set aside by the
    Luhn rule; the list itself is scanned too. Written one per line, two tokens joined
    under the chain rule: ``...41234`` then ``50000057142...`` read as the generated
    test PAN 4123450000057142 (a clean-clone CI run at f4be302, session 43: the only
    finding of 230,574 test PANs over 349,638 tokens). A token that is a test PAN is
    still found."""
    glued, visa = "4123450000057142", "4111111111111111"
    tokens = ["5000009876541234", "5000005714212346"]
    with tempfile.TemporaryDirectory() as scratch:
        listed = write_token_list(Path(scratch), "t_glued", tokens)
        assert listed.read_text().split() == tokens
        scanner = LeakScanner.of([glued, visa], tokens)
        assert scanner.scan_file(listed) == []
        leaked = write_token_list(Path(scratch), "t_leaked", [*tokens, visa])
        found = LeakScanner.of([glued, visa], tokens).scan_file(leaked)
        assert found[0] == "test PAN 411111******1111"
        assert found[1].startswith("Luhn-valid run 411111******1111")
    # The same two tokens in a JSON list (``","`` is three separator bytes) are two
    # values; a card beside a token is still found.
    listed_json = b'{"tokens": ["5000009876541234","5000005714212346"]}'
    assert find_leaks(listed_json, [glued, visa], tokens) == []
    beside = b'["5000009876541234", "4111 1111 1111 1111"]'
    assert find_leaks(beside, [glued, visa], tokens) == ["test PAN 411111******1111"]


def test_a_gzip_stream_is_scanned_by_its_content() -> None:
    """An evidence bundle is a gzip stream: a card inside it is found by what it holds,
    and its deflate bytes are not read as digits (a clean-clone run, session 40, read a
    bundle's "2\\xcd\\xf6" repeated as 4222222222222); a test PAN's digits inside a
    SHA-256 of the content (the verifier tests' synthetic digests) are no card."""
    digest = b"ab" + b"4111111111111111" + b"cd" * 23
    with tempfile.TemporaryDirectory() as scratch:
        leaked = Path(scratch) / "leaked.tar.gz"
        leaked.write_bytes(gzip.compress(b'{"pan": "4111 1111 1111 1111"}'))
        clean = Path(scratch) / "clean.tar.gz"
        clean.write_bytes(gzip.compress(b'{"sha256": "' + digest + b'"}'))
        twice = Path(scratch) / "responses.log.gz"
        twice.write_bytes(gzip.compress(b"one") + gzip.compress(b"pan=4111111111111111"))
        archive = BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:  # octal header fields
            # uid 4 and 4,096 bytes: "0000004", "0000000", "00000010000" chain into
            # 4000000000000010
            for name, body in (
                ("manifest.json", b"x" * 4096),
                ("entries.jsonl", b"4111 1111 1111 1111"),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.uid = len(body), 0o644, 4
                tar.addfile(info, BytesIO(body))
        bundle = Path(scratch) / "bundle.tar.gz"
        bundle.write_bytes(archive.getvalue())
        scanner = LeakScanner.of(["4111111111111111", "4000000000000010"])
        assert scanner.scan_file(leaked) == ["in its gzip content: test PAN 411111******1111"]
        assert scanner.scan_file(clean) == []
        assert scanner.scan_file(twice) == ["in its gzip content: test PAN 411111******1111"]
        # A tar archive by its members: the header's NUL-separated octal fields are no
        # digit chain (a clean run read test PAN 4000000000000010 in them), a file is.
        assert scanner.scan_file(bundle) == ["in its gzip content: test PAN 411111******1111"]
