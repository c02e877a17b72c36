"""STOW-RS part checks (medledger.dicom.stow) and WADO-RS frames and rendering
(medledger.dicom.render), on pydicom's bundled test files."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medledger.dicom import render, stow
from medledger.errors import InvalidInput, MedLedgerError

MAX = 10_000_000


def sample(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path).read_bytes()


def encode(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_good_instance_is_accepted() -> None:
    got = stow.check_part(
        sample("CT_small.dcm"), "application/dicom", max_bytes=MAX, study_uid=None
    )
    assert isinstance(got, stow.Accepted)
    assert got.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2" and got.patient_id == "1CT1"
    same_study = stow.check_part(sample("CT_small.dcm"), "", max_bytes=MAX, study_uid=got.study_uid)
    assert isinstance(same_study, stow.Accepted)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hostile_parts_fail_with_dicom_failure_reasons() -> None:
    ct = sample("CT_small.dcm")

    def check(data: bytes, ctype: str = "application/dicom", **kw: object) -> tuple[int, str]:
        args: dict[str, object] = {"max_bytes": MAX, "study_uid": None, **kw}
        got = stow.check_part(data, ctype, **args)  # type: ignore[arg-type]
        assert isinstance(got, stow.Failed)
        return got.status, got.reason

    assert check(b"not dicom at all") == (0xC000, "undecodable")
    assert check(ct[: len(ct) // 3]) == (0xC000, "undecodable")
    assert check(ct, "image/png") == (0xC000, "not_application_dicom")
    assert check(ct, max_bytes=1000) == (0xA700, "too_large")
    assert check(ct, study_uid="1.2.3") == (0xA900, "other_study")
    bad_uid = pydicom.dcmread(io.BytesIO(ct))
    bad_uid.StudyInstanceUID = "1.2.x/../.."
    assert check(encode(bad_uid)) == (0xA900, "bad_study_uid")
    no_pid = pydicom.dcmread(io.BytesIO(ct))
    del no_pid.PatientID
    assert check(encode(no_pid)) == (0xA900, "bad_patient_id")
    sop = str(pydicom.dcmread(io.BytesIO(ct)).SOPInstanceUID).encode()
    mismatch = ct.replace(sop, sop[:-1] + b"9", 1)  # the file meta's copy, first
    assert check(mismatch) == (0xA900, "meta_sop_mismatch")
    assert pydicom.dcmread(io.BytesIO(ct)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    odd_ts = ct.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.9.9.9\0", 1)
    assert check(odd_ts) == (0xC000, "unknown_transfer_syntax")


def test_native_frames_are_the_stored_bytes() -> None:
    data = sample("CT_small.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    (frame,) = render.frames(data, [1])
    assert frame.media_type == "application/octet-stream" and frame.data == ds.PixelData
    with pytest.raises(InvalidInput) as exc:
        render.frames(data, [2])
    assert exc.value.code == "BAD_FRAME"


def test_encapsulated_frames_keep_their_bitstream() -> None:
    data = sample("SC_rgb_rle_2frame.dcm")
    got = render.frames(data, [2, 1])
    assert [f.number for f in got] == [2, 1]
    assert {f.media_type for f in got} == {"image/dicom-rle"}
    assert got[0].data != got[1].data


def test_frame_lists() -> None:
    assert render.parse_frame_list("1,3,2") == [1, 3, 2]
    for bad in ("0", "", "1,,2", "a", "-1", "1" * 12):
        with pytest.raises(InvalidInput):
            render.parse_frame_list(bad)


@pytest.mark.parametrize(
    ("name", "mode"),
    [("CT_small.dcm", "L"), ("MR_small.dcm", "L"), ("SC_rgb_rle_2frame.dcm", "RGB")],
)
def test_rendered_png_and_jpeg(name: str, mode: str) -> None:
    data = sample(name)
    ds = pydicom.dcmread(io.BytesIO(data))
    png = Image.open(io.BytesIO(render.render(data, 1, "image/png")))
    assert png.format == "PNG" and png.size == (ds.Columns, ds.Rows) and png.mode == mode
    assert png.getextrema() != ((0, 0),)  # not a blank image
    jpeg = Image.open(io.BytesIO(render.render(data, 1, "image/jpeg")))
    assert jpeg.format == "JPEG" and jpeg.size == (ds.Columns, ds.Rows)


def test_unrenderable_and_pixel_less() -> None:
    with pytest.raises(MedLedgerError) as exc:
        render.render(sample("rtplan.dcm"), 1, "image/png")
    assert exc.value.code == "NO_PIXEL_DATA" and exc.value.http_status == 404
