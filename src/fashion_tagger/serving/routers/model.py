"""`GET /v1/model`: what the served model knows (taxonomy, attributes, thresholds, input)."""

from __future__ import annotations

from fastapi import APIRouter

from fashion_tagger.serving.deps import PredictorDep
from fashion_tagger.serving.schemas import ModelInfo

router = APIRouter(tags=["model"])


@router.get("/v1/model", response_model=ModelInfo)
async def model_info(predictor: PredictorDep) -> dict:
    """The model's taxonomy, attribute names and thresholds, input size and backbone."""
    return predictor.info()
