"""Client-side chunk encryption and decryption of record content (streaming)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medledger.crypto.aead import decrypt_chunk, encrypt_chunk
from medledger.crypto.cid import cid_for
from medledger.errors import IntegrityError
from medledger.storage.manifest import CIPHER, MANIFEST_VERSION, ChunkRef, Manifest


def encrypt_stream(
    src: BinaryIO, size: int, key: bytes, chunk_size: int
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(cid, ciphertext)`` per chunk of ``src`` (``size`` bytes)."""
    aead = AESGCM(key)
    count = -(-size // chunk_size) if size else 0
    for i in range(count):
        plain = src.read(chunk_size)
        want = min(chunk_size, size - i * chunk_size)
        if len(plain) != want:
            raise IntegrityError("file changed while it was being read", code="SOURCE_CHANGED")
        ct = encrypt_chunk(aead, i, count, plain)
        yield cid_for(ct), ct


def build_manifest(size: int, chunk_size: int, refs: list[ChunkRef]) -> Manifest:
    m = Manifest(
        version=MANIFEST_VERSION, cipher=CIPHER, chunk_size=chunk_size, size=size, chunks=refs
    )
    m.validate()
    return m


class ChunkDecryptor:
    """Verify and decrypt the chunks of one manifest, in order."""

    def __init__(self, manifest: Manifest, key: bytes) -> None:
        self.manifest = manifest
        self._aead = AESGCM(key)
        self._next = 0

    @property
    def done(self) -> bool:
        return self._next == len(self.manifest.chunks)

    def feed(self, ciphertext: bytes) -> bytes:
        i = self._next
        if i >= len(self.manifest.chunks):
            raise IntegrityError("more chunks than the manifest lists", code="CHUNK_UNEXPECTED")
        ref = self.manifest.chunks[i]
        if len(ciphertext) != ref.size or cid_for(ciphertext) != ref.cid:
            raise IntegrityError(f"chunk {i} does not match the manifest", code="CHUNK_CORRUPT")
        self._next += 1
        return decrypt_chunk(self._aead, i, len(self.manifest.chunks), ciphertext)
