"""The HTTP API with a fake predictor: every endpoint, every 4xx, the batcher and the metrics."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_fakes import FakePredictor, png

from fashion_tagger.serving.app import create_app
from fashion_tagger.serving.batching import MicroBatcher
from fashion_tagger.serving.deps import get_predictor
from fashion_tagger.serving.schemas import PredictResponse
from fashion_tagger.serving.settings import Settings, SettingsError

RED, BLUE, GREEN = (220, 30, 30), (30, 60, 220), (30, 180, 40)


def make_client(**settings) -> tuple[httpx.AsyncClient, FakePredictor]:
    app = create_app(Settings(**settings))
    fake = FakePredictor()
    app.dependency_overrides[get_predictor] = lambda: fake
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver"), fake


def run(coro):
    return asyncio.run(coro)


def bomb_png() -> bytes:
    """A valid 1x1 PNG whose header claims 20000 x 20000 pixels (with a correct CRC)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", 20000, 20000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


async def _post_files(client, files, **params):
    return await client.post("/v1/predict", files=[("files", f) for f in files], params=params)


def test_health_model_and_openapi():
    async def go():
        client, _ = make_client()
        async with client:
            h = await client.get("/healthz")
            m = await client.get("/v1/model")
            o = await client.get("/openapi.json")
        return h, m, o

    h, m, o = run(go())
    assert h.status_code == 200
    assert h.json() == {
        "status": "ok",
        "model_id": "fake-000000000000",
        "backend": "fake",
        "max_images": 16,
        "max_body_mb": 20.0,
    }
    info = m.json()
    assert info["taxonomy"]["levels"] == ["shape", "colour"]
    assert info["attributes"]["names"] == ["size=big", "size=small"]
    assert info["input"]["size"] == [8, 8] and info["backbone"]["name"] == "fake-net"
    spec = o.json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert {"/v1/model", "/healthz", "/metrics"} <= set(spec["paths"])


def test_predict_one_and_many_files_in_order():
    async def go():
        client, _ = make_client()
        async with client:
            one = await _post_files(client, [("red.png", png(RED), "image/png")])
            many = await _post_files(
                client,
                [
                    ("a.png", png(BLUE), "image/png"),
                    ("b.png", png(RED, (10, 30)), "image/png"),
                    ("c.png", png(GREEN), "image/png"),
                ],
                top_k=2,
            )
        return one, many

    one, many = run(go())
    assert one.status_code == 200, one.text
    assert one.headers["content-type"] == "application/json"
    # the route serialises its answer itself: it must still be what the OpenAPI schema says
    for r in (one, many):
        assert PredictResponse.model_validate_json(r.content).model_dump(mode="json") == r.json()
    body = one.json()
    assert body["model_id"] == "fake-000000000000" and body["backend"] == "fake"
    (p,) = body["predictions"]
    assert [s["label"] for s in p["path"]] == ["round", "red"]
    assert [s["level"] for s in p["path"]] == ["shape", "colour"]
    assert p["path"][0]["score"] == pytest.approx(0.9)
    assert [a["name"] for a in p["attributes"]] == ["size=big"]
    assert p["image"] == "red.png" and len(p["top_k"]) == 5
    preds = many.json()["predictions"]
    assert [q["image"] for q in preds] == ["a.png", "b.png", "c.png"]
    assert [[s["label"] for s in q["path"]] for q in preds] == [
        ["square", "blue"],
        ["round", "red"],
        ["square", "green"],
    ]
    assert [a["name"] for a in preds[1]["attributes"]] == ["size=small"]
    assert all(len(q["top_k"]) == 2 for q in preds)


@pytest.mark.parametrize(
    ("kind", "status", "needle"),
    [
        ("too_large", 413, "larger than"),
        ("too_large_chunked", 413, "larger than"),
        ("too_many", 413, "at most 2 images"),
        ("too_many_urls", 413, "at most 2 images"),
        ("not_image", 415, "not_an_image"),
        ("empty_file", 415, "empty"),
        ("corrupt", 422, "corrupt"),
        ("bomb", 422, "decompression_bomb"),
        ("no_files", 422, "no images"),
        ("empty_urls", 422, "at least 1 item"),
        ("bad_json", 422, "expected"),
        ("wrong_type", 415, "multipart"),
        ("bad_scheme", 400, "only http and https"),
        ("text_field", 422, "no images"),
        ("top_k", 422, None),
    ],
)
def test_bad_input_is_a_clear_4xx(kind, status, needle):
    good = png(RED)
    truncated = png(RED, (64, 64))[:-30]

    async def go():
        client, _ = make_client(max_images=2, max_body_mb=0.05)
        async with client:
            if kind == "too_large":
                r = await _post_files(client, [("big.bin", b"x" * 60_000, "image/png")])
            elif kind == "too_large_chunked":

                async def chunks():
                    for _ in range(10):
                        yield b"y" * 10_000

                r = await client.post(
                    "/v1/predict", content=chunks(), headers={"content-type": "application/json"}
                )
            elif kind == "too_many":
                r = await _post_files(client, [(f"{i}.png", good, "image/png") for i in range(3)])
            elif kind == "too_many_urls":
                r = await client.post("/v1/predict", json={"urls": ["http://example.com/a"] * 3})
            elif kind == "not_image":
                r = await _post_files(client, [("notes.txt", b"hello, not a photo", "text/plain")])
            elif kind == "empty_file":
                r = await _post_files(client, [("empty.jpg", b"", "image/jpeg")])
            elif kind == "corrupt":
                r = await _post_files(client, [("cut.png", truncated, "image/png")])
            elif kind == "bomb":
                r = await _post_files(client, [("bomb.png", bomb_png(), "image/png")])
            elif kind == "no_files":
                r = await client.post(
                    "/v1/predict",
                    content=b"--b--\r\n",
                    headers={"content-type": "multipart/form-data; boundary=b"},
                )
            elif kind == "text_field":
                r = await client.post(
                    "/v1/predict", data={"other": "x"}, files={"x": ("a", b"", "text/plain")}
                )
            elif kind == "empty_urls":
                r = await client.post("/v1/predict", json={"urls": []})
            elif kind == "bad_json":
                r = await client.post(
                    "/v1/predict", content=b"{nope", headers={"content-type": "application/json"}
                )
            elif kind == "wrong_type":
                r = await client.post(
                    "/v1/predict", content=good, headers={"content-type": "image/png"}
                )
            elif kind == "bad_scheme":
                r = await client.post("/v1/predict", json={"urls": ["file:///etc/passwd"]})
            else:
                r = await _post_files(client, [("a.png", good, "image/png")], top_k=0)
            metrics = (await client.get("/metrics")).text
        return r, metrics

    r, metrics = run(go())
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    if needle:
        assert needle in r.json()["detail"]
    assert f'route="/v1/predict",method="POST",status="{status}"' in metrics


def test_metrics_count_requests_images_errors_and_batches():
    async def go():
        client, _ = make_client()
        async with client:
            for _ in range(3):
                await _post_files(
                    client, [("a.png", png(RED), "image/png"), ("b.png", png(BLUE), "image/png")]
                )
            await _post_files(client, [("t.txt", b"text", "text/plain")])
            await client.get("/nowhere/at/all")
            return await client.get("/metrics")

    r = run(go())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'fashion_tagger_requests_total{route="/v1/predict",method="POST",status="200"} 3' in text
    assert 'fashion_tagger_requests_total{route="unmatched",method="GET",status="404"} 1' in text
    assert "fashion_tagger_images_total 6" in text
    assert 'fashion_tagger_errors_total{route="/v1/predict",reason="not_an_image"} 1' in text
    assert 'fashion_tagger_request_duration_seconds_count{route="/v1/predict"} 4' in text
    assert 'fashion_tagger_request_duration_seconds_bucket{route="/v1/predict",le="+Inf"} 4' in text
    assert "fashion_tagger_batch_size_count 3" in text
    assert "# TYPE fashion_tagger_request_duration_seconds histogram" in text


def test_page_and_its_assets_come_from_the_app():
    async def go():
        client, _ = make_client()
        async with client:
            page = await client.get("/")
            assets = {p: await client.get(p) for p in ("/static/app.js", "/static/style.css")}
        return page, assets

    page, assets = run(go())
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js"' in page.text and "/static/style.css" in page.text
    for path, r in assets.items():
        assert r.status_code == 200, path
    for text in (page.text, *(r.text for r in assets.values())):
        assert "https://" not in text and "http://" not in text  # no CDN, nothing external


def test_no_cdn_backed_docs_pages():
    async def go():
        client, _ = make_client()
        async with client:
            return [(await client.get(p)).status_code for p in ("/docs", "/redoc")]

    assert run(go()) == [404, 404]


def test_no_model_loaded_is_503_not_500():
    async def go():
        app = create_app(Settings())
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            return await c.get("/healthz"), await _post_files(c, [("a.png", png(RED), "image/png")])

    health, pred = run(go())
    assert health.status_code == 503 and pred.status_code == 503
    assert "run dir" in health.json()["detail"]


def test_settings_validate_with_the_flag_name():
    with pytest.raises(SettingsError, match="--max-batch"):
        Settings(max_batch=0)
    with pytest.raises(SettingsError, match="--backend"):
        Settings(backend="tensorflow")
    with pytest.raises(SettingsError, match="--decode-threads"):
        Settings(decode_threads=0)


def test_uploads_decode_on_the_service_own_pool_sized_by_decode_threads():
    import threading

    seen: list[str] = []

    class Recording(FakePredictor):
        def preprocess(self, data: bytes) -> np.ndarray:
            seen.append(threading.current_thread().name)
            return super().preprocess(data)

    app = create_app(Settings(decode_threads=3))
    fake = Recording()
    app.dependency_overrides[get_predictor] = lambda: fake
    assert app.state.decode_pool._max_workers == 3

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await _post_files(client, [("a.png", png(GREEN), "image/png")])

    assert run(go()).status_code == 200
    assert seen and all(name.startswith("decode") for name in seen)


def test_micro_batcher_groups_concurrent_requests_and_routes_rows_back():
    calls: list[int] = []

    def model(x: np.ndarray) -> list[np.ndarray]:
        calls.append(len(x))
        return [x[:, 0, 0, 0] * 2, x[:, 0, 0, :2]]

    async def go():
        batcher = MicroBatcher(model, max_batch=8, max_wait_ms=30)
        xs = [np.full((1 + i % 3, 1, 1, 2), float(i), dtype=np.float32) for i in range(20)]
        outs = await asyncio.gather(*(batcher.submit(x) for x in xs))
        big = await batcher.submit(np.arange(20, dtype=np.float32).reshape(20, 1, 1, 1))
        await batcher.close()
        return xs, outs, big

    xs, outs, big = run(go())
    for i, (x, out) in enumerate(zip(xs, outs, strict=True)):
        assert out[0].tolist() == [2.0 * i] * len(x)
        # out[1] is a view of the model's input: the reused batch buffer must not leak into it
        assert out[1].tolist() == x[:, 0, 0, :2].tolist()
    assert sum(calls[:-3]) == sum(len(x) for x in xs)
    assert max(calls) <= 8
    assert len(calls) - 3 < 20 / 2  # concurrent requests shared model calls
    assert calls[-3:] == [8, 8, 4]  # a request larger than max_batch is split, then rejoined
    assert big[0].tolist() == [2.0 * i for i in range(20)]


def test_model_failure_reaches_every_waiting_request():
    def broken(x):
        raise RuntimeError("boom")

    async def go():
        b = MicroBatcher(broken, max_batch=4, max_wait_ms=5)
        res = await asyncio.gather(
            *(b.submit(np.zeros((1, 1, 1, 1), np.float32)) for _ in range(3)),
            return_exceptions=True,
        )
        await b.close()
        return res

    assert all(isinstance(r, RuntimeError) for r in run(go()))


def test_responses_are_json_serialisable_floats():
    async def go():
        client, _ = make_client()
        async with client:
            return await _post_files(client, [("a.png", png(GREEN), "image/png")])

    r = run(go())
    assert json.loads(r.text)["predictions"][0]["path"][1]["label"] == "green"


def test_micro_batcher_restarts_after_close_and_keeps_the_model_on_its_own_thread():
    import threading

    names: list[str] = []

    def model(x):
        names.append(threading.current_thread().name)
        return [x[:, 0, 0, 0]]

    async def go():
        b = MicroBatcher(model, max_batch=4, max_wait_ms=1)
        first = await b.submit(np.ones((2, 1, 1, 1), np.float32))
        await b.close()
        second = await b.submit(np.full((1, 1, 1, 1), 3.0, np.float32))
        await b.close()
        return first, second

    first, second = run(go())
    assert first[0].tolist() == [1.0, 1.0] and second[0].tolist() == [3.0]
    assert all(n.startswith("model") for n in names)
