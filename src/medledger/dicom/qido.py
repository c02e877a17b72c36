"""QIDO-RS query parameters (PS3.18 8.3.4) -> a study-index query.

``{attributeID}={value}`` with an attribute ID that is a DICOM keyword
(``PatientID``) or a tag (``00100020``); UID lists are comma-separated in QIDO and
become the ``\\``-separated lists of C-FIND. ``limit``, ``offset``, ``includefield``
(``all``, keywords or tags, comma-separated or repeated: accepted, every attribute
the index holds is returned anyway) and ``fuzzymatching`` (``true``/``false``;
names always match case-insensitively). Any other parameter, an unknown keyword, a
sequence path (``00081111.00081150``) or a repeated attribute is ``BAD_QUERY``.
DICOM attributes the index does not hold are accepted and ignored (PS3.18 lets an
origin server skip matching on attributes it does not support).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from medledger.errors import InvalidInput

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
MAX_OFFSET = 10_000_000
MAX_PARAMS = 64
UID_KEYS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"})
_TAG_RE = re.compile(r"[0-9A-Fa-f]{8}")


@dataclass(frozen=True)
class Query:
    match: dict[str, str] = field(default_factory=dict)
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    includefield: tuple[str, ...] = ()
    fuzzy: bool = False
    nothing: bool = False  # a parameter contradicts the path: no entry can match


def bad(message: str) -> InvalidInput:
    return InvalidInput(message, code="BAD_QUERY")


def keyword_of(attribute_id: str) -> str:
    """The DICOM keyword of a QIDO attribute ID (a keyword or 8 hex digits)."""
    if _TAG_RE.fullmatch(attribute_id):
        keyword = keyword_for_tag(int(attribute_id, 16))
        if not keyword:
            raise bad(f"unknown DICOM tag {attribute_id}")
        return str(keyword)
    if "." in attribute_id:
        raise bad("sequence attribute paths are not supported")
    if not attribute_id.isascii() or not attribute_id.isalnum() or len(attribute_id) > 64:
        raise bad("an attribute is a DICOM keyword or an 8-digit hex tag")
    if tag_for_keyword(attribute_id) is None:
        raise bad(f"unknown DICOM keyword {attribute_id}")
    return attribute_id


def _int(name: str, value: str, high: int) -> int:
    if not value.isdigit() or len(value) > 12 or int(value) > high:
        raise bad(f"{name} is a whole number from 0 to {high}")
    return int(value)


def parse(items: Iterable[tuple[str, str]], fixed: Mapping[str, str] | None = None) -> Query:
    """A QIDO query from the request's ``(name, value)`` pairs; ``fixed`` are the UIDs
    of the path (``/studies/{study}/series``), which a parameter may not contradict."""
    pairs = list(items)
    if len(pairs) > MAX_PARAMS:
        raise bad(f"more than {MAX_PARAMS} query parameters")
    match: dict[str, str] = {}
    limit, offset, fuzzy = DEFAULT_LIMIT, 0, False
    include: list[str] = []
    seen: set[str] = set()
    for name, value in pairs:
        lname = name.lower()
        if lname in seen and lname != "includefield":
            raise bad(f"{name[:64]} is given twice")
        seen.add(lname)
        if lname == "limit":
            limit = _int("limit", value, MAX_LIMIT)
        elif lname == "offset":
            offset = _int("offset", value, MAX_OFFSET)
        elif lname == "fuzzymatching":
            if value not in ("true", "false"):
                raise bad("fuzzymatching is true or false")
            fuzzy = value == "true"
        elif lname == "includefield":
            for item in value.split(","):
                item = item.strip()
                include.append(item if item == "all" else keyword_of(item))
        else:
            keyword = keyword_of(name)
            if keyword in match:
                raise bad(f"{keyword} is given twice")
            if keyword in UID_KEYS:
                value = "\\".join(u.strip() for u in value.split(","))
            match[keyword] = value
    nothing = False
    for keyword, uid in (fixed or {}).items():
        given = match.get(keyword)
        nothing = nothing or (given is not None and uid not in given.split("\\"))
        match[keyword] = uid
    return Query(match, limit, offset, tuple(include), fuzzy, nothing)
