"""GET /v1/models: what is served, with each model's type, vocabulary and metrics."""
from __future__ import annotations

from fastapi import APIRouter

from .deps import ManagerDep, SettingsDep
from .schemas import ModelInfo, ModelsResponse, RejectedVersion

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelsResponse)
async def list_models(manager: ManagerDep, settings: SettingsDep) -> ModelsResponse:
    infos = [ModelInfo(name=name, version=s.model.version, type=s.model.manifest.model_type,
                       vocab=list(s.model.vocab), block_size=s.model.block_size, metrics=s.model.manifest.metrics,
                       backend=settings.backend, device=settings.device,
                       logits_table=s.model.runner.logits_table is not None,
                       conditions={name: list(values) for name, values in s.model.conditions},
                       guidance=s.model.manifest.guidance)
             for name, s in sorted(manager.served().items())]
    rejected = [RejectedVersion(model=name, version=version, error=error)
                for name, (version, error) in sorted(manager.rejected().items())]
    return ModelsResponse(default=manager.default_name, models=infos, rejected=rejected)
