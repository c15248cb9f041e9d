"""The served model and its hot reload from the model store.

:class:`ModelReloader` loads the version the store's CURRENT names, then watches CURRENT
(every ``reload_poll_s``, or at once after :meth:`ModelReloader.request`, e.g. on SIGHUP).
A new version is loaded and warmed off the event loop while the old one keeps serving; it
is only *handed over*: the inference loop calls :meth:`ModelReloader.swap` between two
batches, so a batch never mixes models. Each served model gets the next ``generation``
number, which stamps what it computed for a turn (``window.TurnCache``).

A version that fails to load, or that predicts other labels than the served model, is
refused (``erc_model_reloads_total{result="failed"|"incompatible"}``) and not tried again
until a forced reload; the served model stays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from erc_stream.artifact import current_file, read_current, version_path
from erc_stream.config import WorkerConfig
from erc_stream.errors import ArtifactError
from erc_stream.metrics import WorkerMetrics
from erc_stream.model import Predictor, TurnPredictor, load_predictor, resolve_max_forward

__all__ = ["Served", "ModelReloader"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Served:
    """The model being served, its generation (1 for the first, +1 per swap), and the prompts
    per forward pass it runs at most (``resolve_max_forward`` for its device; None: one pass)."""

    predictor: Predictor | TurnPredictor
    generation: int
    max_forward: int | None

    @property
    def version(self) -> str:
        return self.predictor.version


class ModelReloader:
    """The served model: first load, watching CURRENT, loading the next, handing it over."""

    def __init__(self, cfg: WorkerConfig, metrics: WorkerMetrics, on_loaded: Callable[[], None]) -> None:
        """``on_loaded`` is called when a new model waits for :meth:`swap` (it wakes the inference loop)."""
        self._cfg = cfg
        self._metrics = metrics
        self._on_loaded = on_loaded
        self.served: Served | None = None
        self._next: Predictor | TurnPredictor | None = None
        self._failed: set[str] = set()
        self._requested = asyncio.Event()

    async def start(self) -> Served:
        """Load and serve the version CURRENT names.

        Raises:
            ArtifactError: the store has no CURRENT, or the version cannot be loaded.
        """
        store, channel = self._cfg.model_store, self._cfg.model_channel
        version = read_current(store, channel)
        if version is None:
            to_channel = f" --channel {channel}" if channel else ""
            raise ArtifactError(
                f"model store {store} has no {current_file(channel)} version; train and publish one with "
                f"`erc-train fit --store {store}{to_channel}` (or `erc-train fit --quick` for a small one)"
            )
        self._next = await self._load(version)
        served = self.swap()
        assert served is not None
        return served

    def request(self) -> None:
        """Check CURRENT now, and retry a version that was refused before."""
        self._requested.set()

    def swap(self) -> Served | None:
        """Serve the model loaded since the last call, if any; returns it. Call between batches."""
        predictor, self._next = self._next, None
        if predictor is None:
            return None
        generation = self.served.generation + 1 if self.served is not None else 1
        max_forward = resolve_max_forward(self._cfg.max_forward_prompts, predictor.device)
        self.served = Served(predictor, generation, max_forward)
        self._metrics.set_model(predictor.version, predictor.manifest.get("dataset", ""))
        self._metrics.model_reloads.labels(result="ok").inc()
        if generation > 1:
            log.info("now serving model %s", predictor.version)
        return self.served

    async def watch(self) -> None:
        """Poll CURRENT until cancelled; load a new version and leave it for :meth:`swap`."""
        while True:
            forced = await self._wait_for_poll()
            try:
                version = read_current(self._cfg.model_store, self._cfg.model_channel)
            except (ArtifactError, OSError) as exc:
                log.warning("cannot read the model store's %s: %s", current_file(self._cfg.model_channel), exc)
                continue
            latest = self._next.version if self._next is not None else self._served_version()
            if version is None or version == latest:
                if forced:
                    log.info("reload requested: already serving %s", latest)
                continue
            if version in self._failed and not forced:
                continue
            await self._try_load(version)

    # -- internals -----------------------------------------------------------------------------

    def _served_version(self) -> str | None:
        return self.served.version if self.served is not None else None

    async def _wait_for_poll(self) -> bool:
        """Until the next poll is due; True when it was requested (forced)."""
        try:
            await asyncio.wait_for(self._requested.wait(), self._cfg.reload_poll_s)
            forced = True
        except TimeoutError:
            forced = False
        self._requested.clear()
        return forced

    async def _load(self, version: str) -> Predictor | TurnPredictor:
        cfg = self._cfg
        path = version_path(cfg.model_store, version)

        def load() -> Predictor | TurnPredictor:
            p = load_predictor(path, device=cfg.device, dtype=cfg.dtype)  # the manifest's architecture
            if cfg.context_turns is not None:
                p = p.with_context_turns(cfg.context_turns)
            p.warm_up(min(8, cfg.max_batch_size))
            return p

        # Loading and warming happen off the event loop, outside the model thread, so the
        # current model keeps serving while the next one loads.
        return await asyncio.to_thread(load)

    async def _try_load(self, version: str) -> None:
        t0 = time.perf_counter()
        try:
            predictor = await self._load(version)
        except Exception as exc:  # noqa: BLE001 - any failure to load (e.g. safetensors' own SafetensorError
            # on a truncated file) must leave the served model in place, not end the watch task
            self._refuse(version, "failed", f"failed to load: {exc}")
            return
        served = self.served.predictor if self.served is not None else None
        if served is not None and predictor.labels != served.labels:
            self._refuse(version, "incompatible", f"predicts {list(predictor.labels)}, not {list(served.labels)}")
            return
        self._next = predictor
        self._on_loaded()
        log.info(
            "model %s loaded and warmed in %.1f s; switching after the current batch", version, time.perf_counter() - t0
        )

    def _refuse(self, version: str, result: str, why: str) -> None:
        self._failed.add(version)
        self._metrics.model_reloads.labels(result=result).inc()
        log.error("model %s %s; still serving %s", version, why, self._served_version())
