"""A fake web shop on 127.0.0.1, for tests, benchmarks and trying `crawl shop` offline.

It serves what a real shop's crawler meets: `/robots.txt` (Disallow: /private/), `/sitemap.xml`
(a sitemap index of two product sitemaps and a page sitemap, or one urlset), product pages
whose schema.org JSON-LD comes in the shapes shops use (a plain `Product` beside a
`BreadcrumbList`, an `@graph`, images as a string, a list or `ImageObject`s, brands as strings
or `Brand`s, offers as an `Offer`, a list or an `AggregateOffer`), and JPEG images. Faults are
switched on at a fixed rate (every k-th page or image request) or added as extra pages, so a
test is deterministic; every request is counted per path.

Run it by hand and crawl it:

    python -m fashion_tagger.testing.fake_shop --port 8766 --products 24
    fashion-tagger crawl shop --sitemap http://127.0.0.1:8766/sitemap.xml --out data/shop \\
        --delay 0 --allow-private-hosts
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from fashion_tagger.testing.fake_catalog import photo_bytes

CATEGORIES = [
    ("Women", "Dresses"),
    ("Women", "Tops"),
    ("Men", "Shirts"),
    ("Men", "Shoes"),
    ("Kids", "Jackets"),
    ("Women", "Shoes", "Sandals"),
]
COLOURS = ("Red", "Navy", "Black", "White", "Green", "Pink")
BRANDS = ("Acme", "Northwind", "Zed")


@dataclass
class ShopFaults:
    """Faults of the fake shop. Page and image requests are numbered together for the rate-based
    ones; the extra pages are listed in the sitemap besides the regular products."""

    server_error_every: int = 0
    """503 on every k-th page or image request."""
    slow_every: int = 0
    """Answer every k-th page or image request after `slow_seconds` (past a short timeout)."""
    slow_seconds: float = 2.0
    no_jsonld_pages: int = 0
    """Extra pages (`/info/N.html`) with no JSON-LD at all."""
    disallowed_products: int = 0
    """Extra product pages under `/private/`, which robots.txt disallows."""
    broken_image_products: int = 0
    """Extra products whose image is a truncated JPEG."""
    missing_pages: int = 0
    """Extra sitemap entries that answer 404."""


@dataclass(frozen=True)
class FakeProduct:
    k: int
    sku: str
    name: str
    path: str
    labels: tuple[str, ...]
    brand: str
    price: str
    images: int
    broken: bool = False


class FakeShop:
    """The fake shop; `with FakeShop(...) as shop:` serves it at `shop.url`.

    Args:
        products: regular product pages (each with a Product and a BreadcrumbList).
        images_per_product: images each product lists.
        latency: seconds added to every answer.
        sitemap_index: `/sitemap.xml` is an index of sitemaps (else one urlset).
        photo: `photo(k, n)` gives the JPEG bytes of image n of product k (default: a colour
            card); give real photos to make the shop look like a real one.
    """

    def __init__(
        self,
        products: int = 24,
        images_per_product: int = 1,
        faults: ShopFaults | None = None,
        latency: float = 0.0,
        sitemap_index: bool = True,
        photo: Callable[[int, int], bytes] | None = None,
        port: int = 0,
    ) -> None:
        self.faults = faults or ShopFaults()
        self.latency, self.sitemap_index, self.port = latency, sitemap_index, port
        self.photo = photo or (lambda k, n: photo_bytes(k, n))
        self.hits: Counter[str] = Counter()
        self.n = 0
        self.lock = threading.Lock()
        f = self.faults
        self.products = [self._product(k, images_per_product) for k in range(products)]
        base = products
        self.private = [
            self._product(base + j, 1, prefix="/private/p/") for j in range(f.disallowed_products)
        ]
        base += f.disallowed_products
        self.broken = [
            self._product(base + j, 1, broken=True) for j in range(f.broken_image_products)
        ]
        self.by_path = {p.path: p for p in self.products + self.private + self.broken}
        self._server: ThreadingHTTPServer | None = None

    def _product(
        self, k: int, images: int, prefix: str = "/p/", broken: bool = False
    ) -> FakeProduct:
        labels = CATEGORIES[k % len(CATEGORIES)]
        name = f"{COLOURS[k % len(COLOURS)]} {labels[-1].lower()} {k}"
        slug = name.lower().replace(" ", "-")
        return FakeProduct(k, f"SKU-{k:04d}", name, f"{prefix}{slug}.html", labels,
                           BRANDS[k % len(BRANDS)], f"{10 + k}.99", images, broken)  # fmt: skip

    # -- what a crawl should find --------------------------------------------------------------
    def expected(self) -> dict[str, tuple[str, ...]]:
        """Item id -> label path of every product a crawl must keep (the regular ones)."""
        return {p.sku if p.k % 4 != 3 else f"PID-{p.k}": p.labels for p in self.products}

    def page_urls(self) -> list[str]:
        extra = [f"/info/{j}.html" for j in range(self.faults.no_jsonld_pages)]
        extra += [f"/gone/{j}.html" for j in range(self.faults.missing_pages)]
        return [p.path for p in self.products + self.private + self.broken] + extra

    # -- documents -----------------------------------------------------------------------------
    def robots(self) -> str:
        return "User-agent: *\nDisallow: /private/\n\nUser-agent: BadBot\nDisallow: /\n"

    def sitemap(self, path: str) -> str | None:
        pages = self.page_urls()
        half = len(self.products) // 2
        parts = {
            "/sitemaps/products-1.xml": [p.path for p in self.products[:half]],
            "/sitemaps/products-2.xml": [p.path for p in self.products[half:]],
            "/sitemaps/pages.xml": pages[len(self.products) :],
        }
        if path == "/sitemap.xml" and self.sitemap_index:
            locs = "".join(f"<sitemap><loc>{self.url}{p}</loc></sitemap>" for p in parts)
            return (
                '<?xml version="1.0" encoding="UTF-8"?>\n<sitemapindex '
                f'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{locs}</sitemapindex>'
            )
        urls = pages if path == "/sitemap.xml" else parts.get(path)
        if urls is None:
            return None
        locs = "".join(f"<url><loc>{self.url}{u}</loc><priority>0.8</priority></url>" for u in urls)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n<urlset '
            f'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{locs}</urlset>'
        )

    def jsonld(self, p: FakeProduct) -> list[dict[str, Any]]:
        """The page's JSON-LD blocks, in one of three shapes by product number."""
        images = [f"{self.url}/img/{p.k}/{n}.jpg" for n in range(p.images)]
        product: dict[str, Any] = {
            "@context": "https://schema.org",
            "@type": "Product",
            "name": p.name,
            "category": " > ".join(p.labels),
            "description": f"A {p.name.lower()}.",
        }
        if p.k % 4 == 3:
            product["productID"] = f"PID-{p.k}"
        else:
            product["sku"] = p.sku
        crumbs = [{"@type": "ListItem", "position": 1, "name": "Home", "item": f"{self.url}/"}]
        for i, label in enumerate(p.labels):
            crumbs.append({"@type": "ListItem", "position": i + 2, "name": label,
                           "item": f"{self.url}/c/{'/'.join(p.labels[: i + 1]).lower()}"})  # fmt: skip
        crumbs.append({"@type": "ListItem", "position": len(crumbs) + 1, "name": p.name})
        breadcrumb = {"@context": "https://schema.org", "@type": "BreadcrumbList"}
        shape = p.k % 3
        if shape == 0:
            product["image"] = images
            product["brand"] = {"@type": "Brand", "name": p.brand}
            product["offers"] = {"@type": "Offer", "price": p.price, "priceCurrency": "EUR"}
            return [product, {**breadcrumb, "itemListElement": crumbs}]
        if shape == 1:
            product["image"] = [{"@type": "ImageObject", "url": u} for u in images]
            product["brand"] = p.brand
            product["offers"] = [
                {"@type": "Offer", "price": float(p.price), "priceCurrency": "EUR"}
            ]
            return [product, {**breadcrumb, "itemListElement": crumbs[::-1]}]  # by position
        product["image"] = images[0] if len(images) == 1 else images
        product["brand"] = {"@type": "Brand", "name": p.brand}
        product["offers"] = {"@type": "AggregateOffer", "lowPrice": p.price, "priceCurrency": "EUR"}
        del product["@context"]
        graph = [{"@type": "WebSite", "name": "Fake shop"}, product,
                 {"@type": "BreadcrumbList", "itemListElement": crumbs}]  # fmt: skip
        return [{"@context": "https://schema.org", "@graph": graph}]

    def page_html(self, p: FakeProduct) -> str:
        scripts = "".join(
            f'<script type="application/ld+json">{json.dumps(b)}</script>' for b in self.jsonld(p)
        )
        return (
            f"<!doctype html><html><head><title>{p.name}</title>{scripts}</head>"
            f'<body><h1>{p.name}</h1><img src="/img/{p.k}/0.jpg"></body></html>'
        )

    # -- serving -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sitemap_url(self) -> str:
        return f"{self.url}/sitemap.xml"

    def start(self) -> FakeShop:
        self._server = _Server(("127.0.0.1", self.port), type("H", (_Handler,), {"shop": self}))
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeShop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, prefix: str) -> dict[str, int]:
        """Requests per path starting with `prefix`."""
        with self.lock:
            return {k: v for k, v in self.hits.items() if k.startswith(prefix)}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    shop: FakeShop
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    def send(self, status: int, body: bytes, ctype: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        shop, f = self.shop, self.shop.faults
        path = urlsplit(self.path).path
        with shop.lock:
            shop.hits[path] += 1
            counted = path.startswith(("/p/", "/img/", "/private/", "/info/", "/gone/"))
            if counted:
                shop.n += 1
            n = shop.n
        if shop.latency:
            time.sleep(shop.latency)
        if counted and f.slow_every and n % f.slow_every == 0:
            time.sleep(f.slow_seconds)
        if counted and f.server_error_every and n % f.server_error_every == 0:
            return self.send(503, b"<html>busy</html>", "text/html")
        if path == "/robots.txt":
            return self.send(200, shop.robots().encode(), "text/plain")
        if (xml := shop.sitemap(path)) is not None:
            return self.send(200, xml.encode(), "application/xml")
        if path in shop.by_path:
            return self.send(200, shop.page_html(shop.by_path[path]).encode(), "text/html")
        if path.startswith("/info/"):
            return self.send(200, b"<html><body>About us</body></html>", "text/html")
        if path.startswith("/img/"):
            return self._image(path)
        return self.send(404, b"<html>not found</html>", "text/html")

    def _image(self, path: str) -> None:
        try:
            _, _, k, n = path.split("/")
            k, n = int(k), int(n.split(".")[0])
        except ValueError:
            return self.send(404, b"", "text/plain")
        data = self.shop.photo(k, n)
        if any(p.k == k for p in self.shop.broken):
            data = data[: len(data) // 3]
        self.send(200, data, "image/jpeg")


def main(argv: list[str] | None = None) -> None:
    """Serve the fake shop until Ctrl-C."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--products", type=int, default=24)
    parser.add_argument("--images-per-product", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args(argv)
    shop = FakeShop(args.products, args.images_per_product, latency=args.latency, port=args.port)
    shop.start()
    print(f"fake shop at {shop.sitemap_url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        shop.stop()


if __name__ == "__main__":
    main()
