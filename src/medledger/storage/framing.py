"""Framing for streamed uploads and downloads (sans-I/O).

A stream is a sequence of frames ``kind (1 byte) || length (4 bytes, big endian)
|| payload``. Kinds: ``C`` an encrypted chunk, ``M`` the manifest (last frame of
an upload, first frame of a download), ``E`` an error (JSON ``{code, message}``)
that ends a download.
"""

from __future__ import annotations

import struct

from medledger.errors import InvalidInput

CHUNK = b"C"
MANIFEST = b"M"
ERROR = b"E"
_KINDS = frozenset({CHUNK, MANIFEST, ERROR})
_HDR = struct.Struct(">cI")


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HDR.pack(kind, len(payload)) + payload


def frame_header(kind: bytes, length: int) -> bytes:
    return _HDR.pack(kind, length)


class FrameParser:
    """Feed bytes, get complete frames. ``max_payload`` bounds memory."""

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buf += data
        out: list[tuple[bytes, bytes]] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= _HDR.size:
            kind, length = _HDR.unpack_from(buf, pos)
            if kind not in _KINDS:
                raise InvalidInput("unknown frame kind in stream", code="BAD_FRAME")
            if length > self.max_payload:
                raise InvalidInput("frame exceeds the size limit", code="FRAME_TOO_LARGE")
            end = pos + _HDR.size + length
            if len(buf) < end:
                break
            out.append((kind, bytes(buf[pos + _HDR.size : end])))
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
