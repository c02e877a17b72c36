"""Single-validator block production as a pure state machine.

Events in, actions out; no clock and no I/O (the driver passes ``now_ms``).
Rules:

* while transactions wait and no block is in flight, propose a block as soon as
  ``min_interval_ms`` has passed since the last commit (batching whatever waits);
* never more than one block in flight;
* when idle, produce nothing, unless ``empty_block_interval_ms`` is set, in
  which case an empty block follows that long after the last one;
* block time is the proposer's clock, strictly increasing: ``max(now, last + 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TxsAvailable:
    now_ms: int


@dataclass(frozen=True, slots=True)
class Tick:
    now_ms: int


@dataclass(frozen=True, slots=True)
class BlockCommitted:
    height: int
    time_ms: int
    now_ms: int
    txs_remaining: bool


Event = TxsAvailable | Tick | BlockCommitted

# ---- actions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProposeBlock:
    height: int
    time_ms: int


@dataclass(frozen=True, slots=True)
class ScheduleTick:
    at_ms: int


Action = ProposeBlock | ScheduleTick


class SoloCore:
    def __init__(
        self,
        *,
        height: int,
        last_block_time_ms: int,
        min_interval_ms: int = 0,
        empty_block_interval_ms: int | None = None,
        last_commit_at_ms: int = 0,
    ) -> None:
        if min_interval_ms < 0 or (
            empty_block_interval_ms is not None and empty_block_interval_ms <= 0
        ):
            raise ValueError("intervals must be positive")
        self.height = height
        self.last_block_time_ms = last_block_time_ms
        self.min_interval_ms = min_interval_ms
        self.empty_block_interval_ms = empty_block_interval_ms
        self.last_commit_at_ms = last_commit_at_ms
        self.in_flight = False
        self.txs_waiting = False

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, TxsAvailable):
            self.txs_waiting = True
            return self._maybe_propose(event.now_ms)
        if isinstance(event, Tick):
            return self._maybe_propose(event.now_ms)
        if isinstance(event, BlockCommitted):
            if not self.in_flight or event.height != self.height + 1:
                raise ValueError("commit for a block that is not in flight")
            self.in_flight = False
            self.height = event.height
            self.last_block_time_ms = event.time_ms
            self.last_commit_at_ms = event.now_ms
            self.txs_waiting = event.txs_remaining
            return self._maybe_propose(event.now_ms)
        raise TypeError(f"unknown event {event!r}")

    def _maybe_propose(self, now_ms: int) -> list[Action]:
        if self.in_flight:
            return []
        if self.txs_waiting:
            due = self.last_commit_at_ms + self.min_interval_ms
        elif self.empty_block_interval_ms is not None:
            due = self.last_commit_at_ms + self.empty_block_interval_ms
        else:
            return []
        if now_ms < due:
            return [ScheduleTick(at_ms=due)]
        self.in_flight = True
        self.txs_waiting = False
        time_ms = max(now_ms, self.last_block_time_ms + 1)
        return [ProposeBlock(height=self.height + 1, time_ms=time_ms)]
