"""Reed-Solomon erasure coding of encrypted chunks into shards (zfec).

A *stripe* is ``k`` consecutive encrypted chunks. Its ``k + m`` shards are the
chunks themselves (the systematic shards, columns ``0..k-1``) and ``m`` parity
shards (columns ``k..k+m-1``) computed over the chunks zero-padded to the
stripe's longest chunk. Any ``k`` shards of a stripe rebuild all of them, and
no key is needed: shards are ciphertext. The last stripe may hold fewer than
``k`` chunks; its missing data columns are implicit all-zero blocks that are
never stored.
"""

from __future__ import annotations

import zfec

from medledger.errors import IntegrityError, InvalidInput

MAX_K = 10
MAX_M = 4
DEFAULT_M = 2


def default_params(institutions: int) -> tuple[int, int]:
    """``(k, m)`` for ``institutions`` storage services: m=2 and k=n-2 where that
    leaves k >= 1 (4 give 2+2, 6 give 4+2); fewer services get replicas (k=1)."""
    if institutions < 1:
        raise InvalidInput("no storage service is available", code="NO_STORAGE_SERVICES")
    m = min(DEFAULT_M, institutions - 1)
    k = min(MAX_K, institutions - m)
    return k, m


def stripe_count(chunks: int, k: int) -> int:
    """Stripes of ``chunks`` chunks, k to a stripe (the last may be short)."""
    return -(-chunks // k)


def shard_count(chunks: int, k: int, m: int) -> int:
    """Stored shards of a record: every chunk, and m parity shards per stripe."""
    return chunks + stripe_count(chunks, k) * m


def check_params(k: int, m: int, services: int | None = None) -> None:
    if not 1 <= k <= MAX_K or not 0 <= m <= MAX_M:
        raise InvalidInput(
            f"erasure parameters must be 1 <= k <= {MAX_K} and 0 <= m <= {MAX_M}",
            code="BAD_ERASURE_PARAMS",
        )
    if services is not None and k + m > services:
        raise InvalidInput(
            f"k+m={k + m} shards need as many distinct institutions; {services} available",
            code="NOT_ENOUGH_SERVICES",
        )


class StripeCodec:
    """Encode parity and rebuild missing shards of stripes for one ``(k, m)``."""

    def __init__(self, k: int, m: int) -> None:
        check_params(k, m)
        self.k, self.m = k, m
        self._enc = zfec.Encoder(k, k + m) if m else None
        self._dec = zfec.Decoder(k, k + m) if m else None

    @staticmethod
    def _pad(blocks: list[bytes], width: int) -> list[bytes]:
        return [b if len(b) == width else b + bytes(width - len(b)) for b in blocks]

    def parity(self, data: list[bytes]) -> list[bytes]:
        """The ``m`` parity shards of a stripe of up to ``k`` data shards."""
        if self._enc is None:
            return []
        width = max(len(b) for b in data)
        blocks = self._pad(data, width) + [bytes(width)] * (self.k - len(data))
        return list(self._enc.encode(tuple(blocks), tuple(range(self.k, self.k + self.m))))

    def rebuild(
        self, have: dict[int, bytes], sizes: list[int], want: list[int]
    ) -> dict[int, bytes]:
        """Shards ``want`` of a stripe from any ``k`` of ``have`` (column -> bytes).

        ``sizes`` gives every column's stored length (0 for an implicit zero
        column of a short last stripe); data shards come back trimmed to it.
        """
        k = self.k
        ndata = sum(1 for c in range(k) if sizes[c])
        present = {c: b for c, b in have.items() if 0 <= c < k + self.m}
        for c in range(ndata, k):  # implicit zero blocks are shards we always hold
            present[c] = b""
        if all(c in present for c in want):
            return {c: present[c] for c in want}
        if len(present) < k or self._dec is None:
            raise IntegrityError(
                f"only {len(have)} shards of a stripe are available; {k} are needed",
                code="NOT_ENOUGH_SHARDS",
            )
        cols = sorted(present)[:k]
        width = max(sizes)
        decoded = self._dec.decode(tuple(self._pad([present[c] for c in cols], width)), cols)
        data = [bytes(decoded[c])[: sizes[c]] for c in range(k)]
        out: dict[int, bytes] = {}
        parity: list[bytes] | None = None
        for c in want:
            if c < k:
                out[c] = data[c]
            else:
                if parity is None:
                    parity = self.parity(data[:ndata])
                out[c] = parity[c - k]
        return out
