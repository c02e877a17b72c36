"""consensus.solo: the single-validator block production state machine."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlhelpers import PROPS

from medledger.consensus.solo import (
    BlockCommitted,
    ProposeBlock,
    ScheduleTick,
    SoloCore,
    Tick,
    TxsAvailable,
)

T0 = 1_000_000


def core(**kw) -> SoloCore:  # type: ignore[no-untyped-def]
    args = dict(height=0, last_block_time_ms=T0 - 10_000, last_commit_at_ms=T0)
    args.update(kw)
    return SoloCore(**args)


def test_idle_produces_nothing() -> None:
    c = core()
    for t in range(T0, T0 + 100_000, 997):
        assert c.handle(Tick(t)) == []
    assert not c.in_flight and c.height == 0


def test_txs_trigger_a_block_immediately() -> None:
    c = core()
    assert c.handle(TxsAvailable(T0 + 5)) == [ProposeBlock(height=1, time_ms=T0 + 5)]
    assert c.in_flight


def test_one_block_in_flight() -> None:
    c = core()
    assert c.handle(TxsAvailable(T0)) == [ProposeBlock(1, T0)]
    for t in range(T0, T0 + 10_000, 100):
        assert c.handle(TxsAvailable(t)) == []
        assert c.handle(Tick(t)) == []
    # the commit of the block in flight, with txs left, proposes the next at once
    assert c.handle(
        BlockCommitted(height=1, time_ms=T0, now_ms=T0 + 10_000, txs_remaining=True)
    ) == [ProposeBlock(2, T0 + 10_000)]


def test_commit_without_more_txs_goes_idle() -> None:
    c = core()
    c.handle(TxsAvailable(T0))
    assert c.handle(BlockCommitted(1, T0, T0 + 1, txs_remaining=False)) == []
    assert not c.in_flight and c.height == 1
    assert c.handle(Tick(T0 + 100_000)) == []


def test_txs_arriving_while_in_flight_are_remembered_by_the_driver() -> None:
    c = core()
    c.handle(TxsAvailable(T0))
    c.handle(TxsAvailable(T0 + 1))  # arrives during the block
    # the driver reports whether the mempool still holds transactions
    assert c.handle(BlockCommitted(1, T0, T0 + 2, txs_remaining=True)) == [ProposeBlock(2, T0 + 2)]


def test_min_interval_schedules_a_tick() -> None:
    c = core(min_interval_ms=500)
    assert c.handle(TxsAvailable(T0 + 100)) == [ScheduleTick(at_ms=T0 + 500)]
    assert not c.in_flight
    assert c.handle(Tick(T0 + 499)) == [ScheduleTick(at_ms=T0 + 500)]
    assert c.handle(Tick(T0 + 500)) == [ProposeBlock(1, T0 + 500)]
    # after the commit at T0 + 600, the next block waits until T0 + 1100
    assert c.handle(BlockCommitted(1, T0 + 500, T0 + 600, txs_remaining=True)) == [
        ScheduleTick(at_ms=T0 + 1100)
    ]
    assert c.handle(Tick(T0 + 1099)) == [ScheduleTick(at_ms=T0 + 1100)]
    assert c.handle(Tick(T0 + 1100)) == [ProposeBlock(2, T0 + 1100)]


def test_empty_blocks_only_when_configured() -> None:
    c = core(empty_block_interval_ms=1000)
    assert c.handle(Tick(T0 + 10)) == [ScheduleTick(at_ms=T0 + 1000)]
    assert c.handle(Tick(T0 + 1000)) == [ProposeBlock(1, T0 + 1000)]
    assert c.handle(BlockCommitted(1, T0 + 1000, T0 + 1005, txs_remaining=False)) == [
        ScheduleTick(at_ms=T0 + 2005)
    ]
    # transactions use min_interval (0) and do not wait for the empty-block interval
    assert c.handle(TxsAvailable(T0 + 1010)) == [ProposeBlock(2, T0 + 1010)]


def test_bad_intervals() -> None:
    with pytest.raises(ValueError):
        core(min_interval_ms=-1)
    for bad in (0, -5):
        with pytest.raises(ValueError):
            core(empty_block_interval_ms=bad)


def test_block_time_strictly_increasing_when_clock_goes_back() -> None:
    c = core(last_block_time_ms=T0 + 50_000)
    assert c.handle(TxsAvailable(T0)) == [ProposeBlock(1, T0 + 50_001)]
    [p] = c.handle(BlockCommitted(1, T0 + 50_001, T0 - 1000, txs_remaining=True))
    assert p == ProposeBlock(2, T0 + 50_002)
    assert c.handle(BlockCommitted(2, p.time_ms, T0 - 3000, txs_remaining=False)) == []
    [p] = c.handle(TxsAvailable(T0 - 2000))
    assert p == ProposeBlock(3, T0 + 50_003)


def test_block_committed_for_wrong_height_raises() -> None:
    c = core(height=7)
    with pytest.raises(ValueError):  # nothing in flight
        c.handle(BlockCommitted(8, T0, T0, txs_remaining=False))
    c.handle(TxsAvailable(T0))
    for h in (7, 9, 0, 100):
        with pytest.raises(ValueError):
            c.handle(BlockCommitted(h, T0, T0, txs_remaining=False))
    assert c.in_flight and c.height == 7
    c.handle(BlockCommitted(8, T0, T0, txs_remaining=False))
    assert c.height == 8
    with pytest.raises(ValueError):  # twice
        c.handle(BlockCommitted(8, T0, T0, txs_remaining=False))


def test_unknown_event() -> None:
    with pytest.raises(TypeError):
        core().handle(object())  # type: ignore[arg-type]


events = st.lists(
    st.tuples(st.sampled_from(["txs", "tick", "commit"]), st.integers(-3000, 5000), st.booleans()),
    max_size=60,
)


@PROPS
@given(
    events,
    st.integers(0, 2000),
    st.one_of(st.none(), st.integers(1, 3000)),
    st.integers(T0 - 5000, T0 + 5000),
)
def test_invariants_under_random_events(
    evs: list[tuple[str, int, bool]], min_interval: int, empty: int | None, last_time: int
) -> None:
    c = core(
        min_interval_ms=min_interval, empty_block_interval_ms=empty, last_block_time_ms=last_time
    )
    now = T0
    in_flight: ProposeBlock | None = None
    last_block_time = last_time
    last_commit = T0
    height = 0
    txs_waiting = False
    for kind, dt, remaining in evs:
        now += dt  # the clock may go backwards
        if kind == "commit":
            if in_flight is None:
                with pytest.raises(ValueError):
                    c.handle(BlockCommitted(height + 1, now, now, remaining))
                continue
            actions = c.handle(BlockCommitted(in_flight.height, in_flight.time_ms, now, remaining))
            height, last_block_time, last_commit = in_flight.height, in_flight.time_ms, now
            txs_waiting = remaining
            in_flight = None
        elif kind == "txs":
            txs_waiting = True
            actions = c.handle(TxsAvailable(now))
        else:
            actions = c.handle(Tick(now))
        assert len(actions) <= 1
        for a in actions:
            if isinstance(a, ProposeBlock):
                assert in_flight is None, "two blocks in flight"
                assert a.height == height + 1
                assert a.time_ms > last_block_time
                assert a.time_ms == max(now, last_block_time + 1)
                if txs_waiting:
                    assert now >= last_commit + min_interval
                else:
                    assert empty is not None and now >= last_commit + empty
                in_flight = a
                txs_waiting = False
            else:
                assert isinstance(a, ScheduleTick)
                assert in_flight is None
                assert a.at_ms > now
                assert a.at_ms == last_commit + (min_interval if txs_waiting else empty)  # type: ignore[operator]
        if not actions and in_flight is None:
            # nothing to do only when idle without empty blocks
            assert not txs_waiting and empty is None
