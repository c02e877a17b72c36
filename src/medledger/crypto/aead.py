"""AES-256-GCM for record chunks.

Each record has its own random 32-byte data key; chunk ``i`` is encrypted with
the 12-byte nonce ``CHUNK_NONCE_PREFIX || i (8 bytes, big endian)``. Nonces never
repeat under one key because a key encrypts one record once. The associated
data binds the chunk index and the total chunk count, so chunks cannot be
reordered or the record truncated without detection.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medledger.errors import IntegrityError

CHUNK_NONCE_PREFIX = b"mlc1"
TAG_SIZE = 16
KEY_SIZE = 32


def new_data_key() -> bytes:
    return os.urandom(KEY_SIZE)


def _nonce(index: int) -> bytes:
    return CHUNK_NONCE_PREFIX + struct.pack(">Q", index)


def _aad(index: int, count: int) -> bytes:
    return b"medledger/chunk/v1" + struct.pack(">QQ", index, count)


def encrypt_chunk(aead: AESGCM, index: int, count: int, plaintext: bytes) -> bytes:
    return aead.encrypt(_nonce(index), plaintext, _aad(index, count))


def decrypt_chunk(aead: AESGCM, index: int, count: int, ciphertext: bytes) -> bytes:
    try:
        return aead.decrypt(_nonce(index), ciphertext, _aad(index, count))
    except InvalidTag:
        raise IntegrityError(
            f"chunk {index} does not decrypt with the record key", code="CHUNK_DECRYPT_FAILED"
        )
