"""De-identified research copies of imaging studies, across a real 4-institution consortium.

Everything goes through the ``medledger`` CLI against real node processes: a
clinician stores a study and runs ``research deidentify``; the new record is a
de-identified ``imaging-study`` of the same patient that a researcher of another
institution reads once the patient consents to research, and what the researcher
gets is byte for byte what the PS3.15 de-identification of the original files gives
(no original name, ID or UID anywhere, the project's pseudonym instead). The
researcher never reads the original (``not_deidentified``); a study that may carry
burned-in annotation is refused (nothing stored) unless ``--allow-burned-in``.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medledger.dicom.deidentify import Project, deidentify

from .harness import Consortium, Identity, assert_cli_error, cli_json, run_cli
from .test_consortium import api, enroll_as
from .test_erasure_storage import running_quad

PROJECT = "lung-cohort"


@pytest.fixture(scope="module")
def quad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    with running_quad(tmp_path_factory.mktemp("deid")) as c:
        yield c


class Cast:
    def __init__(self, c: Consortium) -> None:
        self.doc_a = enroll_as(c, "hospital-a", "hospital-a", "doc-a", "clinician")
        self.patient = enroll_as(c, "hospital-a", "hospital-a", "patient", "patient")
        self.researcher = enroll_as(c, "hospital-b", "hospital-b", "researcher", "researcher")


@pytest.fixture(scope="module")
def cast(quad: Consortium) -> Cast:
    return Cast(quad)


def as_(c: Consortium, via: str, who: Identity) -> list[str | Path]:
    return ["--node", api(c, via), "--as", who.key_file]


def read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def bundled(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None
    return Path(path).read_bytes()


def mr_study(folder: Path) -> dict[str, bytes]:
    """Three MR instances of one study (MR_small and two copies with new SOP UIDs), with
    identifiers a real study carries (other IDs, a private tag, free text)."""
    folder.mkdir()
    files: dict[str, bytes] = {}
    base = read(bundled("MR_small.dcm"))
    for i in range(3):
        ds = read(bundled("MR_small.dcm"))
        if i:
            ds.SOPInstanceUID = f"{base.SOPInstanceUID}.{i}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = i + 1
        ds.OtherPatientIDs = "MRN-778899"
        ds.PatientAddress = "1 Secret Street"
        ds.add_new(0x00291010, "LO", "private secret")
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        name = f"Doe_Jane_{i}.dcm"  # file names carry identifiers too
        (folder / name).write_bytes(buf.getvalue())
        files[str(ds.SOPInstanceUID)] = buf.getvalue()
    return files


def put_study(c: Consortium, cast: Cast, folder: Path) -> str:
    doc = cli_json(
        "record", "put", folder, "--patient", cast.patient.id, *as_(c, "hospital-a", cast.doc_a)
    )
    assert doc["type"] == "imaging-study"
    return str(doc["record_id"])


def records_of(c: Consortium, cast: Cast) -> list[dict[str, Any]]:
    doc = cli_json("record", "ls", "--patient", cast.patient.id, *as_(c, "hospital-a", cast.doc_a))
    return list(doc["records"])


def deid_cli(c: Consortium, cast: Cast, rid: str, key: Path, *extra: str) -> Any:
    return run_cli(
        "research", "deidentify", rid, "--project", PROJECT, "--project-key", key,
        *extra, "--json", *as_(c, "hospital-a", cast.doc_a),
    )  # fmt: skip


def test_researcher_reads_only_the_de_identified_copy(quad: Consortium, cast: Cast) -> None:
    originals = mr_study(quad.work / "mr-study")
    rid = put_study(quad, cast, quad.work / "mr-study")
    key_file = quad.work / "project.key"

    r = deid_cli(quad, cast, rid, key_file)
    assert r.code == 0, r.err
    doc = r.json()
    key = key_file.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    project = Project(PROJECT, key)
    pseudonym = project.pseudonym(cast.patient.id)
    assert doc["project_key_created"] is True
    assert doc["pseudonym"] == pseudonym
    assert (doc["instances"], doc["dates"], doc["read_purpose"]) == (3, "remove", "research")
    assert doc["burned_in"] == {"instances": [], "allowed": False}
    assert doc["source_record_id"] == rid and doc["record_id"] != rid
    new_rid = doc["record_id"]

    # on chain: a de-identified imaging study of the same patient
    shown = cli_json("record", "show", new_rid, *as_(quad, "hospital-a", cast.doc_a))
    assert shown["deidentified"] is True and shown["type"] == "imaging-study"
    assert shown["patient"] == cast.patient.id

    # the same study de-identified again for the project: same pseudonym and UIDs
    again = deid_cli(quad, cast, rid, key_file)
    assert again.code == 0, again.err
    assert again.json()["project_key_created"] is False
    assert again.json()["pseudonym"] == pseudonym
    assert again.json()["study_uid"] == doc["study_uid"]

    # the researcher: never the original; the copy only with the patient's consent
    out = quad.work / "researcher-original"
    r = run_cli(
        "record", "get", rid, "--purpose", "research", "--out", out, "--json",
        *as_(quad, "hospital-b", cast.researcher),
    )  # fmt: skip
    assert_cli_error(r, "ACCESS_DENIED")
    assert "not_deidentified" in r.err
    out_copy = quad.work / "researcher-copy"
    r = run_cli(
        "record", "get", new_rid, "--purpose", "research", "--out", out_copy, "--json",
        *as_(quad, "hospital-b", cast.researcher),
    )  # fmt: skip
    assert_cli_error(r, "ACCESS_DENIED")
    cli_json(
        "consent", "grant", "--to", cast.researcher.id, "--purpose", "research",
        "--until", "2099-12-31", *as_(quad, "hospital-a", cast.patient),
    )  # fmt: skip
    got = cli_json(
        "record", "get", new_rid, "--purpose", "research", "--out", out_copy,
        *as_(quad, "hospital-b", cast.researcher),
    )  # fmt: skip
    assert got["files"] == 3
    files = sorted(p for p in out_copy.iterdir() if p.is_file())
    assert len(files) == 3

    # exactly the de-identification of the original files, byte for byte
    expected = {}
    for data in originals.values():
        result = deidentify(data, project, cast.patient.id)
        expected[f"{result.sop_uid}.dcm"] = result.data
    assert {p.name: p.read_bytes() for p in files} == expected
    for path in files:
        data = path.read_bytes()
        ds = read(data)
        assert ds.PatientID == pseudonym and str(ds.PatientName) == pseudonym
        assert ds.PatientIdentityRemoved == "YES"
        for secret in (b"CompressedSamples", b"4MR1", b"MRN-778899", b"Secret", b"secret"):
            assert secret not in data
        for uid in originals:
            assert uid.encode() not in data
        assert not any(e.tag.is_private for e in ds)
        source = read(
            originals[next(u for u in originals if project.map_uid(u) == ds.SOPInstanceUID)]
        )
        assert ds.PixelData == source.PixelData
    assert not any("Doe" in p.name for p in files)

    # the read of the original for de-identification is audited as research, by the clinician
    events = cli_json("audit", "--patient", cast.patient.id, *as_(quad, "hospital-a", cast.patient))
    reads = [
        e for e in events["events"]
        if e.get("record_id") == rid and e.get("actor") == cast.doc_a.id
        and "purpose=research" in e.get("detail", "") and e.get("outcome") == "allowed"
    ]  # fmt: skip
    assert len(reads) == 2, events


def test_burned_in_annotation_is_refused_unless_allowed(quad: Consortium, cast: Cast) -> None:
    folder = quad.work / "us-study"
    folder.mkdir()
    (folder / "us.dcm").write_bytes(bundled("examples_rgb_color.dcm"))  # ultrasound
    rid = put_study(quad, cast, folder)
    key_file = quad.work / "project-us.key"
    before = len(records_of(quad, cast))

    r = deid_cli(quad, cast, rid, key_file)
    assert_cli_error(r, "BURNED_IN_ANNOTATION")
    assert len(records_of(quad, cast)) == before  # nothing stored

    r = deid_cli(quad, cast, rid, key_file, "--allow-burned-in")
    assert r.code == 0, r.err
    doc = r.json()
    assert len(doc["burned_in"]["instances"]) == 1 and doc["burned_in"]["allowed"] is True
    assert len(records_of(quad, cast)) == before + 1


def test_hostile_requests_store_nothing(quad: Consortium, cast: Cast) -> None:
    note = quad.work / "note.txt"
    note.write_bytes(os.urandom(1000))
    rid = cli_json(
        "record", "put", note, "--patient", cast.patient.id, "--type", "note",
        *as_(quad, "hospital-a", cast.doc_a),
    )["record_id"]  # fmt: skip
    key_file = quad.work / "project-hostile.key"
    before = len(records_of(quad, cast))

    assert_cli_error(deid_cli(quad, cast, rid, key_file), "NOT_A_STUDY")
    assert_cli_error(deid_cli(quad, cast, rid, key_file, "--dates", "fuzzy"), "BAD_DATES_OPTION")

    exposed = quad.work / "exposed.key"
    exposed.write_bytes(os.urandom(32))
    exposed.chmod(0o644)
    assert_cli_error(deid_cli(quad, cast, rid, exposed), "PROJECT_KEY_EXPOSED")

    # a researcher cannot de-identify (read) an identified study
    studies = [r for r in records_of(quad, cast) if r["type"] == "imaging-study"]
    r = run_cli(
        "research", "deidentify", studies[0]["record_id"], "--project", PROJECT,
        "--project-key", key_file, "--json", *as_(quad, "hospital-b", cast.researcher),
    )  # fmt: skip
    assert r.code == 1 and r.out == ""
    assert "ACCESS_DENIED" in r.err or "NOT_FOUND" in r.err
    assert len(records_of(quad, cast)) == before
