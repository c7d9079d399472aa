"""A fake Vinted marketplace on 127.0.0.1, for tests, benchmarks and trying the crawler offline.

It follows docs/vinted-api.md: a home page embedding a `catalogTree` (Women, Men and Kids, plus
non-fashion branches: Home, Entertainment, Beauty, Toys) and setting an expiring
`access_token_web` cookie that the API checks; paged `/api/v2/catalog/items` (per_page capped);
`/api/v2/items/{id}` details; `/api/v2/catalog/initializers`; JPEG photos drawn deterministically
(one colour per listing) at signed URLs. Some listings appear under both a Women and a Men leaf,
prices come in both the string and the object shape, and faults can be switched on at a fixed
rate (every k-th request) so a test is deterministic. Every request is counted per path and
query, so a test can check that nothing was fetched twice.
What it serves (the category tree, its leaves, the photos) is built in `fake_catalog`.

Run it by hand and crawl it:

    python -m fashion_tagger.testing.fake_marketplace --port 8765 --categories 5 \\
        --items-per-category 40 --latency 0.3 --photo-latency 0.1 \\
        [--faults rate_limit_every=7,server_error_every=11]
    fashion-tagger crawl vinted --base-url http://127.0.0.1:8765 --out data/fake --delay 0 \\
        --allow-private-hosts

Control endpoints (not counted): `GET /__stats` (request counts), `GET /__faults`,
`POST /__faults` with a JSON object of `Faults` fields to change them while it runs.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fashion_tagger.testing.fake_catalog import (
    NON_FASHION,
    FakeLeaf,
    catalog_tree,
    colour_int,
    fashion_paths,
    photo_bytes,
)


@dataclass
class Faults:
    """Faults served at a fixed rate: `x_every=k` hits every k-th request.

    API and photo requests are numbered together for the faults of both (429, 5xx, slow), and
    API requests alone for the API-only ones; the home page and control endpoints are not
    numbered. A given setting always hits the same requests of a sequential crawl.
    """

    rate_limit_every: int = 0
    """429 with a `Retry-After: retry_after` header."""
    retry_after: float = 1.0
    rate_limit_bare_every: int = 0
    """429 without Retry-After."""
    server_error_every: int = 0
    """503."""
    slow_every: int = 0
    """Answer after `slow_seconds` (past a short client timeout)."""
    slow_seconds: float = 2.0
    expire_cookie_every: int = 0
    """Revoke every cookie issued so far, then answer 401 (API only)."""
    auth_403_every: int = 0
    """403 `{"code": 100}` invalid token (API only; the cookie is revoked too)."""
    malformed_json_every: int = 0
    """200 with truncated JSON (API only)."""
    corrupt_photo_every: int = 0
    """200 with a truncated JPEG (photos only)."""
    detail_denied_every: int = 0
    """403 `{"code": 106}` on item details."""
    bot_wall_after: int = 0
    """After this many requests (home included), the bot wall: 403 with an HTML page..."""
    bot_wall_requests: int = 0
    """...for this many requests, then it clears (a large number: it never clears)."""

    @classmethod
    def parse(cls, text: str) -> Faults:
        """`a=1,b=2.5` (the command-line form)."""
        known = {f.name: f.type for f in fields(cls)}
        out = cls()
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            if key not in known:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(known)}")
            setattr(out, key, float(value) if "float" in str(known[key]) else int(value))
        return out


class FakeVinted:
    """The fake marketplace; `with FakeVinted(...) as fake:` serves it at `fake.url`.

    Args:
        categories: fashion leaves (Women, Men, Kids); non-fashion leaves are always added.
        items_per_category: listings per leaf.
        latency: seconds added to every answer (the API's and the home page's).
        photo_latency: seconds added to every photo answer (the image CDN's); None: `latency`.
        page_cap: the server's cap on per_page (96 on the real site).
        photos_per_item: photos in an item detail (the first is the search result's photo).
        unisex_every: every k-th listing of a Men leaf is the same as its Women pair's (0: none).
        no_photo_every: every k-th listing has `photo: null` and no photos (0: none).
        cookie_ttl: seconds a cookie stays valid.
        tree_shape: how the home page embeds the tree: `script`, `rails`, `next`, or `none`
            (then only `/api/v2/catalog/initializers` has it).
    """

    def __init__(
        self,
        categories: int = 5,
        items_per_category: int = 40,
        latency: float = 0.0,
        faults: Faults | None = None,
        page_cap: int = 96,
        photos_per_item: int = 3,
        unisex_every: int = 4,
        no_photo_every: int = 0,
        cookie_ttl: float = 3600.0,
        tree_shape: str = "script",
        port: int = 0,
        photo_latency: float | None = None,
    ) -> None:
        self.faults = faults or Faults()
        self.photo_latency = latency if photo_latency is None else photo_latency
        self.latency, self.page_cap, self.photos_per_item = latency, page_cap, photos_per_item
        self.no_photo_every, self.cookie_ttl, self.tree_shape = (
            no_photo_every,
            cookie_ttl,
            tree_shape,
        )
        self.port = port
        self.hits: Counter[str] = Counter()
        self.n = 0
        self.n_api = 0
        self.walled = 0
        self.tokens: dict[str, float] = {}
        self.lock = threading.Lock()
        self.leaves: list[FakeLeaf] = []
        paths = fashion_paths(categories)
        by_path: dict[tuple[str, ...], tuple[int, ...]] = {}
        for k, path in enumerate(paths + NON_FASHION):
            items = [1_000_000 + k * 10_000 + j for j in range(items_per_category)]
            pair = ("Women", *path[1:])
            if path[0] == "Men" and pair in by_path and unisex_every:
                items = [
                    by_path[pair][j] if j % unisex_every == 0 else items[j]
                    for j in range(items_per_category)
                ]
            by_path[path] = tuple(items)
            self.leaves.append(FakeLeaf(20_000 + k, path, k < len(paths), tuple(items)))
        self.tree = catalog_tree(self.leaves)
        self._server: ThreadingHTTPServer | None = None

    # -- data --------------------------------------------------------------------------------
    def fashion_leaves(self) -> list[FakeLeaf]:
        return [leaf for leaf in self.leaves if leaf.fashion]

    def leaf_of(self, item_id: int) -> FakeLeaf:
        return next(leaf for leaf in self.leaves if item_id in leaf.items)

    def has_photo(self, item_id: int) -> bool:
        return not (self.no_photo_every and item_id % self.no_photo_every == 0)

    def photo_url(self, item_id: int, n: int) -> str:
        sig = hashlib.sha1(f"{item_id}/{n}".encode()).hexdigest()[:12]
        return f"{self.url}/t/{item_id}/f800/{n}.jpeg?s={sig}"

    def item(self, item_id: int, detail: bool = False) -> dict[str, Any]:
        amount = f"{5 + item_id % 50}.0"
        price: Any = amount if item_id % 2 else {"amount": amount, "currency_code": "EUR"}
        photos = [self._photo(item_id, n) for n in range(self.photos_per_item)]
        if not self.has_photo(item_id):
            photos = []
        d: dict[str, Any] = {
            "id": item_id,
            "title": f"Listing {item_id}",
            "price": price,
            "brand_title": ("Zara", "H&M", "Nike", "")[item_id % 4],
            "size_title": ("S", "M", "L", "42")[item_id % 4],
            "status": ("Very good", "Good", "New with tags")[item_id % 3],
            "url": f"{self.url}/items/{item_id}-listing-{item_id}",
            "favourite_count": item_id % 7,
            "user": {"id": item_id % 97, "login": f"user{item_id % 97}"},
            "photo": photos[0] if photos else None,
        }
        if item_id % 2:
            d["currency"] = "EUR"
        if detail:
            d = {
                **d,
                "catalog_id": self.leaf_of(item_id).id,
                "photos": photos,
                "brand_dto": {"title": d["brand_title"]},
                "created_at_ts": 1_700_000_000,
            }
        return d

    def _photo(self, item_id: int, n: int) -> dict[str, Any]:
        url = self.photo_url(item_id, n)
        return {
            "id": item_id * 10 + n,
            "url": url,
            "full_size_url": url,
            "width": 240,
            "height": 320,
            "is_main": n == 0,
            "dominant_color": f"#{colour_int(item_id, n):06x}",
            "thumbnails": [
                {"type": "thumb70x100", "url": url + "&t=70", "width": 70, "height": 100}
            ],
            "high_resolution": {
                "id": str(item_id),
                "timestamp": 1_700_000_000 + item_id,
                "orientation": None,
            },
        }

    def home_html(self) -> str:
        tree = json.dumps({"catalogTree": self.tree})
        if self.tree_shape == "rails":
            body = (
                '<script type="application/json" data-js-react-on-rails-store="MainStore" '
                f'data-store="{_html_escape(tree)}"></script>'
            )
        elif self.tree_shape == "next":
            half = len(tree) // 2
            body = "".join(
                f"<script>self.__next_f.push([1,{json.dumps(part)}])</script>"
                for part in ("0:" + tree[:half], tree[half:])
            )
        elif self.tree_shape == "none":
            body = "<div id='app'></div>"
        else:
            body = f'<script type="application/json" data-component-name="Catalog">{tree}</script>'
        return f"<!doctype html><html><head><title>Fake Vinted</title></head><body>{body}</body></html>"

    # -- serving -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeVinted:
        self._server = _Server(("127.0.0.1", self.port), _handler(self))
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeVinted:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, prefix: str) -> dict[str, int]:
        """Requests per path+query starting with `prefix`."""
        with self.lock:
            return {k: v for k, v in self.hits.items() if k.startswith(prefix)}

    def new_token(self) -> str:
        exp = time.time() + self.cookie_ttl
        head = _b64({"alg": "HS256", "typ": "JWT"})
        payload = _b64({"exp": int(exp), "n": len(self.tokens)})
        token = f"{head}.{payload}.{hashlib.sha1(payload.encode()).hexdigest()[:16]}"
        self.tokens[token] = exp
        return token


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed mid-request (as the resume tests do) is not an error worth a trace."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


class _Handler(BaseHTTPRequestHandler):
    """Answers one connection's requests for the `fake` marketplace set on a subclass."""

    fake: FakeVinted
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each answer waits ~40 ms for a delayed ACK

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def send(
        self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(obj).encode(), "application/json", headers)

    def do_POST(self) -> None:
        if self.path != "/__faults":
            return self.json(404, {"code": 404})
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        for key, value in json.loads(body or b"{}").items():
            setattr(self.fake.faults, key, value)
        self.json(200, asdict(self.fake.faults))

    def _count(self, path: str) -> tuple[int, int, bool]:
        """Number this request (all, and API only) and say whether the bot wall answers it."""
        fake, f = self.fake, self.fake.faults
        with fake.lock:
            fake.hits[self.path] += 1
            total = sum(fake.hits.values())
            if path != "/":
                fake.n += 1
            if path.startswith("/api/"):
                fake.n_api += 1
            wall = bool(
                f.bot_wall_after and total > f.bot_wall_after and fake.walled < f.bot_wall_requests
            )
            if wall:
                fake.walled += 1
            return fake.n, fake.n_api, wall

    def do_GET(self) -> None:
        fake = self.fake
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        if path == "/__stats":
            with fake.lock:
                return self.json(200, {"hits": dict(fake.hits), "requests": fake.n})
        if path == "/__faults":
            return self.json(200, asdict(fake.faults))
        n, n_api, wall = self._count(path)
        delay = fake.photo_latency if path.startswith("/t/") else fake.latency
        if delay:
            time.sleep(delay)
        if wall:
            return self.send(
                403, b"<html><body>Please verify you are a human</body></html>", "text/html"
            )
        if path == "/":
            cookie = f"access_token_web={fake.new_token()}; Path=/; HttpOnly"
            return self.send(
                200, fake.home_html().encode(), "text/html; charset=utf-8", {"Set-Cookie": cookie}
            )
        if self._shared_fault(n):
            return None
        if path.startswith("/api/"):
            return self._api_request(path, query, n_api)
        if path.startswith("/t/"):
            return self._photo(path, query, n)
        return self.send(404, b"<html>not found</html>", "text/html")

    def _shared_fault(self, n: int) -> bool:
        """Answer with the fault (slow, 429, 503) request `n` draws, if any."""
        f = self.fake.faults
        if _hit(f.slow_every, n):
            time.sleep(f.slow_seconds)
        if _hit(f.rate_limit_every, n):
            self.json(429, {"code": 429}, {"Retry-After": f"{f.retry_after:g}"})
        elif _hit(f.rate_limit_bare_every, n):
            self.json(429, {"code": 429})
        elif _hit(f.server_error_every, n):
            self.json(503, {"code": 503})
        else:
            return False
        return True

    def _api_request(self, path: str, query: dict[str, list[str]], n: int) -> None:
        """An API call: API-only faults (numbered on API requests), the cookie check, the answer."""
        fake, f = self.fake, self.fake.faults
        if _hit(f.expire_cookie_every, n) or _hit(f.auth_403_every, n):
            with fake.lock:
                fake.tokens.clear()
        if not self._authorised():
            status = 403 if _hit(f.auth_403_every, n) else 401
            return self.json(status, {"code": 100, "message": "invalid_authentication_token"})
        if _hit(f.malformed_json_every, n):
            return self.send(200, b'{"items": [{"id": 1, "tit', "application/json")
        return self._api(path, query, n)

    def _authorised(self) -> bool:
        raw = self.headers.get("Cookie", "")
        for part in raw.split(";"):
            key, _, value = part.strip().partition("=")
            if key == "access_token_web":
                with self.fake.lock:
                    exp = self.fake.tokens.get(value)
                return exp is not None and exp > time.time()
        return False

    def _api(self, path: str, query: dict[str, list[str]], n: int) -> None:
        if path == "/api/v2/catalog/items":
            try:
                cid = int(query.get("catalog_ids", ["0"])[0].split(",")[0])
                page = max(1, int(query.get("page", ["1"])[0]))
                per_page = min(self.fake.page_cap, max(1, int(query.get("per_page", ["20"])[0])))
            except ValueError:
                return self.json(400, {"code": 400})
            leaf = next((x for x in self.fake.leaves if x.id == cid), None)
            ids = list(leaf.items) if leaf else []
            chunk = ids[(page - 1) * per_page : page * per_page]
            return self.json(
                200,
                {
                    "items": [self.fake.item(i) for i in chunk],
                    "pagination": {
                        "current_page": page,
                        "total_pages": math.ceil(len(ids) / per_page),
                        "total_entries": len(ids),
                        "per_page": per_page,
                        "time": int(time.time()),
                    },
                    "code": 0,
                },
            )
        if path == "/api/v2/catalog/initializers":
            return self.json(200, {"dtos": {"catalogs": self.fake.tree}})
        parts = path.strip("/").split("/")
        if len(parts) >= 4 and parts[:3] == ["api", "v2", "items"] and parts[3].isdigit():
            item_id = int(parts[3])
            if not any(item_id in leaf.items for leaf in self.fake.leaves):
                return self.json(404, {"code": 404})
            if (
                self.fake.faults.detail_denied_every
                and n % self.fake.faults.detail_denied_every == 0
            ):
                return self.json(403, {"code": 106, "message": "access denied"})
            return self.json(200, {"item": self.fake.item(item_id, detail=True), "code": 0})
        return self.json(404, {"code": 404})

    def _photo(self, path: str, query: dict[str, list[str]], n: int) -> None:
        parts = path.strip("/").split("/")  # t/<id>/f800/<n>.jpeg
        try:
            item_id, k = int(parts[1]), int(parts[3].split(".")[0])
        except (IndexError, ValueError):
            return self.send(404, b"", "text/plain")
        sig = hashlib.sha1(f"{item_id}/{k}".encode()).hexdigest()[:12]
        if query.get("s", [""])[0] != sig:
            return self.send(403, b'{"code": 403, "message": "bad signature"}', "application/json")
        data = photo_bytes(item_id, k)
        if self.fake.faults.corrupt_photo_every and n % self.fake.faults.corrupt_photo_every == 0:
            data = data[: len(data) // 3]
        self.send(200, data, "image/jpeg")


def _hit(every: int, n: int) -> bool:
    return bool(every) and n % every == 0


def _handler(fake: FakeVinted) -> type[BaseHTTPRequestHandler]:
    """A handler class bound to `fake` (the HTTP server makes one handler per connection)."""
    return type("Handler", (_Handler,), {"fake": fake})


def main(argv: list[str] | None = None) -> None:
    """Serve the fake marketplace until Ctrl-C."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--categories", type=int, default=5, help="fashion leaf categories")
    parser.add_argument("--items-per-category", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    parser.add_argument(
        "--photo-latency", type=float, default=None, help="seconds added to photo answers"
    )
    parser.add_argument("--page-cap", type=int, default=96, help="the server's cap on per_page")
    parser.add_argument("--no-photo-every", type=int, default=0)
    parser.add_argument(
        "--tree-shape", choices=["script", "rails", "next", "none"], default="script"
    )
    parser.add_argument(
        "--faults", default="", help="e.g. rate_limit_every=7,server_error_every=11"
    )
    args = parser.parse_args(argv)
    fake = FakeVinted(
        categories=args.categories, items_per_category=args.items_per_category,
        latency=args.latency, faults=Faults.parse(args.faults), page_cap=args.page_cap,
        no_photo_every=args.no_photo_every, tree_shape=args.tree_shape, port=args.port,
        photo_latency=args.photo_latency,
    ).start()  # fmt: skip
    print(f"fake marketplace at {fake.url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
