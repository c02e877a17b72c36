"""crypto: signing, identity IDs, sealing, key files, CIDs, chunk AEAD."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from mlhelpers import PROPS, key

from medledger.crypto import (
    cid_for,
    cid_to_digest,
    decrypt_chunk,
    encrypt_chunk,
    identity_id_for,
    is_cid,
    load_key_file,
    new_data_key,
    save_key_file,
    seal_to,
    unseal,
    verify_cid,
)
from medledger.crypto.keys import PrivateKey, PublicKey, is_identity_id
from medledger.errors import AuthError, IntegrityError, InvalidInput

ALICE = key("alice")
BOB = key("bob")


# ---- signatures --------------------------------------------------------------------------


@PROPS
@given(st.binary(max_size=300))
def test_sign_verify(message: bytes) -> None:
    sig = ALICE.sign(message)
    assert len(sig) == 64
    ALICE.public_key.verify(message, sig)
    with pytest.raises(AuthError) as exc:
        BOB.public_key.verify(message, sig)
    assert exc.value.code == "BAD_SIGNATURE"


@PROPS
@given(st.binary(min_size=1, max_size=100), st.data())
def test_tampered_message_fails(message: bytes, data: st.DataObject) -> None:
    sig = ALICE.sign(message)
    i = data.draw(st.integers(0, len(message) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(message)
    bad[i] ^= 1 << bit
    with pytest.raises(AuthError) as exc:
        ALICE.public_key.verify(bytes(bad), sig)
    assert exc.value.code == "BAD_SIGNATURE"


@PROPS
@given(st.integers(0, 63), st.integers(0, 7))
def test_tampered_signature_fails(i: int, bit: int) -> None:
    sig = bytearray(ALICE.sign(b"hello"))
    sig[i] ^= 1 << bit
    with pytest.raises(AuthError) as exc:
        ALICE.public_key.verify(b"hello", bytes(sig))
    assert exc.value.code == "BAD_SIGNATURE"


@pytest.mark.parametrize("sig", [b"", b"\x00" * 63, b"\x00" * 65, b"\x00" * 64])
def test_bad_signature_shapes(sig: bytes) -> None:
    with pytest.raises(AuthError) as exc:
        ALICE.public_key.verify(b"hello", sig)
    assert exc.value.code == "BAD_SIGNATURE"


def test_signing_is_deterministic() -> None:
    assert ALICE.sign(b"m") == key("alice").sign(b"m")
    assert ALICE.sign(b"m") != ALICE.sign(b"n")


@pytest.mark.parametrize("raw", [b"", b"\x01" * 31, b"\x01" * 33])
def test_public_key_size(raw: bytes) -> None:
    with pytest.raises(InvalidInput) as exc:
        PublicKey(raw)
    assert exc.value.code == "BAD_PUBLIC_KEY"


def test_public_key_hex() -> None:
    pk = ALICE.public_key
    assert PublicKey.from_hex(pk.hex()) == pk
    for bad in ("zz", pk.hex()[:-2]):
        with pytest.raises(InvalidInput) as exc:
            PublicKey.from_hex(bad)
        assert exc.value.code == "BAD_PUBLIC_KEY"


def test_private_key_seed_size() -> None:
    with pytest.raises(InvalidInput):
        PrivateKey(b"\x00" * 31)
    k = PrivateKey.generate()
    assert PrivateKey(k.seed).public_key == k.public_key


# ---- identity IDs --------------------------------------------------------------------------


@PROPS
@given(st.binary(min_size=32, max_size=32))
def test_identity_id_stable_and_valid(pk: bytes) -> None:
    ident = identity_id_for(pk)
    assert ident == identity_id_for(bytes(pk))
    assert is_identity_id(ident)
    assert len(ident) == 34 and ident.startswith("ml")
    expected = "ml" + base64.b32encode(hashlib.sha256(pk).digest()[:20]).decode().lower()
    assert ident == expected


def test_identity_id_of_key() -> None:
    assert ALICE.id == identity_id_for(ALICE.public_key.raw) == ALICE.public_key.id
    assert ALICE.id != BOB.id


@pytest.mark.parametrize(
    "value",
    [
        "",
        "ml",
        "ml" + "a" * 31,
        "ml" + "a" * 33,
        "xx" + "a" * 32,
        "ml" + "A" * 32,
        "ml" + "1" * 32,
        "ml" + "a" * 31 + "=",
    ],
)
def test_is_identity_id_rejects(value: str) -> None:
    assert not is_identity_id(value)


# ---- sealing --------------------------------------------------------------------------------


@PROPS
@given(st.binary(max_size=200))
def test_seal_round_trip(plaintext: bytes) -> None:
    sealed = seal_to(BOB.public_key, plaintext)
    assert sealed != plaintext
    assert unseal(BOB, sealed) == plaintext
    with pytest.raises(AuthError) as exc:
        unseal(ALICE, sealed)
    assert exc.value.code == "UNSEAL_FAILED"


@PROPS
@given(st.integers(0, 10_000), st.integers(0, 7))
def test_tampered_sealed_box_fails(pos: int, bit: int) -> None:
    sealed = bytearray(seal_to(BOB.public_key, b"data key 32 bytes..............."))
    sealed[pos % len(sealed)] ^= 1 << bit
    with pytest.raises(AuthError) as exc:
        unseal(BOB, bytes(sealed))
    assert exc.value.code == "UNSEAL_FAILED"


@pytest.mark.parametrize("blob", [b"", b"\x00" * 47, b"\x00" * 48])
def test_unseal_garbage(blob: bytes) -> None:
    with pytest.raises(AuthError) as exc:
        unseal(BOB, blob)
    assert exc.value.code == "UNSEAL_FAILED"


def test_sealing_is_randomised() -> None:
    assert seal_to(BOB.public_key, b"x") != seal_to(BOB.public_key, b"x")


# ---- key files ------------------------------------------------------------------------------


def test_key_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "alice.key"
    save_key_file(path, ALICE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_key_file(path)
    assert loaded.seed == ALICE.seed and loaded.id == ALICE.id
    doc = json.loads(path.read_text())
    assert doc["id"] == ALICE.id and doc["type"] == "medledger-ed25519"
    assert not list(path.parent.glob("*.tmp"))


def test_key_file_no_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    save_key_file(path, ALICE)
    with pytest.raises(InvalidInput) as exc:
        save_key_file(path, BOB)
    assert exc.value.code == "KEY_FILE_EXISTS"
    assert load_key_file(path).id == ALICE.id
    save_key_file(path, BOB, overwrite=True)
    assert load_key_file(path).id == BOB.id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_file_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as exc:
        load_key_file(tmp_path / "nope.key")
    assert exc.value.code == "KEY_FILE_NOT_FOUND"


def _damage(doc: dict[str, str], how: str) -> str:
    if how == "not json":
        return "{not json"
    if how == "binary":
        return "\udcff"
    if how == "list":
        return "[]"
    d = dict(doc)
    if how == "wrong type":
        d["type"] = "ssh-ed25519"
    elif how == "no private key":
        del d["private_key"]
    elif how == "private key not hex":
        d["private_key"] = "xyz"
    elif how == "short private key":
        d["private_key"] = d["private_key"][:-2]
    elif how == "other public key":
        d["public_key"] = BOB.public_key.hex()
    elif how == "flipped seed":
        seed = bytearray(bytes.fromhex(d["private_key"]))
        seed[0] ^= 1
        d["private_key"] = seed.hex()
    return json.dumps(d)


@pytest.mark.parametrize(
    "how",
    [
        "not json",
        "list",
        "wrong type",
        "no private key",
        "private key not hex",
        "short private key",
        "other public key",
        "flipped seed",
    ],
)
def test_key_file_damaged(tmp_path: Path, how: str) -> None:
    path = tmp_path / "k.key"
    save_key_file(path, ALICE)
    path.write_text(_damage(json.loads(path.read_text()), how))
    with pytest.raises(InvalidInput) as exc:
        load_key_file(path)
    assert exc.value.code == "BAD_KEY_FILE"


def test_key_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidInput) as exc:
        load_key_file(path)
    assert exc.value.code == "BAD_KEY_FILE"


def test_key_file_is_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as exc:
        load_key_file(tmp_path)
    assert exc.value.code == "BAD_KEY_FILE"


def test_key_file_mode_ignores_stale_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    tmp = tmp_path / "k.key.tmp"
    tmp.write_text("stale")
    os.chmod(tmp, 0o644)
    save_key_file(path, ALICE)
    assert load_key_file(path).id == ALICE.id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ---- CIDs -------------------------------------------------------------------------------------


@PROPS
@given(st.binary(max_size=500))
def test_cid_round_trip(data: bytes) -> None:
    cid = cid_for(data)
    assert is_cid(cid)
    assert len(cid) == 59 and cid.startswith("bafkrei")
    assert cid_to_digest(cid) == hashlib.sha256(data).digest()
    verify_cid(cid, data)


@PROPS
@given(st.binary(min_size=1, max_size=200), st.data())
def test_cid_tampered_data(data: bytes, draw: st.DataObject) -> None:
    cid = cid_for(data)
    i = draw.draw(st.integers(0, len(data) - 1))
    bad = bytearray(data)
    bad[i] ^= 0x01
    with pytest.raises(IntegrityError) as exc:
        verify_cid(cid, bytes(bad))
    assert exc.value.code == "CID_MISMATCH"
    with pytest.raises(IntegrityError):
        verify_cid(cid, data + b"\x00")


def test_cid_known_value() -> None:
    # The IPFS CID of empty raw content (sha2-256) is well known.
    assert cid_for(b"") == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@PROPS
@given(
    st.binary(max_size=64), st.integers(1, 58), st.sampled_from("abcdefghijklmnopqrstuvwxyz234567")
)
def test_is_cid_rejects_edits(data: bytes, pos: int, ch: str) -> None:
    cid = cid_for(data)
    edited = cid[:pos] + ch + cid[pos + 1 :]
    if edited != cid:
        # An edited CID is either invalid or names other content.
        assert not is_cid(edited) or cid_to_digest(edited) != cid_to_digest(cid)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "b",
        "B" + cid_for(b"x")[1:],
        cid_for(b"x")[:-1],
        cid_for(b"x") + "a",
        cid_for(b"x")[:-1] + "1",
        "Q" + cid_for(b"x")[1:],
        # cidv1 dag-pb prefix instead of raw
        "b"
        + base64.b32encode(bytes([1, 0x70, 0x12, 0x20]) + b"\x00" * 32)
        .decode()
        .lower()
        .rstrip("="),
    ],
)
def test_is_cid_rejects(value: str) -> None:
    assert not is_cid(value)
    with pytest.raises(InvalidInput) as exc:
        cid_to_digest(value)
    assert exc.value.code == "BAD_CID"


def test_is_cid_rejects_non_canonical_base32_tail() -> None:
    cid = cid_for(b"x")
    # 36 bytes = 288 bits = 57 chars + 3 bits: the last char has 2 padding bits (must be 0).
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    last = alphabet.index(cid[-1])
    checked = 0
    for other in range(32):
        if other != last and other >> 2 == last >> 2:
            assert not is_cid(cid[:-1] + alphabet[other])
            checked += 1
    assert checked == 3


# ---- chunk AEAD ----------------------------------------------------------------------------------

KEY = bytes(range(32))


@PROPS
@given(st.binary(max_size=300), st.integers(0, 2**32), st.integers(1, 2**32))
def test_chunk_round_trip(plain: bytes, index: int, count: int) -> None:
    aead = AESGCM(KEY)
    ct = encrypt_chunk(aead, index, count, plain)
    assert len(ct) == len(plain) + 16
    assert decrypt_chunk(aead, index, count, ct) == plain


@PROPS
@given(st.binary(max_size=64), st.integers(0, 100), st.integers(1, 100), st.data())
def test_chunk_tampering(plain: bytes, index: int, count: int, data: st.DataObject) -> None:
    aead = AESGCM(KEY)
    ct = encrypt_chunk(aead, index, count, plain)
    bad_cases = [
        (index + 1, count, ct),
        (index, count + 1, ct),
        (index, count, ct[:-1]),
    ]
    if index:
        bad_cases.append((index - 1, count, ct))
    if count > 1:
        bad_cases.append((index, count - 1, ct))
    pos = data.draw(st.integers(0, len(ct) - 1))
    flipped = bytearray(ct)
    flipped[pos] ^= 1 << data.draw(st.integers(0, 7))
    bad_cases.append((index, count, bytes(flipped)))
    for i, c, blob in bad_cases:
        with pytest.raises(IntegrityError) as exc:
            decrypt_chunk(aead, i, c, blob)
        assert exc.value.code == "CHUNK_DECRYPT_FAILED"
    with pytest.raises(IntegrityError) as exc:
        decrypt_chunk(AESGCM(new_data_key()), index, count, ct)
    assert exc.value.code == "CHUNK_DECRYPT_FAILED"


def test_new_data_key() -> None:
    a, b = new_data_key(), new_data_key()
    assert len(a) == 32 and a != b
