"""State access for the application: committed reads plus a write overlay."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from medledger.codec import decode, encode

T = TypeVar("T")

_MISSING = object()


class StateView:
    """Reads fall through to ``committed``; writes stay in the overlay.

    ``writes`` maps key -> new value (``None`` deletes). ``child()`` gives a
    nested overlay for one transaction, merged on success and dropped on error,
    so a failed transaction changes nothing.
    """

    def __init__(self, committed: Callable[[bytes], bytes | None]) -> None:
        self._committed = committed
        self.writes: dict[bytes, bytes | None] = {}

    def get_raw(self, key: bytes) -> bytes | None:
        v = self.writes.get(key, _MISSING)
        if v is _MISSING:
            return self._committed(key)
        return v  # type: ignore[return-value]

    def get(self, key: bytes, type_: type[T]) -> T | None:
        raw = self.get_raw(key)
        return None if raw is None else decode(raw, type_)

    def put(self, key: bytes, value: object) -> None:
        self.writes[key] = value if isinstance(value, bytes) else encode(value)

    def delete(self, key: bytes) -> None:
        self.writes[key] = None

    def child(self) -> StateView:
        return StateView(self.get_raw)

    def merge(self, child: StateView) -> None:
        self.writes.update(child.writes)
