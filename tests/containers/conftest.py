"""The ``engine`` fixture: a working container engine, or a skip that says why there is none."""

from __future__ import annotations

import pytest
from containers.container_engine import Engine, find_engine


@pytest.fixture(scope="session")
def engine() -> Engine:
    """A working container engine, or a skip that says why there is none."""
    found = find_engine()
    if isinstance(found, str):
        pytest.skip(found)
    return found
