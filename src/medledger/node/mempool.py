"""Mempool: admitted transactions in arrival order, per-sender nonce order, limits."""

from __future__ import annotations

from collections.abc import Callable

from medledger.errors import Conflict, Unavailable
from medledger.ledger.tx import SignedTx


class Mempool:
    def __init__(self, *, max_txs: int, max_bytes: int) -> None:
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self._txs: dict[bytes, SignedTx] = {}
        self._next_nonce: dict[str, int] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._txs)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._txs

    def get(self, tx_hash: bytes) -> SignedTx | None:
        return self._txs.get(tx_hash)

    def pending_nonce(self, sender: str) -> int | None:
        return self._next_nonce.get(sender)

    def check_room(self, stx: SignedTx) -> None:
        if stx.hash in self._txs:
            raise Conflict("transaction is already in the mempool", code="TX_DUPLICATE")
        if len(self._txs) >= self.max_txs or self._bytes + len(stx.raw) > self.max_bytes:
            raise Unavailable("mempool is full, retry later", code="MEMPOOL_FULL")

    def add(self, stx: SignedTx) -> None:
        self.check_room(stx)
        self._txs[stx.hash] = stx
        self._bytes += len(stx.raw)
        self._next_nonce[stx.tx.sender] = stx.tx.nonce + 1

    def reap(self, max_txs: int, max_bytes: int) -> list[SignedTx]:
        out: list[SignedTx] = []
        total = 0
        for stx in self._txs.values():
            if len(out) >= max_txs or total + len(stx.raw) > max_bytes:
                break
            out.append(stx)
            total += len(stx.raw)
        return out

    def remove_committed(
        self,
        committed: list[SignedTx],
        recheck: Callable[[SignedTx, int], bool],
        committed_nonce: Callable[[str], int],
    ) -> list[SignedTx]:
        """Drop committed transactions, re-check the rest; return those evicted."""
        for stx in committed:
            if self._txs.pop(stx.hash, None) is not None:
                self._bytes -= len(stx.raw)
        self._next_nonce.clear()
        evicted: list[SignedTx] = []
        if not self._txs:
            return evicted
        kept: dict[bytes, SignedTx] = {}
        for h, stx in self._txs.items():
            sender = stx.tx.sender
            expected = self._next_nonce.get(sender)
            if expected is None:
                expected = committed_nonce(sender)
            if stx.tx.nonce == expected and recheck(stx, expected):
                kept[h] = stx
                self._next_nonce[sender] = expected + 1
            else:
                evicted.append(stx)
                self._bytes -= len(stx.raw)
        self._txs = kept
        return evicted
