"""The API's request and response bodies (they are also its OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class UrlsRequest(BaseModel):
    """Images to fetch: http(s) URLs of public hosts."""

    urls: list[str] = Field(
        ..., description="Image URLs (http or https).", min_length=1, max_length=1000
    )


class PathStep(BaseModel):
    level: str = Field(..., description="The taxonomy level's name.")
    label: str = Field(..., description="The class chosen at this level.")
    score: float = Field(..., description="Its probability.")


class TopK(BaseModel):
    path: list[str] = Field(..., description="A root-to-leaf path.")
    score: float = Field(..., description="Its path score (product of level probabilities).")


class AttributeScore(BaseModel):
    name: str = Field(..., description='"group=value".')
    score: float


class ImagePrediction(BaseModel):
    image: str | None = Field(None, description="The file name or URL the image came from.")
    path: list[PathStep]
    top_k: list[TopK]
    attributes: list[AttributeScore] = Field(
        ..., description="Attributes at or above their threshold."
    )


class PredictResponse(BaseModel):
    model_id: str
    backend: str
    predictions: list[ImagePrediction]


class ModelInput(BaseModel):
    size: list[int] = Field(..., description="[height, width] in pixels.")
    channels: int
    mean: list[float]
    std: list[float]
    resize: str


class ModelAttributes(BaseModel):
    names: list[str]
    thresholds: list[float]


class ModelInfo(BaseModel):
    model_id: str
    backend: str
    quantization: str | None = Field(
        None, description="int8 when the ONNX graph was exported with --quantize int8."
    )
    backbone: dict[str, Any]
    head: dict[str, Any]
    input: ModelInput
    taxonomy: dict[str, Any] = Field(..., description="Taxonomy.to_dict(): levels and nodes.")
    attributes: ModelAttributes


class Health(BaseModel):
    status: str
    model_id: str
    backend: str
    max_images: int = Field(..., description="Most images accepted per request.")
    max_body_mb: float = Field(..., description="Largest request body in MiB.")


class ErrorBody(BaseModel):
    detail: str = Field(..., description="What was wrong and how to fix it.")
