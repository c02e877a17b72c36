"""DICOM Application Entity titles (PS3.5 value representation AE).

An AE title is 1 to 16 characters of the default character repertoire without
control characters or backslash, that is printable ASCII (0x20-0x7e) except
``\\``. Leading and trailing spaces are not significant in DICOM; MedLedger refuses
them in the titles it stores, so that one title has one spelling. Titles are
case-sensitive.
"""

from __future__ import annotations

from medledger.errors import InvalidInput

MAX_AE_TITLE = 16


def ae_title_problem(value: object) -> str | None:
    """Why ``value`` is not an acceptable AE title, or None if it is one."""
    if not isinstance(value, str):
        return "an AE title is a string"
    if not 1 <= len(value) <= MAX_AE_TITLE:
        return f"an AE title has 1 to {MAX_AE_TITLE} characters"
    if any(not 0x20 <= ord(ch) <= 0x7E for ch in value):
        return "an AE title holds printable ASCII characters only"
    if "\\" in value:
        return "an AE title cannot hold a backslash"
    if value != value.strip(" "):
        return "an AE title cannot start or end with a space"
    return None


def is_ae_title(value: object) -> bool:
    return ae_title_problem(value) is None


def validate_ae_title(value: object) -> str:
    """Return ``value`` if it is a valid AE title; raise ``BAD_AE_TITLE`` otherwise."""
    problem = ae_title_problem(value)
    if problem is not None:
        raise InvalidInput(f"{problem}: {value!r}"[:200], code="BAD_AE_TITLE")
    assert isinstance(value, str)
    return value


def default_ae_title(institution: str) -> str:
    """A node's AE title derived from its institution name: ``hospital-a`` → ``HOSPITAL-A``.

    Upper case, cut to 16 characters; characters outside the AE repertoire (never in
    an institution name, which matches ``[a-z0-9][a-z0-9-]*``) become ``-``.
    """
    title = "".join(
        ch if 0x20 < ord(ch) <= 0x7E and ch != "\\" else "-" for ch in institution.upper()
    )
    title = title[:MAX_AE_TITLE].strip(" ")
    return title or "MEDLEDGER"
