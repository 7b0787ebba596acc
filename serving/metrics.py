"""Prometheus metrics, on a registry of the app's own (several apps can live in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

ROWS_BUCKETS = tuple(2**i for i in range(0, 15))


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
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

    def watch(self, manager) -> None:
        """Queue depth and loaded versions are read from the manager at scrape time."""
        self.registry.register(_ManagerCollector(manager))


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
