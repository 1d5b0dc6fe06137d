"""The bundle's archive read as the exporter writes it, and nothing else (review 35).

The exporter (`compliance.export._tar`, Python's `tarfile` with short ASCII names) writes
one gzip stream holding plain POSIX ustar members (magic ``ustar\\0`` ``00``, type
``0``, no prefix, no link name, mode 0644), then zero blocks to the end. Every other
tar construct is one that readers take differently, so that the auditor's ``tar -xzf``
(GNU tar, or bsdtar on macOS and Windows) would unpack other files than the ones the
checks read: a GNU header's bytes in the POSIX prefix field (`tarfile` puts them before
the name whatever the magic, tar reads no prefix there), a size `int()` reads and tar
does not (``+``, ``_``), members after a zero block (``tar -i`` reads on), pax and GNU
extended headers, links, directories, and modes that tar run as root restores
(set-user-ID, executable). Each is refused, not interpreted. Being strict costs
nothing: no genuine bundle holds any of them.

`members` walks the archive once; with ``keep=False`` it holds nothing but the current
block, so the whole archive is checked (its size bounded) before anything is kept.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

from cofre_evidence_verifier.errors import UnsafeBundle

BLOCK: Final = 512
_CHUNK: Final = 1024 * 1024
_POSIX_MAGIC: Final = b"ustar\x0000"  # magic "ustar\0" and version "00"
# A number field: octal digits, ended by NUL or space as writers do (none is signed,
# base-256 or spaced before its digits in a bundle).
_OCTAL: Final = re.compile(rb"([0-7]+)[ \x00]*")
_REGULAR: Final = (b"0", b"\x00")
_PAX: Final = (b"x", b"g")
_GNU_LONG_NAME: Final = b"L"
# Read or write, never execute, set-user-ID, set-group-ID or sticky: no file of a
# bundle is a program.
_MODE_BITS: Final = 0o666
# The most of an extended header read to name the member it describes in the refusal.
_MAX_NAMING: Final = 64 * 1024


class _Inflated:
    """The decompressed bytes of the file's one gzip stream, in order, counted: more
    than `limit` raises `UnsafeBundle`, as does a stream that is not one complete gzip
    member with nothing after it."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # one gzip member
        self._buffer = b""
        self._at = 0
        self.total = 0

    def _more(self) -> bytes:
        """The next decompressed chunk, or b"" at the end of the gzip stream."""
        try:
            while not self._inflater.eof:
                chunk = self._inflater.unconsumed_tail or self._raw.read(_CHUNK)
                out = self._inflater.decompress(chunk, _CHUNK)
                if not chunk and not out:
                    raise UnsafeBundle("not a complete gzip stream (it ends early)")
                if out:
                    self.total += len(out)
                    if self.total > self._limit:
                        raise UnsafeBundle(
                            f"the bundle decompresses to more than {self._limit // _CHUNK} MiB"
                        )
                    return out
        except zlib.error as exc:
            raise UnsafeBundle(f"not a complete gzip stream ({exc})") from None
        return b""

    def read(self, size: int, *, keep: bool = True) -> bytes:
        """The next `size` bytes (b"" when not `keep`: only counted). Raises
        `UnsafeBundle` when the stream ends before them."""
        parts: list[bytes] = []
        left = size
        while left:
            if self._at == len(self._buffer):
                self._buffer, self._at = self._more(), 0
                if not self._buffer:
                    self.finish()  # a second gzip member after a cut tar is named as such
                    raise UnsafeBundle("the archive ends inside a member or header (truncated)")
            piece = self._buffer[self._at : self._at + left] if keep else b""
            step = min(left, len(self._buffer) - self._at)
            if keep:
                parts.append(piece)
            self._at += step
            left -= step
        return b"".join(parts)

    def rest_is_zeros(self) -> bool:
        """Whether every byte left in the stream is zero (they are read and counted)."""
        while True:
            rest = self._buffer[self._at :]
            if rest.count(0) != len(rest):
                return False
            self._buffer, self._at = self._more(), 0
            if not self._buffer:
                return True

    def finish(self) -> None:
        """Raise `UnsafeBundle` when anything follows the gzip stream in the file: `gzip`
        and the auditor's ``tar -xzf`` read a second, concatenated member too."""
        if self._inflater.unused_data or self._raw.read(1):
            raise UnsafeBundle(
                "data after the bundle's gzip stream (a second gzip member, which other "
                "tools unpack and this verifier would not read)"
            )


def _number(field: bytes, what: str, name: str) -> int:
    """The octal number in a header field. Raises `UnsafeBundle` for any other spelling."""
    match = _OCTAL.fullmatch(field)
    if match is None:
        raise UnsafeBundle(
            f"member {name!r}: its {what} field {field!r} is not an octal number as the "
            "exporter writes it (tar reads such a field otherwise)"
        )
    return int(match.group(1), 8)


def _checksum_ok(header: bytes) -> bool:
    stated = _OCTAL.fullmatch(header[148:156].lstrip(b" "))
    return stated is not None and int(stated.group(1), 8) == (
        sum(header[:148]) + 8 * 0x20 + sum(header[156:])
    )


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "backslashreplace")


def _described(data: bytes, typeflag: bytes, name: str) -> str:
    """The name an extended header gives the member after it (for the refusal only)."""
    if typeflag == _GNU_LONG_NAME:
        return _text(data)
    found: dict[str, str] = {}
    for record in data.split(b"\n"):
        key, _, value = record.partition(b" ")[2].partition(b"=")
        found[key.decode("utf-8", "backslashreplace")] = value.decode("utf-8", "backslashreplace")
    return found.get("path") or found.get("GNU.sparse.name") or name


def _header_problem(header: bytes) -> str | None:
    """What makes a plain file's header other than the exporter's, if anything."""
    if header[257:265] != _POSIX_MAGIC:
        return "not the plain POSIX ustar header the exporter writes: its magic"
    if header[345:500].strip(b"\x00"):
        return "not the plain POSIX ustar header the exporter writes: a name prefix"
    if header[157:257].strip(b"\x00"):
        return "a link target on a plain file"
    if header[:100].partition(b"\x00")[2].strip(b"\x00"):
        return "bytes after the end of its name"
    return None


def members(
    path: Path,
    *,
    limit: int,
    max_members: int,
    keep: bool,
    check: Callable[[str, int], None],
) -> Iterator[tuple[str, bytes]]:
    """Each member of the bundle at `path` as its name and data (b"" unless `keep`).
    Raises `UnsafeBundle` for anything the exporter does not write (see the module
    docstring), more than `limit` bytes decompressed or more than `max_members`
    members, and whatever `check` raises for a member's name and size, called before
    its data is read; `OSError` for a file that cannot be read."""
    with path.open("rb") as raw:
        stream = _Inflated(raw, limit)
        count = 0
        while True:
            header = stream.read(BLOCK)
            if header.count(0) == BLOCK:
                _end(stream)
                return
            if not _checksum_ok(header):
                raise UnsafeBundle("a tar header's checksum does not match (damaged archive)")
            count += 1
            if count > max_members:
                raise UnsafeBundle(f"more than {max_members} members in the bundle")
            name, typeflag = _text(header[:100]), header[156:157]
            size = _number(header[124:136], "size", name)
            if typeflag not in _REGULAR:
                if typeflag in (*_PAX, _GNU_LONG_NAME) and size <= _MAX_NAMING:
                    name = _described(stream.read(size), typeflag, name)
                # Quoted as it is: the reports escape what a terminal would act on.
                raise UnsafeBundle(f"unsafe member in bundle: '{name}'")
            problem = _header_problem(header)
            if problem is not None:
                raise UnsafeBundle(f"unsafe member in bundle: '{name}' ({problem})")
            mode = _number(header[100:108], "mode", name)
            if mode & ~_MODE_BITS:
                raise UnsafeBundle(
                    f"member {name!r}: mode {mode:o} (executable, set-user-ID, set-group-ID "
                    "or sticky): tar run as root would restore it on the unpacked file"
                )
            check(name, size)
            data = stream.read(size, keep=keep)
            padding = stream.read(-size % BLOCK)
            if padding.count(0) != len(padding):
                raise UnsafeBundle(f"member {name!r}: bytes other than zero after its data")
            yield name, data


def _end(stream: _Inflated) -> None:
    """Check what follows the archive's first zero block: zero bytes to the end of a
    whole number of blocks, then the end of the gzip stream and of the file."""
    if not stream.rest_is_zeros():
        raise UnsafeBundle(
            "data after the end of the archive (its zero blocks): tar -i and other "
            "readers unpack members there that this verifier would not read"
        )
    if stream.total % BLOCK:
        raise UnsafeBundle("the archive is not a whole number of tar blocks")
    stream.finish()
