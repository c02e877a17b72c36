"""node.mempool: admission limits, reaping, re-check after a block."""

from __future__ import annotations

import pytest
from mlhelpers import CHAIN_ID, key, signed

from medledger.errors import Conflict, Unavailable
from medledger.ledger.tx import SignedTx, make_tx

A, B, C = key("a"), key("b"), key("c")


def tx(k, nonce: int, size: int = 0) -> SignedTx:  # type: ignore[no-untyped-def]
    return signed(make_tx(k, chain_id=CHAIN_ID, nonce=nonce, kind="k", body=b"x" * size))


def pool(max_txs: int = 100, max_bytes: int = 1 << 20):  # type: ignore[no-untyped-def]
    from medledger.node.mempool import Mempool

    return Mempool(max_txs=max_txs, max_bytes=max_bytes)


def test_add_and_bookkeeping() -> None:
    mp = pool()
    t0, t1 = tx(A, 0), tx(A, 1)
    mp.add(t0)
    mp.add(t1)
    assert len(mp) == 2
    assert mp.size_bytes == len(t0.raw) + len(t1.raw)
    assert t0.hash in mp and tx(B, 0).hash not in mp
    assert mp.pending_nonce(A.id) == 2
    assert mp.pending_nonce(B.id) is None


def test_duplicate() -> None:
    mp = pool()
    t = tx(A, 0)
    mp.add(t)
    for fn in (mp.check_room, mp.add):
        with pytest.raises(Conflict) as exc:
            fn(signed(t.raw))
        assert exc.value.code == "TX_DUPLICATE"
    assert len(mp) == 1 and mp.size_bytes == len(t.raw)


def test_full_by_count() -> None:
    mp = pool(max_txs=3)
    for i in range(3):
        mp.add(tx(A, i))
    with pytest.raises(Unavailable) as exc:
        mp.add(tx(B, 0))
    assert exc.value.code == "MEMPOOL_FULL"
    assert len(mp) == 3 and mp.pending_nonce(B.id) is None


def test_full_by_bytes() -> None:
    t0, t1 = tx(A, 0, 100), tx(A, 1, 100)
    mp = pool(max_bytes=len(t0.raw) + len(t1.raw) - 1)
    mp.add(t0)
    with pytest.raises(Unavailable) as exc:
        mp.add(t1)
    assert exc.value.code == "MEMPOOL_FULL"
    small = tx(B, 0, 0)
    mp.add(small)  # a smaller one still fits
    assert mp.size_bytes == len(t0.raw) + len(small.raw)
    exact = pool(max_bytes=len(t0.raw))
    exact.add(t0)  # exactly at the limit is fine
    with pytest.raises(Unavailable):
        exact.add(tx(C, 0, 0))


def test_reap_order_and_limits() -> None:
    mp = pool()
    order = [tx(A, 0), tx(B, 0), tx(A, 1), tx(C, 0, 500), tx(B, 1)]
    for t in order:
        mp.add(t)
    assert mp.reap(100, 1 << 20) == order
    assert mp.reap(2, 1 << 20) == order[:2]
    assert mp.reap(0, 1 << 20) == []
    three = sum(len(t.raw) for t in order[:3])
    assert mp.reap(100, three) == order[:3]
    # the 500-byte tx does not fit; reaping stops there (it never skips, keeping nonce order)
    assert mp.reap(100, three + len(order[4].raw)) == order[:3]
    assert len(mp) == 5  # reap does not remove


def test_remove_committed_keeps_the_rest() -> None:
    mp = pool()
    txs = [tx(A, 0), tx(A, 1), tx(B, 0), tx(A, 2)]
    for t in txs:
        mp.add(t)
    committed = {A.id: 1, B.id: 0}  # A's nonce 0 was committed
    evicted = mp.remove_committed([txs[0]], lambda s, n: True, lambda who: committed[who])
    assert evicted == []
    assert mp.reap(100, 1 << 20) == txs[1:]
    assert mp.pending_nonce(A.id) == 3 and mp.pending_nonce(B.id) == 1
    assert mp.size_bytes == sum(len(t.raw) for t in txs[1:])


def test_remove_committed_evicts_stale_nonces() -> None:
    mp = pool()
    a0, a1, a2, b0, b1 = tx(A, 0), tx(A, 1), tx(A, 2), tx(B, 0), tx(B, 1)
    for t in (a0, a1, a2, b0, b1):
        mp.add(t)
    # Another node's block consumed A's nonces 0 and 1 with other transactions;
    # B's nonce 0 is committed from our pool.
    nonces = {A.id: 2, B.id: 1}
    evicted = mp.remove_committed([b0], lambda s, n: True, lambda who: nonces[who])
    assert evicted == [a0, a1]
    assert mp.reap(100, 1 << 20) == [a2, b1]
    assert len(mp) == 2 and mp.size_bytes == len(a2.raw) + len(b1.raw)
    assert mp.pending_nonce(A.id) == 3


def test_remove_committed_recheck_failure_evicts_followers() -> None:
    mp = pool()
    a0, a1, a2, b0 = tx(A, 0), tx(A, 1), tx(A, 2), tx(B, 0)
    for t in (a0, a1, a2, b0):
        mp.add(t)
    seen: list[tuple[bytes, int]] = []

    def recheck(s: SignedTx, expected: int) -> bool:
        seen.append((s.hash, expected))
        return s is not a1  # a1 became invalid (e.g. sender suspended)

    evicted = mp.remove_committed([a0], recheck, lambda who: {A.id: 1, B.id: 0}[who])
    # a2 no longer fits after a1 leaves: it is evicted without a re-check
    assert evicted == [a1, a2]
    assert mp.reap(100, 1 << 20) == [b0]
    assert (a1.hash, 1) in seen and (b0.hash, 0) in seen
    assert all(h != a2.hash for h, _ in seen)
    assert mp.pending_nonce(A.id) is None and mp.pending_nonce(B.id) == 1
    assert mp.size_bytes == len(b0.raw)


def test_remove_committed_unknown_and_empty() -> None:
    mp = pool()
    stranger = tx(C, 0)
    assert mp.remove_committed([stranger], lambda s, n: True, lambda who: 0) == []
    assert len(mp) == 0 and mp.size_bytes == 0
    mp.add(tx(A, 0))
    mp.remove_committed([tx(A, 0)], lambda s, n: True, lambda who: 1)
    assert len(mp) == 0 and mp.size_bytes == 0 and mp.pending_nonce(A.id) is None


def test_room_after_removal() -> None:
    mp = pool(max_txs=2)
    a0, a1 = tx(A, 0), tx(A, 1)
    mp.add(a0)
    mp.add(a1)
    with pytest.raises(Unavailable):
        mp.add(tx(B, 0))
    mp.remove_committed([a0, a1], lambda s, n: True, lambda who: 2)
    mp.add(tx(B, 0))
    assert len(mp) == 1
