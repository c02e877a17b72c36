"""multipart/related parsing and building for DICOMweb (medledger.dicom.multipart)."""

from __future__ import annotations

import mmap
import tempfile

import pytest

from medledger.dicom import multipart
from medledger.errors import InvalidInput


def body(parts: list[bytes], boundary: str = "b0und", *, lead: bytes = b"\r\n") -> bytes:
    out = b""
    for p in parts:
        out += lead + b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p
        lead = b"\r\n"
    return out + b"\r\n--" + boundary.encode() + b"--"


def contents(raw: bytes, boundary: str = "b0und") -> list[bytes]:
    return [raw[p.start : p.end] for p in multipart.split_parts(raw, len(raw), boundary)]


def test_parts_round_trip_with_and_without_leading_crlf() -> None:
    parts = [b"one", b"\r\n--b0unx\r\n", b"", b"x" * 10_000]
    assert contents(body(parts)) == parts
    assert contents(body(parts, lead=b"")) == parts
    built = b"".join(multipart.build([("application/dicom", p) for p in parts], "b0und"))
    assert contents(built) == parts
    (first, *_) = multipart.split_parts(built, len(built), "b0und")
    assert first.content_type == "application/dicom" and first.headers["content-length"] == "3"


def test_parts_from_an_mmap() -> None:
    raw = body([b"alpha", b"beta"])
    with tempfile.TemporaryFile() as fh:
        fh.write(raw)
        fh.flush()
        with mmap.mmap(fh.fileno(), len(raw), access=mmap.ACCESS_READ) as buf:
            parts = multipart.split_parts(buf, len(raw), "b0und")
            assert [buf[p.start : p.end] for p in parts] == [b"alpha", b"beta"]


@pytest.mark.parametrize("cut", [1, 5, 20, 40])
def test_truncated_bodies_are_refused(cut: int) -> None:
    raw = body([b"alpha" * 5, b"beta"])
    with pytest.raises(InvalidInput) as exc:
        multipart.split_parts(raw[:-cut], len(raw) - cut, "b0und")
    assert exc.value.code == "STOW_TRUNCATED"


def test_not_multipart_and_bad_boundaries() -> None:
    with pytest.raises(InvalidInput) as exc:
        multipart.split_parts(b"DICM plain file", 15, "b0und")
    assert exc.value.code == "BAD_MULTIPART"
    for ctype in (
        "multipart/related",
        'multipart/related; boundary=""',
        "multipart/related; boundary=é",
    ):
        with pytest.raises(InvalidInput) as exc:
            multipart.boundary_of(multipart.parse_content_type(ctype))
        assert exc.value.code == "BAD_CONTENT_TYPE"


def test_content_type_and_accept_parsing() -> None:
    m = multipart.parse_content_type('Multipart/Related; type="application/dicom"; boundary="a;b"')
    assert m.type == "multipart/related"
    assert m.params == {"type": "application/dicom", "boundary": "a;b"}
    accepts = multipart.parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=*, image/png'
    )
    assert [a.type for a in accepts] == ["multipart/related", "image/png"]
    assert accepts[0].params["transfer-syntax"] == "*"
