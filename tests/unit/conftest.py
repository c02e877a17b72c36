from __future__ import annotations

import pytest
from mlhelpers import Chain, World


@pytest.fixture
def chain() -> Chain:
    return Chain()


@pytest.fixture
def world() -> World:
    return World()
