"""`GET /healthz` and `GET /metrics`: is the service up, and what has it done."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from fashion_tagger.serving.deps import MetricsDep, PredictorDep, SettingsDep
from fashion_tagger.serving.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz(predictor: PredictorDep, settings: SettingsDep) -> Health:
    """200 when a model is loaded and requests are served; also the request limits."""
    return Health(
        status="ok",
        model_id=predictor.model_id,
        backend=predictor.backend_name,
        max_images=settings.max_images,
        max_body_mb=settings.max_body_mb,
    )


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(m: MetricsDep) -> PlainTextResponse:
    """Prometheus text format: requests by route and status, latency, images, errors, batch sizes."""
    return PlainTextResponse(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
