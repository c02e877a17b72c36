"""Parsing of path and query parameters shared by the API's route modules."""

from __future__ import annotations

from medledger.errors import InvalidInput


def parse_hash(value: str) -> bytes:
    """A 32-byte hash given as hex (``BAD_HASH`` otherwise)."""
    try:
        h = bytes.fromhex(value)
    except ValueError:
        raise InvalidInput("not a hex hash", code="BAD_HASH")
    if len(h) != 32:
        raise InvalidInput("a hash is 32 bytes", code="BAD_HASH")
    return h
