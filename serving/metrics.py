"""Prometheus metrics, on a registry of the app's own (several apps can live in one process).

With NAMEGEN_WORKERS > 1 the server is several processes, and a scrape reaches one of them: counters and
histograms then go through prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by
workers.serve_workers), so every scrape sums all workers. The two gauges read from the manager are kept per
worker and summed (queue depth) or maxed (loaded versions) over the live workers; each worker updates its
own at every registry watch tick and when it answers a scrape.
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

ROWS_BUCKETS = tuple(2**i for i in range(0, 15))
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR))
        self.requests = Counter("namegen_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("namegen_request_latency_seconds", "HTTP request latency by route", ["route"],
                                 registry=self.registry)
        self.rows_per_step = Histogram("namegen_rows_per_step", "rows in one scheduler step", ["model"],
                                       buckets=ROWS_BUCKETS, registry=self.registry)
        self.names_generated = Counter("namegen_names_generated", "names returned", ["model"],
                                       registry=self.registry)
        self.reloads = Counter("namegen_reloads", "model versions loaded after start", ["model"],
                               registry=self.registry)
        self.reload_failures = Counter("namegen_reload_failures", "model versions rejected", ["model"],
                                       registry=self.registry)
        self._manager = None
        self._depth = self._loaded = None  # the manager's gauges, in multiprocess mode

    def watch(self, manager) -> None:
        """Queue depth and loaded versions come from the manager: read at scrape time, or in multiprocess
        mode written by update_gauges."""
        self._manager = manager
        if not self.multiprocess:
            self.registry.register(_ManagerCollector(manager))
            return
        self._depth = Gauge("namegen_queue_depth", "requests waiting for rows", ["model"], registry=None,
                            multiprocess_mode="livesum")
        self._loaded = Gauge("namegen_model_loaded", "served model versions (1; 0 once replaced)",
                             ["model", "version", "backend", "device"], registry=None, multiprocess_mode="livemax")

    def update_gauges(self) -> None:
        """Write this worker's queue depths and loaded versions (multiprocess mode; otherwise read at scrape)."""
        if self._depth is None:
            return
        settings = self._manager.settings
        for name, s in self._manager.served().items():
            self._depth.labels(name).set(s.engine.queue_depth)
            self._loaded.labels(name, s.model.version, settings.backend, settings.device).set(1)

    def version_replaced(self, name: str, version: str) -> None:
        if self._loaded is not None:
            settings = self._manager.settings
            self._loaded.labels(name, version, settings.backend, settings.device).set(0)

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's registry, or every worker's."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        self.update_gauges()
        combined = CollectorRegistry()
        MultiProcessCollector(combined)
        return generate_latest(combined)


class _ManagerCollector:
    def __init__(self, manager):
        self.manager = manager

    def collect(self):
        depth = GaugeMetricFamily("namegen_queue_depth", "requests waiting for rows", labels=["model"])
        loaded = GaugeMetricFamily("namegen_model_loaded", "served model versions (value 1)",
                                   labels=["model", "version", "backend", "device"])
        for name, served in self.manager.served().items():
            depth.add_metric([name], served.engine.queue_depth)
            loaded.add_metric([name, served.model.version, self.manager.settings.backend,
                               self.manager.settings.device], 1)
        yield depth
        yield loaded
