"""Erasure-coded storage across a real 4-institution consortium.

Records are spread 2+2 over the four institutions' shard services. Reads survive
two institutions' shards being deleted, or one node stopped and another's shards
deleted; bit rot is found by the next epoch's audit (seeded by the block hash)
and repaired, with alert and repair on chain; ``medledger storage`` audits,
repairs and reports on demand; a cut or truncated upload leaves no shard at any
institution and nothing registrable; a DICOM folder is one record.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from medledger.api import signing
from medledger.client import Client
from medledger.crypto.cid import cid_for
from medledger.node.config import load_config, save_config
from medledger.storage import framing
from medledger.storage.backend import LocalShardBackend
from medledger.storage.manifest import Manifest, decode_manifest
from medledger.storage.s3backend import S3Config

from .harness import CHUNK_SIZE, Consortium, cli_json, run_cli, sigkill
from .seaweed import SeaweedS3
from .test_consortium import (
    NAMES,
    admin_key,
    api,
    enroll_as,
    full_mesh,
    home,
    read_record,
    status_by_name,
    wait_converged,
    wait_for,
)

AUDIT_EPOCH = 4


def set_chain_params(c: Consortium, powers: dict[str, int] | None = None, **params: int) -> None:
    """Edit the genesis of a consortium that was initialised but never started:
    chain parameters, and validators' voting power by institution."""
    for path in [c.dir / "genesis.json", *(home(c, n) / "genesis.json" for n in NAMES)]:
        doc = json.loads(path.read_text())
        doc.setdefault("params", {}).update(params)
        for v in doc["validators"]:
            v["power"] = (powers or {}).get(v["name"], v["power"])
        path.write_text(json.dumps(doc, indent=2) + "\n")


def start_quad(c: Consortium, powers: dict[str, int] | None = None, **params: int) -> None:
    c.init(4)
    assert [i["name"] for i in c.info["institutions"]] == NAMES
    set_chain_params(c, powers, **params)
    c.up()
    wait_for(lambda: full_mesh(c, NAMES), 20, "every validator to connect to the other three")


@contextlib.contextmanager
def running_quad(
    base: Path, powers: dict[str, int] | None = None, **params: int
) -> Iterator[Consortium]:
    """A started 4-institution consortium (:func:`start_quad`) in ``base``, stopped after."""
    c = Consortium(base)
    try:
        start_quad(c, powers, **params)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def quad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    """Four institutions; every shard is challenged each audit epoch of 4 blocks."""
    with running_quad(
        tmp_path_factory.mktemp("erasure"),
        storage_audit_epoch=AUDIT_EPOCH,
        storage_audit_challenges=10_000,
    ) as c:
        yield c


class Cast:
    def __init__(self, c: Consortium) -> None:
        self.clinician = enroll_as(c, "hospital-a", "hospital-a", "clinician-a", "clinician")
        self.patient = enroll_as(c, "hospital-a", "hospital-a", "patient", "patient")


@pytest.fixture(scope="module")
def cast(quad: Consortium) -> Cast:
    return Cast(quad)


def shards_dir(c: Consortium, name: str) -> Path:
    return home(c, name) / "shards"


def shard_path(c: Consortium, name: str, cid: str) -> Path:
    return shards_dir(c, name) / cid[-2:] / cid


def shard_files(c: Consortium) -> dict[str, set[Path]]:
    return {n: {p for p in shards_dir(c, n).rglob("*") if p.is_file()} for n in NAMES}


def put(c: Consortium, cast: Cast, data: bytes, via: str = "hospital-a") -> Any:
    src = c.work / f"src-{os.urandom(4).hex()}.bin"
    src.write_bytes(data)
    with Client(api(c, via), cast.clinician.key) as cl:
        return cl.put_record(src, patient=cast.patient.id, record_type="imaging")


def manifest_of(c: Consortium, name: str, cid: str) -> Manifest:
    return decode_manifest(LocalShardBackend(shards_dir(c, name)).get(cid))


def record_meta(c: Consortium, cast: Cast, record_id: str) -> dict[str, Any]:
    with Client(api(c, "hospital-a"), cast.patient.key) as cl:
        return cl.record(record_id)


def column_shards(c: Consortium, man: Manifest, column: int, name: str) -> list[Path]:
    return [shard_path(c, name, r.cid) for r in man.column(column) if r is not None]


def storage(c: Consortium, via: str, *args: str) -> Any:
    r = run_cli(
        "storage", *args, "--json", "--node", api(c, via), "--as", home(c, via) / "admin.key"
    )
    assert r.code in (0, 3), r.err
    return r.json()


def alerts(c: Consortium, via: str = "hospital-b") -> list[dict[str, Any]]:
    with Client(api(c, via), admin_key(c, via)) as cl:
        return list(cl.get_json("/api/v1/storage/alerts")["events"])


# ---- layout and reads ----------------------------------------------------------------------------


def test_layout_spreads_columns_and_no_institution_holds_a_copy(
    quad: Consortium, cast: Cast
) -> None:
    c = quad
    data = os.urandom(6 * CHUNK_SIZE)  # whole stripes: the overhead is exactly (k+m)/k
    p = put(c, cast, data)
    assert (p.k, p.m) == (2, 2) and sorted(p.placement) == NAMES
    assert p.stored_bytes == pytest.approx(2 * len(data), rel=0.02)  # (k+m)/k overhead
    meta = record_meta(c, cast, p.record_id)
    assert meta["placement"] == p.placement and meta["custodians"] == NAMES
    assert meta["threshold"] == 3
    man = manifest_of(c, "hospital-a", p.manifest_cid)
    assert meta["shard_root"] == man.shard_root.hex() and man.stripes == 3
    for column, name in enumerate(p.placement):
        # every institution holds the manifest and exactly its column
        assert manifest_of(c, name, p.manifest_cid) == man
        assert all(f.exists() for f in column_shards(c, man, column, name)), name
        others = [x for x in range(4) if x != column]
        for o in others:
            assert not any(f.exists() for f in column_shards(c, man, o, name)), (name, o)
    # a data column alone is only half the (encrypted) chunks
    assert len(column_shards(c, man, 0, p.placement[0])) == 3
    assert len(man.chunks) == 6


def test_reads_survive_two_institutions_losing_their_shards(quad: Consortium, cast: Cast) -> None:
    c = quad
    data = os.urandom(4 * CHUNK_SIZE + 77)
    p = put(c, cast, data)
    wait_converged(c, NAMES, p.height)
    # both data columns gone: every stripe is decoded from the two parity columns
    for name in p.placement[:2]:
        shutil.rmtree(shards_dir(c, name))
        shards_dir(c, name).mkdir()
    assert read_record(c, "hospital-c", cast.patient, p.record_id, "two-lost") == data
    assert read_record(c, "hospital-a", cast.patient, p.record_id, "two-lost-a") == data
    # repair rebuilds both columns in place and records it on chain (the CLI's repair,
    # or the epoch audit's if it came first: the reads' access events make blocks)
    doc = storage(c, "hospital-b", "repair")
    assert {r["status"] for r in doc["repairs"] if r["record_id"] == p.record_id} <= {"repaired"}

    def repaired() -> set[str] | None:
        cols = {
            e["column"]
            for e in alerts(c)
            if e["record_id"] == p.record_id and e["kind"] == "storage.repair"
        }
        return cols if {"0", "1"} <= cols else None

    wait_for(repaired, 30, "repairs of both data columns on chain", interval=0.5)
    man = manifest_of(c, p.placement[2], p.manifest_cid)
    for column in (0, 1):
        files = column_shards(c, man, column, p.placement[column])
        assert files and all(cid_for(f.read_bytes()) == f.name for f in files)
    assert storage(c, "hospital-b", "repair")["repairs"] == []


def test_read_with_one_node_down_and_another_shards_deleted(quad: Consortium, cast: Cast) -> None:
    c = quad
    data = os.urandom(3 * CHUNK_SIZE)
    p = put(c, cast, data)
    wait_converged(c, NAMES, p.height)
    # stop the node holding a data column (never A: the node the reads go through) ...
    down = next(n for n in p.placement[:2] if n != "hospital-a")
    lost = next(n for n in p.placement if n not in (down, "hospital-a"))
    sigkill(status_by_name(c)[down]["pid"])
    # ... and delete another institution's shards of it
    man = manifest_of(c, "hospital-a", p.manifest_cid)
    for f in column_shards(c, man, p.placement.index(lost), lost):
        f.unlink()
    via = next(n for n in NAMES if n not in (down, "hospital-a"))
    assert read_record(c, via, cast.patient, p.record_id, "down-and-lost") == data
    # the read had to decode around them: the reading node repairs the deleted shards
    # in place at once (the stopped node's column waits: no member is free to take it)
    lost_files = column_shards(c, man, p.placement.index(lost), lost)
    wait_for(lambda: all(f.exists() for f in lost_files) or None, 20, "a repair after the read")
    assert all(cid_for(f.read_bytes()) == f.name for f in lost_files)
    # the status view shows the stopped service as unhealthy
    st = storage(c, "hospital-a", "status")
    health = {s["institution"]: s["healthy"] for s in st["services"]}
    assert health[down] is False and sum(health.values()) == 3
    c.up()
    wait_for(lambda: full_mesh(c, NAMES), 30, "the stopped node to rejoin")
    storage(c, "hospital-a", "repair")
    assert all(f.exists() for f in column_shards(c, man, p.placement.index(lost), lost))


# ---- audits ----------------------------------------------------------------------------------------


def drive_blocks(c: Consortium, count: int) -> int:
    """Commit ``count`` blocks (one enrolment each); return the last height."""
    height = 0
    for i in range(count):
        ident = c.new_key(f"filler-{os.urandom(3).hex()}-{i}")
        with Client(api(c, "hospital-b"), admin_key(c, "hospital-b")) as cl:
            height = int(cl.enroll(ident.id, "patient")["height"])
    return height


def test_bit_rot_is_found_by_the_epoch_audit_and_repaired(quad: Consortium, cast: Cast) -> None:
    c = quad
    data = os.urandom(2 * CHUNK_SIZE + 5)
    p = put(c, cast, data)
    man = manifest_of(c, "hospital-a", p.manifest_cid)
    column = 3  # a parity shard: reads never touch it, only the audit can find it
    victim = column_shards(c, man, column, p.placement[column])[0]
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0x01
    victim.write_bytes(bytes(raw))
    assert cid_for(victim.read_bytes()) != victim.name
    drive_blocks(c, AUDIT_EPOCH + 1)

    def found() -> list[dict[str, Any]] | None:
        mine = [e for e in alerts(c) if e["record_id"] == p.record_id]
        kinds = {e["kind"] for e in mine}
        return mine if {"storage.alert", "storage.repair"} <= kinds else None

    events = wait_for(found, 30, "the epoch audit's alert and repair on chain", interval=0.5)
    alert = next(e for e in events if e["kind"] == "storage.alert")
    assert alert["reason"] == "corrupt" and alert["column"] == str(column)
    assert alert["institution"] == p.placement[column] and int(alert["seed_height"]) > 0
    assert int(alert["seed_height"]) % AUDIT_EPOCH == 0
    repair = next(e for e in events if e["kind"] == "storage.repair")
    assert repair["to"] == p.placement[column] and repair["shards"] == "1"
    assert cid_for(victim.read_bytes()) == victim.name, "the shard was not rebuilt"
    assert read_record(c, "hospital-d", cast.patient, p.record_id, "after-rot") == data


def test_on_demand_audit_reports_and_repair_fixes(quad: Consortium, cast: Cast) -> None:
    c = quad
    p = put(c, cast, os.urandom(CHUNK_SIZE * 2))
    clean = storage(c, "hospital-c", "audit", "--all")
    assert clean["failures"] == [] and clean["checked"] > 0
    man = manifest_of(c, "hospital-a", p.manifest_cid)
    holder = p.placement[1]
    column_shards(c, man, 1, holder)[0].unlink()
    r = run_cli(
        "storage", "audit", "--all", "--json", "--node", api(c, "hospital-c"),
        "--as", home(c, "hospital-c") / "admin.key",
    )  # fmt: skip
    assert r.code == 3, r.err  # failures found and not repaired: exit 3
    failed = [f for f in r.json()["failures"] if f["record_id"] == p.record_id]
    assert failed == [
        {
            "record_id": p.record_id,
            "column": 1,
            "institution": holder,
            "reason": "missing",
            "stripes": [0],
        }
    ]
    assert len(r.json()["alerts"]) >= 1
    # the CLI repairs it, unless the epoch audit that the alerts' blocks started got
    # there first: either way the shard is back and the repair is on chain
    fixed = storage(c, "hospital-c", "repair", "--record", p.record_id)
    assert {x["status"] for x in fixed["repairs"]} <= {"repaired"}
    wait_for(
        lambda: (
            any(
                e["kind"] == "storage.repair" and e["column"] == "1"
                for e in alerts(c)
                if e["record_id"] == p.record_id
            )
            or None
        ),
        30,
        "the repair on chain",
        interval=0.5,
    )
    assert storage(c, "hospital-c", "audit", "--all")["failures"] == []
    # non-admins may not run audits or repairs
    r = run_cli(
        "storage", "repair", "--json", "--node", api(c, "hospital-a"),
        "--as", cast.clinician.key_file,
    )  # fmt: skip
    assert r.code == 1 and "ACCESS_DENIED" in r.err


def test_shard_service_serves_member_nodes_only(quad: Consortium, cast: Cast) -> None:
    c = quad
    path = "/storage/v1/status"
    for who in (cast.clinician.key, admin_key(c, "hospital-b")):
        headers = signing.sign_request(
            who, "GET", path, time.time_ns() // 1_000_000, signing.body_hash(b"")
        )
        resp = httpx.get(api(c, "hospital-a") + path, headers=headers)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "ACCESS_DENIED"
    assert httpx.get(api(c, "hospital-a") + path).status_code == 401


# ---- failed uploads ----------------------------------------------------------------------------


def test_cut_or_truncated_upload_leaves_no_shard_anywhere(quad: Consortium, cast: Cast) -> None:
    c = quad
    before = shard_files(c)
    state = wait_converged(c, NAMES)
    chunks = [os.urandom(CHUNK_SIZE + 16) for _ in range(6)]
    frames = [framing.frame(framing.CHUNK, ct) for ct in chunks]
    path = "/api/v1/storage/objects"
    headers = signing.sign_request(
        cast.clinician.key, "POST", path, time.time_ns() // 1_000_000, signing.UNSIGNED
    )
    for body in (frames, [*frames[:3], frames[3][:1000]]):
        resp = httpx.post(api(c, "hospital-a") + path, content=iter(body), headers=headers)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "UPLOAD_TRUNCATED"
        wait_for(lambda: shard_files(c) == before or None, 10, "every shard of it to be removed")
    assert wait_converged(c, NAMES)[0] == state[0], "a failed upload committed something"


# ---- an imaging study ------------------------------------------------------------------------------


def test_dicom_folder_is_one_record(quad: Consortium, cast: Cast) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    c = quad
    study = c.work / "study"
    study.mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for i in range(5):
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.save_as(study / f"IM{i:04d}.dcm")
    (study / "series2").mkdir()
    shutil.copy(study / "IM0000.dcm", study / "series2" / "copy.dcm")
    doc = cli_json(
        "record", "put", study, "--patient", cast.patient.id,
        "--node", api(c, "hospital-a"), "--as", cast.clinician.key_file,
    )  # fmt: skip
    assert doc["type"] == "imaging-study" and doc["study"]["files"] == 6
    assert doc["study"]["modalities"] == ["CT"]
    out = c.work / "study-out"
    got = cli_json(
        "record", "get", doc["record_id"], "--out", out, "--purpose", "patient-access",
        "--node", api(c, "hospital-d"), "--as", cast.patient.key_file,
    )  # fmt: skip
    assert got["files"] == 6
    for src in study.rglob("*.dcm"):
        assert (out / src.relative_to(study)).read_bytes() == src.read_bytes()


# ---- the S3 backend, on a real SeaweedFS ---------------------------------------------------------


@pytest.fixture(scope="module")
def s3quad(tmp_path_factory: pytest.TempPathFactory, seaweed: SeaweedS3) -> Iterator[Consortium]:
    """Four institutions keeping their shards in SeaweedFS (one bucket, a prefix each)."""
    c = Consortium(tmp_path_factory.mktemp("erasure-s3"))
    try:
        c.init(4)
        for name in NAMES:
            cfg = load_config(home(c, name))
            cfg.s3 = S3Config(
                endpoint_url=seaweed.endpoint_url,
                bucket="medledger-shards",
                access_key=seaweed.access_key,
                secret_key=seaweed.secret_key,
                prefix=f"{name}/shards/",
            )
            cfg.storage_audits = False  # no epoch audits or read repairs: on demand only
            save_config(home(c, name), cfg)
        c.up()
        wait_for(lambda: full_mesh(c, NAMES), 20, "every validator to connect to the other three")
        yield c
    finally:
        c.stop()


def test_s3_backend_reads_survive_two_losses_and_audit_repairs(
    s3quad: Consortium, seaweed: SeaweedS3
) -> None:
    c = s3quad
    cast = Cast(c)
    s3 = seaweed.client()
    data = os.urandom(4 * CHUNK_SIZE + 999)
    p = put(c, cast, data)
    assert (p.k, p.m) == (2, 2)
    man = decode_manifest(
        s3.get_object(Bucket="medledger-shards", Key=f"hospital-a/shards/{p.manifest_cid}")[
            "Body"
        ].read()
    )

    def keys(column: int) -> list[str]:
        return [f"{p.placement[column]}/shards/{r.cid}" for r in man.column(column) if r]

    # nothing of the record is on the nodes' disks
    for name in NAMES:
        assert not any(p.is_file() for p in shards_dir(c, name).rglob("*"))
    # two institutions lose their shards of it (both data columns): still readable
    for column in (0, 1):
        for k in keys(column):
            s3.delete_object(Bucket="medledger-shards", Key=k)
    assert read_record(c, "hospital-b", cast.patient, p.record_id, "s3-two-lost") == data
    report = storage(c, "hospital-d", "audit", "--all")
    found = {
        (f["column"], f["reason"]) for f in report["failures"] if f["record_id"] == p.record_id
    }
    assert found == {(0, "missing"), (1, "missing")}
    fixed = storage(c, "hospital-d", "repair")
    mine = sorted(
        (r["column"], r["status"]) for r in fixed["repairs"] if r["record_id"] == p.record_id
    )
    assert mine == [(0, "repaired"), (1, "repaired")]
    # bit rot in a parity object: the audit finds it, repair rebuilds it
    rotten_key = keys(3)[1]
    rotten = bytearray(s3.get_object(Bucket="medledger-shards", Key=rotten_key)["Body"].read())
    rotten[5] ^= 0x80
    s3.put_object(Bucket="medledger-shards", Key=rotten_key, Body=bytes(rotten))
    report = storage(c, "hospital-d", "audit", "--all")
    found = {
        (f["column"], f["reason"]) for f in report["failures"] if f["record_id"] == p.record_id
    }
    assert found == {(3, "corrupt")}
    fixed = storage(c, "hospital-d", "repair", "--record", p.record_id)
    assert [(r["column"], r["status"], r["shards"]) for r in fixed["repairs"]] == [
        (3, "repaired", 1)
    ]
    for column in (0, 1, 3):
        for k in keys(column):
            body = s3.get_object(Bucket="medledger-shards", Key=k)["Body"].read()
            assert cid_for(body) == k.rsplit("/", 1)[1]
    assert storage(c, "hospital-d", "audit", "--all")["failures"] == []
    assert read_record(c, "hospital-c", cast.patient, p.record_id, "s3-repaired") == data

    # a truncated upload leaves no object in any institution's S3 prefix
    def objects() -> set[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket="medledger-shards")
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    before = objects()
    frames = [framing.frame(framing.CHUNK, os.urandom(CHUNK_SIZE + 16)) for _ in range(4)]
    path = "/api/v1/storage/objects"
    headers = signing.sign_request(
        cast.clinician.key, "POST", path, time.time_ns() // 1_000_000, signing.UNSIGNED
    )
    resp = httpx.post(api(c, "hospital-a") + path, content=iter(frames[:3]), headers=headers)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "UPLOAD_TRUNCATED"
    wait_for(lambda: objects() == before or None, 10, "every object of it to be removed")
    st = storage(c, "hospital-a", "status")
    assert all(s["healthy"] and s["backend"].startswith("s3:") for s in st["services"])


def test_bad_erasure_parameters_are_refused_and_store_nothing(quad: Consortium, cast: Cast) -> None:
    c = quad
    before = shard_files(c)
    frames = [framing.frame(framing.CHUNK, os.urandom(CHUNK_SIZE + 16))]
    for query, code in (
        ("k=3&m=2", "NOT_ENOUGH_SERVICES"),  # five institutions needed, four exist
        ("k=0&m=2", "BAD_ERASURE_PARAMS"),
        ("k=2&m=5", "BAD_ERASURE_PARAMS"),
    ):
        path = f"/api/v1/storage/objects?{query}"
        headers = signing.sign_request(
            cast.clinician.key, "POST", path, time.time_ns() // 1_000_000, signing.UNSIGNED
        )
        resp = httpx.post(api(c, "hospital-a") + path, content=iter(frames), headers=headers)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == code, query
    assert shard_files(c) == before
