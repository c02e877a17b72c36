"""codec: canonical MessagePack, strict and canonical decoding."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlhelpers import PROPS

from medledger.codec import Record, decode, decode_canonical, encode
from medledger.errors import DecodeError
from medledger.ledger.block import Event, TxResult
from medledger.ledger.genesis import ChainParams
from medledger.ledger.tx import Tx

u63 = st.integers(min_value=0, max_value=2**63 - 1)
text = st.text(max_size=40)

txs = st.builds(Tx, chain_id=text, sender=text, nonce=u63, kind=text, body=st.binary(max_size=80))
events = st.builds(
    Event, action=text, actor=text, subject=text, record_id=text, outcome=text, detail=text
)
results = st.builds(
    TxResult,
    code=text,
    message=text,
    events=st.lists(events, max_size=3),
    data=st.dictionaries(text, text, max_size=5),
)


class Small(Record, frozen=True):
    n: int
    s: str
    b: bytes


@PROPS
@given(txs)
def test_tx_round_trip(tx: Tx) -> None:
    data = encode(tx)
    assert decode_canonical(data, Tx) == tx
    assert encode(decode(data, Tx)) == data


@PROPS
@given(results)
def test_result_round_trip_and_map_order_is_deterministic(result: TxResult) -> None:
    data = encode(result)
    assert decode_canonical(data, TxResult) == result
    # Same map, built in reverse insertion order, encodes to the same bytes.
    reversed_data = dict(reversed(list(result.data.items())))
    same = TxResult(
        code=result.code, message=result.message, events=result.events, data=reversed_data
    )
    assert encode(same) == data


@PROPS
@given(u63, st.sampled_from([0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD1, 0xD2, 0xD3]))
def test_int_wider_than_needed_is_non_canonical(n: int, marker: int) -> None:
    widths = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
    width = widths[marker]
    signed = marker >= 0xD0
    limit = 2 ** (8 * width - 1) if signed else 2 ** (8 * width)
    canonical_int = msgspec.msgpack.encode(n)
    if n >= limit:
        return
    wide = bytes([marker]) + n.to_bytes(width, "big", signed=signed)
    if wide == canonical_int:
        return  # this *is* the shortest form (e.g. 200 as uint8)
    good = encode(Small(n=n, s="x", b=b"y"))
    bad = b"\x93" + wide + good[1 + len(canonical_int) :]
    assert decode(bad, Small) == Small(n=n, s="x", b=b"y")  # it decodes...
    with pytest.raises(DecodeError) as exc:
        decode_canonical(bad, Small)  # ...but is not canonical
    assert exc.value.code == "NON_CANONICAL"


def test_specific_non_canonical_forms() -> None:
    good = encode(Small(n=5, s="ab", b=b"c"))
    assert good == bytes.fromhex("9305a26162c40163")
    variants = {
        "uint8 for a fixint": bytes.fromhex("93cc05a26162c40163"),
        "str8 for a fixstr": bytes.fromhex("9305d9026162c40163"),
        "bin16 for a bin8": bytes.fromhex("9305a26162c5000163"),
        "array16 for a fixarray": bytes.fromhex("dc000305a26162c40163"),
    }
    for name, data in variants.items():
        with pytest.raises(DecodeError) as exc:
            decode_canonical(data, Small)
        assert exc.value.code == "NON_CANONICAL", name


def test_unsorted_and_duplicate_map_keys_are_non_canonical() -> None:
    r = TxResult(code="OK", message="", events=[], data={"a": "1", "b": "2"})
    data = encode(r)
    assert data.endswith(bytes.fromhex("82a161a131a162a132"))
    unsorted = data[:-9] + bytes.fromhex("82a162a132a161a131")
    dup = data[:-9] + bytes.fromhex("83a161a131a162a132a161a131")
    for bad in (unsorted, dup):
        with pytest.raises(DecodeError) as exc:
            decode_canonical(bad, TxResult)
        assert exc.value.code == "NON_CANONICAL"


def test_omitted_default_fields_are_non_canonical() -> None:
    params = ChainParams()
    data = encode(params)
    last = len(encode(msgspec.structs.astuple(params)[-1]))
    short = bytes([data[0] - 1]) + data[1:-last]  # drop the last field (a default)
    assert msgspec.msgpack.decode(short, type=ChainParams) == params
    with pytest.raises(DecodeError) as exc:
        decode_canonical(short, ChainParams)
    assert exc.value.code == "NON_CANONICAL"


@PROPS
@given(txs, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_rejected(tx: Tx, extra: bytes) -> None:
    with pytest.raises(DecodeError) as exc:
        decode_canonical(encode(tx) + extra, Tx)
    assert exc.value.code == "DECODE_ERROR"


@PROPS
@given(txs, st.data())
def test_truncation_rejected(tx: Tx, data: st.DataObject) -> None:
    raw = encode(tx)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(DecodeError):
        decode_canonical(raw[:cut], Tx)


@pytest.mark.parametrize(
    "value",
    [
        ["c", "s", "5", "k", b"x"],  # nonce as str
        ["c", "s", 5, "k", "x"],  # body as str, not bin
        ["c", "s", 5.0, "k", b"x"],  # nonce as float
        ["c", "s", True, "k", b"x"],  # nonce as bool
        ["c", "s", 5, "k"],  # missing field
        ["c", "s", 5, "k", b"x", 1],  # extra field
        {"chain_id": "c"},  # map, not array
        [b"c", "s", 5, "k", b"x"],  # bin for a str
    ],
)
def test_wrong_types_rejected(value: object) -> None:
    data = msgspec.msgpack.encode(value)
    for fn in (decode, decode_canonical):
        with pytest.raises(DecodeError) as exc:
            fn(data, Tx)
        assert exc.value.code == "DECODE_ERROR"


INVALID_UTF8_TX = bytes.fromhex("95a2ff00a17305a16bc40178")  # chain_id = b"\xff\x00"


# (regression: msgspec's UnicodeDecodeError used to escape codec.decode)
@pytest.mark.parametrize("fn", [decode, decode_canonical])
def test_invalid_utf8_raises_decode_error(fn: object) -> None:
    with pytest.raises(DecodeError) as exc:
        fn(INVALID_UTF8_TX, Tx)  # type: ignore[operator]
    assert exc.value.code == "DECODE_ERROR"


def test_records_are_frozen() -> None:
    tx = Tx(chain_id="c", sender="s", nonce=1, kind="k", body=b"")
    with pytest.raises(AttributeError):
        tx.nonce = 2  # type: ignore[misc]
