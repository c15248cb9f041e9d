"""ModelPathTotals: the worker's model-path series read back, from a registry and from /metrics text."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from erc_stream.devtools.broker import free_port
from erc_stream.metrics import ModelPathTotals, WorkerMetrics


def _observe(m: WorkerMetrics, size: int, padded: int, real: int, seconds: float) -> None:
    """What the worker's _observe_batch records for one batch."""
    m.batch_size.observe(size)
    m.batch_tokens.observe(padded)
    m.tokens_processed.inc(real)
    m.inference_seconds.observe(seconds)


def test_a_fresh_worker_has_done_nothing() -> None:
    t = ModelPathTotals.from_registry(WorkerMetrics().registry)
    assert (t.batches, t.prompts, t.seconds, t.padded_tokens, t.real_tokens) == (0, 0, 0.0, 0, 0)
    assert (t.mean_batch, t.padding_share, t.prompts_per_s, t.batch_size_hist) == (0.0, 0.0, 0.0, {})


def test_totals_and_what_they_mean() -> None:
    m = WorkerMetrics()
    _observe(m, size=3, padded=120, real=90, seconds=0.25)
    _observe(m, size=20, padded=800, real=600, seconds=0.75)
    t = ModelPathTotals.from_registry(m.registry)
    assert (t.batches, t.prompts, t.padded_tokens, t.real_tokens) == (2, 23, 920, 690)
    assert t.seconds == pytest.approx(1.0)
    assert t.mean_batch == pytest.approx(11.5)
    assert t.padding_share == pytest.approx(230 / 920)
    assert t.prompts_per_s == pytest.approx(23.0)
    assert t.batch_size_hist == {"4.0": 1, "32.0": 1}  # buckets 1, 2, 4, 8, 16, 32, ...


def test_a_difference_is_what_happened_in_between() -> None:
    m = WorkerMetrics()
    _observe(m, size=32, padded=4000, real=3000, seconds=2.0)
    before = ModelPathTotals.from_registry(m.registry)
    _observe(m, size=1, padded=50, real=50, seconds=0.1)
    _observe(m, size=7, padded=700, real=350, seconds=0.4)
    d = ModelPathTotals.from_registry(m.registry) - before
    assert (d.batches, d.prompts, d.padded_tokens, d.real_tokens) == (2, 8, 750, 400)
    assert d.seconds == pytest.approx(0.5)
    assert d.batch_size_hist == {"1.0": 1, "8.0": 1}  # the batch of 32 was before
    assert d.padding_share == pytest.approx(350 / 750)


def test_the_text_a_worker_serves_reads_the_same_as_its_registry() -> None:
    m = WorkerMetrics(CollectorRegistry())
    _observe(m, size=5, padded=500, real=410, seconds=0.3)
    m.events_emitted.labels(emotion="joy").inc(5)  # other series are ignored
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=m.registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
    finally:
        server.shutdown()
        thread.join(5)
    assert ModelPathTotals.from_text(body) == ModelPathTotals.from_registry(m.registry)
    assert ModelPathTotals.from_text(generate_latest(m.registry).decode()).prompts == 5


def test_text_without_the_series_reads_as_nothing_done() -> None:
    assert ModelPathTotals.from_text("# HELP up x\n# TYPE up gauge\nup 1.0\n") == ModelPathTotals()
