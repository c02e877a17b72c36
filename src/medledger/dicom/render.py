"""Frames and rendered images of a stored instance, for WADO-RS.

:func:`frames` returns the pixel data of chosen frames as stored: for a native
(uncompressed) transfer syntax the raw bytes of each frame, for an encapsulated one
each frame's compressed bitstream with its media type (``image/jpeg`` ...).
:func:`render` decodes a frame with pydicom, applies the modality LUT (rescale)
and the first VOI window of the instance (WindowCenter/WindowWidth; else the
frame's minimum to maximum), and encodes an 8-bit PNG or JPEG with Pillow.
Errors: ``NO_PIXEL_DATA`` (404), ``BAD_FRAME`` (400), ``NOT_RENDERABLE`` (406).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array

from medledger.errors import InvalidInput, MedLedgerError, NotFound

MAX_FRAMES_PER_REQUEST = 1000

# PS3.18 Table 8.7.3-2: transfer syntax -> media type of its frames' bitstream
ENCAPSULATED_MEDIA = {
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
}
NATIVE_MEDIA = "application/octet-stream"
NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


class NotAcceptable(MedLedgerError):
    http_status = 406
    default_code = "NOT_ACCEPTABLE"


@dataclass(frozen=True, slots=True)
class Frame:
    number: int  # 1-based
    media_type: str
    data: bytes


def parse_frame_list(text: str) -> list[int]:
    """``"1,3,2"`` -> [1, 3, 2]: 1-based frame numbers (``BAD_FRAME``)."""
    items = text.split(",")
    if not 1 <= len(items) <= MAX_FRAMES_PER_REQUEST or not all(
        i.isdigit() and len(i) <= 9 and int(i) >= 1 for i in items
    ):
        raise InvalidInput(
            "frames are a comma-separated list of frame numbers from 1", code="BAD_FRAME"
        )
    return [int(i) for i in items]


def read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def number_of_frames(ds: Dataset) -> int:
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        n = 1
    return max(n, 1)


def _check_frames(ds: Dataset, numbers: Sequence[int]) -> int:
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data", code="NO_PIXEL_DATA")
    n = number_of_frames(ds)
    bad = [i for i in numbers if i > n]
    if bad:
        raise InvalidInput(f"the instance has {n} frame(s)", code="BAD_FRAME")
    return n


def frames(data: bytes, numbers: Sequence[int]) -> list[Frame]:
    """The stored bitstream of frames ``numbers`` of a Part 10 instance."""
    ds = read(data)
    n = _check_frames(ds, numbers)
    ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    pixels: bytes = ds.PixelData
    if ts in ENCAPSULATED_MEDIA:
        all_frames = list(generate_frames(pixels, number_of_frames=n))
        return [Frame(i, ENCAPSULATED_MEDIA[ts], all_frames[i - 1]) for i in numbers]
    if ts not in NATIVE_LITTLE_ENDIAN and ts != "1.2.840.10008.1.2.1.99":
        raise NotAcceptable(
            "frames of this transfer syntax cannot be served", code="NOT_ACCEPTABLE"
        )
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits % 8 or bits == 0:
        raise NotAcceptable("bit-packed frames cannot be served", code="NOT_ACCEPTABLE")
    length = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
    if length * n > len(pixels):
        raise InvalidInput("the pixel data is shorter than its frames", code="BAD_PIXEL_DATA")
    return [Frame(i, NATIVE_MEDIA, pixels[(i - 1) * length : i * length]) for i in numbers]


def render(data: bytes, frame: int, media_type: str) -> bytes:
    """Frame ``frame`` (1-based) as an 8-bit ``image/png`` or ``image/jpeg``."""
    from PIL import Image

    ds = read(data)
    _check_frames(ds, [frame])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(io.BytesIO(data), index=frame - 1)
    except Exception as exc:  # no decoder for this transfer syntax, malformed pixel data
        raise NotAcceptable(
            f"the frame cannot be decoded for rendering ({type(exc).__name__})",
            code="NOT_RENDERABLE",
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour (RGB after pydicom's conversion)
        img = Image.fromarray(_to_uint8(arr.astype(np.float64), None), mode="RGB")
    elif arr.ndim == 2:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        out = _to_uint8(values, _window(ds))
        if photometric == "MONOCHROME1":
            out = 255 - out
        img = Image.fromarray(out, mode="L")
    else:
        raise NotAcceptable("this pixel layout cannot be rendered", code="NOT_RENDERABLE")
    buf = io.BytesIO()
    if media_type == "image/jpeg":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
            return float(value)
        return float(value[0]) if len(value) else None
    except (TypeError, ValueError):
        return None


def _window(ds: Dataset) -> tuple[float, float] | None:
    center = _first(ds.get("WindowCenter"))
    width = _first(ds.get("WindowWidth"))
    if center is None or width is None or width < 1:
        return None
    return center, width


def _to_uint8(
    values: np.ndarray[Any, Any], window: tuple[float, float] | None
) -> np.ndarray[Any, Any]:
    if window is not None:
        center, width = window  # PS3.3 C.11.2.1.2.1, linear
        lo = center - 0.5 - (width - 1) / 2
        span = width - 1 if width > 1 else 1.0
        scaled = (values - lo) / span * 255.0
    else:
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
