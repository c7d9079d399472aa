"""Dependencies of the routes, as `Annotated` aliases; tests override `get_predictor`.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool, and
three thread hops per request were a measurable part of the service's CPU under load.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from fashion_tagger.serving.batching import MicroBatcher
from fashion_tagger.serving.metrics import Metrics
from fashion_tagger.serving.predictor import Predictor
from fashion_tagger.serving.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_predictor(request: Request) -> Predictor:
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is None:
        raise HTTPException(503, "no model is loaded; start the service with a run dir")
    return predictor


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]


async def get_batcher(
    request: Request, predictor: PredictorDep, settings: SettingsDep, metrics: MetricsDep
) -> MicroBatcher:
    """The app's micro-batcher around the current predictor (made on first use)."""
    state = request.app.state
    batcher: MicroBatcher | None = getattr(state, "batcher", None)
    if batcher is None or getattr(state, "batcher_owner", None) is not predictor:
        if batcher is not None:
            await batcher.close()
        batcher = MicroBatcher(
            predictor.run, settings.max_batch, settings.max_wait_ms, metrics.batch
        )
        state.batcher, state.batcher_owner = batcher, predictor
    return batcher


BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
