"""All of the server's configuration, read from NAMEGEN_* environment variables."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NAMEGEN_", extra="ignore")

    registry: Path = Path("registry")  # export's model repository: <registry>/<name>/<version>/
    models: Annotated[list[str], NoDecode] = []  # names to serve; empty: every name in the registry
    default_model: str = ""  # empty: "mlp" when served, else the first name
    backend: Literal["onnxruntime", "torch"] = "onnxruntime"
    device: Literal["cpu", "cuda"] = "cpu"
    # Server processes on one port, each with its own engines (http_server.py), and each one's forward threads
    workers: int = Field(1, ge=1)
    threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)  # forward threads per worker
    max_batch_rows: int = Field(4096, ge=1)  # rows in flight per scheduler step
    forward_chunk_rows: int = Field(2048, ge=1)  # forwards run on chunks of this shape and its halves (backends.py)
    # Precompute every context's logits and sampling view when they fit (the mlp: 27**3 contexts, 15.5 MB)
    logits_table_mb: float = Field(32.0, ge=0)  # 0: never
    step_cache: bool = True  # models with a step model (wavenets) compute one node per level per step
    max_active_requests: int = Field(0, ge=0)  # requests sharing steps; 0: no limit, 1: one at a time
    max_queue: int = Field(256, ge=1)  # requests waiting per model before 429
    max_queued_names: int = Field(65536, ge=0)  # and names those requests ask for (0: no bound)
    queue_timeout_s: float = Field(5.0, gt=0)  # a request still waiting for rows after this is shed: 503
    admission_wait_s: float = Field(1.0, ge=0)  # a request finding the queue full waits this long for room: 429
    request_timeout_s: float = Field(30.0, gt=0)  # deadline -> 504
    max_body_bytes: int = Field(1 << 20, ge=1024)  # larger bodies -> 413
    header_timeout_s: float = Field(10.0, gt=0)  # a request's headers must arrive within this, else 408
    body_timeout_s: float = Field(30.0, gt=0)  # and its body within this of the headers, else 408
    keep_alive_s: float = Field(5.0, gt=0)  # idle keep-alive connections are closed after this
    max_connections: int = Field(2048, ge=1)  # connections and requests at once; past it uvicorn answers 503
    attempts_per_name: int = Field(20, ge=1)  # rejection budget for unique / exclude_training / max_length
    watch_interval_s: float = Field(1.0, gt=0)  # how often LATEST files are polled
    admin_token: str = ""  # empty: the admin API is disabled
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"

    @field_validator("models", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        # NAMEGEN_MODELS=mlp,bigram-counts rather than JSON
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value


def configure_logging(settings: Settings) -> None:
    """The server's log lines, in the process `python -m serving` starts and in each worker."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
