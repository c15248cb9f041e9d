"""Fault-injection suite (``make test-faults`` = ``pytest -q -s tests/faults``).

Every test here drives real processes: the local broker, ``erc-stream worker`` subprocesses,
stunnel-free plain TCP. Each scenario prints one line (see ``helpers.report``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.helpers import CONTEXT_TURNS, FAULT_MODEL_VERSION, MAX_LENGTH, publish_fault_model
from tests.fixtures_model import publish_test_turn_model

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def fault_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with one version (untrained, real encoder) made CURRENT."""
    store = tmp_path_factory.mktemp("fault-store")
    publish_fault_model(store, FAULT_MODEL_VERSION)
    return store


@pytest.fixture(scope="session")
def turn_fault_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store whose CURRENT is a turn-once model (untrained, real encoder, random context model)."""
    store = tmp_path_factory.mktemp("turn-fault-store")
    publish_test_turn_model(
        store, version="faults-turn-v1", context_turns=CONTEXT_TURNS, max_length=MAX_LENGTH, seed=0, layers=2
    )
    return store
