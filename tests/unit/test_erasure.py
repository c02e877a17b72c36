"""Erasure coding: any k of k+m shards rebuild every shard, for short last stripes too."""

from __future__ import annotations

import itertools
import os

import pytest

from medledger.errors import IntegrityError, InvalidInput
from medledger.storage.erasure import StripeCodec, check_params, default_params


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, (1, 0)), (2, (1, 1)), (3, (1, 2)), (4, (2, 2)), (6, (4, 2)), (20, (10, 2))],
)
def test_default_params(n: int, expected: tuple[int, int]) -> None:
    assert default_params(n) == expected


def test_params_bounds() -> None:
    with pytest.raises(InvalidInput) as e:
        check_params(11, 2)
    assert e.value.code == "BAD_ERASURE_PARAMS"
    with pytest.raises(InvalidInput) as e:
        check_params(2, 5)
    assert e.value.code == "BAD_ERASURE_PARAMS"
    with pytest.raises(InvalidInput) as e:
        check_params(4, 2, services=5)
    assert e.value.code == "NOT_ENOUGH_SERVICES"
    check_params(10, 4, services=14)


@pytest.mark.parametrize(
    ("k", "m", "ndata"), [(2, 2, 2), (2, 2, 1), (4, 2, 3), (3, 1, 3), (1, 2, 1)]
)
def test_any_k_shards_rebuild_all(k: int, m: int, ndata: int) -> None:
    codec = StripeCodec(k, m)
    data = [os.urandom(1000) for _ in range(ndata - 1)] + [os.urandom(333)]
    parity = codec.parity(data)
    assert len(parity) == m and all(len(p) == 1000 or ndata == 1 for p in parity)
    shards = {c: d for c, d in enumerate(data)} | {k + i: p for i, p in enumerate(parity)}
    sizes = [len(data[c]) if c < ndata else 0 for c in range(k)] + [len(parity[0])] * m
    stored = sorted(shards)
    for lost in range(0, m + 1):
        for gone in itertools.combinations(stored, lost):
            have = {c: b for c, b in shards.items() if c not in gone}
            out = codec.rebuild(have, sizes, stored)
            assert out == shards, (k, m, gone)


def test_too_few_shards() -> None:
    codec = StripeCodec(2, 2)
    data = [os.urandom(64), os.urandom(64)]
    par = codec.parity(data)
    with pytest.raises(IntegrityError) as e:
        codec.rebuild({2: par[0]}, [64, 64, 64, 64], [0, 1])
    assert e.value.code == "NOT_ENOUGH_SHARDS"


def test_replication_only() -> None:
    codec = StripeCodec(1, 0)
    assert codec.parity([b"abc"]) == []
    assert codec.rebuild({0: b"abc"}, [3], [0]) == {0: b"abc"}
