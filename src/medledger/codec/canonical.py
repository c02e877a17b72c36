from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from medledger.errors import DecodeError

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder(order="deterministic")
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


class Record(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """Base of every canonically encoded value: frozen, positional, typed."""


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def _decoder(type_: type[T]) -> msgspec.msgpack.Decoder[T]:
    dec = _decoders.get(type_)
    if dec is None:
        dec = msgspec.msgpack.Decoder(type_)
        _decoders[type_] = dec
    return dec


def decode(data: bytes, type_: type[T]) -> T:
    """Decode and type-check ``data``; raise :class:`DecodeError` on any problem."""
    try:
        return _decoder(type_).decode(data)
    except UnicodeDecodeError:  # msgspec raises it for a str that is not UTF-8
        raise DecodeError(f"cannot decode {getattr(type_, '__name__', 'value')}: invalid UTF-8")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"cannot decode {getattr(type_, '__name__', 'value')}: {_short(exc)}")


def decode_canonical(data: bytes, type_: type[T]) -> T:
    """Like :func:`decode` but also reject non-canonical encodings."""
    value = decode(data, type_)
    if _encoder.encode(value) != data:
        raise DecodeError("encoding is not canonical", code="NON_CANONICAL")
    return value


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."
