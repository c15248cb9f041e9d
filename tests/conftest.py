"""Shared fixtures: the real local broker (one per session) and fresh topics per test.

Tests that restart or stop a broker must start their own ``LocalBroker``: restarting
the session broker would wipe every other test's topics (memory storage).
"""

from __future__ import annotations

import importlib
import itertools
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

# Before anything imports transformers/tokenizers: never reach the hub, no fork warnings.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from erc_stream.devtools.broker import LocalBroker, create_topics  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "broker: needs the real local Kafka-compatible broker process")


BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_script() -> Iterator[Callable[[str], ModuleType]]:
    """``load(name) -> module``: imports ``benchmarks/<name>.py`` the way the script runs, with
    benchmarks/ on ``sys.path`` (the scripts import their helpers as ``_common``) for the module's tests."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A running local broker on a free loopback port; its log is kept under tmp."""
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    local = LocalBroker(log_path=log_path)
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def topic_factory(broker: LocalBroker, request: pytest.FixtureRequest) -> Callable[..., str]:
    """``make(partitions=1) -> name``: creates a fresh, uniquely named topic.

    Names start with the (sanitised) test name, so the broker log shows who made them.
    """
    prefix = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-.")[:80] or "test"
    counter = itertools.count()

    def make(partitions: int = 1) -> str:
        name = f"{prefix}-{next(counter)}-{uuid.uuid4().hex[:8]}"
        create_topics(broker.bootstrap, {name: partitions})
        return name

    return make
