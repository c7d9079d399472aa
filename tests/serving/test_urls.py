"""`{"urls": [...]}`: images fetched from a local server; private hosts refused before any connection."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpcore
import httpx
import pytest
from serve_fakes import FakePredictor, png

from fashion_tagger import _net
from fashion_tagger.serving import urls
from fashion_tagger.serving.app import create_app
from fashion_tagger.serving.deps import get_predictor
from fashion_tagger.serving.settings import Settings

RED, BLUE = png((220, 30, 30)), png((30, 60, 220))


class Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Handler.seen.append(self.path)
        routes = {
            "/red.png": (200, RED, {}),
            "/blue.png": (200, BLUE, {}),
            "/redirect": (302, b"", {"Location": "/blue.png"}),
            "/to-private": (302, b"", {"Location": "http://10.0.0.1/secret.png"}),
            "/loop": (302, b"", {"Location": "/loop"}),
            "/big": (200, b"\x89PNG" + b"0" * 50_000, {}),
            "/text": (200, b"just some text", {}),
        }
        if self.path == "/slow":
            time.sleep(1.0)
        status, body, headers = routes.get(self.path, (404, b"missing", {}))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def connects(monkeypatch):
    """Every TCP connection attempt the fetcher makes, by address."""
    calls: list[str] = []
    real = httpcore.AnyIOBackend.connect_tcp

    async def spy(self, host, port, *args, **kwargs):
        calls.append(host)
        return await real(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", spy)
    Handler.seen.clear()
    return calls


def post_urls(url_list, **settings):
    async def go():
        app = create_app(Settings(**settings))
        app.dependency_overrides[get_predictor] = FakePredictor
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            return await c.post("/v1/predict", json={"urls": url_list})

    return asyncio.run(go())


def test_urls_from_a_local_server_with_allow_private(server, connects):
    r = post_urls([f"{server}/red.png", f"{server}/redirect"], allow_private_urls=True)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["image"] for p in preds] == [f"{server}/red.png", f"{server}/redirect"]
    assert [[s["label"] for s in p["path"]] for p in preds] == [
        ["round", "red"],
        ["square", "blue"],
    ]
    assert sorted(Handler.seen) == ["/blue.png", "/red.png", "/redirect"]
    assert set(connects) == {"127.0.0.1"}


@pytest.mark.parametrize(
    "url",
    [
        "{server}/red.png",
        "http://localhost:{port}/red.png",
        "http://10.1.2.3/image.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/red.png",
        "http://0.0.0.0:{port}/red.png",
        "http://224.0.0.1/x.png",
        "http://192.168.1.10/x.png",
    ],
)
def test_private_hosts_are_refused_without_any_connection(server, connects, url):
    port = server.rsplit(":", 1)[1]
    r = post_urls([url.format(server=server, port=port)])
    assert r.status_code == 400, r.text
    assert "--allow-private-urls" in r.json()["detail"]
    assert connects == [] and Handler.seen == []


def test_a_redirect_to_a_private_host_is_checked_again(server, connects, monkeypatch):
    # pretend the local server is public, so only the redirect target is private
    monkeypatch.setattr(_net, "is_public", lambda ip: ip == "127.0.0.1")
    with pytest.raises(urls.UrlError, match="private") as exc:
        asyncio.run(urls.fetch(f"{server}/to-private"))
    assert exc.value.refused
    assert Handler.seen == ["/to-private"] and set(connects) == {"127.0.0.1"}


@pytest.mark.parametrize(
    ("path", "kwargs", "message"),
    [
        ("/big", {"max_bytes": 10_000}, "larger than"),
        ("/slow", {"timeout_s": 0.3}, "longer than"),
        ("/nothing-here", {}, "HTTP 404"),
        ("/loop", {"max_redirects": 2}, "more than 2 redirects"),
    ],
)
def test_fetch_limits(server, path, kwargs, message):
    with pytest.raises(urls.UrlError, match=message) as exc:
        asyncio.run(urls.fetch(f"{server}{path}", allow_private=True, **kwargs))
    assert not exc.value.refused


@pytest.mark.parametrize(
    ("path", "status"), [("/text", 415), ("/nothing-here", 422), ("/big", 422)]
)
def test_url_failures_are_4xx_in_the_api(server, path, status):
    r = post_urls([f"{server}{path}"], allow_private_urls=True, max_body_mb=0.01)
    assert r.status_code == status, r.text


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "http:///nohost",
        "http://user:pw@example.com/a",
        "not a url",
    ],
)
def test_malformed_urls_are_400(url):
    r = post_urls([url])
    assert r.status_code == 400, r.text


def test_is_public():
    assert _net.is_public("93.184.216.34") and _net.is_public("2606:4700::1111")
    for ip in [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.1.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "100.64.0.1",
        "240.0.0.1",
    ]:
        assert not _net.is_public(ip), ip
