"""app.state: committed reads under nested write overlays."""

from __future__ import annotations

from medledger.app.model import Institution
from medledger.app.state import StateView
from medledger.codec import encode

INST = Institution(name="alpha", admin_id="mladmin")


def test_overlays() -> None:
    committed = {b"a": b"1", b"b": b"2"}
    root = StateView(committed.get)
    assert root.get_raw(b"a") == b"1" and root.get_raw(b"zz") is None
    root.put(b"a", b"10")
    child = root.child()
    assert child.get_raw(b"a") == b"10"  # sees the parent's pending write
    child.put(b"b", b"20")
    child.delete(b"a")
    child.put(b"c", INST)
    assert child.get_raw(b"a") is None and child.get_raw(b"b") == b"20"
    assert child.get(b"c", Institution) == INST
    assert child.get_raw(b"c") == encode(INST)
    # nothing leaks to the parent or the committed state before merge
    assert root.get_raw(b"a") == b"10" and root.get_raw(b"b") == b"2" and root.get_raw(b"c") is None
    assert committed == {b"a": b"1", b"b": b"2"}
    root.merge(child)
    assert root.writes == {b"a": None, b"b": b"20", b"c": encode(INST)}
    assert root.get(b"a", Institution) is None
    assert committed == {b"a": b"1", b"b": b"2"}


def test_dropped_child_changes_nothing() -> None:
    root = StateView({b"a": b"1"}.get)
    child = root.child()
    child.put(b"a", b"2")
    grandchild = child.child()
    grandchild.delete(b"a")
    assert grandchild.get_raw(b"a") is None and child.get_raw(b"a") == b"2"
    assert root.get_raw(b"a") == b"1" and root.writes == {}


def test_committed_object_cache_is_used() -> None:
    calls: list[bytes] = []

    def committed_obj(key: bytes, type_: type) -> object:  # type: ignore[type-arg]
        calls.append(key)
        return INST if key == b"i" else None

    view = StateView(lambda k: encode(INST) if k == b"i" else None, committed_obj)
    child = view.child()
    assert child.get(b"i", Institution) == INST
    assert child.get(b"x", Institution) is None
    assert calls == [b"i", b"x"]
    child.put(b"i", Institution(name="beta", admin_id="x"))
    assert child.get(b"i", Institution) == Institution(name="beta", admin_id="x")
    assert calls == [b"i", b"x"]
