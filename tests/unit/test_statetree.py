"""ledger.statetree: incremental bucketed Merkle tree, state proofs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlhelpers import PROPS

from medledger.codec import decode_canonical, encode
from medledger.errors import IntegrityError
from medledger.ledger.statetree import (
    BUCKETS,
    DEPTH,
    StateProof,
    StateTree,
    bucket_of,
    verify_state_proof,
)

keys = st.binary(min_size=1, max_size=6)
values = st.binary(max_size=8)
ops = st.lists(st.tuples(keys, st.one_of(st.none(), values)), max_size=60)


def fresh(items: dict[bytes, bytes]) -> StateTree:
    t = StateTree()
    t.load(items.items())
    return t


def test_empty_tree_root_is_stable() -> None:
    a, b = StateTree(), StateTree()
    assert a.root() == b.root()
    a.set(b"k", b"v")
    assert a.root() != b.root()
    a.set(b"k", None)
    assert a.root() == b.root()
    assert len(a) == 0


def test_buckets() -> None:
    assert BUCKETS == 2**DEPTH
    for i in range(200):
        assert 0 <= bucket_of(b"%d" % i) < BUCKETS


def test_delete_missing_is_noop() -> None:
    t = fresh({b"a": b"1"})
    r = t.root()
    t.set(b"zz", None)
    assert t.root() == r


def test_value_matters() -> None:
    assert fresh({b"a": b"1"}).root() != fresh({b"a": b"2"}).root()
    assert fresh({b"a": b"1"}).root() != fresh({b"b": b"1"}).root()
    assert fresh({b"a": b""}).root() != StateTree().root()


@PROPS
@given(ops, st.randoms(use_true_random=False))
def test_incremental_equals_full_rebuild(seq: list[tuple[bytes, bytes | None]], rnd) -> None:  # type: ignore[no-untyped-def]
    tree = StateTree()
    model: dict[bytes, bytes] = {}
    for n, (k, v) in enumerate(seq):
        tree.set(k, v)
        if v is None:
            model.pop(k, None)
        else:
            model[k] = v
        if n % 7 == 0:
            tree.root()  # interleave root computations with updates
    assert len(tree) == len(model)
    root = tree.root()
    assert root == fresh(model).root()
    items = list(model.items())
    rnd.shuffle(items)
    shuffled = StateTree()
    shuffled.load(items)
    assert shuffled.root() == root


@PROPS
@given(st.dictionaries(keys, values, max_size=30), st.lists(keys, max_size=5))
def test_proofs_present_and_absent(model: dict[bytes, bytes], probes: list[bytes]) -> None:
    tree = fresh(model)
    root = tree.root()
    for k, v in model.items():
        proof = tree.prove(k)
        verify_state_proof(proof, root, v)
        # the proof survives its canonical encoding
        verify_state_proof(decode_canonical(encode(proof), StateProof), root, v)
        with pytest.raises(IntegrityError) as exc:
            verify_state_proof(proof, root, v + b"x")
        assert exc.value.code == "BAD_PROOF"
        with pytest.raises(IntegrityError):
            verify_state_proof(proof, root, None)
    for k in probes:
        if k in model:
            continue
        proof = tree.prove(k)
        verify_state_proof(proof, root, None)
        with pytest.raises(IntegrityError):
            verify_state_proof(proof, root, b"")


def test_colliding_bucket_proofs() -> None:
    # Find several keys in one bucket so bucket entry lists have > 1 entry.
    target = bucket_of(b"k0")
    same = [b"k0"]
    i = 1
    while len(same) < 3:
        k = b"k%d" % i
        if bucket_of(k) == target:
            same.append(k)
        i += 1
    model = {k: k + b"=v" for k in same[:2]}
    tree = fresh(model)
    root = tree.root()
    proof = tree.prove(same[0])
    assert len(proof.entries) == 2
    verify_state_proof(proof, root, model[same[0]])
    absent = tree.prove(same[2])
    verify_state_proof(absent, root, None)
    # Dropping the key's entry from the bucket list does not prove absence.
    forged = StateProof(
        key=same[0],
        bucket=proof.bucket,
        entries=[e for e in proof.entries if e[0] != same[0]],
        path=proof.path,
    )
    with pytest.raises(IntegrityError):
        verify_state_proof(forged, root, None)
    # Entries must be sorted and unique.
    unsorted = StateProof(
        key=same[0], bucket=proof.bucket, entries=list(reversed(proof.entries)), path=proof.path
    )
    with pytest.raises(IntegrityError):
        verify_state_proof(unsorted, root, model[same[0]])
    dup = StateProof(
        key=same[0],
        bucket=proof.bucket,
        entries=[proof.entries[0], *proof.entries],
        path=proof.path,
    )
    with pytest.raises(IntegrityError):
        verify_state_proof(dup, root, model[same[0]])


@PROPS
@given(st.dictionaries(keys, values, min_size=1, max_size=20), st.data())
def test_tampered_proof_fails(model: dict[bytes, bytes], data: st.DataObject) -> None:
    tree = fresh(model)
    root = tree.root()
    k = data.draw(st.sampled_from(sorted(model)))
    v = model[k]
    proof = tree.prove(k)
    which = data.draw(st.sampled_from(["path", "entry", "bucket", "short", "root"]))
    if which == "path":
        level = data.draw(st.integers(0, DEPTH - 1))
        node = bytearray(proof.path[level])
        node[data.draw(st.integers(0, 31))] ^= 1 << data.draw(st.integers(0, 7))
        path = [*proof.path[:level], bytes(node), *proof.path[level + 1 :]]
        bad = StateProof(key=k, bucket=proof.bucket, entries=proof.entries, path=path)
        with pytest.raises(IntegrityError):
            verify_state_proof(bad, root, v)
    elif which == "entry":
        i = data.draw(st.integers(0, len(proof.entries) - 1))
        ek, vh = proof.entries[i]
        flipped = bytearray(vh)
        flipped[data.draw(st.integers(0, 31))] ^= 1
        entries = [*proof.entries[:i], (ek, bytes(flipped)), *proof.entries[i + 1 :]]
        bad = StateProof(key=k, bucket=proof.bucket, entries=entries, path=proof.path)
        with pytest.raises(IntegrityError):
            verify_state_proof(bad, root, v)
    elif which == "bucket":
        other = (proof.bucket + data.draw(st.integers(1, BUCKETS - 1))) % BUCKETS
        bad = StateProof(key=k, bucket=other, entries=proof.entries, path=proof.path)
        with pytest.raises(IntegrityError):
            verify_state_proof(bad, root, v)
    elif which == "short":
        bad = StateProof(key=k, bucket=proof.bucket, entries=proof.entries, path=proof.path[:-1])
        with pytest.raises(IntegrityError):
            verify_state_proof(bad, root, v)
    else:
        wrong_root = bytearray(root)
        wrong_root[0] ^= 1
        with pytest.raises(IntegrityError):
            verify_state_proof(proof, bytes(wrong_root), v)


@PROPS
@given(st.dictionaries(keys, values, min_size=1, max_size=20), keys, values)
def test_old_proof_fails_after_update(model: dict[bytes, bytes], k: bytes, v: bytes) -> None:
    tree = fresh(model)
    old_root = tree.root()
    some = sorted(model)[0]
    old_proof = tree.prove(some)
    tree.set(k, v)
    new_root = tree.root()
    if model.get(k) == v:
        assert new_root == old_root
        return
    assert new_root != old_root
    with pytest.raises(IntegrityError):
        verify_state_proof(old_proof, new_root, model[some])
    verify_state_proof(tree.prove(k), new_root, v)
