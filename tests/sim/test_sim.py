"""Seeded network simulations of the Tendermint core (see simnet.py for the model).

Every seed is a complete, reproducible run: a failure names its scenario and
seed, and ``run_scenario(SCENARIOS[name], seed)`` replays it exactly. To rerun
one seed through pytest::

    SIM_SCENARIO=n4-byzantine SIM_SEED=73 .venv/bin/pytest tests/sim -k sweep

The default run sweeps 2,600 seeds over ten scenarios; ``-m slow`` sweeps ten
times as many (different seeds).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from medledger.consensus.tendermint import Action, SendVote, TendermintCore
from medledger.consensus.types import NIL, PREVOTE, Step

from .simnet import (
    ANY,
    BEHAVIOURS,
    SCENARIOS,
    Scenario,
    Sim,
    SimFailure,
    run_scenario,
)

# seeds per scenario in the default run (2,600 in all)
DEFAULT_SEEDS = {
    "n4-reorder": 300,
    "n4-lossy-partitions": 300,
    "n4-crashes": 300,
    "n4-byzantine": 400,
    "n4-fork-attack": 300,
    "n7-fork-attack": 100,
    "n7-byzantine": 200,
    "n7-unequal": 200,
    "n4-unequal-observer": 250,
    "n5-heavy": 250,
}
SLOW_FACTOR = 10
SLOW_SEED_BASE = 1_000_000  # the slow sweep uses seeds the default run does not


def _seeds(name: str, start: int, count: int) -> Iterator[int]:
    only_scenario = os.environ.get("SIM_SCENARIO")
    only_seed = os.environ.get("SIM_SEED")
    if only_scenario and only_scenario != name:
        return iter(())
    if only_seed is not None:
        return iter((int(only_seed),))
    return iter(range(start, start + count))


def _sweep(name: str, seeds: Iterator[int]) -> collections.Counter[str]:
    scenario = SCENARIOS[name]
    totals: collections.Counter[str] = collections.Counter()
    for seed in seeds:
        stats = run_scenario(scenario, seed)  # raises SimFailure naming the seed
        totals["runs"] += 1
        totals["decisions"] += stats.decisions
        totals["restarts"] += stats.restarts
        totals["equivocations"] += stats.equivocations
        totals["bounded_heights"] += stats.bounded_heights
        totals["late_rounds"] += stats.max_round > 0
        for b in stats.behaviours:
            totals[b] += 1
    return totals


def test_scenarios_cover_the_plan() -> None:
    assert sum(DEFAULT_SEEDS.values()) >= 2000
    assert set(DEFAULT_SEEDS) == set(SCENARIOS)
    sizes = {len(s.powers) for s in SCENARIOS.values()}
    assert {4, 7} <= sizes
    assert any(len(set(s.powers)) > 1 for s in SCENARIOS.values())  # unequal powers
    for s in SCENARIOS.values():  # f < n/3 by voting power is possible (Sim enforces it)
        lightest = sorted(s.powers)[: len(s.byzantine)]
        assert 3 * sum(lightest) < sum(s.powers)


@pytest.mark.parametrize("name", list(DEFAULT_SEEDS))
def test_sweep(name: str) -> None:
    totals = _sweep(name, _seeds(name, 0, DEFAULT_SEEDS[name]))
    scenario = SCENARIOS[name]
    if totals["runs"] < 50:
        return  # a single seed selected through SIM_SEED
    assert totals["decisions"] == totals["runs"] * scenario.heights
    # the faults really happened
    if scenario.crashes:
        assert totals["restarts"] > 0
    if scenario.byzantine:  # every faulty mix here includes equivocating behaviours
        assert totals["equivocations"] > 0
    if ANY in scenario.byzantine:
        assert all(totals[b] > 0 for b in BEHAVIOURS), totals
    assert totals["late_rounds"] > 0  # rounds did fail and the protocol moved on
    assert totals["bounded_heights"] > 0


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", list(DEFAULT_SEEDS))
def test_sweep_slow(name: str) -> None:
    count = DEFAULT_SEEDS[name] * SLOW_FACTOR
    totals = _sweep(name, _seeds(name, SLOW_SEED_BASE, count))
    assert totals["decisions"] == totals["runs"] * SCENARIOS[name].heights


# ---- the harness itself ------------------------------------------------------------


def _fingerprint(scenario: Scenario, seed: int) -> str:
    sim = Sim(scenario, seed)
    stats = sim.run()
    h = hashlib.sha256(repr(stats).encode())
    for nd in sim.nodes:
        h.update(repr(sorted(nd.decided.items())).encode())
        h.update(repr(sorted(nd.signed)).encode())
        h.update(repr(nd.rounds_seen).encode())
    return h.hexdigest()


@pytest.mark.parametrize("name", ["n4-byzantine", "n5-heavy", "n7-fork-attack"])
def test_a_seed_reproduces_exactly(name: str) -> None:
    assert _fingerprint(SCENARIOS[name], 11) == _fingerprint(SCENARIOS[name], 11)
    assert _fingerprint(SCENARIOS[name], 11) != _fingerprint(SCENARIOS[name], 12)


def test_a_seed_reproduces_in_another_process() -> None:
    """No dependence on str/bytes hash randomisation: a failing seed replays anywhere."""
    tests_dir = Path(__file__).resolve().parent.parent
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from sim.test_sim import _fingerprint; from sim.simnet import SCENARIOS;"
        "print(_fingerprint(SCENARIOS['n4-byzantine'], 5))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code, str(tests_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == _fingerprint(SCENARIOS["n4-byzantine"], 5)


def test_failure_names_scenario_and_seed() -> None:
    with pytest.raises(SimFailure, match=r"scenario=n4-reorder seed=3 .*run_scenario"):
        run_scenario(SCENARIOS["n4-reorder"], 3, _DoubleSigner)


# Broken cores the harness must catch: each is a one-line mistake in a rule.


class _NoLock(TendermintCore):
    """L22 without the lock: prevotes any valid proposal."""

    def _try_prevote(self, actions: list[Action]) -> bool:
        for sp in self._proposals.get(self._round, ()):
            v = sp.proposal.block_hash
            self._vote(PREVOTE, v if v in self._valid_hashes else NIL, actions)
            self._step = Step.PREVOTE
            return True
        return False


class _IgnoresValidity(TendermintCore):
    """Treats every proposal as valid."""

    def _on_proposal(self, sp, valid):  # type: ignore[no-untyped-def]
        return super()._on_proposal(sp, True)


class _DoubleSigner(TendermintCore):
    """OnTimeoutPropose without its step guard, and no last-line vote guard."""

    def _vote(self, type_: int, block_hash: bytes, actions: list[Action]) -> None:
        if self.is_validator:
            actions.append(SendVote(type_, self._height, self._round, block_hash))

    def _on_timeout(self, ev):  # type: ignore[no-untyped-def]
        if ev.step == Step.PROPOSE and (ev.height, ev.round) == (self._height, self._round):
            actions: list[Action] = []
            self._vote(PREVOTE, NIL, actions)
            self._step = Step.PREVOTE
            self._run_rules(actions)
            return actions
        return super()._on_timeout(ev)


_instances = itertools.count()


class _NonDeterministic(TendermintCore):
    """Depends on something outside its inputs (here: which instance it is)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._odd = next(_instances) % 2

    def _start_round(self, round_: int, actions: list[Action]) -> None:
        super()._start_round(round_, actions)
        if self._odd and round_ > 0:
            actions.append(actions[-1])


class _NoPrecommitTimeout(TendermintCore):
    """Never leaves a round on timeoutPrecommit."""

    def _on_timeout(self, ev):  # type: ignore[no-untyped-def]
        return [] if ev.step == Step.PRECOMMIT else super()._on_timeout(ev)


@pytest.mark.parametrize(
    ("core", "scenario", "expect", "max_seeds"),
    [
        (_NoLock, "n4-fork-attack", "agreement", 300),
        (_IgnoresValidity, "n4-byzantine", "validity|not given", 100),
        (_DoubleSigner, "n4-reorder", "double-signs", 10),
        (_NonDeterministic, "n4-crashes", "replay", 100),
        (_NoPrecommitTimeout, "n4-lossy-partitions", "liveness", 20),
    ],
)
def test_harness_catches_broken_cores(
    core: type[TendermintCore], scenario: str, expect: str, max_seeds: int
) -> None:
    for seed in range(max_seeds):
        try:
            run_scenario(SCENARIOS[scenario], seed, core)
        except SimFailure as exc:
            assert any(word in str(exc) for word in expect.split("|")), str(exc)
            return
    pytest.fail(f"{core.__name__} survived {max_seeds} seeds of {scenario}")
