"""State access for the application: committed reads plus write overlays."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from medledger.codec import decode, encode

T = TypeVar("T")

_MISSING: Any = object()


class StateView:
    """Reads fall through to the parent view (or the committed state); writes stay here.

    ``writes`` maps key -> new value (``None`` deletes). ``child()`` gives a nested
    overlay for one transaction, merged on success and dropped on error, so a failed
    transaction changes nothing. Decoded committed values may come from a cache
    (``committed_obj``); values are frozen structs, so sharing them is safe.
    """

    def __init__(
        self,
        committed: Callable[[bytes], bytes | None],
        committed_obj: Callable[[bytes, type[Any]], Any] | None = None,
        parent: StateView | None = None,
    ) -> None:
        self._committed = committed
        self._committed_obj = committed_obj
        self._parent = parent
        self.writes: dict[bytes, bytes | None] = {}

    def get_raw(self, key: bytes) -> bytes | None:
        v = self.writes.get(key, _MISSING)
        if v is not _MISSING:
            return v  # type: ignore[no-any-return]
        if self._parent is not None:
            return self._parent.get_raw(key)
        return self._committed(key)

    def get(self, key: bytes, type_: type[T]) -> T | None:
        v = self.writes.get(key, _MISSING)
        if v is not _MISSING:
            return None if v is None else decode(v, type_)
        if self._parent is not None:
            return self._parent.get(key, type_)
        if self._committed_obj is not None:
            return self._committed_obj(key, type_)  # type: ignore[no-any-return]
        raw = self._committed(key)
        return None if raw is None else decode(raw, type_)

    def put(self, key: bytes, value: object) -> None:
        self.writes[key] = value if isinstance(value, bytes) else encode(value)

    def delete(self, key: bytes) -> None:
        self.writes[key] = None

    def child(self) -> StateView:
        return StateView(self._committed, self._committed_obj, parent=self)

    def merge(self, child: StateView) -> None:
        self.writes.update(child.writes)
