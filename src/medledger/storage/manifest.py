"""The manifest of a stored record: chunk CIDs and sizes, cipher and chunking."""

from __future__ import annotations

from medledger.codec import Record, decode_canonical, encode
from medledger.crypto.cid import cid_for, is_cid
from medledger.errors import InvalidInput

DEFAULT_CHUNK_SIZE = 256 * 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
CIPHER = "aes-256-gcm/v1"
MANIFEST_VERSION = 1


class ChunkRef(Record, frozen=True):
    cid: str
    size: int  # ciphertext bytes


class Manifest(Record, frozen=True):
    version: int
    cipher: str
    chunk_size: int  # plaintext bytes per chunk (last may be shorter)
    size: int  # plaintext bytes in all
    chunks: list[ChunkRef]

    def encode(self) -> bytes:
        return encode(self)

    def cid(self) -> str:
        return cid_for(self.encode())

    def validate(self) -> None:
        if self.version != MANIFEST_VERSION or self.cipher != CIPHER:
            raise InvalidInput("unsupported manifest version or cipher", code="BAD_MANIFEST")
        if not 0 < self.chunk_size <= MAX_CHUNK_SIZE:
            raise InvalidInput("manifest chunk size out of range", code="BAD_MANIFEST")
        expected = -(-self.size // self.chunk_size) if self.size else 0
        if self.size < 0 or len(self.chunks) != expected:
            raise InvalidInput("manifest chunk count does not match its size", code="BAD_MANIFEST")
        for i, ref in enumerate(self.chunks):
            if not is_cid(ref.cid):
                raise InvalidInput("manifest holds a bad chunk CID", code="BAD_MANIFEST")
            plain = self.chunk_size if i < expected - 1 else self.size - self.chunk_size * i
            if ref.size != plain + 16:
                raise InvalidInput("manifest chunk size is inconsistent", code="BAD_MANIFEST")


def decode_manifest(data: bytes) -> Manifest:
    try:
        m = decode_canonical(data, Manifest)
    except InvalidInput as exc:
        raise InvalidInput(f"manifest is malformed: {exc.message}", code="BAD_MANIFEST")
    m.validate()
    return m
