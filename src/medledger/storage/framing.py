"""Framing for streamed uploads and downloads (sans-I/O).

A stream is a sequence of frames ``kind (1 byte) || length (4 bytes, big endian)
|| payload``. Kinds: ``C`` an encrypted chunk or shard, ``M`` a manifest (last
frame of an upload, first frame of a download), ``E`` an error (JSON ``{code,
message}``) that ends a download, ``X`` a shard a column stream cannot serve
(JSON ``{stripe, code}``; the stream goes on).
"""

from __future__ import annotations

import struct

from medledger.errors import InvalidInput

CHUNK = b"C"
MANIFEST = b"M"
ERROR = b"E"
MISSING = b"X"
_KINDS = frozenset({CHUNK, MANIFEST, ERROR, MISSING})
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_HDR = struct.Struct(">cI")


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HDR.pack(kind, len(payload)) + payload


def frame_header(kind: bytes, length: int) -> bytes:
    return _HDR.pack(kind, length)


class FrameParser:
    """Feed bytes, get complete frames. ``max_payload`` bounds memory (manifest
    frames may be up to ``MAX_MANIFEST_BYTES``).

    Large payloads are assembled in a preallocated buffer (one copy per byte).
    """

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self._limits = {MANIFEST: max(max_payload, MAX_MANIFEST_BYTES)}
        self._head = bytearray()
        self._kind = b""
        self._body: bytearray | None = None
        self._filled = 0

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        view = memoryview(data)
        pos, end = 0, len(data)
        while True:
            if self._body is None:
                if pos == end:
                    break
                need = _HDR.size - len(self._head)
                take = min(need, end - pos)
                self._head += view[pos : pos + take]
                pos += take
                if len(self._head) < _HDR.size:
                    break
                kind, length = _HDR.unpack(self._head)
                self._head.clear()
                if kind not in _KINDS:
                    raise InvalidInput("unknown frame kind in stream", code="BAD_FRAME")
                if length > self._limits.get(kind, self.max_payload):
                    raise InvalidInput("frame exceeds the size limit", code="FRAME_TOO_LARGE")
                self._kind = kind
                self._body = bytearray(length)
                self._filled = 0
            body = self._body
            take = min(len(body) - self._filled, end - pos)
            body[self._filled : self._filled + take] = view[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled < len(body):
                break
            out.append((self._kind, bytes(body)))
            self._body = None
        return out

    @property
    def pending(self) -> int:
        """Bytes held of an unfinished frame; 0 when the stream ended on a frame boundary."""
        if self._body is not None:
            return _HDR.size + self._filled
        return len(self._head)
