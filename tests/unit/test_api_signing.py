"""api.signing: signed requests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlhelpers import PROPS, key

from medledger.api.signing import (
    H_BODY,
    H_KEY,
    H_SIG,
    H_TIME,
    REQ_DOMAIN,
    UNSIGNED,
    body_hash,
    canonical_request,
    sign_request,
    verify_request,
)
from medledger.errors import AuthError

ALICE = key("alice")
BOB = key("bob")
NOW = 1_700_000_000_000
SKEW = 30_000
PATH = "/api/v1/records?patient=ml123&limit=5"
BODY = b'{"hello": "world"}'


def signed(
    method: str = "POST", path: str = PATH, t: int = NOW, body: bytes = BODY
) -> dict[str, str]:
    return sign_request(ALICE, method, path, t, body_hash(body))


def code_of(headers: dict[str, str], method: str = "POST", path: str = PATH, now: int = NOW) -> str:
    with pytest.raises(AuthError) as exc:
        verify_request(headers, method, path, now, SKEW)
    return exc.value.code


def test_round_trip() -> None:
    headers = signed()
    assert set(headers) == {H_KEY, H_TIME, H_SIG, H_BODY}
    assert headers[H_BODY] == body_hash(BODY)
    pk = verify_request(headers, "POST", PATH, NOW, SKEW)
    assert pk == ALICE.public_key
    # method case does not matter; the canonical form upper-cases it
    assert verify_request(headers, "post", PATH, NOW + SKEW, SKEW) == ALICE.public_key
    assert canonical_request("post", "/p", 5, "h") == REQ_DOMAIN + b"POST\n/p\n5\nh"


def test_unsigned_payload() -> None:
    headers = sign_request(ALICE, "PUT", "/api/v1/storage/objects", NOW, UNSIGNED)
    assert verify_request(headers, "PUT", "/api/v1/storage/objects", NOW, SKEW) == ALICE.public_key
    tampered = dict(headers, **{H_BODY: body_hash(b"")})
    assert code_of(tampered, "PUT", "/api/v1/storage/objects") == "BAD_SIGNATURE"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", PATH),
        ("POST", "/api/v1/records?patient=ml123&limit=6"),
        ("POST", "/api/v1/records"),
        ("POST", PATH + "&x=1"),
        ("DELETE", PATH),
    ],
)
def test_tampered_method_or_path(method: str, path: str) -> None:
    assert code_of(signed(), method, path) == "BAD_SIGNATURE"


def test_tampered_time_and_body_hash() -> None:
    headers = signed()
    assert code_of(dict(headers, **{H_TIME: str(NOW + 1)})) == "BAD_SIGNATURE"
    assert code_of(dict(headers, **{H_BODY: body_hash(BODY + b" ")})) == "BAD_SIGNATURE"
    assert code_of(dict(headers, **{H_BODY: UNSIGNED})) == "BAD_SIGNATURE"
    assert code_of(dict(headers, **{H_KEY: BOB.public_key.hex()})) == "BAD_SIGNATURE"
    sig = bytearray(bytes.fromhex(headers[H_SIG]))
    sig[0] ^= 1
    assert code_of(dict(headers, **{H_SIG: sig.hex()})) == "BAD_SIGNATURE"
    assert code_of(dict(headers, **{H_SIG: ""})) == "BAD_SIGNATURE"


@PROPS
@given(
    st.sampled_from([H_KEY, H_TIME, H_SIG, H_BODY]),
    st.integers(0, 200),
    st.characters(codec="ascii"),
)
def test_any_edit_of_a_header_fails(name: str, pos: int, ch: str) -> None:
    headers = signed()
    value = headers[name]
    i = pos % len(value)
    if value[i] == ch:
        return
    edited = dict(headers, **{name: value[:i] + ch + value[i + 1 :]})
    try:
        pk = verify_request(edited, "POST", PATH, NOW, SKEW)
    except AuthError as exc:
        assert exc.code in {"BAD_SIGNATURE", "AUTH_MALFORMED", "AUTH_CLOCK_SKEW"}
        return
    # the only edits that may pass are those that do not change the parsed value,
    # e.g. upper-case hex digits or a "+" / leading "0" before the time
    assert pk == ALICE.public_key
    if name == H_TIME:
        assert int(edited[H_TIME]) == NOW
    elif name in (H_KEY, H_SIG):
        assert bytes.fromhex(edited[name]) == bytes.fromhex(value)
    else:
        pytest.fail("an edited body hash verified")


@pytest.mark.parametrize("missing", [H_KEY, H_TIME, H_SIG, H_BODY])
def test_missing_headers(missing: str) -> None:
    headers = signed()
    del headers[missing]
    assert code_of(headers) == "AUTH_REQUIRED"
    assert code_of({}) == "AUTH_REQUIRED"


@pytest.mark.parametrize(
    ("name", "value"),
    [(H_KEY, "zz"), (H_KEY, "00" * 31), (H_TIME, "soon"), (H_TIME, ""), (H_SIG, "not hex")],
)
def test_malformed_headers(name: str, value: str) -> None:
    assert code_of(dict(signed(), **{name: value})) == "AUTH_MALFORMED"


@pytest.mark.parametrize("delta", [SKEW + 1, -SKEW - 1, 10 * SKEW, -(10**9)])
def test_clock_skew(delta: int) -> None:
    assert code_of(signed(), now=NOW + delta) == "AUTH_CLOCK_SKEW"


@pytest.mark.parametrize("delta", [SKEW, -SKEW, 0])
def test_within_skew(delta: int) -> None:
    assert verify_request(signed(), "POST", PATH, NOW + delta, SKEW) == ALICE.public_key


def test_signatures_differ_by_key() -> None:
    a = sign_request(ALICE, "GET", "/x", NOW, UNSIGNED)
    b = sign_request(BOB, "GET", "/x", NOW, UNSIGNED)
    assert a[H_SIG] != b[H_SIG]
    mixed = dict(a, **{H_SIG: b[H_SIG]})
    assert code_of(mixed, "GET", "/x") == "BAD_SIGNATURE"
