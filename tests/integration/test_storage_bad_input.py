"""Bad input at the storage layer: truncated or cut uploads, missing keys, damaged shards on disk.

Nothing half-uploaded may be registered, no shard of a failed upload may stay
on disk, a damaged shard of a record with no parity (a one-institution
consortium stores k=1, m=0) fails the read with a clear code and leaves no
output file, and the node keeps serving everything else.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx
import pytest

from medledger.api import signing
from medledger.app.model import REGISTER_RECORD, RegisterRecordBody
from medledger.codec import encode
from medledger.crypto.aead import new_data_key
from medledger.crypto.cid import cid_for
from medledger.crypto.keys import PublicKey, seal_to
from medledger.custody.shamir import split_key
from medledger.ledger.tx import make_tx
from medledger.storage import framing
from medledger.storage.crypt import build_content_manifest, encrypt_stream
from medledger.storage.manifest import ChunkRef, decode_manifest

from .harness import (
    CHUNK_SIZE,
    Consortium,
    Identity,
    cli_json,
    expect_error,
    run_cli,
    signed_headers,
)

UPLOAD = "/api/v1/storage/objects"


class Sealed(NamedTuple):
    """A file encrypted as the client does it: chunks, content manifest, data key.
    ``manifest_cid`` names the content manifest, which a node never stores as such
    (it stores the full manifest it builds), so it is never registrable."""

    chunks: list[tuple[str, bytes]]
    manifest: bytes
    manifest_cid: str
    key: bytes
    size: int


def seal_content(data: bytes) -> Sealed:
    key = new_data_key()
    chunks = list(encrypt_stream(io.BytesIO(data), len(data), key, CHUNK_SIZE))
    manifest = build_content_manifest(
        len(data), CHUNK_SIZE, [ChunkRef(cid=cid, size=len(ct)) for cid, ct in chunks]
    ).encode()
    return Sealed(chunks, manifest, cid_for(manifest), key, len(data))


def chunk_frames(s: Sealed) -> list[bytes]:
    return [framing.frame(framing.CHUNK, ct) for _, ct in s.chunks]


def upload(c: Consortium, who: Identity, frames: Iterable[bytes]) -> httpx.Response:
    headers = signing.sign_request(
        who.key, "POST", UPLOAD, time.time_ns() // 1_000_000, signing.UNSIGNED
    )
    with c.http() as http:
        # an iterator: sent with chunked transfer encoding, as the client streams it
        return http.post(UPLOAD, content=iter(list(frames)), headers=headers)


def chunk_path(c: Consortium, cid: str) -> Path:
    """Where the node keeps a shard on disk (LocalShardBackend's layout)."""
    return c.home / "shards" / cid[-2:] / cid


def stored(c: Consortium, cid: str) -> bool:
    return chunk_path(c, cid).exists()


def register_tx(
    c: Consortium,
    who: Identity,
    patient: Identity,
    s: Sealed,
    stored: dict | None = None,  # type: ignore[type-arg]
) -> bytes:
    """A registration of ``s``: as the upload answered (``stored``), or as if the
    content manifest itself had been stored, with a one-institution layout."""
    with c.client(who) as cl:
        nonce = cl.next_nonce()
    doc = stored or {
        "manifest_cid": s.manifest_cid,
        "shard_root": "00" * 32,
        "k": 1,
        "m": 0,
        "placement": ["hospital-a"],
    }
    return make_tx(
        who.key,
        chain_id=c.chain_id,
        nonce=nonce,
        kind=REGISTER_RECORD,
        body=RegisterRecordBody(
            patient=patient.id,
            type="note",
            content_hash=doc["manifest_cid"],
            size=s.size,
            chunk_count=len(s.chunks),
            shard_root=bytes.fromhex(doc["shard_root"]),
            k=doc["k"],
            m=doc["m"],
            placement=doc["placement"],
            custodians=["hospital-a"],
            threshold=1,
        ),
    )


def deposit(c: Consortium, who: Identity, s: Sealed, manifest_cid: str) -> httpx.Response:
    """Deposit ``s``'s key as the one share of a 1-of-1 custody at hospital-a."""
    with c.client(who) as cl:
        (custodian,) = cl.custodians()["custodians"]
    share = split_key(s.key, 1, 1)[0]
    sealed = seal_to(PublicKey.from_hex(custodian["public_key"]), encode(share))
    doc = {
        "manifest_cid": manifest_cid,
        "threshold": 1,
        "shares": [{"institution": custodian["institution"], "sealed_share": sealed.hex()}],
    }
    body = json.dumps(doc).encode()
    with c.http() as http:
        return http.post(
            "/api/v1/custody/deposits",
            content=body,
            headers={
                **signed_headers(who.key, "POST", "/api/v1/custody/deposits", body),
                "content-type": "application/json",
            },
        )


class Cast(NamedTuple):
    clinician: Identity
    patient: Identity
    researcher: Identity


@pytest.fixture(scope="module")
def cast(consortium: Consortium) -> Cast:
    return Cast(
        consortium.enroll("clinician", "clinician"),
        consortium.enroll("patient", "patient"),
        consortium.enroll("researcher", "researcher"),
    )


def list_records(c: Consortium, who: Identity, patient: Identity) -> list[str]:
    doc = cli_json("record", "ls", "--patient", patient.id, "--node", c.api, "--as", who.key_file)
    return [r["record_id"] for r in doc["records"]]


def assert_not_registrable(c: Consortium, cast: Cast, s: Sealed) -> None:
    """The content is not on the node, so registering it fails and no record appears."""
    before = list_records(c, cast.patient, cast.patient)
    state = c.chain_state()
    with c.http() as http:
        resp = http.post("/api/v1/tx", content=register_tx(c, cast.clinician, cast.patient, s))
    expect_error(resp, 400, "CONTENT_NOT_STORED")
    assert c.chain_state() == state
    assert list_records(c, cast.patient, cast.patient) == before


# ---- uploads ----------------------------------------------------------------------------------


def test_upload_without_manifest_is_truncated(consortium: Consortium, cast: Cast) -> None:
    c = consortium
    s = seal_content(os.urandom(3 * CHUNK_SIZE + 100))
    frames = chunk_frames(s)
    cases = {
        "no manifest frame": frames,
        "cut inside a chunk frame": [*frames[:2], frames[2][: len(frames[2]) // 2]],
        "cut inside the manifest frame": [
            *frames,
            framing.frame(framing.MANIFEST, s.manifest)[:-10],
        ],
        "cut inside a frame header": [*frames[:1], frames[1][:3]],
        "nothing": [],
    }
    state = c.chain_state()
    before = shard_files(c)
    for what, body in cases.items():
        resp = upload(c, cast.clinician, body)
        expect_error(resp, 400, "UPLOAD_TRUNCATED")
        leftover = [cid for cid, _ in s.chunks if stored(c, cid)]
        assert not leftover, f"{what}: chunks of a failed upload stayed on disk"
        assert shard_files(c) == before, what
    assert c.chain_state() == state
    assert_not_registrable(c, cast, s)


def test_malformed_uploads(consortium: Consortium, cast: Cast) -> None:
    c = consortium
    s = seal_content(os.urandom(2 * CHUNK_SIZE + 1))
    frames = chunk_frames(s)
    manifest = framing.frame(framing.MANIFEST, s.manifest)
    cases = [
        ("BAD_FRAME", [frames[0], b"Z\x00\x00\x00\x01x"]),
        ("BAD_FRAME", [*frames, manifest, frames[0]]),
        ("FRAME_TOO_LARGE", [framing.frame_header(framing.CHUNK, 1 << 30), b"x" * 100]),
        ("UPLOAD_INCOMPLETE", [frames[0], frames[2], manifest]),
        ("BAD_MANIFEST", [*frames, framing.frame(framing.MANIFEST, b"\x93\x01\x02\x03")]),
    ]
    before = shard_files(c)
    for code, body in cases:
        expect_error(upload(c, cast.clinician, body), 400, code)
        assert not [cid for cid, _ in s.chunks if stored(c, cid)], code
        assert shard_files(c) == before, code
    # a researcher may not store content at all
    expect_error(upload(c, cast.researcher, [*frames, manifest]), 403, "ACCESS_DENIED")
    assert shard_files(c) == before
    assert_not_registrable(c, cast, s)


def test_connection_cut_mid_upload(consortium: Consortium, cast: Cast) -> None:
    c = consortium
    # enough chunks that the node has stored some (it writes shards in small batches)
    s = seal_content(os.urandom(12 * CHUNK_SIZE))
    frames = chunk_frames(s)
    sent = b"".join(frames[:10])
    headers = signing.sign_request(
        cast.clinician.key, "POST", UPLOAD, time.time_ns() // 1_000_000, signing.UNSIGNED
    )
    url = urlsplit(c.api)
    head = [
        f"POST {UPLOAD} HTTP/1.1",
        f"Host: {url.netloc}",
        f"Content-Length: {len(b''.join(frames)) + 1000}",
        *(f"{k}: {v}" for k, v in headers.items()),
        "",
        "",
    ]
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall("\r\n".join(head).encode() + sent + frames[10][:1000])
        # wait until the node has stored what it got, then drop the connection
        first = chunk_path(c, s.chunks[0][0])
        deadline = time.monotonic() + 10
        while not first.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.exists(), "the node did not store the first chunk of the upload"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(stored(c, cid) for cid, _ in s.chunks):
        time.sleep(0.05)
    assert not [cid for cid, _ in s.chunks if stored(c, cid)], "a cut upload left chunks"
    assert c.healthy()
    assert_not_registrable(c, cast, s)


def test_register_without_key_deposit(consortium: Consortium, cast: Cast) -> None:
    c = consortium
    s = seal_content(os.urandom(CHUNK_SIZE + 5))
    resp = upload(
        c, cast.clinician, [*chunk_frames(s), framing.frame(framing.MANIFEST, s.manifest)]
    )
    assert resp.status_code == 201, resp.text
    stored_doc = resp.json()
    assert (stored_doc["k"], stored_doc["m"], stored_doc["placement"]) == (1, 0, ["hospital-a"])
    cid = stored_doc["manifest_cid"]
    before = list_records(c, cast.patient, cast.patient)
    state = c.chain_state()
    with c.http() as http:
        raw = register_tx(c, cast.clinician, cast.patient, s, stored_doc)
        expect_error(http.post("/api/v1/tx", content=raw), 400, "KEY_NOT_DEPOSITED")
        # a deposit for content that is not stored is refused
        other = seal_content(b"never uploaded")
        expect_error(
            deposit(c, cast.clinician, other, other.manifest_cid), 404, "CONTENT_NOT_STORED"
        )
        # a registration whose layout differs from the stored manifest is refused
        assert deposit(c, cast.clinician, s, cid).status_code == 201
        forged = register_tx(
            c, cast.clinician, cast.patient, s, {**stored_doc, "shard_root": "11" * 32}
        )
        expect_error(http.post("/api/v1/tx", content=forged), 400, "CONTENT_MISMATCH")
        assert c.chain_state() == state
        assert list_records(c, cast.patient, cast.patient) == before
        # with the key deposited and the true layout, the registration goes through
        receipt = http.post("/api/v1/tx", content=raw).json()
    assert receipt["code"] == "OK"
    assert list_records(c, cast.patient, cast.patient) == [*before, receipt["data"]["record_id"]]


# ---- damaged chunks on disk --------------------------------------------------------------------


def put_file(c: Consortium, who: Identity, patient: Identity, data: bytes) -> dict[str, str]:
    src = c.work / f"src-{os.urandom(4).hex()}.bin"
    src.write_bytes(data)
    put: dict[str, str] = cli_json(
        "record", "put", src, "--patient", patient.id, "--node", c.api, "--as", who.key_file
    )
    return put


def shard_files(c: Consortium) -> set[Path]:
    return {p for p in (c.home / "shards").rglob("*") if p.is_file()}


def get_file(c: Consortium, who: Identity, rid: str, out: Path) -> tuple[int, str]:
    r = run_cli(
        "record",
        "get",
        rid,
        "--out",
        out,
        "--purpose",
        "patient-access",
        "--node",
        c.api,
        "--as",
        who.key_file,
    )
    return r.code, r.err


class Kept(NamedTuple):
    record_id: str
    data: bytes


@pytest.fixture(scope="module")
def kept(consortium: Consortium, cast: Cast) -> Kept:
    """A record nobody damages: it must stay readable whatever happens to others."""
    data = os.urandom(2 * CHUNK_SIZE + 7)
    return Kept(put_file(consortium, cast.clinician, cast.patient, data)["record_id"], data)


@pytest.mark.parametrize(
    ("damage", "chunk"),
    [
        ("flip", 1),
        ("flip", 3),  # the last, short chunk: its error frame is longer than the chunk
        ("truncate", 2),
        ("delete", 0),
        ("manifest", None),
    ],
)
def test_damaged_chunk_fails_read(
    consortium: Consortium, cast: Cast, kept: Kept, damage: str, chunk: int | None
) -> None:
    c = consortium
    before = shard_files(c)
    victim = put_file(c, cast.clinician, cast.patient, os.urandom(3 * CHUNK_SIZE + 11))
    assert victim["chunk_count"] == 4
    assert len(shard_files(c) - before) == 4 + 1  # its chunks (k=1, m=0) and its manifest
    manifest_file = chunk_path(c, victim["content_hash"])
    manifest = decode_manifest(manifest_file.read_bytes())
    target = manifest_file if chunk is None else chunk_path(c, manifest.chunks[chunk].cid)
    raw = bytearray(target.read_bytes())
    if damage == "delete":
        target.unlink()
    elif damage == "truncate":
        target.write_bytes(raw[: len(raw) // 2])
    else:
        for i in (0, len(raw) // 2, len(raw) - 1):
            raw[i] ^= 0xFF
        target.write_bytes(raw)

    out = c.work / f"out-{damage}-{chunk}.bin"
    code, err = get_file(c, cast.patient, victim["record_id"], out)
    want = "MANIFEST_NOT_FOUND" if chunk is None else "NOT_ENOUGH_SHARDS"
    assert code == 1 and err.strip().startswith(f"error: {want}: "), err
    assert "Traceback" not in err
    assert not out.exists(), "a failed read left its output file"
    assert not [p for p in c.work.iterdir() if p.name.endswith(".part")], "a .part file remains"
    # the node keeps serving: health, other records, new records
    assert c.healthy()
    ok_out = c.work / f"ok-{damage}-{chunk}.bin"
    code, err = get_file(c, cast.patient, kept.record_id, ok_out)
    assert code == 0, err
    assert ok_out.read_bytes() == kept.data
    fresh = put_file(c, cast.clinician, cast.patient, os.urandom(CHUNK_SIZE + 3))
    assert fresh["record_id"] in list_records(c, cast.patient, cast.patient)
