"""Signed API requests (pure; shared by the server and the client).

A request carries three headers::

    X-MedLedger-Key:        hex Ed25519 public key of the caller
    X-MedLedger-Time:       milliseconds since the Unix epoch
    X-MedLedger-Signature:  hex signature over REQ_DOMAIN || canonical request
    X-MedLedger-Content-SHA256: hex SHA-256 of the body, or UNSIGNED-PAYLOAD

The canonical request is ``METHOD \\n PATH?QUERY \\n TIME \\n BODY-HASH``. The
server accepts a time within ``max_skew_ms`` of its clock. ``UNSIGNED-PAYLOAD``
is accepted only for streamed content whose chunks are content-addressed.
"""

from __future__ import annotations

import hashlib

from medledger.crypto.keys import PrivateKey, PublicKey
from medledger.errors import AuthError

REQ_DOMAIN = b"medledger/request/v1\x00"
UNSIGNED = "UNSIGNED-PAYLOAD"
H_KEY = "x-medledger-key"
H_TIME = "x-medledger-time"
H_SIG = "x-medledger-signature"
H_BODY = "x-medledger-content-sha256"


def canonical_request(method: str, path_qs: str, time_ms: int, body_hash: str) -> bytes:
    return REQ_DOMAIN + f"{method.upper()}\n{path_qs}\n{time_ms}\n{body_hash}".encode()


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def sign_request(
    key: PrivateKey, method: str, path_qs: str, time_ms: int, payload_hash: str
) -> dict[str, str]:
    sig = key.sign(canonical_request(method, path_qs, time_ms, payload_hash))
    return {
        H_KEY: key.public_key.hex(),
        H_TIME: str(time_ms),
        H_SIG: sig.hex(),
        H_BODY: payload_hash,
    }


def verify_request(
    headers: dict[str, str], method: str, path_qs: str, now_ms: int, max_skew_ms: int
) -> PublicKey:
    """Return the caller's public key, or raise :class:`AuthError`."""
    try:
        pk = PublicKey.from_hex(headers[H_KEY])
        t = int(headers[H_TIME])
        sig = bytes.fromhex(headers[H_SIG])
        payload = headers[H_BODY]
    except KeyError:
        raise AuthError("request is not signed (X-MedLedger-* headers)", code="AUTH_REQUIRED")
    except ValueError:
        raise AuthError("request signature headers are malformed", code="AUTH_MALFORMED")
    except Exception:
        raise AuthError("request signature headers are malformed", code="AUTH_MALFORMED")
    if abs(now_ms - t) > max_skew_ms:
        raise AuthError("request time is too far from the node's clock", code="AUTH_CLOCK_SKEW")
    pk.verify(canonical_request(method, path_qs, t, payload), sig)
    return pk
