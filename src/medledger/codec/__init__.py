"""Canonical binary encoding of every hashed or signed object.

MessagePack through msgspec, with ``array_like`` frozen structs (fields by
position, no names on the wire) and deterministic map ordering. Decoding is
strict (types checked) and canonical: bytes that decode but do not re-encode to
exactly the same bytes are rejected, so one value has exactly one encoding and
one hash.
"""

from medledger.codec.canonical import Record, decode, decode_canonical, encode

__all__ = ["Record", "decode", "decode_canonical", "encode"]
