"""Client-side chunk encryption and decryption of record content (streaming)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medledger.crypto.aead import decrypt_chunk, encrypt_chunk
from medledger.crypto.cid import cid_for
from medledger.errors import IntegrityError
from medledger.storage.manifest import (
    CIPHER,
    MANIFEST_VERSION,
    ChunkRef,
    ContentManifest,
    Manifest,
)


def encrypt_stream(
    src: BinaryIO, size: int, key: bytes, chunk_size: int, *, window: int = 8
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(cid, ciphertext)`` per chunk of ``src`` (``size`` bytes), in order.

    Encryption and hashing of the next chunks run in two threads (both release the
    GIL) while the caller sends the current one; at most ``window`` chunks are held.
    """
    aead = AESGCM(key)
    count = -(-size // chunk_size) if size else 0

    def seal(i: int, plain: bytes) -> tuple[str, bytes]:
        ct = encrypt_chunk(aead, i, count, plain)
        return cid_for(ct), ct

    def read(i: int) -> bytes:
        plain = src.read(chunk_size)
        if len(plain) != min(chunk_size, size - i * chunk_size):
            raise IntegrityError("file changed while it was being read", code="SOURCE_CHANGED")
        return plain

    with ThreadPoolExecutor(2, thread_name_prefix="encrypt") as pool:
        pending: deque[Future[tuple[str, bytes]]] = deque()
        next_index = 0
        while next_index < count or pending:
            while next_index < count and len(pending) < window:
                pending.append(pool.submit(seal, next_index, read(next_index)))
                next_index += 1
            yield pending.popleft().result()


def build_content_manifest(size: int, chunk_size: int, refs: list[ChunkRef]) -> ContentManifest:
    m = ContentManifest(
        version=MANIFEST_VERSION, cipher=CIPHER, chunk_size=chunk_size, size=size, chunks=refs
    )
    m.validate()
    return m


class ChunkDecryptor:
    """Verify and decrypt the chunks of one manifest, in order."""

    def __init__(self, manifest: Manifest | ContentManifest, key: bytes) -> None:
        self.manifest = manifest
        self._aead = AESGCM(key)
        self._next = 0

    @property
    def done(self) -> bool:
        return self._next == len(self.manifest.chunks)

    def feed(self, ciphertext: bytes) -> bytes:
        """Verify and decrypt the next chunk."""
        i = self._next
        if i >= len(self.manifest.chunks):
            raise IntegrityError("more chunks than the manifest lists", code="CHUNK_UNEXPECTED")
        self._next += 1
        return self.open(i, ciphertext)

    def open(self, i: int, ciphertext: bytes, *, check_cid: bool = True) -> bytes:
        """Verify chunk ``i`` against the manifest and decrypt it (thread-safe).

        ``check_cid=False`` skips the hash when the sender already checked every
        chunk against its CID (the node does, before streaming): the size check and
        the AES-GCM tag, which binds the chunk's index and the chunk count, still
        refuse any altered, moved, dropped or added chunk (``CHUNK_DECRYPT_FAILED``)."""
        ref = self.manifest.chunks[i]
        if len(ciphertext) != ref.size or (check_cid and cid_for(ciphertext) != ref.cid):
            raise IntegrityError(f"chunk {i} does not match the manifest", code="CHUNK_CORRUPT")
        return decrypt_chunk(self._aead, i, len(self.manifest.chunks), ciphertext)
