"""Which model versions are served: initial load, LATEST watching, validated atomic swaps.

Each model is refreshed on its own: a registry entry that breaks the contract rejects that version of
that model, logs it once, counts it, and never delays any other model.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from namegen.contract import MAX_NAME_LENGTH, ContractError, model_names, read_latest

from .backends import BackendError
from .engine import Engine
from .metrics import Metrics
from .model import LoadedModel, load_version
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
        self._rejected: dict[str, tuple[str, str]] = {}  # name -> (LATEST's content, why), not retried
        self._lock = threading.Lock()  # one refresh at a time
        self._registry_names: list[str] = []  # rescanned by refresh(), not on the request path
        self._steps_seen = self._steps_trimmed = 0  # engine steps at the last watch tick and at the last trim

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

    def ready(self) -> bool:
        wanted = self.wanted_names()
        return bool(wanted) and all(name in self._served for name in wanted)

    # -- loading (worker threads) -------------------------------------------------------------
    def refresh(self) -> dict[str, dict]:
        """Load every wanted model whose LATEST names a version not served yet. Returns what happened."""
        with self._lock:
            self._registry_names = model_names(Path(self.settings.registry))
            return {name: self._refresh_guarded(name) for name in self.wanted_names()}

    def _refresh_guarded(self, name: str) -> dict:
        try:
            return self._refresh_one(name)
        except Exception as e:  # an unforeseen registry state must not stop the other models' refresh
            log.exception("refreshing %s failed", name)
            return self._reject(name, "LATEST", f"{type(e).__name__}: {e}")

    def _refresh_one(self, name: str) -> dict:
        registry = Path(self.settings.registry)
        current = self._served.get(name)
        try:
            version = read_latest(registry, name)
        except ContractError as e:
            return self._reject(name, "LATEST", str(e))
        if version is None:
            return {"status": "missing", "version": None, "error": f"{registry / name / 'LATEST'} does not exist"}
        if current is not None and current.model.version == version:
            self._rejected.pop(name, None)
            return {"status": "unchanged", "version": version}
        if self._rejected.get(name, ("",))[0] == version:
            return {"status": "rejected", "version": version, "error": self._rejected[name][1]}
        try:
            model = load_version(self.settings, name, version)
        except (ContractError, BackendError, OSError) as e:
            return self._reject(name, version, str(e))
        self._swap(name, model, current)
        return {"status": "loaded", "version": version}

    def rejected(self) -> dict[str, tuple[str, str]]:
        """name -> (the version LATEST names, or "LATEST" when it names none; why it is not served)."""
        return dict(self._rejected)

    def _reject(self, name: str, version: str, error: str) -> dict:
        """Keep serving what is served; say so once per bad LATEST content or version, not at every poll."""
        error = error.replace(f"{self.settings.registry}/", "")  # paths within the registry, not on this host
        current = self._served.get(name)
        if self._rejected.get(name) != (version, error):
            self._rejected[name] = (version, error)
            self.metrics.reload_failures.labels(name).inc()
            log.error("rejected %s/%s, still serving %s: %s", name, version,
                      current.model.version if current else "nothing", error)
        return {"status": "rejected", "version": None if version == "LATEST" else version, "error": error}

    def _swap(self, name: str, model: LoadedModel, current: Served | None) -> None:
        engine = Engine(model, self.settings.max_batch_rows, self.settings.max_queue, MAX_NAME_LENGTH,
                        self.settings.attempts_per_name,
                        on_step=self.metrics.rows_per_step.labels(name).observe,
                        max_active_requests=self.settings.max_active_requests,
                        max_queued_names=self.settings.max_queued_names, queue_timeout_s=self.settings.queue_timeout_s)
        self._served[name] = Served(model, engine)  # the swap: new requests go to the new version
        self._rejected.pop(name, None)
        if current is not None:
            self.metrics.reloads.labels(name).inc()
            self.metrics.version_replaced(name, current.model.version)
            log.info("serving %s/%s (was %s)", name, model.version, current.model.version)
            threading.Thread(target=self._retire, args=(current,), daemon=True).start()
        else:
            log.info("serving %s/%s", name, model.version)

    def release_memory_when_idle(self) -> bool:
        """After a burst, once every engine has been idle for a whole watch interval, give the heap pages the
        peak took back to the system. Returns whether it did."""
        steps = sum(served.engine.steps for served in self._served.values())
        idle, self._steps_seen = steps == self._steps_seen, steps
        if not idle or steps == self._steps_trimmed:
            return False
        self._steps_trimmed = steps
        release_free_memory()
        return True

    @staticmethod
    def _retire(old: Served) -> None:
        old.engine.stop(drain=True)  # requests in flight finish on the version they started with
        old.model.close()

    def close(self) -> None:
        for served in self._served.values():
            self._retire(served)
        self._served.clear()


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def release_free_memory() -> None:
    """glibc keeps freed heap pages for reuse, so a process stays at its peak size after a burst;
    malloc_trim returns them (a no-op where there is no glibc)."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
