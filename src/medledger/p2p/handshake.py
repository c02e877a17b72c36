"""The p2p handshake and framing as a sans-I/O state machine (bytes in, bytes out).

Station-to-Station, in the manner of CometBFT's SecretConnection; ``docs/p2p.md``
is the specification. In short::

    both       -> hello: MAGIC | version | role | ephemeral X25519 key | chain ID
                  (each side derives the shared secret and the key schedule)
    initiator  -> auth:  ChaCha20-Poly1305( Ed25519 key | sig(AUTH_DOMAIN | role | challenge) )
    responder  -> auth   (only after it verified and allowed the initiator)
    both       -> frames: u32 length | ChaCha20-Poly1305(message), nonce = per-direction counter

Every message on the wire, handshake included, is ``u32 big-endian length || body``.
The caller owns the socket: it feeds received bytes to :meth:`Session.receive_data`,
which returns the application messages that completed, and writes whatever
:meth:`Session.data_to_send` and :meth:`Session.seal` return.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from medledger.crypto.hashing import sha256
from medledger.crypto.keys import PrivateKey, PublicKey
from medledger.errors import AuthError, InvalidInput
from medledger.p2p.errors import (
    CONNECTION_CLOSED,
    FRAME_INVALID,
    FRAME_TOO_LARGE,
    HANDSHAKE_FAILED,
    PEER_NOT_ALLOWED,
    WRONG_CHAIN,
    P2PError,
)

__all__ = [
    "AUTH_DOMAIN",
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "KDF_DOMAIN",
    "MAGIC",
    "PROTOCOL_VERSION",
    "TAG_SIZE",
    "Hello",
    "KeySchedule",
    "Role",
    "Session",
    "State",
    "auth_sign_bytes",
    "frame_nonce",
    "key_schedule",
]

MAGIC = b"MLP2"
PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
MAX_FRAME_SIZE_LIMIT = 1 << 30  # far below ChaCha20-Poly1305's per-message limit

KDF_DOMAIN = b"medledger/p2p/kdf/v1\x00"
AUTH_DOMAIN = b"medledger/p2p/auth/v1\x00"

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
TAG_SIZE = 16
KEY_SIZE = 32
SIGNATURE_SIZE = 64
AUTH_SIZE = KEY_SIZE + SIGNATURE_SIZE
MAX_HELLO_SIZE = 512
MAX_CHAIN_ID_BYTES = 255
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_MAX_COUNTER = (1 << 64) - 1
_HELLO_FIXED = struct.Struct(">4sBB32sB")  # magic, version, role, ephemeral key, chain ID length


class Role(IntEnum):
    """Who opened the TCP connection. Part of the hello and of every auth signature."""

    INITIATOR = 0
    RESPONDER = 1

    @property
    def other(self) -> Role:
        return Role.RESPONDER if self is Role.INITIATOR else Role.INITIATOR


class State(Enum):
    AWAIT_HELLO = "await_hello"  # our hello is queued; waiting for the peer's
    AWAIT_AUTH = "await_auth"  # keys derived; waiting for the peer's auth
    ESTABLISHED = "established"  # both authenticated: application frames flow
    PEER_CLOSED = "peer_closed"  # the peer ended its stream on a frame boundary
    FAILED = "failed"  # a protocol error: the connection must be dropped


class _Event(Enum):
    HELLO = "hello"
    AUTH = "auth"
    FRAME = "frame"
    EOF = "eof"


# Every transition of the machine. Any error moves to FAILED from any state.
_TRANSITIONS: dict[tuple[State, _Event], State] = {
    (State.AWAIT_HELLO, _Event.HELLO): State.AWAIT_AUTH,
    (State.AWAIT_AUTH, _Event.AUTH): State.ESTABLISHED,
    (State.ESTABLISHED, _Event.FRAME): State.ESTABLISHED,
    (State.ESTABLISHED, _Event.EOF): State.PEER_CLOSED,
}


@dataclass(frozen=True, slots=True)
class Hello:
    """The first, cleartext message of each side."""

    role: Role
    ephemeral_key: bytes
    chain_id: str
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if len(self.ephemeral_key) != KEY_SIZE:
            raise InvalidInput("ephemeral key must be 32 bytes", code="BAD_PUBLIC_KEY")
        _check_chain_id(self.chain_id)

    def encode(self) -> bytes:
        chain = self.chain_id.encode()
        fixed = _HELLO_FIXED.pack(MAGIC, self.version, self.role, self.ephemeral_key, len(chain))
        return fixed + chain

    def frame(self) -> bytes:
        body = self.encode()
        return HEADER.pack(len(body)) + body

    @classmethod
    def decode(cls, body: bytes) -> Hello:
        """Parse a hello body; raise ``P2PError(HANDSHAKE_FAILED)`` on anything malformed."""
        if len(body) < 5 or body[:4] != MAGIC:
            raise _fail("the peer does not speak the MedLedger p2p protocol")
        if body[4] != PROTOCOL_VERSION:
            raise _fail(f"the peer speaks p2p protocol version {body[4]}, not {PROTOCOL_VERSION}")
        if len(body) < _HELLO_FIXED.size:
            raise _fail("hello is truncated")
        _, version, role, eph, chain_len = _HELLO_FIXED.unpack_from(body)
        if role not in (Role.INITIATOR, Role.RESPONDER):
            raise _fail("hello has an unknown role")
        if chain_len == 0 or len(body) != _HELLO_FIXED.size + chain_len:
            raise _fail("hello has a bad chain ID length")
        try:
            chain_id = body[_HELLO_FIXED.size :].decode()
        except UnicodeDecodeError:
            raise _fail("hello chain ID is not UTF-8")
        return cls(role=Role(role), ephemeral_key=eph, chain_id=chain_id, version=version)


@dataclass(frozen=True, slots=True)
class KeySchedule:
    """Output of HKDF: one key per direction and the challenge both sides sign.

    "lo" is the side whose ephemeral public key is the smaller byte string, so the
    assignment does not depend on who dialed.
    """

    lo_to_hi: bytes
    hi_to_lo: bytes
    challenge: bytes


def key_schedule(shared_secret: bytes, hello_lo: bytes, hello_hi: bytes) -> KeySchedule:
    """HKDF-SHA256 over the X25519 secret, bound to both hello frames in canonical order.

    ``hello_lo`` / ``hello_hi`` are the complete wire frames (length prefix included)
    of the sides with the smaller and the larger ephemeral key. Binding the whole
    hellos authenticates the version, roles and chain ID along with the keys.
    """
    transcript = sha256(hello_lo + hello_hi)  # frames are self-delimiting
    okm = HKDF(
        algorithm=hashes.SHA256(), length=3 * KEY_SIZE, salt=None, info=KDF_DOMAIN + transcript
    ).derive(shared_secret)
    return KeySchedule(okm[:32], okm[32:64], okm[64:])


def auth_sign_bytes(role: Role, challenge: bytes) -> bytes:
    """What a side signs with its long-term key. The role byte stops a reflected signature."""
    return AUTH_DOMAIN + bytes([role]) + challenge


def frame_nonce(counter: int) -> bytes:
    """96-bit ChaCha20-Poly1305 nonce: four zero bytes, then the 64-bit big-endian counter."""
    return _NONCE_PREFIX + counter.to_bytes(8, "big")


class Session:
    """One side of one connection: the handshake, then sealing and opening frames.

    ``allowed`` is asked, after the peer has proved possession of its Ed25519 key,
    whether that key (32 raw bytes) may connect. ``ephemeral`` is for tests only.
    After any :class:`P2PError` other than ``FRAME_TOO_LARGE`` from :meth:`seal`, the
    session is ``FAILED`` and the caller must drop the connection.
    """

    def __init__(
        self,
        key: PrivateKey,
        *,
        role: Role,
        chain_id: str,
        allowed: Callable[[bytes], bool],
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        if not 1 <= max_frame_size <= MAX_FRAME_SIZE_LIMIT:
            raise InvalidInput("max_frame_size must be between 1 byte and 1 GiB", code="BAD_CONFIG")
        self.role = role
        self.chain_id = chain_id
        self.max_frame_size = max_frame_size
        self.state = State.AWAIT_HELLO
        self.peer_public_key: bytes | None = None
        self._key = key
        self._allowed = allowed
        self._ephemeral = ephemeral or X25519PrivateKey.generate()
        self.ephemeral_public_key = self._ephemeral.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )
        self._hello = Hello(
            role=role, ephemeral_key=self.ephemeral_public_key, chain_id=chain_id
        ).frame()
        self._out = bytearray(self._hello)
        self._buf = bytearray()
        self._send_aead: ChaCha20Poly1305 | None = None
        self._recv_aead: ChaCha20Poly1305 | None = None
        self._send_counter = 0
        self._recv_counter = 0
        self._challenge = b""

    # ---- queries -------------------------------------------------------------------------

    @property
    def established(self) -> bool:
        return self.state in (State.ESTABLISHED, State.PEER_CLOSED)

    def data_to_send(self) -> bytes:
        """Handshake bytes the caller must write now (drains the buffer)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # ---- sending -------------------------------------------------------------------------

    def seal(self, message: bytes) -> bytes:
        """Encrypt one application message into one frame, ready to write."""
        if not self.established or self._send_aead is None:
            if self.state is State.FAILED:
                raise P2PError("the session has failed", code=CONNECTION_CLOSED)
            raise P2PError("the handshake is not complete", code=HANDSHAKE_FAILED)
        if len(message) > self.max_frame_size:
            raise P2PError(
                "message exceeds the frame size limit",
                code=FRAME_TOO_LARGE,
                size=len(message),
                limit=self.max_frame_size,
            )
        return self._seal(message)

    def _seal(self, plaintext: bytes) -> bytes:
        assert self._send_aead is not None
        if self._send_counter >= _MAX_COUNTER:
            self.state = State.FAILED
            raise P2PError("nonce space exhausted", code=CONNECTION_CLOSED)
        header = HEADER.pack(len(plaintext) + TAG_SIZE)
        ct = self._send_aead.encrypt(frame_nonce(self._send_counter), plaintext, header)
        self._send_counter += 1
        return header + ct

    # ---- receiving -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed received bytes; return the application messages they completed, in order."""
        if self.state is State.FAILED:
            raise P2PError("the session has failed", code=CONNECTION_CLOSED)
        if self.state is State.PEER_CLOSED:
            if data:
                self._raise(P2PError("data after end of stream", code=FRAME_INVALID))
            return []
        self._buf += data
        out: list[bytes] = []
        try:
            while True:
                frame = self._next_frame()
                if frame is None:
                    return out
                header, body = frame
                if self.state is State.AWAIT_HELLO:
                    self._on_hello(header + body)
                elif self.state is State.AWAIT_AUTH:
                    self._on_auth(header, body)
                else:
                    out.append(self._open(header, body))
                    self._advance(_Event.FRAME)
        except P2PError as exc:
            self._raise(exc)

    def receive_eof(self) -> None:
        """The peer ended its stream. Clean only in ``ESTABLISHED`` on a frame boundary."""
        if self.state is State.FAILED:
            raise P2PError("the session has failed", code=CONNECTION_CLOSED)
        if self.state is State.PEER_CLOSED:
            return
        if not self.established:
            self._raise(
                P2PError(
                    "the peer closed the connection during the handshake", code=HANDSHAKE_FAILED
                )
            )
        if self._buf:
            self._raise(P2PError("the stream ended inside a frame", code=FRAME_INVALID))
        self._advance(_Event.EOF)

    # ---- internals -----------------------------------------------------------------------

    def _advance(self, event: _Event) -> None:
        nxt = _TRANSITIONS.get((self.state, event))
        if nxt is None:  # pragma: no cover - guarded by the callers
            raise AssertionError(f"no transition from {self.state} on {event}")
        self.state = nxt

    def _raise(self, exc: P2PError) -> NoReturn:
        self.state = State.FAILED
        self._buf.clear()
        self._out.clear()
        raise exc

    def _frame_bounds(self) -> tuple[int, int, str]:
        """Smallest and largest frame body allowed in this state, and the error code."""
        if self.state is State.AWAIT_HELLO:
            return len(MAGIC) + 1, MAX_HELLO_SIZE, HANDSHAKE_FAILED  # Hello.decode checks the rest
        if self.state is State.AWAIT_AUTH:
            return AUTH_SIZE + TAG_SIZE, AUTH_SIZE + TAG_SIZE, HANDSHAKE_FAILED
        return TAG_SIZE, self.max_frame_size + TAG_SIZE, FRAME_TOO_LARGE

    def _next_frame(self) -> tuple[bytes, bytes] | None:
        """The next complete frame as (header, body), or None until more bytes arrive."""
        if len(self._buf) < HEADER_SIZE:
            return None
        (length,) = HEADER.unpack_from(self._buf)
        low, high, big_code = self._frame_bounds()
        if length > high:
            raise P2PError("frame exceeds the size limit", code=big_code, size=length)
        if length < low:
            code = HANDSHAKE_FAILED if big_code == HANDSHAKE_FAILED else FRAME_INVALID
            raise P2PError("frame is too short", code=code, size=length)
        if len(self._buf) < HEADER_SIZE + length:
            return None
        header = bytes(self._buf[:HEADER_SIZE])
        body = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + length])
        del self._buf[: HEADER_SIZE + length]
        return header, body

    def _open(self, header: bytes, body: bytes) -> bytes:
        assert self._recv_aead is not None
        if self._recv_counter >= _MAX_COUNTER:
            raise P2PError("nonce space exhausted", code=CONNECTION_CLOSED)
        try:
            plaintext = self._recv_aead.decrypt(frame_nonce(self._recv_counter), body, header)
        except InvalidTag:
            raise P2PError("frame failed authentication", code=FRAME_INVALID)
        self._recv_counter += 1
        return plaintext

    def _on_hello(self, theirs: bytes) -> None:
        hello = Hello.decode(theirs[HEADER_SIZE:])
        if hello.chain_id != self.chain_id:
            raise P2PError("the peer is on another chain", code=WRONG_CHAIN)
        if hello.role is self.role:
            raise _fail("both sides claim the same role")
        mine = self.ephemeral_public_key
        if hello.ephemeral_key == mine:
            raise _fail("the peer echoed our ephemeral key")
        try:
            shared = self._ephemeral.exchange(
                X25519PublicKey.from_public_bytes(hello.ephemeral_key)
            )
        except ValueError:  # a low-order point gives the all-zero secret
            raise _fail("the peer's ephemeral key is invalid")
        we_are_lo = mine < hello.ephemeral_key
        if we_are_lo:
            ks = key_schedule(shared, self._hello, theirs)
            send_key, recv_key = ks.lo_to_hi, ks.hi_to_lo
        else:
            ks = key_schedule(shared, theirs, self._hello)
            send_key, recv_key = ks.hi_to_lo, ks.lo_to_hi
        self._send_aead = ChaCha20Poly1305(send_key)
        self._recv_aead = ChaCha20Poly1305(recv_key)
        self._challenge = ks.challenge
        self._advance(_Event.HELLO)
        if self.role is Role.INITIATOR:
            self._out += self._auth_frame()

    def _auth_frame(self) -> bytes:
        signature = self._key.sign(auth_sign_bytes(self.role, self._challenge))
        return self._seal(self._key.public_key.raw + signature)

    def _on_auth(self, header: bytes, body: bytes) -> None:
        try:
            payload = self._open(header, body)
        except P2PError:
            raise _fail("the peer's auth message failed authentication")
        peer_key, signature = payload[:KEY_SIZE], payload[KEY_SIZE:]
        if peer_key == self._key.public_key.raw:
            raise _fail("the peer presented our own key")
        try:
            PublicKey(peer_key).verify(auth_sign_bytes(self.role.other, self._challenge), signature)
        except (AuthError, InvalidInput):
            raise _fail("the peer's signature does not verify")
        if not self._allowed(peer_key):
            raise P2PError("the peer's key is not allowed", code=PEER_NOT_ALLOWED)
        self.peer_public_key = peer_key
        if self.role is Role.RESPONDER:
            self._out += self._auth_frame()
        self._advance(_Event.AUTH)


def _check_chain_id(chain_id: str) -> None:
    if not 1 <= len(chain_id.encode()) <= MAX_CHAIN_ID_BYTES:
        raise InvalidInput("chain ID must be 1 to 255 bytes of UTF-8", code="BAD_CHAIN_ID")


def _fail(message: str) -> P2PError:
    return P2PError(message, code=HANDSHAKE_FAILED)
