"""Every Prometheus metric of the worker, created against an injectable registry.

Names are a contract (ARCHITECTURE.md, the Grafana dashboard and the alert rules use them).
No metric carries a per-conversation label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WorkerMetrics", "LATENCY_BUCKETS_S", "INFERENCE_BUCKETS_S", "BATCH_SIZE_BUCKETS"]

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
