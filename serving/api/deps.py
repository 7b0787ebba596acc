"""What routes are given, read from `app.state` (set once by create_app): the settings, the model manager
and the metrics. Routes declare them as parameters, e.g. `manager: ManagerDep`."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..manager import ModelManager
from ..metrics import Metrics
from ..settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_manager(request: Request) -> ModelManager:
    return request.app.state.manager


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[ModelManager, Depends(get_manager)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
