"""Cryptographic recipes: signing, sealing, AEAD, hashing, content IDs.

Safe recipes over hazardous layers (PyNaCl/libsodium, pyca/cryptography).
Verification raises :class:`medledger.errors.AuthError`; it never returns a bool.
"""

from medledger.crypto.aead import CHUNK_NONCE_PREFIX, decrypt_chunk, encrypt_chunk, new_data_key
from medledger.crypto.cid import cid_for, cid_to_digest, is_cid, verify_cid
from medledger.crypto.hashing import sha256
from medledger.crypto.keys import (
    PrivateKey,
    PublicKey,
    identity_id_for,
    load_key_file,
    save_key_file,
    seal_to,
    unseal,
)

__all__ = [
    "CHUNK_NONCE_PREFIX",
    "PrivateKey",
    "PublicKey",
    "cid_for",
    "cid_to_digest",
    "decrypt_chunk",
    "encrypt_chunk",
    "identity_id_for",
    "is_cid",
    "load_key_file",
    "new_data_key",
    "save_key_file",
    "seal_to",
    "sha256",
    "unseal",
    "verify_cid",
]
