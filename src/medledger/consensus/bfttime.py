"""BFT time: the time of block H is the power-weighted median of its commit's precommit times.

With less than 1/3 of the total power faulty and a commit holding more than
2/3, faulty validators hold less than half of the commit's power, so the
weighted median lies between the earliest and the latest time of a correct
validator in the commit: faulty clocks cannot push block time outside the
range of correct ones.

The median is the *lower* weighted median: precommits ordered by
``(time_ms, validator id)``, the first whose cumulative power reaches half of
the power counted. Only the first precommit of each member is counted.
"""

from __future__ import annotations

from medledger.consensus.types import SignedVote
from medledger.consensus.validators import ValidatorSet

__all__ = ["bft_time"]


def bft_time(precommits: list[SignedVote], vset: ValidatorSet) -> int:
    """The weighted median (by voting power) of the precommits' ``time_ms``."""
    weighted: list[tuple[int, str, int]] = []
    seen: set[str] = set()
    for sv in precommits:
        vid = sv.vote.validator
        power = vset.power(vid)
        if power == 0 or vid in seen:
            continue
        seen.add(vid)
        weighted.append((sv.vote.time_ms, vid, power))
    if not weighted:
        raise ValueError("no precommit from a member of the validator set")
    weighted.sort()
    total = sum(power for _, _, power in weighted)
    cumulative = 0
    for time_ms, _, power in weighted:
        cumulative += power
        if cumulative * 2 >= total:
            return time_ms
    raise AssertionError("unreachable: the cumulative power reaches the total")
