"""`POST /v1/predict`: classify uploaded images (multipart `files`) or fetched ones (`{"urls"}`).

Every bad input is a 4xx with a JSON `detail` that says what to change; decoding runs in worker
threads and the model call goes through the micro-batcher, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Executor
from typing import Annotated, NoReturn

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from fashion_tagger.dataset.images import ImageError
from fashion_tagger.serving.deps import BatcherDep, MetricsDep, PredictorDep, SettingsDep
from fashion_tagger.serving.metrics import Metrics
from fashion_tagger.serving.schemas import ErrorBody, PredictResponse, UrlsRequest
from fashion_tagger.serving.settings import Settings
from fashion_tagger.serving.urls import UrlError, fetch

router = APIRouter(tags=["predict"])
ROUTE = "/v1/predict"

# The image reasons of `dataset.images.ImageError` that mean "this is not an image we take".
UNSUPPORTED = {"empty", "not_an_image", "unsupported_format"}

_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "files": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string", "format": "binary"},
                        "description": "One or more image files (JPEG, PNG, WebP, GIF, BMP, TIFF).",
                    }
                },
                "required": ["files"],
            }
        },
        "application/json": {"schema": UrlsRequest.model_json_schema()},
    },
}
_ERRORS = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "A URL was refused (scheme, private host, malformed).",
        413: "Body too large, or too many images.",
        415: "Not an image, or not multipart/JSON.",
        422: "Empty request, corrupt image, decompression bomb, or a URL that could not be fetched.",
    }.items()
}


def _refuse(metrics: Metrics, status: int, reason: str, detail: str) -> NoReturn:
    metrics.error(ROUTE, reason)
    raise HTTPException(status, detail)


@router.post(
    ROUTE,
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra={"requestBody": _BODY},
)
async def predict(
    request: Request,
    predictor: PredictorDep,
    batcher: BatcherDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    top_k: Annotated[int | None, Query(ge=1, le=50, description="Best leaves per image.")] = None,
) -> Response:
    """Category path with scores, top-k leaves and attributes for each image.

    Send images as multipart form files (field `files`, repeat it for several), or JSON
    `{"urls": ["https://...", ...]}`.
    """
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        items = await _read_files(request, settings, metrics)
    elif ctype.startswith("application/json"):
        items = await _read_urls(request, settings, metrics)
    else:
        _refuse(
            metrics,
            415,
            "content_type",
            "send multipart/form-data with image files in field 'files', "
            'or application/json {"urls": [...]}',
        )
    arrays = await _preprocess(predictor, items, metrics, request.app.state.decode_pool)
    # One image (the usual request) goes in as a view: no copy on the event loop.
    x = arrays[0][None] if len(arrays) == 1 else np.stack(arrays)
    outputs = await batcher.submit(x)
    preds = predictor.decode(outputs, top_k or settings.top_k, [name for name, _ in items])
    metrics.predicted(len(preds))
    body = {"model_id": predictor.model_id, "backend": predictor.backend_name, "predictions": preds}
    # Serialised here, once: FastAPI would validate the dicts against PredictResponse and then
    # serialise them, a cost per image on the event loop. The dicts come from
    # Prediction.to_dict, and the tests check the answer against PredictResponse instead.
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


async def _read_files(
    request: Request, settings: Settings, metrics: Metrics
) -> list[tuple[str, bytes]]:
    try:
        form = await request.form(max_files=settings.max_images, max_fields=100)
    except StarletteHTTPException as exc:
        if "Too many files" in str(exc.detail):
            _refuse(
                metrics,
                413,
                "too_many_images",
                f"at most {settings.max_images} images per request; send the rest in another",
            )
        _refuse(metrics, 422, "bad_multipart", f"malformed multipart body: {exc.detail}")
    try:
        files = form.getlist("files")
        if not files:
            _refuse(
                metrics, 422, "empty", "no images: send them as multipart files in field 'files'"
            )
        items = []
        for i, f in enumerate(files):
            if not isinstance(f, UploadFile):
                _refuse(metrics, 422, "not_a_file", "field 'files' must hold files, not text")
            items.append((f.filename or f"image-{i}", await f.read()))
        return items
    finally:
        await form.close()


async def _read_urls(
    request: Request, settings: Settings, metrics: Metrics
) -> list[tuple[str, bytes]]:
    try:
        urls = UrlsRequest.model_validate_json(await request.body()).urls
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        _refuse(metrics, 422, "bad_json", f'expected {{"urls": [...]}}: {where}: {first["msg"]}')
    if not urls:
        _refuse(metrics, 422, "empty", '"urls" is empty: give at least one image URL')
    if len(urls) > settings.max_images:
        _refuse(
            metrics,
            413,
            "too_many_images",
            f"at most {settings.max_images} images per request; send the rest in another",
        )
    results = await asyncio.gather(
        *(
            fetch(
                u,
                allow_private=settings.allow_private_urls,
                max_bytes=settings.max_body_bytes,
                timeout_s=settings.url_timeout_s,
                max_redirects=settings.url_max_redirects,
            )
            for u in urls
        ),
        return_exceptions=True,
    )
    for r in results:
        if isinstance(r, UrlError):
            _refuse(metrics, 400 if r.refused else 422, "bad_url", str(r))
        if isinstance(r, BaseException):
            raise r
    return list(zip(urls, results, strict=True))


async def _preprocess(
    predictor: PredictorDep, items: list[tuple[str, bytes]], metrics: Metrics, pool: Executor
) -> list[np.ndarray]:
    loop = asyncio.get_running_loop()
    results = await asyncio.gather(
        *(loop.run_in_executor(pool, predictor.preprocess, data) for _, data in items),
        return_exceptions=True,
    )
    for (name, _), r in zip(items, results, strict=True):
        if isinstance(r, ImageError):
            status = 415 if r.reason in UNSUPPORTED else 422
            _refuse(
                metrics, status, r.reason, f"{name}: {r} (send a JPEG, PNG, WebP, GIF, BMP or TIFF)"
            )
        if isinstance(r, BaseException):
            raise r
    return list(results)  # type: ignore[arg-type]
