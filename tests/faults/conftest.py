"""Fault-injection suite (``make test-faults`` = ``pytest -q -s tests/faults``).

Every test here drives real processes: the local broker, ``erc-stream worker`` subprocesses,
stunnel-free plain TCP. Each scenario prints one line (see ``helpers.report``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.helpers import FAULT_MODEL_VERSION, publish_fault_model

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
