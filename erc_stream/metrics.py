"""Every Prometheus metric of the worker, created against an injectable registry.

Names are a contract (ARCHITECTURE.md, the Grafana dashboard and the alert rules use them).
No metric carries a per-conversation label.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.samples import Sample

__all__ = ["WorkerMetrics", "ModelPathTotals", "LATENCY_BUCKETS_S", "INFERENCE_BUCKETS_S", "BATCH_SIZE_BUCKETS"]

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INFERENCE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class WorkerMetrics:
    """The worker's metrics. Pass a fresh ``CollectorRegistry`` in tests."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.turns_consumed = Counter(
            "erc_turns_consumed", "Input records read from the turns topic.", ["topic"], registry=r
        )
        self.events_emitted = Counter(
            "erc_events_emitted", "Emotion events acknowledged by the broker.", ["emotion"], registry=r
        )
        self.dead_letters = Counter(
            "erc_dead_letters", "Input records sent to the dead-letter topic.", ["reason"], registry=r
        )
        self.batch_size = Histogram(
            "erc_batch_size", "Prompts per inference batch.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "erc_batch_tokens",
            "Padded tokens per inference batch.",
            buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768),
            registry=r,
        )
        self.inference_seconds = Histogram(
            "erc_inference_seconds", "Model forward time per batch.", buckets=INFERENCE_BUCKETS_S, registry=r
        )
        self.end_to_end_latency_seconds = Histogram(
            "erc_end_to_end_latency_seconds",
            "From the input record's timestamp to the event's broker acknowledgement.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "erc_consumer_lag", "High watermark minus next offset to consume.", ["topic", "partition"], registry=r
        )
        self.active_conversations = Gauge("erc_active_conversations", "Conversations with a live window.", registry=r)
        self.window_evictions = Counter("erc_window_evictions", "Conversation windows evicted.", ["cause"], registry=r)
        self.in_flight_turns = Gauge(
            "erc_in_flight_turns", "Turns read but not yet acknowledged downstream.", registry=r
        )
        self.tokens_processed = Counter(
            "erc_tokens_processed", "Real (unpadded) prompt tokens run through the model.", registry=r
        )
        self.model_info = Gauge(
            "erc_model_info", "The model version being served (value 1).", ["version", "dataset"], registry=r
        )
        self.model_reloads = Counter("erc_model_reloads", "Model reload attempts by result.", ["result"], registry=r)
        self.partitions_assigned = Gauge(
            "erc_partitions_assigned", "Input partitions assigned to this worker.", registry=r
        )
        self.consumer_paused = Gauge("erc_consumer_paused", "1 while fetching is paused for backpressure.", registry=r)
        self.commits = Counter("erc_offset_commits", "Offset commits by result.", ["result"], registry=r)

        # Series created at 0 up front: a counter born by its first increment shows
        # increase() == 0, which would hide a worker's first failed reload or dead letter.
        from erc_stream.events import Reason

        for result in ("ok", "failed", "incompatible"):
            self.model_reloads.labels(result=result)
        for reason in Reason:
            self.dead_letters.labels(reason=reason.value)
        for result in ("ok", "failed"):
            self.commits.labels(result=result)

    def set_model(self, version: str, dataset: str) -> None:
        """Point ``erc_model_info`` at the version now served (only one series stays at 1)."""
        self.model_info.clear()
        self.model_info.labels(version=version, dataset=dataset).set(1)


# The samples ModelPathTotals reads, by the field they fill: the histograms' _count/_sum and the
# token counter of WorkerMetrics above.
_MODEL_PATH_SAMPLES = {
    "erc_batch_size_count": "batches",
    "erc_batch_size_sum": "prompts",
    "erc_inference_seconds_sum": "seconds",
    "erc_batch_tokens_sum": "padded_tokens",
    "erc_tokens_processed_total": "real_tokens",
}


@dataclass(frozen=True)
class ModelPathTotals:
    """What a worker's model path has done, read from its metrics: batches, prompts, model time
    and tokens since the worker started. ``later - earlier`` is what it did in between.

    Read from a registry in the same process (`from_registry`) or from the text a worker's
    /metrics serves (`from_text`); a worker of an older checkout serves the same names.
    """

    batches: int = 0
    prompts: int = 0
    seconds: float = 0.0  # model time: padding, forward, softmax, copy (Predictions.seconds per batch)
    padded_tokens: int = 0
    real_tokens: int = 0
    # erc_batch_size buckets as served: (upper bound "le", cumulative batches), in bucket order
    batch_buckets: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_samples(cls, samples: Iterable[Sample]) -> ModelPathTotals:
        values: dict[str, float] = {}
        buckets: list[tuple[str, int]] = []
        for s in samples:
            if s.name == "erc_batch_size_bucket":
                buckets.append((s.labels["le"], round(s.value)))
            elif s.name in _MODEL_PATH_SAMPLES:
                values[_MODEL_PATH_SAMPLES[s.name]] = s.value
        counts = {k: round(v) for k, v in values.items() if k != "seconds"}
        return cls(**counts, seconds=values.get("seconds", 0.0), batch_buckets=tuple(buckets))

    @classmethod
    def from_registry(cls, registry: CollectorRegistry) -> ModelPathTotals:
        return cls.from_samples(s for family in registry.collect() for s in family.samples)

    @classmethod
    def from_text(cls, text: str) -> ModelPathTotals:
        """From the Prometheus text format (a worker's /metrics body)."""
        from prometheus_client.parser import text_string_to_metric_families

        return cls.from_samples(s for family in text_string_to_metric_families(text) for s in family.samples)

    def __sub__(self, earlier: ModelPathTotals) -> ModelPathTotals:
        before = dict(earlier.batch_buckets)
        return ModelPathTotals(
            batches=self.batches - earlier.batches,
            prompts=self.prompts - earlier.prompts,
            seconds=self.seconds - earlier.seconds,
            padded_tokens=self.padded_tokens - earlier.padded_tokens,
            real_tokens=self.real_tokens - earlier.real_tokens,
            batch_buckets=tuple((le, n - before.get(le, 0)) for le, n in self.batch_buckets),
        )

    @property
    def mean_batch(self) -> float:
        return self.prompts / self.batches if self.batches else 0.0

    @property
    def padding_share(self) -> float:
        """Share of the encoder's padded tokens that were padding."""
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0

    @property
    def prompts_per_s(self) -> float:
        """Prompts per second of model time."""
        return self.prompts / self.seconds if self.seconds > 0 else 0.0

    @property
    def batch_size_hist(self) -> dict[str, int]:
        """Batches per histogram bucket (not cumulative), keyed by the bucket's upper bound;
        empty buckets left out."""
        out, below = {}, 0
        for le, cumulative in self.batch_buckets:
            if cumulative - below:
                out[le] = cumulative - below
            below = cumulative
        return out
