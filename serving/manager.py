"""Which model versions are served: initial load, LATEST watching, validated atomic swaps."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from .backends import BackendError
from .engine import Engine
from .metrics import Metrics
from .model import LoadedModel, load_version
from .registry import ArtifactError, latest_version, model_names
from .schemas import MAX_NAME_LENGTH
from .settings import Settings

log = logging.getLogger("namegen.manager")


class UnknownModel(LookupError):
    pass


class NotReady(RuntimeError):
    pass


@dataclass
class Served:
    model: LoadedModel
    engine: Engine


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self._served: dict[str, Served] = {}
        self._rejected: dict[str, str] = {}  # name -> version that failed validation (not retried)
        self._lock = threading.Lock()  # one refresh at a time
        self._registry_names: list[str] = []  # rescanned by refresh(), not on the request path

    # -- lookups (event loop) ----------------------------------------------------------------
    def served(self) -> dict[str, Served]:
        return dict(self._served)

    @property
    def default_name(self) -> str:
        if self.settings.default_model:
            return self.settings.default_model
        names = self.wanted_names() or sorted(self._served)
        return "mlp" if "mlp" in names else (names[0] if names else "")

    def get(self, name: str | None) -> Served:
        name = name or self.default_name
        served = self._served.get(name)
        if served is not None:
            return served
        if name in self.wanted_names():
            raise NotReady(f"model {name!r} has no loaded version yet")
        known = ", ".join(sorted(self._served)) or "none"
        raise UnknownModel(f"unknown model {name!r}; served: {known}")

    def wanted_names(self) -> list[str]:
        """The configured names, else every name in the registry as of the last refresh."""
        return list(self.settings.models) or self._registry_names

    def _scan_registry(self) -> None:
        self._registry_names = model_names(Path(self.settings.registry))

    def ready(self) -> bool:
        wanted = self.wanted_names()
        return bool(wanted) and all(name in self._served for name in wanted)

    # -- loading (worker threads) -------------------------------------------------------------
    def refresh(self) -> dict[str, dict]:
        """Load every wanted model whose LATEST names a version not served yet. Returns what happened."""
        with self._lock:
            self._scan_registry()
            return {name: self._refresh_one(name) for name in self.wanted_names()}

    def _refresh_one(self, name: str) -> dict:
        registry = Path(self.settings.registry)
        version = latest_version(registry, name)
        current = self._served.get(name)
        if version is None:
            return {"status": "missing", "version": None, "error": f"{registry / name / 'LATEST'} does not exist"}
        if current is not None and current.model.version == version:
            return {"status": "unchanged", "version": version}
        if self._rejected.get(name) == version:
            return {"status": "rejected", "version": version, "error": "failed validation earlier"}
        try:
            model = load_version(self.settings, name, version)
        except (ArtifactError, BackendError, OSError) as e:
            self._rejected[name] = version
            self.metrics.reload_failures.labels(name).inc()
            log.error("rejected %s/%s, still serving %s: %s", name, version,
                      current.model.version if current else "nothing", e)
            return {"status": "rejected", "version": version, "error": str(e)}
        engine = Engine(model, self.settings.max_batch_rows, self.settings.max_queue, MAX_NAME_LENGTH,
                        self.settings.attempts_per_name,
                        on_step=self.metrics.rows_per_step.labels(name).observe,
                        max_active_requests=self.settings.max_active_requests)
        self._served[name] = Served(model, engine)  # the swap: new requests go to the new version
        if current is not None:
            self.metrics.reloads.labels(name).inc()
            log.info("serving %s/%s (was %s)", name, version, current.model.version)
            threading.Thread(target=self._retire, args=(current,), daemon=True).start()
        else:
            log.info("serving %s/%s", name, version)
        return {"status": "loaded", "version": version}

    @staticmethod
    def _retire(old: Served) -> None:
        old.engine.stop(drain=True)  # requests in flight finish on the version they started with
        old.model.close()

    def close(self) -> None:
        for served in self._served.values():
            self._retire(served)
        self._served.clear()
