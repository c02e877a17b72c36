"""ledger.merkle: RFC 6962-shaped roots and inclusion proofs."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlhelpers import PROPS

from medledger.errors import IntegrityError
from medledger.ledger.merkle import (
    EMPTY_ROOT,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    root_from_proof,
    verify_inclusion,
)


def leaves(n: int) -> list[bytes]:
    return [b"leaf-%d" % i for i in range(n)]


def reference_root(items: list[bytes]) -> bytes:
    """RFC 6962 MTH, written independently."""
    if not items:
        return hashlib.sha256(b"").digest()
    if len(items) == 1:
        return hashlib.sha256(b"\x00" + items[0]).digest()
    k = 1 << ((len(items) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + reference_root(items[:k]) + reference_root(items[k:])).digest()


def test_empty_and_single() -> None:
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert merkle_root([b"a"]) == leaf_hash(b"a")
    assert merkle_root([b"a", b"b"]) == node_hash(leaf_hash(b"a"), leaf_hash(b"b"))
    # Domain separation: a leaf cannot pass for an inner node.
    inner = leaf_hash(b"a") + leaf_hash(b"b")
    assert merkle_root([inner]) != merkle_root([b"a", b"b"])


@pytest.mark.parametrize("n", range(0, 71))
def test_root_matches_reference(n: int) -> None:
    assert merkle_root(leaves(n)) == reference_root(leaves(n))


@pytest.mark.parametrize("n", range(1, 71))
def test_all_proofs_verify(n: int) -> None:
    items = leaves(n)
    hashed = [leaf_hash(x) for x in items]
    root = merkle_root(items)
    expected_len_max = (n - 1).bit_length()
    for i in range(n):
        path = inclusion_proof(hashed, i)
        assert len(path) <= expected_len_max
        assert root_from_proof(hashed[i], i, n, path) == root
        verify_inclusion(items[i], i, n, path, root)


@pytest.mark.parametrize("n", [1, 2, 5, 70])
def test_index_out_of_range(n: int) -> None:
    items = leaves(n)
    hashed = [leaf_hash(x) for x in items]
    path = inclusion_proof(hashed, 0)
    for bad in (-1, n, n + 1, 2**40):
        with pytest.raises(IntegrityError) as exc:
            root_from_proof(hashed[0], bad, n, path)
        assert exc.value.code == "BAD_PROOF"
        with pytest.raises(IndexError):
            inclusion_proof(hashed, bad)
    with pytest.raises(IntegrityError):
        root_from_proof(hashed[0], 0, 0, [])


def test_proof_length_checked() -> None:
    items = leaves(8)
    hashed = [leaf_hash(x) for x in items]
    root = merkle_root(items)
    path = inclusion_proof(hashed, 3)
    for bad_path in (path[:-1], [*path, path[0]], []):
        with pytest.raises(IntegrityError) as exc:
            verify_inclusion(items[3], 3, 8, bad_path, root)
        assert exc.value.code == "BAD_PROOF"
    with pytest.raises(IntegrityError):
        root_from_proof(hashed[0], 0, 1, [hashed[1]])


sizes_and_index = st.integers(1, 70).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1)))


@PROPS
@given(sizes_and_index, st.data())
def test_wrong_index_fails(ni: tuple[int, int], data: st.DataObject) -> None:
    n, i = ni
    items = leaves(n)  # distinct leaves: a duplicate could legitimately sit at another index
    hashed = [leaf_hash(x) for x in items]
    root = merkle_root(items)
    path = inclusion_proof(hashed, i)
    j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i))
    with pytest.raises(IntegrityError):
        verify_inclusion(items[i], j, n, path, root)
    # (The size alone is not bound by the root: RFC 6962 proofs for sizes 33 and 34
    # can coincide, so callers take the size from the signed header.)


@PROPS
@given(sizes_and_index, st.binary(max_size=12))
def test_wrong_leaf_fails(ni: tuple[int, int], other: bytes) -> None:
    n, i = ni
    items = leaves(n)
    if other == items[i]:
        return
    hashed = [leaf_hash(x) for x in items]
    path = inclusion_proof(hashed, i)
    with pytest.raises(IntegrityError) as exc:
        verify_inclusion(other, i, n, path, merkle_root(items))
    assert exc.value.code == "BAD_PROOF"


@PROPS
@given(
    st.integers(2, 70).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))), st.data()
)
def test_flipped_path_byte_fails(ni: tuple[int, int], data: st.DataObject) -> None:
    n, i = ni
    items = leaves(n)
    hashed = [leaf_hash(x) for x in items]
    root = merkle_root(items)
    path = inclusion_proof(hashed, i)
    k = data.draw(st.integers(0, len(path) - 1))
    pos = data.draw(st.integers(0, 31))
    bit = data.draw(st.integers(0, 7))
    node = bytearray(path[k])
    node[pos] ^= 1 << bit
    bad = [*path[:k], bytes(node), *path[k + 1 :]]
    with pytest.raises(IntegrityError):
        verify_inclusion(items[i], i, n, bad, root)
    # Swapping two distinct siblings also fails.
    if len(path) >= 2:
        swapped = [path[1], path[0], *path[2:]]
        with pytest.raises(IntegrityError):
            verify_inclusion(items[i], i, n, swapped, root)


@PROPS
@given(st.lists(st.binary(max_size=16), min_size=1, max_size=40))
def test_arbitrary_leaves_prove(items: list[bytes]) -> None:
    hashed = [leaf_hash(x) for x in items]
    root = merkle_root(items)
    assert root == reference_root(items)
    for i, x in enumerate(items):
        verify_inclusion(x, i, len(items), inclusion_proof(hashed, i), root)
