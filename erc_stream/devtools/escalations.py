"""Local tooling around `erc-stream escalations`: a display line per escalation, a tally for the
demo's summary, and the app as a child process of the demo.

The demo runs the escalations app as its own process (as a deployment does): faust's worker owns
its event loop and signal handlers, so it cannot share the demo's loop.

Line format (:func:`render_escalation`)::

    ▲ OPENED   meld-dev-3    spike     high    turn 5   anger 0.91 · sadness 0.62 · anger 0.88   3417a45a
    ▼ resolved meld-dev-3    spike     high    turn 9   cooled_down                              3417a45a
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.text import Text

from erc_stream.errors import BrokerError

__all__ = ["SEVERITY_STYLES", "EscalationTally", "EscalationsProcess", "render_escalation"]

SEVERITY_STYLES = {"low": "yellow", "medium": "bold yellow", "high": "bold red"}
_CONV_WIDTH = 14


def _fit(value: str, width: int) -> str:
    value = " ".join(value.split())
    return (value[: width - 1] + "…" if len(value) > width else value).ljust(width)


def render_escalation(event: Mapping[str, Any]) -> Text:
    """One display line for an escalation event (``schemas/escalation_event.schema.json``)."""
    opened = event["status"] == "opened"
    severity = str(event["severity"])
    line = Text()
    line.append(
        "▲ OPENED   " if opened else "▼ resolved ", style=SEVERITY_STYLES.get(severity, "") if opened else "green"
    )
    line.append(_fit(str(event["conversation_id"]), _CONV_WIDTH) + " ", style="dim")
    line.append(_fit(str(event["rule"]), 9) + " ")
    line.append(_fit(severity, 7) + " ", style=SEVERITY_STYLES.get(severity, ""))
    turn = event["opened_turn_id"] if opened else (event.get("resolved_turn_id") or "-")
    line.append(_fit(f"turn {turn}", 9) + " ")
    if opened:
        evidence = " · ".join(f"{e['emotion']} {float(e['confidence']):.2f}" for e in event.get("evidence", []))
        line.append(_fit(evidence, 40) + " ")
    else:
        line.append(_fit(str(event.get("resolution") or ""), 40) + " ")
    line.append(str(event["escalation_id"])[:8], style="dim")
    return line


@dataclass
class EscalationTally:
    """Counts escalation records, keeping the first per ``(escalation_id, status)`` as consumers should."""

    opened: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule, severity) -> count
    resolved: Counter[str] = field(default_factory=Counter)  # resolution -> count
    repeats: int = 0
    _seen: set[tuple[str, str]] = field(default_factory=set)

    def add(self, event: Mapping[str, Any]) -> bool:
        """Count ``event``; False when it repeats one already counted (same id and status)."""
        key = (str(event["escalation_id"]), str(event["status"]))
        if key in self._seen:
            self.repeats += 1
            return False
        self._seen.add(key)
        if event["status"] == "opened":
            self.opened[(str(event["rule"]), str(event["severity"]))] += 1
        else:
            self.resolved[str(event.get("resolution"))] += 1
        return True

    @property
    def still_open(self) -> int:
        return sum(self.opened.values()) - sum(self.resolved.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "opened": {f"{rule}/{severity}": n for (rule, severity), n in sorted(self.opened.items())},
            "resolved": dict(sorted(self.resolved.items())),
            "still_open": self.still_open,
            "repeats_dropped": self.repeats,
        }


def _cli() -> str:
    sibling = Path(sys.executable).with_name("erc-stream")
    return str(sibling) if sibling.is_file() else (shutil.which("erc-stream") or "erc-stream")


class EscalationsProcess:
    """``erc-stream escalations`` as a child process, configured by environment variables.

    Set for the local broker: one record per producer batch (docs/escalations.md) and short
    group sessions. ``stop()`` sends SIGTERM (faust commits and exits) and is safe twice.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        input_topic: str,
        output_topic: str,
        dlq_topic: str,
        metrics_port: int,
        log_path: Path,
        app_id: str = "erc-demo-escalations",
    ) -> None:
        self.metrics_port = metrics_port
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERC_")}
        env.update(
            {
                "ERC_BOOTSTRAP_SERVERS": bootstrap,
                "ERC_ESCALATIONS_INPUT_TOPIC": input_topic,
                "ERC_ESCALATIONS_OUTPUT_TOPIC": output_topic,
                "ERC_ESCALATIONS_DLQ_TOPIC": dlq_topic,
                "ERC_ESCALATIONS_APP_ID": app_id,
                "ERC_ESCALATIONS_PRODUCER_MAX_BATCH_BYTES": "1",
                "ERC_ESCALATIONS_COMMIT_INTERVAL_MS": "500",
                "ERC_ESCALATIONS_SESSION_TIMEOUT_MS": "4000",
                "ERC_ESCALATIONS_HEARTBEAT_INTERVAL_MS": "500",
                "ERC_ESCALATIONS_METRICS_HOST": "127.0.0.1",
                "ERC_ESCALATIONS_METRICS_PORT": str(metrics_port),
                "ERC_LOG_LEVEL": "WARNING",
            }
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [_cli(), "escalations"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the demo's Ctrl-C reaches it through stop(), not the terminal
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def log_tail(self, chars: int = 2000) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def ready(self) -> bool:
        """/readyz answers 200. Raises BrokerError when the process has exited."""
        if self._proc.poll() is not None:
            raise BrokerError(
                f"erc-stream escalations exited with {self._proc.returncode}; its log ends with:\n{self.log_tail()}"
            )
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def events_processed(self) -> float:
        """``erc_escalations_events_processed_total`` over all results (0 when unreachable)."""
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=2) as resp:
                text = resp.read().decode("utf-8")
        except OSError:
            return 0.0
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "erc_escalations_events_processed_total"
        )

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, wait, SIGKILL if it hangs; returns the exit code."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if not self._log.closed:
            self._log.close()
        return self._proc.returncode
