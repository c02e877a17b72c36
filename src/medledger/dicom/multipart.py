"""``multipart/related`` bodies (RFC 2387) as DICOMweb uses them (PS3.18 8.6.1.2).

:func:`parse_content_type` reads a media type and its parameters;
:func:`split_parts` finds the parts of a body held in a buffer (an ``mmap`` of a
temporary file for STOW-RS, so a large upload is never read into memory at once)
and returns each part's headers and position, not its bytes; :func:`build` writes a
response. A body without its closing delimiter (``--BOUNDARY--``) is truncated:
``STOW_TRUNCATED``, and the caller stores nothing.
"""

from __future__ import annotations

import mmap
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from medledger.errors import InvalidInput

MAX_PARTS = 10_000
MAX_PART_HEADER_BYTES = 8 * 1024
MAX_BOUNDARY = 70  # RFC 2046 5.1.1


@dataclass(frozen=True, slots=True)
class MediaType:
    """``type/subtype`` (lower case) and its parameters (names lower case, unquoted)."""

    type: str
    params: dict[str, str]


def parse_content_type(value: str) -> MediaType:
    """Parse a Content-Type (or one Accept entry) value; quoted parameters allowed."""
    items = _split_unquoted(value, ";")
    media = items[0].strip().lower() if items else ""
    params: dict[str, str] = {}
    for item in items[1:]:
        name, eq, val = item.partition("=")
        if not eq:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        params[name.strip().lower()] = val
    return MediaType(media, params)


def parse_accept(value: str) -> list[MediaType]:
    """The entries of an Accept header, in order (``q`` values are not ranked)."""
    return [parse_content_type(v) for v in _split_unquoted(value, ",") if v.strip()]


def _split_unquoted(value: str, sep: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: its headers (names lower case) and where its content lies."""

    headers: dict[str, str]
    start: int
    end: int

    @property
    def content_type(self) -> str:
        return parse_content_type(self.headers.get("content-type", "")).type

    @property
    def size(self) -> int:
        return self.end - self.start


def boundary_of(media: MediaType) -> str:
    """The ``boundary`` parameter of a multipart Content-Type (``BAD_CONTENT_TYPE``)."""
    boundary = media.params.get("boundary", "")
    if (
        not 1 <= len(boundary) <= MAX_BOUNDARY
        or not boundary.isascii()
        or any(ord(c) < 0x20 for c in boundary)
    ):
        raise InvalidInput(
            "a multipart/related body needs a boundary parameter of 1 to 70 characters",
            code="BAD_CONTENT_TYPE",
        )
    return boundary


def split_parts(buf: bytes | mmap.mmap, size: int, boundary: str) -> list[Part]:
    """The parts of the multipart body in ``buf`` (bytes, or an :class:`mmap.mmap` of
    a temporary file), of ``size`` bytes.

    ``STOW_TRUNCATED`` when the closing delimiter is missing, ``BAD_MULTIPART`` when
    the body is not multipart with this boundary, or has too many parts.
    """
    find = buf.find
    dash = b"--" + boundary.encode("ascii")
    delim = b"\r\n" + dash
    if size >= len(dash) and buf[: len(dash)] == dash:
        pos = len(dash)
    else:
        at = find(delim)
        if at < 0:
            if size == 0:
                raise InvalidInput("the multipart body is empty", code="STOW_EMPTY")
            raise InvalidInput(
                "the body holds no part delimited by its boundary", code="BAD_MULTIPART"
            )
        pos = at + len(delim)
    parts: list[Part] = []
    while True:
        # after a delimiter: "--" closes the body; otherwise optional whitespace, CRLF
        if buf[pos : pos + 2] == b"--":
            return parts
        eol = find(b"\r\n", pos)
        if eol < 0:
            raise InvalidInput("the multipart body is truncated", code="STOW_TRUNCATED")
        if buf[pos:eol].strip(b" \t"):
            raise InvalidInput("a part delimiter is followed by text", code="BAD_MULTIPART")
        head_start = eol + 2
        if buf[head_start : head_start + 2] == b"\r\n":
            head_end = head_start  # no headers
            body_start = head_start + 2
        else:
            head_end = find(b"\r\n\r\n", head_start, head_start + MAX_PART_HEADER_BYTES)
            if head_end < 0:
                if size - head_start < MAX_PART_HEADER_BYTES:
                    raise InvalidInput("the multipart body is truncated", code="STOW_TRUNCATED")
                raise InvalidInput("a part's headers are too long", code="BAD_MULTIPART")
            body_start = head_end + 4
        headers = _headers(buf[head_start:head_end])
        end = find(delim, body_start)
        if end < 0:
            raise InvalidInput("the multipart body is truncated", code="STOW_TRUNCATED")
        parts.append(Part(headers, body_start, end))
        if len(parts) > MAX_PARTS:
            raise InvalidInput(f"more than {MAX_PARTS} parts", code="BAD_MULTIPART")
        pos = end + len(delim)


def _headers(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise InvalidInput("a part header has no colon", code="BAD_MULTIPART")
        out[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return out


def new_boundary() -> str:
    return "medledger-" + secrets.token_hex(16)


def content_type(part_type: str, boundary: str, **extra: str) -> str:
    """The Content-Type of a multipart/related response."""
    more = "".join(f"; {k.replace('_', '-')}={v}" for k, v in extra.items())
    return f'multipart/related; type="{part_type}"; boundary={boundary}{more}'


def build(
    parts: Iterable[tuple[str, bytes]], boundary: str, *, location: Iterable[str] | None = None
) -> Iterator[bytes]:
    """The body of a multipart/related message: ``(content type, content)`` pairs."""
    locs = iter(location) if location is not None else None
    for ctype, data in parts:
        head = f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
        if locs is not None:
            head += f"Content-Location: {next(locs)}\r\n"
        yield (head + "\r\n").encode("latin-1")
        yield data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("latin-1")
