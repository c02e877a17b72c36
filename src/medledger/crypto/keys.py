"""Ed25519 identities, key files and X25519 sealing.

An identity's ID is derived from its public key (``ml`` + base32 of the first
20 bytes of SHA-256(public key)), so a transaction that carries the public key
proves which ID signed it without any lookup. Sealing (libsodium sealed boxes)
uses the X25519 key converted from the same Ed25519 key, so one key file is
enough for a person or a node.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from medledger.crypto.hashing import sha256
from medledger.errors import AuthError, InvalidInput
from medledger.fsutil import atomic_write

ID_PREFIX = "ml"
SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32


@functools.lru_cache(maxsize=65536)
def identity_id_for(public_key: bytes) -> str:
    """The stable identity ID of an Ed25519 public key."""
    digest = sha256(public_key)[:20]
    return ID_PREFIX + base64.b32encode(digest).decode("ascii").lower()


_ID_RE = re.compile(ID_PREFIX + r"[a-z2-7]{32}")


def is_identity_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class PublicKey:
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != PUBLIC_KEY_SIZE:
            raise InvalidInput("public key must be 32 bytes", code="BAD_PUBLIC_KEY")

    @property
    def id(self) -> str:
        return identity_id_for(self.raw)

    def hex(self) -> str:
        return self.raw.hex()

    @classmethod
    def from_hex(cls, value: str) -> PublicKey:
        try:
            return cls(bytes.fromhex(value))
        except ValueError:
            raise InvalidInput("public key is not hex", code="BAD_PUBLIC_KEY")

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise :class:`AuthError` unless ``signature`` signs ``message``."""
        if len(signature) != SIGNATURE_SIZE:
            raise AuthError("signature must be 64 bytes", code="BAD_SIGNATURE")
        try:
            nacl.bindings.crypto_sign_open(signature + message, self.raw)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            raise AuthError("signature does not verify", code="BAD_SIGNATURE")

    def x25519(self) -> bytes:
        try:
            return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(self.raw)
        except Exception:  # libsodium rejects small-order points
            raise InvalidInput("public key cannot be used for sealing", code="BAD_PUBLIC_KEY")


class PrivateKey:
    """An Ed25519 signing key (32-byte seed)."""

    __slots__ = ("_signing", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise InvalidInput("private key seed must be 32 bytes", code="BAD_KEY_FILE")
        self._signing = nacl.signing.SigningKey(seed)
        self.public_key = PublicKey(bytes(self._signing.verify_key))

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(os.urandom(32))

    @property
    def id(self) -> str:
        return self.public_key.id

    @property
    def seed(self) -> bytes:
        return bytes(self._signing)

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message).signature

    def x25519_private(self) -> bytes:
        return nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(self.seed + self.public_key.raw)


def seal_to(recipient: PublicKey, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` so that only ``recipient``'s private key opens it."""
    box = nacl.public.SealedBox(nacl.public.PublicKey(recipient.x25519()))
    return bytes(box.encrypt(plaintext))


def unseal(key: PrivateKey, sealed: bytes) -> bytes:
    box = nacl.public.SealedBox(nacl.public.PrivateKey(key.x25519_private()))
    try:
        return bytes(box.decrypt(sealed))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise AuthError("sealed data cannot be opened with this key", code="UNSEAL_FAILED")


KEY_FILE_TYPE = "medledger-ed25519"


def save_key_file(path: Path, key: PrivateKey, *, overwrite: bool = False) -> None:
    """Write a key file readable only by its owner (mode 0600)."""
    if path.exists() and not overwrite:
        raise InvalidInput(f"key file {path} already exists", code="KEY_FILE_EXISTS")
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "type": KEY_FILE_TYPE,
        "id": key.id,
        "public_key": key.public_key.hex(),
        "private_key": key.seed.hex(),
    }
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode(), mode=0o600)


def load_key_file(path: Path) -> PrivateKey:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"key file {path} not found", code="KEY_FILE_NOT_FOUND")
    except (OSError, ValueError):
        raise InvalidInput(f"key file {path} is not a MedLedger key file", code="BAD_KEY_FILE")
    if not isinstance(doc, dict) or doc.get("type") != KEY_FILE_TYPE:
        raise InvalidInput(f"key file {path} is not a MedLedger key file", code="BAD_KEY_FILE")
    try:
        key = PrivateKey(bytes.fromhex(str(doc["private_key"])))
    except (KeyError, ValueError):
        raise InvalidInput(f"key file {path} is damaged", code="BAD_KEY_FILE")
    if doc.get("public_key") != key.public_key.hex():
        raise InvalidInput(f"key file {path} is damaged", code="BAD_KEY_FILE")
    return key
