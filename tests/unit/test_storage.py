"""storage: framing, manifests, streaming encryption, the local chunk store."""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlhelpers import PROPS

from medledger.crypto.cid import cid_for
from medledger.errors import IntegrityError, InvalidInput, NotFound
from medledger.storage import backend as chunkstore_module
from medledger.storage import framing
from medledger.storage.backend import LocalShardBackend as LocalChunkStore
from medledger.storage.crypt import ChunkDecryptor, build_content_manifest, encrypt_stream
from medledger.storage.manifest import (
    CIPHER,
    MANIFEST_VERSION,
    MAX_CHUNK_SIZE,
    ChunkRef,
    ContentManifest,
    decode_content_manifest,
)

# ---- framing ---------------------------------------------------------------------------------

frames_st = st.lists(
    st.tuples(
        st.sampled_from([framing.CHUNK, framing.MANIFEST, framing.ERROR]), st.binary(max_size=40)
    ),
    max_size=8,
)


def stream_of(frames: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(framing.frame(k, p) for k, p in frames)


def test_frame_layout() -> None:
    assert framing.frame(b"C", b"abc") == b"C\x00\x00\x00\x03abc"
    assert framing.frame_header(b"M", 258) == b"M\x00\x00\x01\x02"


@PROPS
@given(frames_st, st.lists(st.integers(0, 400), max_size=12))
def test_parser_any_split(frames: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    data = stream_of(frames)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    parser = framing.FrameParser(max_payload=64)
    out: list[tuple[bytes, bytes]] = []
    for a, b in itertools.pairwise(points):
        out += parser.feed(data[a:b])
    assert out == frames
    assert parser.pending == 0


def test_parser_every_boundary_and_byte_by_byte() -> None:
    frames = [(b"C", b"hello"), (b"C", b""), (b"M", b"manifest"), (b"E", b"{}")]
    data = stream_of(frames)
    for cut in range(len(data) + 1):
        parser = framing.FrameParser(max_payload=64)
        first = parser.feed(data[:cut])
        assert parser.pending == cut - sum(len(framing.frame(k, p)) for k, p in first)
        assert first + parser.feed(data[cut:]) == frames
        assert parser.pending == 0
    parser = framing.FrameParser(max_payload=64)
    out = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    assert out == frames


def test_parser_pending_mid_frame() -> None:
    parser = framing.FrameParser(max_payload=64)
    assert parser.feed(b"C\x00\x00") == []
    assert parser.pending == 3
    assert parser.feed(b"\x00\x04ab") == []
    assert parser.pending > 0
    assert parser.feed(b"cd") == [(b"C", b"abcd")]
    assert parser.pending == 0


@pytest.mark.parametrize("kind", [b"Z", b"c", b"\x00", b"m"])
def test_parser_unknown_kind(kind: bytes) -> None:
    parser = framing.FrameParser(max_payload=64)
    with pytest.raises(InvalidInput) as exc:
        parser.feed(framing.frame(b"C", b"ok") + kind + b"\x00\x00\x00\x01x")
    assert exc.value.code == "BAD_FRAME"


def test_parser_frame_too_large() -> None:
    parser = framing.FrameParser(max_payload=10)
    assert parser.feed(framing.frame(b"C", b"x" * 10)) == [(b"C", b"x" * 10)]
    with pytest.raises(InvalidInput) as exc:
        # refused from the header alone, before any payload is buffered
        parser.feed(framing.frame_header(b"C", 11))
    assert exc.value.code == "FRAME_TOO_LARGE"
    with pytest.raises(InvalidInput) as exc:
        framing.FrameParser(max_payload=10).feed(framing.frame_header(b"M", 2**32 - 1))
    assert exc.value.code == "FRAME_TOO_LARGE"


# ---- manifests and streaming encryption ----------------------------------------------------------

KEY = bytes(range(32))
CS = 64


def encrypt(
    plain: bytes, chunk_size: int = CS, key: bytes = KEY
) -> tuple[ContentManifest, list[bytes]]:
    out = list(encrypt_stream(io.BytesIO(plain), len(plain), key, chunk_size))
    manifest = build_content_manifest(
        len(plain), chunk_size, [ChunkRef(cid=c, size=len(ct)) for c, ct in out]
    )
    for cid, ct in out:
        assert cid == cid_for(ct)
    return manifest, [ct for _, ct in out]


def decrypt(manifest: ContentManifest, chunks: list[bytes], key: bytes = KEY) -> bytes:
    dec = ChunkDecryptor(manifest, key)
    parts = [dec.feed(c) for c in chunks]
    assert dec.done
    return b"".join(parts)


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 2 * CS, 5 * CS + 7])
def test_encrypt_round_trip(size: int) -> None:
    plain = bytes((i * 7 + 3) % 256 for i in range(size))
    manifest, chunks = encrypt(plain)
    assert len(chunks) == -(-size // CS)
    assert manifest.size == size and manifest.chunk_size == CS
    assert all(len(c) <= CS + 16 for c in chunks)
    assert decrypt(manifest, chunks) == plain
    assert decode_content_manifest(manifest.encode()) == manifest


@PROPS
@given(st.binary(max_size=700), st.integers(1, 200))
def test_encrypt_round_trip_property(plain: bytes, chunk_size: int) -> None:
    manifest, chunks = encrypt(plain, chunk_size)
    assert decrypt(manifest, chunks) == plain


def test_encrypt_many_chunks_in_order() -> None:
    plain = os.urandom(40 * 16)
    manifest, chunks = encrypt(plain, 16)  # more chunks than the pipeline window
    assert len(chunks) == 40
    assert decrypt(manifest, chunks) == plain


def test_encrypt_source_shorter_than_size() -> None:
    with pytest.raises(IntegrityError) as exc:
        list(encrypt_stream(io.BytesIO(b"x" * 100), 200, KEY, CS))
    assert exc.value.code == "SOURCE_CHANGED"


def test_encryption_uses_the_key() -> None:
    plain = b"p" * 200
    _, c1 = encrypt(plain)
    _, c2 = encrypt(plain, key=bytes(32))
    assert c1 != c2 and all(plain[:CS] not in c for c in c1)


def corrupt_cases(chunks: list[bytes]) -> dict[str, list[bytes]]:
    flipped = bytearray(chunks[1])
    flipped[5] ^= 0x40
    return {
        "swapped": [chunks[1], chunks[0], *chunks[2:]],
        "dropped": [chunks[0], *chunks[2:]],
        "corrupted": [chunks[0], bytes(flipped), *chunks[2:]],
        "truncated chunk": [chunks[0], chunks[1][:-1], *chunks[2:]],
        "repeated": [chunks[0], chunks[0], *chunks[2:]],
    }


@pytest.mark.parametrize("case", ["swapped", "dropped", "corrupted", "truncated chunk", "repeated"])
def test_decryptor_rejects_tampering(case: str) -> None:
    manifest, chunks = encrypt(os.urandom(3 * CS + 9))
    bad = corrupt_cases(chunks)[case]
    dec = ChunkDecryptor(manifest, KEY)
    with pytest.raises(IntegrityError) as exc:
        for c in bad:
            dec.feed(c)
    assert exc.value.code == "CHUNK_CORRUPT"


def test_decryptor_extra_and_missing_chunks() -> None:
    manifest, chunks = encrypt(os.urandom(2 * CS))
    dec = ChunkDecryptor(manifest, KEY)
    dec.feed(chunks[0])
    assert not dec.done  # a dropped last chunk leaves the decryptor unfinished
    dec.feed(chunks[1])
    with pytest.raises(IntegrityError) as exc:
        dec.feed(chunks[1])
    assert exc.value.code == "CHUNK_UNEXPECTED"


def test_forged_manifest_cannot_reorder_or_truncate() -> None:
    manifest, chunks = encrypt(os.urandom(3 * CS))
    refs = manifest.chunks
    reordered = build_content_manifest(manifest.size, CS, [refs[1], refs[0], refs[2]])
    dec = ChunkDecryptor(reordered, KEY)
    with pytest.raises(IntegrityError) as exc:
        dec.feed(chunks[1])
    assert exc.value.code == "CHUNK_DECRYPT_FAILED"
    truncated = build_content_manifest(2 * CS, CS, refs[:2])
    with pytest.raises(IntegrityError) as exc:
        ChunkDecryptor(truncated, KEY).feed(chunks[0])
    assert exc.value.code == "CHUNK_DECRYPT_FAILED"
    with pytest.raises(IntegrityError) as exc:
        ChunkDecryptor(manifest, bytes(32)).feed(chunks[0])
    assert exc.value.code == "CHUNK_DECRYPT_FAILED"


def test_decryptor_open_out_of_order() -> None:
    plain = os.urandom(3 * CS)
    manifest, chunks = encrypt(plain)
    dec = ChunkDecryptor(manifest, KEY)
    assert dec.open(2, chunks[2]) == plain[2 * CS :]
    assert dec.open(0, chunks[0]) == plain[:CS]
    with pytest.raises(IntegrityError) as exc:
        dec.open(1, chunks[0])
    assert exc.value.code == "CHUNK_CORRUPT"


def good_manifest(size: int = 2 * CS + 5) -> ContentManifest:
    manifest, _ = encrypt(bytes(size))
    return manifest


@pytest.mark.parametrize(
    "change",
    [
        {"version": 1},
        {"cipher": "aes-128-gcm/v1"},
        {"chunk_size": 0},
        {"chunk_size": -CS},
        {"chunk_size": MAX_CHUNK_SIZE + 1},
        {"size": -1},
        {"size": 2 * CS + 5 + CS},  # one chunk too few
        {"size": 2 * CS},  # one chunk too many
        {"size": 0},
        {"chunk_size": CS + 1},  # sizes no longer add up
    ],
)
def test_manifest_validate_rejects(change: dict) -> None:  # type: ignore[type-arg]
    bad = msgspec.structs.replace(good_manifest(), **change)
    with pytest.raises(InvalidInput) as exc:
        bad.validate()
    assert exc.value.code == "BAD_MANIFEST"
    with pytest.raises(InvalidInput) as exc:
        decode_content_manifest(bad.encode())
    assert exc.value.code == "BAD_MANIFEST"


@pytest.mark.parametrize("which", [0, 1, 2])
def test_manifest_chunk_refs_checked(which: int) -> None:
    m = good_manifest()
    for ref in (
        ChunkRef(cid="not-a-cid", size=m.chunks[which].size),
        ChunkRef(cid=m.chunks[which].cid, size=m.chunks[which].size + 1),
        ChunkRef(cid=m.chunks[which].cid, size=m.chunks[which].size - 16),
    ):
        chunks = list(m.chunks)
        chunks[which] = ref
        with pytest.raises(InvalidInput) as exc:
            msgspec.structs.replace(m, chunks=chunks).validate()
        assert exc.value.code == "BAD_MANIFEST"


def test_manifest_empty_and_decode_errors() -> None:
    empty = ContentManifest(
        version=MANIFEST_VERSION, cipher=CIPHER, chunk_size=CS, size=0, chunks=[]
    )
    empty.validate()
    m = good_manifest()
    data = m.encode()
    for bad in (b"", data[:-1], data + b"\x00", b"\x00" + data, msgspec.msgpack.encode([1, 2])):
        with pytest.raises(InvalidInput) as exc:
            decode_content_manifest(bad)
        assert exc.value.code == "BAD_MANIFEST"


# ---- local chunk store -----------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> LocalChunkStore:
    return LocalChunkStore(tmp_path / "chunks")


def test_store_put_get_has_delete(store: LocalChunkStore) -> None:
    data = b"encrypted chunk bytes"
    cid = cid_for(data)
    assert not store.has(cid)
    assert store.put(cid, data) is True
    assert store.has(cid)
    assert store.get(cid) == data
    assert (store.root / cid[-2:] / cid).read_bytes() == data
    assert store.put(cid, data) is False  # already present
    store.sync([cid])
    store.delete(cid)
    assert not store.has(cid)
    store.delete(cid)  # idempotent
    with pytest.raises(NotFound) as exc:
        store.get(cid)
    assert exc.value.code == "SHARD_NOT_FOUND"
    assert not [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]


def test_store_add(store: LocalChunkStore) -> None:
    cid, new = store.add(b"abc")
    assert (cid, new) == (cid_for(b"abc"), True)
    assert store.add(b"abc") == (cid, False)
    assert store.get(cid) == b"abc"
    store.sync([])


def test_store_wrong_cid(store: LocalChunkStore) -> None:
    with pytest.raises(IntegrityError) as exc:
        store.put(cid_for(b"one"), b"two")
    assert exc.value.code == "CID_MISMATCH"
    assert not store.has(cid_for(b"one")) and not store.has(cid_for(b"two"))


@pytest.mark.parametrize("cid", ["", "../../etc/passwd", "b" + "a" * 58, cid_for(b"x").upper()])
def test_store_bad_cid(store: LocalChunkStore, cid: str) -> None:
    for fn in (store.has, store.get, store.delete):
        with pytest.raises(InvalidInput) as exc:
            fn(cid)
        assert exc.value.code == "BAD_CID"


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "append"])
def test_store_corrupt_file(store: LocalChunkStore, damage: str) -> None:
    data = bytes(range(200))
    cid = cid_for(data)
    store.put(cid, data)
    path = store.root / cid[-2:] / cid
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[100] ^= 1
    elif damage == "truncate":
        raw = raw[:-1]
    elif damage == "empty":
        raw = bytearray()
    else:
        raw += b"\x00"
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError) as exc:
        store.get(cid)
    assert exc.value.code == "SHARD_CORRUPT"


def test_store_concurrent_put_of_same_chunk(
    store: LocalChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"the same ciphertext uploaded twice at once"
    cid = cid_for(data)
    real_replace = os.replace
    calls = {"n": 0}

    def interleaved_replace(src, dst) -> None:  # type: ignore[no-untyped-def]
        # Writer A has written its temp file; before it renames it, writer B (another
        # storage thread in this process) runs its whole put of the same chunk.
        calls["n"] += 1
        if calls["n"] == 1:
            store.put(cid, data)
        real_replace(src, dst)

    monkeypatch.setattr(chunkstore_module.os, "replace", interleaved_replace)
    store.put(cid, data)  # must not raise
    assert store.get(cid) == data


def test_store_put_repairs_corrupt_chunk(store: LocalChunkStore) -> None:
    data = b"chunk" * 10
    cid = cid_for(data)
    store.put(cid, data)
    (store.root / cid[-2:] / cid).write_bytes(b"garbage")
    store.put(cid, data)
    assert store.get(cid) == data


def test_store_recovers_from_its_directory_being_removed(tmp_path: Path) -> None:
    import shutil

    store = LocalChunkStore(tmp_path / "shards")
    cid, fresh = store.add(b"first")
    assert fresh
    shutil.rmtree(tmp_path / "shards")  # an operator wipes the disk under the running node
    cid2, fresh2 = store.add(b"first")
    assert (cid2, fresh2) == (cid, True) and store.get(cid) == b"first"
