"""erc_stream/hoststat.py: the machine's CPU time, steal included, read from /proc/stat."""

from __future__ import annotations

from pathlib import Path

import pytest

from erc_stream.hoststat import CpuTicks, read_cpu_ticks, steal_share


def _stat(tmp_path: Path, first_line: str) -> Path:
    path = tmp_path / "stat"
    path.write_text(first_line + "\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 12345\n")
    return path


def test_the_cpu_line_splits_into_busy_steal_and_total(tmp_path):
    # user nice system idle iowait irq softirq steal guest guest_nice
    ticks = read_cpu_ticks(_stat(tmp_path, "cpu  100 5 50 1000 20 3 2 40 0 0"))
    assert ticks == CpuTicks(busy=100 + 5 + 50 + 3 + 2 + 40, steal=40, total=1220)


@pytest.mark.parametrize(
    "line",
    ["cpu  100 5 50 1000 20 3 2", "cpu0 100 5 50 1000 20 3 2 40", "cpu  100 five 50 1000 20 3 2 40", ""],
    ids=["no-steal-column", "not-the-total-line", "not-a-number", "empty"],
)
def test_a_stat_file_it_cannot_read_gives_none(tmp_path, line):
    assert read_cpu_ticks(_stat(tmp_path, line)) is None


def test_a_missing_stat_file_gives_none(tmp_path):
    assert read_cpu_ticks(tmp_path / "absent") is None


def test_steal_share_is_the_withheld_part_of_the_time_asked_for():
    assert steal_share(200, 40) == pytest.approx(0.2)
    assert steal_share(0, 0) is None


def test_this_machines_stat_reads_consistently():
    if not Path("/proc/stat").is_file():
        pytest.skip("no /proc/stat on this machine")
    ticks = read_cpu_ticks()
    assert ticks is not None and 0 <= ticks.steal <= ticks.busy <= ticks.total
    assert ticks.seconds()["total_s"] > 0
