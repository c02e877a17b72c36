"""PS3.15 Basic Profile de-identification over pydicom's bundled test files.

Every check walks the whole data set (sequence items at any depth and the file meta
group) and most also look at the raw output bytes: an original identifier that
survived anywhere, in any encoding pydicom would write, fails the test.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import warnings
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from medledger.dicom import deidentify as deid
from medledger.dicom.deidentify import DUMMY_TEXT, Project, burned_in_risk, deidentify
from medledger.dicom.uids import is_uid
from medledger.errors import InvalidInput

KEY = bytes(range(32))
PROJECT = Project("lung-study", KEY)
PATIENT = "p" + "ab" * 20  # a ledger patient ID (any string)

FILES = [
    "CT_small.dcm",  # explicit little endian, private tags, a referenced-image sequence
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",  # encapsulated pixel data, secondary capture
    "image_dfl.dcm",  # deflated
    "examples_overlay.dcm",  # overlay plane
    "rtplan.dcm",
    "test-SR.dcm",  # structured report: content sequence
    "waveform_ecg.dcm",
    "liver_1frame.dcm",  # segmentation: many nested UIDs
    "examples_rgb_color.dcm",  # ultrasound
]


def raw(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    with open(path, "rb") as fh:
        return fh.read()


def read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def walk(ds: Dataset) -> Iterator[DataElement]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item)


def all_elements(ds: Dataset) -> list[DataElement]:
    return list(walk(ds)) + list(walk(ds.file_meta))


def values(elem: DataElement) -> list[str]:
    v = elem.value
    if v is None or elem.VR == "SQ":
        return []
    if isinstance(v, bytes):
        return []
    if isinstance(v, list | tuple) or type(v).__name__ == "MultiValue":
        return [str(x) for x in v]
    return [str(v)]


def original_instance_uids(ds: Dataset) -> set[str]:
    """UIDs that identify instances, series, studies, frames...: every UI value that
    is neither a class or transfer syntax nor registered by the standard."""
    found = set()
    for elem in all_elements(ds):
        if elem.VR != "UI" or (elem.keyword or "").endswith(("ClassUID", "SyntaxUID")):
            continue
        for v in values(elem):
            if v and UID(v).name == v and elem.keyword != "ImplementationClassUID":
                found.add(v)
    return found


def run(name: str, **kw: Any) -> tuple[Dataset, Dataset, deid.DeidResult]:
    data = raw(name)
    result = deidentify(data, kw.pop("project", PROJECT), kw.pop("patient", PATIENT), **kw)
    return read(data), read(result.data), result


# --------------------------------------------------------------------------- the profile


@pytest.mark.parametrize("name", FILES)
def test_every_listed_attribute_gets_its_basic_profile_action(name: str) -> None:
    orig, out, result = run(name)
    assert sum(result.actions.values()) > 0
    for elem in walk(out):
        entry = deid._TABLE.get(int(elem.tag))
        if entry is None or elem.keyword in ("PatientID", "PatientName"):
            continue
        action = deid._resolve(entry[0])
        assert action != "X", f"{elem.keyword} should have been removed"
        if action == "Z":
            assert elem.is_empty, f"{elem.keyword} should be empty"
        elif action == "D":
            assert elem.is_empty or values(elem) in ([DUMMY_TEXT],) or elem.VR == "UI", elem.keyword
        elif action == "U" or (action == "U*" and elem.VR == "UI"):
            assert all(v.startswith("2.25.") and is_uid(v) for v in values(elem)), elem.keyword
    # every X attribute of the original is gone, at any depth
    removed = {
        int(e.tag)
        for e in walk(orig)
        if int(e.tag) in deid._TABLE and deid._resolve(deid._TABLE[int(e.tag)][0]) == "X"
    }
    assert not removed & {int(e.tag) for e in walk(out)}


@pytest.mark.parametrize("name", FILES)
def test_no_original_uid_survives_anywhere(name: str) -> None:
    data = raw(name)
    orig = read(data)
    uids = original_instance_uids(orig)
    assert uids, "the test file has instance UIDs"
    result = deidentify(data, PROJECT, PATIENT)
    out = read(result.data)
    for elem in all_elements(out):
        for v in values(elem):
            assert v not in uids, f"{elem.keyword} kept an original UID"
    if orig.file_meta.TransferSyntaxUID != pydicom.uid.DeflatedExplicitVRLittleEndian:
        for uid in uids:
            assert uid.encode() not in result.data
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == result.sop_uid
    assert out.SOPInstanceUID == PROJECT.map_uid(orig.SOPInstanceUID)
    assert out.StudyInstanceUID == PROJECT.map_uid(orig.StudyInstanceUID) == result.study_uid
    assert is_uid(result.sop_uid) and result.sop_uid.startswith("2.25.")
    # classes survive: the file is still what it was
    assert out.SOPClassUID == orig.SOPClassUID
    assert out.file_meta.MediaStorageSOPClassUID == orig.SOPClassUID


@pytest.mark.parametrize("name", FILES)
def test_pixel_data_and_transfer_syntax_are_untouched(name: str) -> None:
    orig, out, _ = run(name)
    assert out.file_meta.TransferSyntaxUID == orig.file_meta.TransferSyntaxUID
    assert out.PixelData == orig.PixelData if "PixelData" in orig else "PixelData" not in out
    if "WaveformSequence" in orig:
        assert out.WaveformSequence[0].WaveformData == orig.WaveformSequence[0].WaveformData
    assert out.Rows == orig.Rows if "Rows" in orig else True


def test_patient_identity_is_replaced_by_a_stable_project_pseudonym() -> None:
    data = raw("CT_small.dcm")
    orig = read(data)
    a = deidentify(data, PROJECT, PATIENT)
    b = deidentify(data, Project("lung-study", KEY), PATIENT)
    out = read(a.data)
    pseudonym = PROJECT.pseudonym(PATIENT)
    assert re.fullmatch(r"ML[A-Z2-7]{20}", pseudonym)
    assert out.PatientID == pseudonym and str(out.PatientName) == pseudonym
    assert a.data == b.data  # deterministic, byte for byte
    assert str(orig.PatientID).encode() not in a.data
    for part in str(orig.PatientName).split("^"):
        assert part.encode() not in a.data
    assert out.PatientIdentityRemoved == "YES"
    # the pseudonym depends on the project name, the key and the ledger patient
    others = {
        Project("other-study", KEY).pseudonym(PATIENT),
        Project("lung-study", bytes(32)).pseudonym(PATIENT),
        PROJECT.pseudonym(PATIENT + "x"),
    }
    assert pseudonym not in others and len(others) == 3
    other = read(deidentify(data, Project("other-study", KEY), PATIENT).data)
    assert other.StudyInstanceUID != out.StudyInstanceUID
    assert other.PatientID != out.PatientID


def test_one_study_maps_to_one_study_across_instances_and_runs() -> None:
    first = read(raw("MR_small.dcm"))
    second = read(raw("MR_small.dcm"))
    second.SOPInstanceUID = first.SOPInstanceUID + ".2"
    second.file_meta.MediaStorageSOPInstanceUID = second.SOPInstanceUID
    second.InstanceNumber = 2
    outs = [read(deidentify(ds, PROJECT, PATIENT).data) for ds in (first, second)]
    assert outs[0].StudyInstanceUID == outs[1].StudyInstanceUID
    assert outs[0].SeriesInstanceUID == outs[1].SeriesInstanceUID
    assert outs[0].FrameOfReferenceUID == outs[1].FrameOfReferenceUID
    assert outs[0].SOPInstanceUID != outs[1].SOPInstanceUID
    assert outs[0].PatientID == outs[1].PatientID  # same ledger patient


# --------------------------------------------------------------------------- dates


def test_dates_removed_by_default() -> None:
    orig, out, _ = run("CT_small.dcm")
    assert orig.StudyDate and orig.ContentDate
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "PatientBirthDate"):
        assert kw not in out or out[kw].is_empty, kw
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    codes = [c.CodeValue for c in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100"]
    assert (
        str(orig.StudyDate).encode() not in deidentify(raw("CT_small.dcm"), PROJECT, PATIENT).data
    )


def test_full_dates_option_keeps_dates() -> None:
    orig, out, _ = run("CT_small.dcm", dates="keep")
    assert out.StudyDate == orig.StudyDate and out.StudyTime == orig.StudyTime
    assert out.ContentDate == orig.ContentDate
    assert out.get("PatientBirthDate", "") == ""  # not a longitudinal date: still removed
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113106"]


def test_modified_dates_option_shifts_every_date_of_a_patient_by_one_offset() -> None:
    offset = PROJECT.day_offset(PATIENT)
    assert -3650 <= offset <= -1
    assert offset == Project("lung-study", KEY).day_offset(PATIENT)

    def shifted(value: str) -> str:
        day = dt.datetime.strptime(value, "%Y%m%d").date() + dt.timedelta(days=offset)
        return day.strftime("%Y%m%d")

    for name in ("CT_small.dcm", "MR_small.dcm"):
        orig, out, _ = run(name, dates="shift")
        assert out.StudyDate == shifted(orig.StudyDate) != orig.StudyDate
        for kw in ("SeriesDate", "AcquisitionDate", "ContentDate"):
            if orig.get(kw):
                assert out[kw].value == shifted(orig[kw].value), kw
        assert out.StudyTime == orig.StudyTime  # days only
        assert out.get("PatientBirthDate", "") == ""
        assert out.LongitudinalTemporalInformationModified == "MODIFIED"
        codes = [c.CodeValue for c in out.DeidentificationMethodCodeSequence]
        assert codes == ["113100", "113107"]
    # another patient of the project gets another offset (almost surely)
    assert {PROJECT.day_offset(f"patient-{i}") for i in range(20)} != {offset}


# --------------------------------------------------------------------------- structure


def test_private_attributes_are_removed_unless_retained() -> None:
    orig, out, result = run("CT_small.dcm")
    assert any(e.tag.is_private for e in walk(orig))
    assert not any(e.tag.is_private for e in all_elements(out))
    assert result.actions["private"] > 0
    _, kept, _ = run("CT_small.dcm", retain_private=True)
    assert any(e.tag.is_private for e in walk(kept))
    assert "private attributes retained" in list(kept.DeidentificationMethod)


def test_overlays_are_removed() -> None:
    orig, out, _ = run("examples_overlay.dcm")
    assert 0x60003000 in orig
    assert 0x60003000 not in out and 0x60004000 not in out


def test_nested_sequences_are_de_identified_at_any_depth() -> None:
    ds = read(raw("CT_small.dcm"))
    sop = str(ds.SOPInstanceUID)
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = sop  # U
    inner.OperatorsName = "Nurse^Secret"  # X/Z/D: emptied
    inner.add_new(0x00291010, "LO", "private secret")
    middle = Dataset()
    middle.PatientComments = "lives at 1 Secret Street"  # X
    middle.ReferencedImageSequence = Sequence([inner])  # X/Z/U*: kept, items cleaned
    ds.AnatomicRegionSequence = Sequence([middle])  # unlisted: items cleaned
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    result = deidentify(buf.getvalue(), PROJECT, PATIENT)
    out = read(result.data)
    got_middle = out.AnatomicRegionSequence[0]
    assert "PatientComments" not in got_middle
    got_inner = got_middle.ReferencedImageSequence[0]
    assert got_inner.ReferencedSOPInstanceUID == out.SOPInstanceUID  # references still hold
    assert got_inner.OperatorsName == "" or got_inner["OperatorsName"].is_empty
    assert 0x00291010 not in got_inner
    for secret in (b"Secret", b"secret", sop.encode()):
        assert secret not in result.data


def test_instance_uids_the_table_does_not_list_are_mapped_too() -> None:
    """PS3.15 keeps unlisted attributes; an instance UID in one would leak the original,
    so every UI value that is not a class, a transfer syntax or a registered UID is
    mapped like a ``U`` attribute."""
    ds = read(raw("CT_small.dcm"))
    sop = str(ds.SOPInstanceUID)
    ds.SOPInstanceUIDOfConcatenationSource = sop  # (0020,0242): not in Table E.1-1
    item = Dataset()
    item.MultiFrameSourceSOPInstanceUID = sop  # (0008,1167): nor this one
    item.ReferencedSOPClassUID = ds.SOPClassUID  # a class: kept
    ds.AnatomicRegionSequence = Sequence([item])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    result = deidentify(buf.getvalue(), PROJECT, PATIENT)
    out = read(result.data)
    assert out.SOPInstanceUIDOfConcatenationSource == out.SOPInstanceUID
    got = out.AnatomicRegionSequence[0]
    assert got.MultiFrameSourceSOPInstanceUID == out.SOPInstanceUID
    assert got.ReferencedSOPClassUID == ds.SOPClassUID
    assert sop.encode() not in result.data


def test_sequences_nested_too_deep_are_refused() -> None:
    ds = read(raw("MR_small.dcm"))
    item = Dataset()
    item.CodeValue = "1"
    for _ in range(deid.MAX_DEPTH + 2):
        outer = Dataset()
        outer.ConceptNameCodeSequence = Sequence([item])
        item = outer
    ds.AnatomicRegionSequence = Sequence([item])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(InvalidInput) as e:
        deidentify(buf.getvalue(), PROJECT, PATIENT)
    assert e.value.code == "TOO_DEEP"


def test_method_attributes_and_file_meta() -> None:
    _, out, result = run("CT_small.dcm")
    assert result.data[:128] == bytes(128) and result.data[128:132] == b"DICM"
    assert out.PatientIdentityRemoved == "YES"
    assert "PS3.15 E.1 Basic Application Level Confidentiality Profile" in list(
        out.DeidentificationMethod
    )
    assert out.DeidentificationMethodCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert out.file_meta.ImplementationClassUID == pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    for kw in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle"):
        assert kw not in out.file_meta
    for kw in ("InstitutionName", "ReferringPhysicianName", "AccessionNumber"):
        assert kw not in out or out[kw].is_empty, kw
    for kw in ("StudyDescription", "SeriesDescription", "PatientAge", "OtherPatientIDs"):
        assert kw not in out, kw


# --------------------------------------------------------------------------- burned-in


def test_burned_in_annotation_is_flagged_by_modality_class_and_attribute() -> None:
    us = read(raw("examples_rgb_color.dcm"))
    assert us.Modality == "US" and "BurnedInAnnotation" not in us
    result = deidentify(raw("examples_rgb_color.dcm"), PROJECT, PATIENT)
    assert result.burned_in_risk
    assert read(result.data).BurnedInAnnotation == "YES"

    ct_result = deidentify(raw("CT_small.dcm"), PROJECT, PATIENT)
    assert not ct_result.burned_in_risk
    assert "BurnedInAnnotation" not in read(ct_result.data)

    assert burned_in_risk(read(raw("JPEG2000.dcm")))  # secondary capture class
    ct = read(raw("CT_small.dcm"))
    ct.BurnedInAnnotation = "YES"
    assert burned_in_risk(ct)
    us.BurnedInAnnotation = "NO"
    assert not burned_in_risk(us)


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "NOT_DICOM"),
        (b"hello, not a DICOM file\n" * 20, "NOT_DICOM"),
        (bytes(128) + b"DICM", "NOT_DICOM"),
        (bytes(128) + b"DICM" + b"\xff" * 64, "NOT_DICOM"),
    ],
)
def test_not_dicom_is_refused(data: bytes, code: str) -> None:
    with pytest.raises(InvalidInput) as e:
        deidentify(data, PROJECT, PATIENT)
    assert e.value.code == code


def test_no_meta_and_missing_uids_are_refused() -> None:
    for name, code in [
        ("no_meta.dcm", "NOT_DICOM"),
        ("meta_missing_tsyntax.dcm", "NOT_DICOM"),
        ("JPEGLSNearLossless_08.dcm", "MISSING_UID"),
        ("MR_truncated.dcm", "TRUNCATED"),
        ("rtplan_truncated.dcm", "TRUNCATED"),
    ]:
        with pytest.raises(InvalidInput) as e:
            deidentify(raw(name), PROJECT, PATIENT)
        assert e.value.code == code, name


def _element_ends(data: bytes) -> set[int]:
    ds = read(data)
    ends = set()
    for e in ds._dict.values():
        tell = getattr(e, "value_tell", None)
        if tell is not None:
            ends.add(tell + (e.length if e.length != 0xFFFFFFFF else len(e.value) + 8))
    return ends


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "MR_small_implicit.dcm"])
def test_every_truncation_is_refused(name: str) -> None:
    """A file cut anywhere but exactly between two elements (which is a valid, shorter
    file) is refused with a code; nothing comes out."""
    data = raw(name)
    boundaries = _element_ends(data)
    refused = 0
    for cut in range(0, len(data), 13):
        if cut in boundaries:
            continue
        with pytest.raises(InvalidInput) as e:
            deidentify(data[:cut], PROJECT, PATIENT)
        assert e.value.code in ("NOT_DICOM", "TRUNCATED", "MISSING_UID"), (cut, e.value.code)
        refused += 1
    assert refused > 100


def test_bad_options_are_refused() -> None:
    with pytest.raises(InvalidInput) as e:
        Project("p", b"short")
    assert e.value.code == "BAD_PROJECT_KEY"
    with pytest.raises(InvalidInput) as e:
        Project("", KEY)
    assert e.value.code == "BAD_PROJECT"
    with pytest.raises(InvalidInput) as e:
        deidentify(raw("CT_small.dcm"), PROJECT, PATIENT, dates="fuzzy")  # type: ignore[arg-type]
    assert e.value.code == "BAD_DATES_OPTION"
    with pytest.raises(InvalidInput) as e:
        deidentify(raw("CT_small.dcm"), PROJECT, "")
    assert e.value.code == "BAD_PATIENT"
