"""Shared pieces of the fault suite: the test model, worker settings, the one-line report.

Built on tests/integration/worker_harness.py (topics, producers, the output reader, the
worker subprocess); only what is particular to fault injection lives here.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.fixtures_model import publish_test_model
from tests.integration.worker_harness import OutputReader, TurnRecord

__all__ = [
    "CONTEXT_TURNS",
    "FAULT_MODEL_VERSION",
    "FAULT_SETTINGS",
    "MAX_LENGTH",
    "Tally",
    "group_id",
    "publish_fault_model",
    "report",
    "tally",
]

FAULT_MODEL_VERSION = "faults-v1"
CONTEXT_TURNS = 2
MAX_LENGTH = 128
# Small batches and a small in-flight bound keep the pipeline short, so a kill lands
# mid-work and the duplicate bound (max_in_flight per crash) is tight.
FAULT_SETTINGS: dict[str, object] = {"max_batch_size": 4, "max_in_flight": 16, "reload_poll_s": 0.3}


def publish_fault_model(store: Path, version: str, *, seed: int = 0, make_current: bool = True, **kw) -> Path:
    return publish_test_model(
        store,
        version=version,
        context_turns=CONTEXT_TURNS,
        max_length=MAX_LENGTH,
        seed=seed,
        make_current=make_current,
        **kw,
    )


def group_id() -> str:
    return f"faults-{uuid.uuid4().hex[:10]}"


@dataclass
class Tally:
    """What one scenario put in and got out."""

    scenario: str
    turns_in: int
    events_out: int
    dead_letters: int
    duplicates: int
    missing: int
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        more = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (
            f"[fault] {self.scenario}: turns_in={self.turns_in} events_out={self.events_out} "
            f"dead_letters={self.dead_letters} duplicates={self.duplicates} missing={self.missing}{more}"
        )


def tally(scenario: str, records: Sequence[TurnRecord], reader: OutputReader, **extra: object) -> Tally:
    """Counts for ``records`` (the valid turns produced) against what ``reader`` read."""
    counts = reader.id_counts()
    missing = sum(1 for r in records if counts[r.event_id] == 0)
    return Tally(
        scenario, len(records), len(reader.events), len(reader.dead), reader.duplicates(), missing, dict(extra)
    )


def report(t: Tally) -> None:
    """Print the scenario's line; with ``ERC_FAULTS_RESULTS=<file>`` also append it as JSON."""
    print("\n" + t.line(), flush=True)
    target = os.environ.get("ERC_FAULTS_RESULTS")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(t)) + "\n")
