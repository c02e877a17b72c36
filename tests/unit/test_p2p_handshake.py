"""The sans-I/O p2p handshake and framing (``medledger.p2p.handshake``).

Two ``Session`` machines exchange bytes in memory. ``Manual`` is a second, minimal
implementation of the wire format written from ``docs/p2p.md``; it checks that the
code follows the specification and plays the man in the middle.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.crypto.keys import PrivateKey
from medledger.errors import InvalidInput
from medledger.p2p.errors import P2PError
from medledger.p2p.handshake import (
    AUTH_DOMAIN,
    HEADER_SIZE,
    MAGIC,
    PROTOCOL_VERSION,
    TAG_SIZE,
    Hello,
    Role,
    Session,
    State,
    auth_sign_bytes,
    frame_nonce,
    key_schedule,
)

CHAIN = "medledger-test"
KEY_A = PrivateKey(bytes(range(32)))
KEY_B = PrivateKey(bytes(range(32, 64)))
KEY_M = PrivateKey(bytes(range(64, 96)))


def allow_all(_key: bytes) -> bool:
    return True


def session(
    key: PrivateKey,
    role: Role,
    *,
    chain_id: str = CHAIN,
    allowed: Callable[[bytes], bool] = allow_all,
    max_frame_size: int = 1 << 20,
    eph: X25519PrivateKey | None = None,
) -> Session:
    return Session(
        key,
        role=role,
        chain_id=chain_id,
        allowed=allowed,
        max_frame_size=max_frame_size,
        ephemeral=eph,
    )


Tamper = Callable[[int, bytes], bytes]


def run_handshake(a: Session, b: Session, tamper: Tamper | None = None) -> dict[str, P2PError]:
    """Exchange handshake messages until quiet; then EOF to any side still waiting.

    ``tamper(i, message)`` may change the i-th message put on the wire (0: initiator
    hello, 1: responder hello, 2: initiator auth, 3: responder auth). Returns the
    error each side raised, by name ("a", "b").
    """
    errors: dict[str, P2PError] = {}
    sides = {"a": a, "b": b}
    index = 0
    while True:
        # Both sides write what they have before reading (as the socket driver does).
        outs = [(src, dst, sides[src].data_to_send()) for src, dst in (("a", "b"), ("b", "a"))]
        outs = [o for o in outs if o[0] not in errors and o[2]]
        if not outs:
            break
        for _src, dst, data in outs:
            if tamper is not None:
                data = tamper(index, data)
            index += 1
            if dst in errors:
                continue
            try:
                sides[dst].receive_data(data)
            except P2PError as exc:
                errors[dst] = exc
    for name, s in sides.items():
        if name not in errors and not s.established:
            try:
                s.receive_eof()
            except P2PError as exc:
                errors[name] = exc
    return errors


def established(max_frame_size: int = 1 << 20, *, fixed: bool = False) -> tuple[Session, Session]:
    """An established pair; ``fixed`` ephemeral keys make every such pair identical."""
    eph_a = X25519PrivateKey.from_private_bytes(b"\x01" * 32) if fixed else None
    eph_b = X25519PrivateKey.from_private_bytes(b"\x02" * 32) if fixed else None
    a = session(KEY_A, Role.INITIATOR, max_frame_size=max_frame_size, eph=eph_a)
    b = session(KEY_B, Role.RESPONDER, max_frame_size=max_frame_size, eph=eph_b)
    assert run_handshake(a, b) == {}
    return a, b


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def raw(pub: X25519PrivateKey) -> bytes:
    return pub.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Manual:
    """One side of the protocol, computed step by step from the specification."""

    def __init__(self, role: Role, chain_id: str = CHAIN) -> None:
        self.role = role
        self.eph = X25519PrivateKey.generate()
        self.hello = Hello(role=role, ephemeral_key=raw(self.eph), chain_id=chain_id).frame()
        self.send_counter = 0
        self.recv_counter = 0

    def receive_hello(self, theirs: bytes) -> None:
        their_eph = Hello.decode(theirs[HEADER_SIZE:]).ephemeral_key
        shared = self.eph.exchange(X25519PublicKey.from_public_bytes(their_eph))
        if raw(self.eph) < their_eph:
            ks = key_schedule(shared, self.hello, theirs)
            self.send_key, self.recv_key = ks.lo_to_hi, ks.hi_to_lo
        else:
            ks = key_schedule(shared, theirs, self.hello)
            self.send_key, self.recv_key = ks.hi_to_lo, ks.lo_to_hi
        self.challenge = ks.challenge

    def seal(self, plaintext: bytes) -> bytes:
        header = (len(plaintext) + TAG_SIZE).to_bytes(4, "big")
        nonce = b"\x00" * 4 + self.send_counter.to_bytes(8, "big")
        self.send_counter += 1
        return header + ChaCha20Poly1305(self.send_key).encrypt(nonce, plaintext, header)

    def open(self, frame: bytes) -> bytes:
        header, body = frame[:4], frame[4:]
        assert int.from_bytes(header, "big") == len(body)
        nonce = b"\x00" * 4 + self.recv_counter.to_bytes(8, "big")
        self.recv_counter += 1
        return ChaCha20Poly1305(self.recv_key).decrypt(nonce, body, header)

    def auth(self, key: PrivateKey, role: Role | None = None) -> bytes:
        signed = AUTH_DOMAIN + bytes([role if role is not None else self.role]) + self.challenge
        return self.seal(key.public_key.raw + key.sign(signed))


# ---- the happy path -----------------------------------------------------------------------


def test_handshake_authenticates_both_sides_and_carries_messages() -> None:
    a, b = established()
    assert a.state is State.ESTABLISHED and b.state is State.ESTABLISHED
    assert a.peer_public_key == KEY_B.public_key.raw
    assert b.peer_public_key == KEY_A.public_key.raw
    assert b.receive_data(a.seal(b"prevote") + a.seal(b"") + a.seal(b"x" * 70_000)) == [
        b"prevote",
        b"",
        b"x" * 70_000,
    ]
    assert a.receive_data(b.seal(b"precommit")) == [b"precommit"]


def test_ephemeral_keys_are_fresh_per_session() -> None:
    first = session(KEY_A, Role.INITIATOR)
    second = session(KEY_A, Role.INITIATOR)
    assert first.ephemeral_public_key != second.ephemeral_public_key


def test_responder_may_send_right_after_its_auth() -> None:
    a = session(KEY_A, Role.INITIATOR)
    b = session(KEY_B, Role.RESPONDER)
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    b.receive_data(a.data_to_send())  # initiator auth: the responder is now established
    assert b.established and not a.established
    in_one_read = b.data_to_send() + b.seal(b"first")
    assert a.receive_data(in_one_read) == [b"first"]
    assert a.established


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20),
)
def test_any_fragmentation_delivers_the_same_messages(
    messages: list[bytes], cuts: list[int]
) -> None:
    a = session(KEY_A, Role.INITIATOR)
    b = session(KEY_B, Role.RESPONDER)
    # Handshake and messages, fed in arbitrary pieces.
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    stream = a.data_to_send()
    b.receive_data(stream)
    a.receive_data(b.data_to_send())
    wire = b"".join(a.seal(m) for m in messages)
    got: list[bytes] = []
    pos, i = 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        got += b.receive_data(wire[pos : pos + step])
        pos += step
        i += 1
    assert got == messages
    b.receive_eof()
    assert b.state is State.PEER_CLOSED


def test_wire_format_matches_the_specification() -> None:
    """A Session interoperates with the step-by-step Manual implementation, both roles."""
    # Session initiator, Manual responder.
    a = session(KEY_A, Role.INITIATOR)
    m = Manual(Role.RESPONDER)
    hello_a = a.data_to_send()
    assert hello_a[HEADER_SIZE : HEADER_SIZE + 4] == MAGIC
    assert hello_a[HEADER_SIZE + 4] == PROTOCOL_VERSION
    m.receive_hello(hello_a)
    a.receive_data(m.hello)
    auth = m.open(a.data_to_send())
    assert auth[:32] == KEY_A.public_key.raw
    KEY_A.public_key.verify(auth_sign_bytes(Role.INITIATOR, m.challenge), auth[32:])
    assert a.receive_data(m.auth(KEY_B) + m.seal(b"one") + m.seal(b"two")) == [b"one", b"two"]
    assert a.peer_public_key == KEY_B.public_key.raw
    assert m.open(a.seal(b"three")) == b"three"
    assert m.send_counter == 3 and m.recv_counter == 2  # auth took nonce 0 in each direction

    # Manual initiator, Session responder.
    m = Manual(Role.INITIATOR)
    b = session(KEY_B, Role.RESPONDER)
    b.receive_data(m.hello)
    m.receive_hello(b.data_to_send())
    assert b.receive_data(m.auth(KEY_A)) == []
    auth = m.open(b.data_to_send())
    assert auth[:32] == KEY_B.public_key.raw
    KEY_B.public_key.verify(auth_sign_bytes(Role.RESPONDER, m.challenge), auth[32:])
    assert b.receive_data(m.seal(b"hi")) == [b"hi"]


def test_nonce_layout() -> None:
    assert frame_nonce(0) == bytes(12)
    assert frame_nonce(1) == bytes(11) + b"\x01"
    assert frame_nonce(2**64 - 1) == bytes(4) + b"\xff" * 8


def test_regression_vector() -> None:
    """Fixed long-term and ephemeral keys give these exact handshake bytes (Ed25519 is
    deterministic). A change here is a wire-protocol change: bump PROTOCOL_VERSION."""
    a = session(KEY_A, Role.INITIATOR, eph=X25519PrivateKey.from_private_bytes(b"\x01" * 32))
    b = session(KEY_B, Role.RESPONDER, eph=X25519PrivateKey.from_private_bytes(b"\x02" * 32))
    wire: list[bytes] = []

    def record(_i: int, data: bytes) -> bytes:
        wire.append(data)
        return data

    assert run_handshake(a, b, record) == {}
    wire.append(a.seal(b"vector"))
    digest = hashlib.sha256(b"".join(wire)).hexdigest()
    assert [len(w) for w in wire] == [57, 57, 116, 116, 26]
    assert digest == REGRESSION_DIGEST


REGRESSION_DIGEST = "5931533b0c5e46eeacbde276480bc89af3cb78d9b490bd0808800af51269f9b3"


# ---- refusals -----------------------------------------------------------------------------


def test_wrong_chain() -> None:
    a = session(KEY_A, Role.INITIATOR, chain_id="chain-one")
    b = session(KEY_B, Role.RESPONDER, chain_id="chain-two")
    errors = run_handshake(a, b)
    assert errors["a"].code == "WRONG_CHAIN"
    assert errors["b"].code == "WRONG_CHAIN"


def test_initiator_not_allowed_and_responder_stays_anonymous() -> None:
    a = session(KEY_A, Role.INITIATOR)
    b = session(KEY_B, Role.RESPONDER, allowed=lambda k: k == KEY_M.public_key.raw)
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    with pytest.raises(P2PError) as err:
        b.receive_data(a.data_to_send())
    assert err.value.code == "PEER_NOT_ALLOWED"
    assert b.data_to_send() == b""  # the responder never revealed its key
    assert b.state is State.FAILED
    with pytest.raises(P2PError) as err:
        a.receive_eof()
    assert err.value.code == "HANDSHAKE_FAILED"


def test_responder_not_allowed() -> None:
    a = session(KEY_A, Role.INITIATOR, allowed=lambda k: False)
    b = session(KEY_B, Role.RESPONDER)
    errors = run_handshake(a, b)
    assert errors["a"].code == "PEER_NOT_ALLOWED"
    assert "b" not in errors  # the responder finished; the initiator then hangs up


def test_policy_sees_only_proven_keys() -> None:
    seen: list[bytes] = []

    def policy(key: bytes) -> bool:
        seen.append(key)
        return True

    a = session(KEY_A, Role.INITIATOR, allowed=policy)
    b = session(KEY_B, Role.RESPONDER, allowed=policy)
    assert run_handshake(a, b) == {}
    assert seen == [KEY_A.public_key.raw, KEY_B.public_key.raw]


def initiator_hello(version: int = PROTOCOL_VERSION) -> Hello:
    eph = raw(X25519PrivateKey.generate())
    return Hello(role=Role.INITIATOR, ephemeral_key=eph, chain_id=CHAIN, version=version)


def test_other_protocol_version_fails() -> None:
    with pytest.raises(P2PError, match="version 2") as err:
        session(KEY_B, Role.RESPONDER).receive_data(initiator_hello(version=2).frame())
    assert err.value.code == "HANDSHAKE_FAILED"


def test_other_protocol_fails() -> None:
    frame = initiator_hello().frame().replace(MAGIC, b"HTTP", 1)
    with pytest.raises(P2PError, match="does not speak") as err:
        session(KEY_B, Role.RESPONDER).receive_data(frame)
    assert err.value.code == "HANDSHAKE_FAILED"


def test_same_role_on_both_sides_fails() -> None:
    errors = run_handshake(session(KEY_A, Role.INITIATOR), session(KEY_B, Role.INITIATOR))
    assert errors["a"].code == errors["b"].code == "HANDSHAKE_FAILED"


def test_reflected_hello_fails() -> None:
    a = session(KEY_A, Role.INITIATOR)
    hello = Hello.decode(a.data_to_send()[HEADER_SIZE:])
    echo = Hello(role=Role.RESPONDER, ephemeral_key=hello.ephemeral_key, chain_id=CHAIN)
    with pytest.raises(P2PError, match="echoed") as err:
        a.receive_data(echo.frame())
    assert err.value.code == "HANDSHAKE_FAILED"


def test_low_order_ephemeral_key_fails() -> None:
    b = session(KEY_B, Role.RESPONDER)
    zero = Hello(role=Role.INITIATOR, ephemeral_key=bytes(32), chain_id=CHAIN)
    with pytest.raises(P2PError, match="invalid") as err:
        b.receive_data(zero.frame())
    assert err.value.code == "HANDSHAKE_FAILED"


def test_reflected_auth_fails() -> None:
    """A peer that returns our own signed auth does not pass for us."""
    a = session(KEY_A, Role.INITIATOR)
    m = Manual(Role.RESPONDER)
    m.receive_hello(a.data_to_send())
    a.receive_data(m.hello)
    own = m.open(a.data_to_send())
    with pytest.raises(P2PError, match="our own key"):
        a.receive_data(m.seal(own))


def test_signature_binds_the_role() -> None:
    """A responder signature made with the initiator's role byte is refused."""
    a = session(KEY_A, Role.INITIATOR)
    m = Manual(Role.RESPONDER)
    m.receive_hello(a.data_to_send())
    a.receive_data(m.hello)
    m.open(a.data_to_send())
    with pytest.raises(P2PError, match="signature") as err:
        a.receive_data(m.auth(KEY_B, role=Role.INITIATOR))
    assert err.value.code == "HANDSHAKE_FAILED"


def test_signature_from_another_key_fails() -> None:
    a = session(KEY_A, Role.INITIATOR)
    m = Manual(Role.RESPONDER)
    m.receive_hello(a.data_to_send())
    a.receive_data(m.hello)
    m.open(a.data_to_send())
    signed = AUTH_DOMAIN + bytes([Role.RESPONDER]) + m.challenge
    claim = KEY_B.public_key.raw + KEY_M.sign(signed)  # claims B, signed by M
    with pytest.raises(P2PError, match="signature"):
        a.receive_data(m.seal(claim))


# ---- man in the middle --------------------------------------------------------------------


@pytest.mark.parametrize("which", [0, 1])
def test_mitm_swapping_an_ephemeral_key_fails(which: int) -> None:
    """M replaces the initiator's (0) or the responder's (1) ephemeral key with its own."""
    a = session(KEY_A, Role.INITIATOR)
    b = session(KEY_B, Role.RESPONDER)

    def swap(i: int, data: bytes) -> bytes:
        if i != which:
            return data
        hello = Hello.decode(data[HEADER_SIZE:])
        forged = Hello(
            role=hello.role, ephemeral_key=raw(X25519PrivateKey.generate()), chain_id=CHAIN
        )
        return forged.frame()

    errors = run_handshake(a, b, swap)
    assert errors, "the handshake must not complete"
    assert all(e.code == "HANDSHAKE_FAILED" for e in errors.values())
    assert not (a.established and b.established)


def test_mitm_relaying_signatures_between_two_sessions_fails() -> None:
    """M completes its own key exchange with A and with B and relays A's signed auth to B:
    the challenge differs per key exchange, so B refuses the signature."""
    a = session(KEY_A, Role.INITIATOR)
    b = session(KEY_B, Role.RESPONDER)
    m_to_a = Manual(Role.RESPONDER)
    m_to_b = Manual(Role.INITIATOR)
    m_to_a.receive_hello(a.data_to_send())
    b.receive_data(m_to_b.hello)
    m_to_b.receive_hello(b.data_to_send())
    a.receive_data(m_to_a.hello)
    auth_of_a = m_to_a.open(a.data_to_send())  # M can read it: it is A's DH peer
    assert m_to_a.challenge != m_to_b.challenge
    with pytest.raises(P2PError, match="signature") as err:
        b.receive_data(m_to_b.seal(auth_of_a))
    assert err.value.code == "HANDSHAKE_FAILED"
    assert b.data_to_send() == b""


@pytest.mark.parametrize("message", [0, 1, 2, 3])
def test_every_bit_flip_of_the_handshake_fails(message: int) -> None:
    size = None
    sizes: list[int] = []
    for bit in range(10_000):
        a = session(KEY_A, Role.INITIATOR)
        b = session(KEY_B, Role.RESPONDER)
        sizes.clear()

        def tamper(i: int, data: bytes, bit: int = bit) -> bytes:
            if i == message:
                sizes.append(len(data))
                if bit < len(data) * 8:
                    return flip(data, bit)
            return data

        errors = run_handshake(a, b, tamper)
        size = sizes[0]
        if bit >= size * 8:
            assert errors == {}  # control: no flip, success
            break
        assert errors, f"flip of bit {bit} in message {message} went unnoticed"
        assert not (a.established and b.established)
    assert size is not None and bit == size * 8


# ---- frames -------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 1])
def test_every_bit_flip_of_a_frame_fails(position: int) -> None:
    """The first frame (nonce 0) and a later one: any flipped bit, header or body, fails."""
    a, b = established(fixed=True)
    frames = [a.seal(b"prevote h=7"), a.seal(b"precommit h=7")]
    assert b.receive_data(b"".join(frames)) == [b"prevote h=7", b"precommit h=7"]  # control
    for bit in range(len(frames[position]) * 8):
        _, b = established(fixed=True)
        if position:
            assert b.receive_data(frames[0]) == [b"prevote h=7"]
        delivered: list[bytes] = []
        with pytest.raises(P2PError) as err:
            delivered += b.receive_data(flip(frames[position], bit))
            b.receive_eof()  # a longer length field waits for bytes that never come
        assert delivered == []
        assert err.value.code in {"FRAME_INVALID", "FRAME_TOO_LARGE"}
        assert b.state is State.FAILED


def three_frames() -> tuple[Session, Session, list[bytes]]:
    a, b = established()
    return a, b, [a.seal(b"m0"), a.seal(b"m1"), a.seal(b"m2")]


def expect_invalid(s: Session, data: bytes) -> None:
    with pytest.raises(P2PError) as err:
        s.receive_data(data)
    assert err.value.code == "FRAME_INVALID"
    assert s.state is State.FAILED


def test_replayed_frame_fails() -> None:
    _, b, f = three_frames()
    assert b.receive_data(f[0]) == [b"m0"]
    expect_invalid(b, f[0])


def test_reordered_frames_fail() -> None:
    _, b, f = three_frames()
    expect_invalid(b, f[1] + f[0])


def test_dropped_frame_fails() -> None:
    _, b, f = three_frames()
    assert b.receive_data(f[0]) == [b"m0"]
    expect_invalid(b, f[2])


def test_truncated_stream_fails() -> None:
    _, b, f = three_frames()
    assert b.receive_data(f[0] + f[1][:-1]) == [b"m0"]
    with pytest.raises(P2PError) as err:
        b.receive_eof()
    assert err.value.code == "FRAME_INVALID"


def test_frame_reflected_to_its_sender_fails() -> None:
    a, _, f = three_frames()
    expect_invalid(a, f[0])


def test_frame_from_another_session_fails() -> None:
    _, b, _ = three_frames()
    other, _ = established()
    expect_invalid(b, other.seal(b"m0"))


def test_data_after_end_of_stream_fails() -> None:
    _, b, f = three_frames()
    b.receive_data(f[0])
    b.receive_eof()
    expect_invalid(b, f[1])


def test_failed_session_stays_failed() -> None:
    _, b, f = three_frames()
    expect_invalid(b, f[1])
    with pytest.raises(P2PError) as err:
        b.receive_data(f[0])
    assert err.value.code == "CONNECTION_CLOSED"
    with pytest.raises(P2PError):
        b.seal(b"x")


def test_clean_eof_allows_sending_on() -> None:
    a, b = established()
    b.receive_eof()
    assert b.state is State.PEER_CLOSED
    assert a.receive_data(b.seal(b"still here")) == [b"still here"]


def test_eof_during_handshake_fails() -> None:
    a = session(KEY_A, Role.INITIATOR)
    with pytest.raises(P2PError) as err:
        a.receive_eof()
    assert err.value.code == "HANDSHAKE_FAILED"


def test_oversized_frame_is_rejected_from_its_header() -> None:
    a, b = established(max_frame_size=1024)
    assert b.receive_data(a.seal(b"x" * 1024)) == [b"x" * 1024]  # the bound is inclusive
    header = (1024 + TAG_SIZE + 1).to_bytes(4, "big")
    with pytest.raises(P2PError) as err:
        b.receive_data(header)  # refused before any body byte arrives
    assert err.value.code == "FRAME_TOO_LARGE"


def test_oversized_message_is_refused_by_the_sender() -> None:
    a, b = established(max_frame_size=1024)
    with pytest.raises(P2PError) as err:
        a.seal(b"x" * 1025)
    assert err.value.code == "FRAME_TOO_LARGE"
    assert b.receive_data(a.seal(b"ok")) == [b"ok"]  # the session is still usable


def test_frame_shorter_than_a_tag_fails() -> None:
    _, b = established()
    expect_invalid(b, (TAG_SIZE - 1).to_bytes(4, "big"))


def test_handshake_frames_are_small_before_authentication() -> None:
    b = session(KEY_B, Role.RESPONDER)
    with pytest.raises(P2PError) as err:
        b.receive_data((16 * 1024 * 1024).to_bytes(4, "big"))
    assert err.value.code == "HANDSHAKE_FAILED"


def test_configuration_is_checked() -> None:
    with pytest.raises(InvalidInput):
        session(KEY_A, Role.INITIATOR, chain_id="")
    with pytest.raises(InvalidInput):
        session(KEY_A, Role.INITIATOR, chain_id="x" * 256)
    with pytest.raises(InvalidInput):
        session(KEY_A, Role.INITIATOR, max_frame_size=0)
    with pytest.raises(ValueError):
        P2PError("x", code="NOT_A_CODE")


def test_p2p_imports_nothing_above_crypto() -> None:
    """DESIGN.md: p2p must not import app, consensus, node, api or storage."""
    import medledger.p2p

    forbidden = {"app", "consensus", "node", "api", "storage", "custody", "cli", "interop"}
    package = Path(medledger.p2p.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                assert not (parts[0] == "medledger" and len(parts) > 1 and parts[1] in forbidden), (
                    f"{path.name} imports {name}"
                )
