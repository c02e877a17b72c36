"""The DICOM JSON model (PS3.18 F.2) of query results and instance metadata.

Both go through pydicom's own encoder (``Dataset.to_json_dict``): a QIDO row of the
study index (keyword -> text) is turned into a dataset first, an instance's metadata
is its dataset with the pixel data replaced by a ``BulkDataURI`` (the frames URL).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

INT_VRS = frozenset({"US", "UL", "SS", "SL", "UV", "SV"})
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
RETRIEVE_URL = "RetrieveURL"
# inline binary values up to this size in metadata; larger ones are left out
INLINE_BINARY_MAX = 64 * 1024


def is_keyword(name: str) -> bool:
    return tag_for_keyword(name) is not None


def row_json(row: Mapping[str, str], retrieve_url: str = "") -> dict[str, Any]:
    """One query result row (DICOM keywords -> text; other keys ignored) as DICOM JSON."""
    ds = Dataset()
    for keyword, text in row.items():
        if tag_for_keyword(keyword) is None:
            continue  # "record_id" and other bookkeeping of the index
        vr = dictionary_VR(keyword)
        values: list[Any] = [v for v in str(text).split("\\")] if text != "" else []
        if vr in INT_VRS:
            try:
                values = [int(v) for v in values]
            except ValueError:
                values = []
        value: Any = None if not values else values[0] if len(values) == 1 else values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            setattr(ds, keyword, value)
    if retrieve_url:
        ds.RetrieveURL = retrieve_url
    return _to_json(ds)


def metadata_json(ds: Dataset, bulk_uri: str) -> dict[str, Any]:
    """An instance's elements as DICOM JSON, without the file meta; pixel data as a
    ``BulkDataURI`` to ``bulk_uri``, other binary values over 64 KiB left out."""
    out = Dataset()
    pixel_vr = ""
    for elem in ds:
        if elem.keyword in PIXEL_KEYWORDS:
            pixel_vr = pixel_vr or elem.VR
            continue
        out.add(elem)
    doc = _to_json(out, binary_max=INLINE_BINARY_MAX)
    if pixel_vr and bulk_uri:
        doc["7FE00010"] = {
            "vr": pixel_vr if pixel_vr in ("OB", "OW") else "OW",
            "BulkDataURI": bulk_uri,
        }
    return doc


def _to_json(ds: Dataset, binary_max: int = INLINE_BINARY_MAX) -> dict[str, Any]:
    def drop(elem: Any) -> str:
        return ""  # an empty URI: the element is dropped below

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doc: dict[str, Any] = ds.to_json_dict(
            bulk_data_threshold=binary_max, bulk_data_element_handler=drop
        )
    return dict(sorted(_prune(doc).items()))


def _prune(doc: dict[str, Any]) -> dict[str, Any]:
    """Drop elements whose bulk data was left out (an empty BulkDataURI)."""
    out: dict[str, Any] = {}
    for tag, attr in doc.items():
        if attr.get("BulkDataURI") == "":
            continue
        if attr.get("vr") == "SQ" and "Value" in attr:
            attr = {**attr, "Value": [_prune(item) for item in attr["Value"]]}
        out[tag] = attr
    return out
