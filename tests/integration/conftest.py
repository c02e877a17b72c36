"""Fixtures for the integration suite: real node processes driven as a user drives them.

Every consortium a test starts is stopped in teardown (``medledger down``, then
SIGKILL of any node process still alive), even when the test fails. When a
test fails, the tail of each running node's ``node.log`` is attached to the
failure report (a "node logs" section).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import RUNNING, Consortium, running_consortium
from .seaweed import seaweed  # noqa: F401  (the session's SeaweedFS S3 server)


@pytest.fixture
def new_consortium(tmp_path: Path) -> Iterator[Consortium]:
    """A consortium not yet created: the test runs ``init`` and ``up``; always stopped."""
    with running_consortium(tmp_path, start=False) as c:
        yield c


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    """A running one-institution consortium shared by the tests of a module."""
    with running_consortium(tmp_path_factory.mktemp("consortium")) as c:
        yield c


# ---- reporting --------------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item; attach node logs to a failure."""
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)
    if rep.failed:
        for c in list(RUNNING.values()):
            rep.sections.append((f"node logs: {c.dir}", c.log_tails()))
