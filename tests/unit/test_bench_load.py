"""The benchmarks' "measured under load" flag: from the CPU time other processes used during the
run (/proc/stat less the benchmark's own), not from the load average, which lags by minutes."""

from __future__ import annotations

import pytest

from benchmarks import _common


def _info(busy: float, total: float, own: float, load1: float = 0.0, steal: float = 0.0) -> dict:
    return {
        "cpu_model": "cpu", "cpu_flags": [], "cpu_native_bf16": False, "logical_cpus": 2, "torch": "t",
        "torch_threads": 2, "torch_cpu_capability": "AVX2", "git": "abc", "time_utc": "now",
        "loadavg_1_5_15": [load1, 0.0, 0.0],
        "cpu_seconds": {"machine_busy_s": busy, "machine_steal_s": steal, "machine_total_s": total, "own_s": own},
    }  # fmt: skip


def test_others_share_subtracts_the_benchmarks_own_time():
    # 100 CPU-seconds passed (50 s on 2 CPUs); 80 were busy, 70 of them the benchmark's own
    before, after = _info(1000, 5000, 10), _info(1080, 5100, 80)
    assert _common.others_cpu_share(before, after) == pytest.approx(0.10)


def test_a_lagging_load_average_alone_does_not_flag_the_run():
    before, after = _info(1000, 5000, 10, load1=1.9), _info(1070, 5100, 80)
    md = _common.machine_md(before, after)
    assert "Other processes used 0% of the CPUs" in md and "under load" not in md


def test_other_processes_busy_during_the_run_flag_it():
    before, after = _info(1000, 5000, 10), _info(1090, 5100, 60)  # others: 40 of 100 CPU-seconds
    assert "**Measured under load**: other processes used 40% of the CPUs" in _common.machine_md(before, after)


def test_time_the_hypervisor_withheld_is_not_counted_as_other_processes_but_flags_the_run():
    # 80 of 100 CPU-seconds busy: 50 the benchmark's, 30 stolen by the hypervisor, none by other processes
    before, after = _info(1000, 5000, 10, steal=5), _info(1080, 5100, 60, steal=35)
    assert _common.others_cpu_share(before, after) == pytest.approx(0.0)
    assert _common.host_steal_share(before, after) == pytest.approx(30 / 80)
    md = _common.machine_md(before, after)
    assert "The hypervisor withheld 38% of the CPU time the machine asked for (steal)." in md
    assert "**Measured under load**: other processes used 0% of the CPUs during the run, and the hypervisor" in md


def test_a_little_steal_is_reported_without_flagging_the_run():
    before, after = _info(1000, 5000, 10, steal=5), _info(1070, 5100, 80, steal=6)
    md = _common.machine_md(before, after)
    assert "withheld 1% of the CPU time" in md and "under load" not in md


def test_snapshots_from_before_steal_was_recorded_still_compare():
    before, after = _info(1000, 5000, 10), _info(1080, 5100, 80)
    for info in (before, after):
        del info["cpu_seconds"]["machine_steal_s"]
    assert _common.others_cpu_share(before, after) == pytest.approx(0.10)
    assert _common.host_steal_share(before, after) is None


def test_without_proc_stat_the_load_average_before_decides():
    before, after = _info(0, 0, 0, load1=1.5), _info(0, 0, 0)
    before["cpu_seconds"] = after["cpu_seconds"] = None
    assert _common.others_cpu_share(before, after) is None
    assert "1-minute load average 1.5 before the run" in _common.machine_md(before, after)


def test_machine_info_reads_this_machines_cpu_seconds():
    info = _common.machine_info()["cpu_seconds"]
    assert info is not None and 0 < info["machine_busy_s"] <= info["machine_total_s"] and info["own_s"] > 0
    assert 0 <= info["machine_steal_s"] <= info["machine_busy_s"]


def test_a_rerun_rewrites_the_figures_and_keeps_the_hand_written_tail(tmp_path, capsys):
    _common.write_results("b", {"x": 1}, "# B\n\nold figures", out_dir=tmp_path)
    page = tmp_path / "b.md"
    page.write_text(page.read_text() + f"\n{_common.KEEP_MARKER}\n## Quality\n\nby hand\n")
    _common.write_results("b", {"x": 2}, "# B\n\nnew figures", out_dir=tmp_path)
    text = page.read_text()
    assert "new figures" in text and "old figures" not in text
    assert text.endswith(f"{_common.KEEP_MARKER}\n## Quality\n\nby hand\n")
    _common.write_results("c", {}, "# C", out_dir=tmp_path)  # no page yet, no marker: figures only
    assert (tmp_path / "c.md").read_text() == "# C\n"
