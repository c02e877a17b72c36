"""custody.shamir: splitting a 32-byte data key into t-of-n shares and combining them."""

from __future__ import annotations

import itertools
import os

import msgspec
import pytest
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from mlhelpers import PROPS

from medledger.codec import decode, encode
from medledger.crypto.aead import decrypt_chunk, encrypt_chunk
from medledger.custody.shamir import KeyShare, combine_key, split_key
from medledger.errors import IntegrityError, InvalidInput

KEY = bytes(range(100, 132))


@pytest.mark.parametrize(("t", "n"), [(1, 1), (1, 3), (2, 2), (2, 3), (3, 4), (4, 6), (5, 5)])
def test_every_threshold_subset_rebuilds_the_key(t: int, n: int) -> None:
    key = os.urandom(32)
    shares = split_key(key, t, n)
    assert [s.index for s in shares] == list(range(1, n + 1))
    assert all(s.threshold == t and len(s.hi) == len(s.lo) == 16 for s in shares)
    for subset in itertools.combinations(shares, t):
        assert combine_key(list(subset)) == key
        assert combine_key(list(reversed(subset))) == key  # order does not matter
    assert combine_key(shares) == key  # all of them (consistency-checked) too


@PROPS
@given(key=st.binary(min_size=32, max_size=32), tn=st.sampled_from([(2, 3), (3, 4), (4, 7)]))
def test_round_trip_property(key: bytes, tn: tuple[int, int]) -> None:
    t, n = tn
    shares = split_key(key, t, n)
    assert combine_key(shares[n - t :]) == key
    # a share survives its wire encoding (what the client seals to a custodian)
    assert combine_key([decode(encode(s), KeyShare) for s in shares[:t]]) == key


def test_splits_are_randomised() -> None:
    a, b = split_key(KEY, 3, 4), split_key(KEY, 3, 4)
    assert all(x.hi != y.hi and x.lo != y.lo for x, y in zip(a, b, strict=True))


def test_fewer_than_threshold_shares_are_refused() -> None:
    shares = split_key(KEY, 3, 4)
    for subset in itertools.combinations(shares, 2):
        with pytest.raises(InvalidInput) as exc:
            combine_key(list(subset))
        assert exc.value.code == "NOT_ENOUGH_SHARES"
    with pytest.raises(InvalidInput) as exc:
        combine_key([])
    assert exc.value.code == "NOT_ENOUGH_SHARES"


def test_fewer_than_threshold_shares_interpolate_to_a_wrong_key() -> None:
    """Past the threshold check (interpolating t-1 points as if they were all), the
    result is some other key: t-1 shares fix nothing about the secret."""
    shares = split_key(KEY, 3, 4)
    for subset in itertools.combinations(shares, 2):
        hi = Shamir.combine([(s.index, s.hi) for s in subset])
        lo = Shamir.combine([(s.index, s.lo) for s in subset])
        assert hi + lo != KEY
        assert hi != KEY[:16] and lo != KEY[16:]


def test_a_single_share_decrypts_nothing() -> None:
    """One custodian's share (3 of 4), used as a key or as either half, opens no chunk."""
    ct = encrypt_chunk(AESGCM(KEY), 0, 1, b"patient record " * 100)
    assert decrypt_chunk(AESGCM(KEY), 0, 1, ct).startswith(b"patient record")
    for share in split_key(KEY, 3, 4):
        for guess in (share.hi + share.lo, share.lo + share.hi, share.hi * 2, share.lo * 2):
            with pytest.raises(IntegrityError) as exc:
                decrypt_chunk(AESGCM(guess), 0, 1, ct)
            assert exc.value.code == "CHUNK_DECRYPT_FAILED"
        with pytest.raises(InvalidInput):
            combine_key([share])


def _flip(share: KeyShare, half: str) -> KeyShare:
    value = bytearray(getattr(share, half))
    value[3] ^= 0x40
    return msgspec.structs.replace(share, **{half: bytes(value)})


@pytest.mark.parametrize("half", ["hi", "lo"])
def test_a_corrupt_share_is_caught_beyond_the_threshold(half: str) -> None:
    shares = split_key(KEY, 3, 4)
    for victim in range(4):
        bad = list(shares)
        bad[victim] = _flip(shares[victim], half)
        with pytest.raises(IntegrityError) as exc:
            combine_key(bad)
        assert exc.value.code == "SHARES_INCONSISTENT"


def test_a_corrupt_share_at_the_threshold_gives_a_key_that_decrypts_nothing() -> None:
    """With exactly t shares nothing is left to cross-check: the wrong key is caught
    by the chunks' AES-GCM tags."""
    ct = encrypt_chunk(AESGCM(KEY), 0, 1, b"x" * 64)
    shares = split_key(KEY, 3, 4)
    wrong = combine_key([_flip(shares[0], "hi"), shares[1], shares[2]])
    assert wrong != KEY
    with pytest.raises(IntegrityError):
        decrypt_chunk(AESGCM(wrong), 0, 1, ct)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: msgspec.structs.replace(s, hi=s.hi[:15]),
        lambda s: msgspec.structs.replace(s, lo=s.lo + b"\x00"),
        lambda s: msgspec.structs.replace(s, index=0),
        lambda s: msgspec.structs.replace(s, index=256),
        lambda s: msgspec.structs.replace(s, threshold=0),
        lambda s: msgspec.structs.replace(s, threshold=2),  # a share of another split
    ],
)
def test_malformed_shares_are_refused(mangle: object) -> None:
    shares = split_key(KEY, 3, 4)
    bad = [mangle(shares[0]), *shares[1:]]  # type: ignore[operator]
    with pytest.raises(InvalidInput) as exc:
        combine_key(bad)
    assert exc.value.code == "BAD_SHARE"


def test_duplicate_shares_are_refused() -> None:
    shares = split_key(KEY, 3, 4)
    with pytest.raises(InvalidInput) as exc:
        combine_key([shares[0], shares[1], shares[1]])
    assert exc.value.code == "BAD_SHARE"


@pytest.mark.parametrize(
    ("key", "t", "n", "code"),
    [
        (KEY[:31], 2, 3, "BAD_KEY"),
        (KEY + b"\x00", 2, 3, "BAD_KEY"),
        (KEY, 0, 3, "BAD_THRESHOLD"),
        (KEY, 4, 3, "BAD_THRESHOLD"),
        (KEY, 1, 0, "BAD_THRESHOLD"),
        (KEY, 2, 256, "BAD_THRESHOLD"),
    ],
)
def test_bad_split_parameters(key: bytes, t: int, n: int, code: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        split_key(key, t, n)
    assert exc.value.code == code
