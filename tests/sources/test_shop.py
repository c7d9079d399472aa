"""`crawl shop`: sitemaps, robots.txt, schema.org JSON-LD, faults and resume, on a fake shop."""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.sources.shop import ShopConfig, crawl_shop, jsonld, sitemap
from fashion_tagger.sources.shop.crawler import ShopSession
from fashion_tagger.sources.vinted import CrawlError, Politeness
from fashion_tagger.sources.vinted.session import FetchError
from fashion_tagger.testing.fake_shop import FakeShop, ShopFaults

runner = CliRunner()


def _config(shop: FakeShop, **pol) -> ShopConfig:
    p = {"delay": 0.0, "concurrency": 2, "timeout": 2.0, "backoff": 0.01, **pol}
    return ShopConfig(
        sitemap=shop.sitemap_url, allow_private_hosts=True, politeness=Politeness(**p)
    )


def _labels(ds: Dataset) -> dict[str, tuple[str, ...]]:
    return {r.item_id: tuple(r.labels) for r in ds.to_pandas().itertuples()}


# -- the check: the CLI on a static shop -------------------------------------------------
def test_cli_crawls_24_product_pages_into_24_items_labelled_by_breadcrumb(tmp_path):
    faults = ShopFaults(no_jsonld_pages=1, disallowed_products=1)
    with FakeShop(products=24, faults=faults) as shop:
        args = ["crawl", "shop", "--sitemap", shop.sitemap_url, "--out", str(tmp_path / "ds")]
        res = runner.invoke(app, [*args, "--delay", "0", "--allow-private-hosts", "--json"])
        assert res.exit_code == 0, res.output
        summary = json.loads(res.output)
        hits = dict(shop.hits)
    assert summary["stopped"] == "done" and summary["rows"] == 24
    assert (summary["products"], summary["no_product"]) == (24, 1)
    ds = Dataset.open(tmp_path / "ds")
    df = ds.to_pandas()
    assert len(df) == 24 and df.item_id.nunique() == 24
    assert _labels(ds) == shop.expected()
    assert ("Women", "Dresses") in set(_labels(ds).values())
    assert not any("Home" in labels or labels[-1].startswith("Red") for labels in df.labels)
    row = df[df.item_id == "SKU-0000"].iloc[0]
    meta = json.loads(row.meta)
    assert (meta["title"], meta["brand"], meta["price"], meta["currency"]) == (
        "Red dresses 0", "Acme", "10.99", "EUR"
    )  # fmt: skip
    assert row.source == "shop" and row.source_url.endswith("/p/red-dresses-0.html")
    assert list(row.attributes) == ["brand=Acme"]
    assert ds.info.sources[0].kind == "shop"
    assert ds.load_image(0).size == (240, 320)
    # robots.txt read, its Disallow honoured: the private product was never asked for
    assert hits["/robots.txt"] == 1
    assert not [p for p in hits if p.startswith("/private/")]
    assert all(n == 1 for p, n in hits.items() if p != "/robots.txt")  # nothing asked twice
    status = runner.invoke(app, ["crawl", "status", str(tmp_path / "ds"), "--json"])
    st_ = json.loads(status.output)
    assert st_["pages"] == {"done": 24, "no_product": 1, "disallowed": 1}
    assert st_["dataset_images"] == 24
    assert runner.invoke(app, ["crawl", "status", str(tmp_path / "ds")]).exit_code == 0


def test_faults_are_retried_or_recorded_and_nothing_else_is_lost(tmp_path):
    faults = ShopFaults(
        server_error_every=5, slow_every=11, slow_seconds=1.0, broken_image_products=1,
        missing_pages=1,
    )  # fmt: skip
    with FakeShop(products=24, faults=faults, sitemap_index=False) as shop:
        result = crawl_shop(tmp_path, _config(shop, timeout=0.4), progress=False)
    assert result.stopped == "done" and result.retried > 0
    assert _labels(result.dataset) == shop.expected()  # every regular product, once
    assert (result.failed_images, result.failed_pages) == (1, 1)
    db = sqlite3.connect(tmp_path / "crawl.db")
    errors = dict(db.execute("SELECT status, last_error FROM images WHERE status!='done'"))
    pages = dict(db.execute("SELECT url, last_error FROM pages WHERE status='gave_up'"))
    db.close()
    assert errors == {"gave_up": "corrupt_image"}
    assert list(pages.values()) == ["not_found"]


def test_stopped_midway_the_rerun_completes_without_refetching(tmp_path):
    with FakeShop(products=24, images_per_product=2) as shop:
        first = crawl_shop(tmp_path, _config(shop, max_requests=20), progress=False)
        assert first.stopped == "max_requests" and first.requests == 20
        assert sum(shop.hits.values()) == 20
        seen = set(shop.hits)
        rest = crawl_shop(tmp_path, _config(shop), progress=False)
        assert rest.stopped == "done"
        hits = dict(shop.hits)
        again = crawl_shop(tmp_path, _config(shop), progress=False)
        assert again.requests == 1 and len(again.dataset) == 48  # robots.txt only
    assert _labels(rest.dataset) == shop.expected()
    assert len(rest.dataset) == 48  # two images per product
    assert all(n == 1 for p, n in hits.items() if p != "/robots.txt")  # pages, images, sitemaps
    assert hits["/robots.txt"] == 2  # read afresh by each run
    assert seen < set(hits)


def test_unreachable_shop_is_one_line_naming_the_host_and_keeps_the_state(tmp_path):
    shop = FakeShop(products=1)  # never started: nothing listens on its port
    shop.port = 9
    with pytest.raises(CrawlError) as err:
        crawl_shop(tmp_path, _config(shop, timeout=1.0), progress=False)
    message = str(err.value)
    assert message.startswith("127.0.0.1:9: network: ConnectError") and "\n" not in message
    assert "re-run" in message and (tmp_path / "crawl.db").is_file()


def test_private_shop_is_refused_before_connecting_without_the_flag(tmp_path):
    with FakeShop(products=2) as shop:
        args = ["crawl", "shop", "--sitemap", shop.sitemap_url, "--out", str(tmp_path)]
        res = runner.invoke(app, args)
        assert res.exit_code != 0 and "--allow-private-hosts" in str(res.exception)
        assert sum(shop.hits.values()) == 0


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/a.jpg", "http://169.254.169.254/", "http://[::1]/"]
)
def test_shop_session_refuses_private_image_hosts(url):
    seen: list[str] = []
    transport = httpx.MockTransport(lambda r: seen.append(str(r.url)) or httpx.Response(200))

    async def main() -> None:
        session = ShopSession(Politeness(delay=0), transport=transport)
        async with session.client:
            with pytest.raises(FetchError, match="refused_address"):
                await session.get(url, 1000)

    asyncio.run(main())
    assert seen == []


def test_other_datasets_and_options_are_refused(tmp_path):
    (tmp_path / "dataset.json").write_text("{}")
    with pytest.raises(CrawlError, match="not crawled"):
        crawl_shop(tmp_path, ShopConfig(sitemap="http://127.0.0.1:9/s.xml"), progress=False)
    with pytest.raises(Exception, match="--sitemap"):
        ShopConfig(sitemap="file:///etc/passwd")
    out = runner.invoke(app, ["crawl", "shop", "--help"]).output
    assert "Example: fashion-tagger crawl shop" in out


# -- JSON-LD -------------------------------------------------------------------------------------
def _page(*blocks) -> str:
    scripts = "".join(
        f'<script type="application/ld+json">{json.dumps(b)}</script>' for b in blocks
    )
    return f"<html><head>{scripts}</head><body></body></html>"


def test_product_shapes_are_all_read():
    page = _page(
        {"@type": ["Product"], "name": "Blue Jeans", "productID": "p-1",
         "image": [{"@type": "ImageObject", "contentUrl": "/i/1.jpg"}, "/i/2.jpg", "/i/1.jpg"],
         "brand": [{"@type": "Brand", "name": "Levi"}],
         "offers": {"@type": "Offer", "priceSpecification": {"price": 50, "priceCurrency": "USD"}},
         "category": "Apparel/Men/Jeans"},
    )  # fmt: skip
    p = jsonld.product(page, "https://shop.example/p/blue-jeans")
    assert p is not None
    assert (p.item_id, p.name, p.brand, p.price, p.currency) == (
        "p-1",
        "Blue Jeans",
        "Levi",
        "50",
        "USD",
    )
    assert p.images == ["https://shop.example/i/1.jpg", "https://shop.example/i/2.jpg"]
    assert p.labels == ["Apparel", "Men", "Jeans"]  # no breadcrumb: the category, split on /


def test_item_id_falls_back_to_the_url_and_bad_blocks_are_skipped():
    page = '<script type="application/ld+json">{not json</script>' + _page(
        {"@type": "http://schema.org/Product", "name": "X", "image": "x.jpg", "category": "A > B"}
    )
    p = jsonld.product(page, "https://s.example/shop/red-dress-123.html?ref=1")
    assert p is not None and p.item_id == "red-dress-123" and p.labels == ["A", "B"]
    assert jsonld.product("<html><body>no json-ld</body></html>", "https://s.example/") is None
    assert jsonld.product(_page({"@type": "Organization", "name": "X"}), "https://s/") is None


def test_breadcrumb_drops_home_and_the_product_crumb_by_url():
    crumbs = [{"@type": "ListItem", "position": 3, "name": "Red dress (long)", "item": "https://s/p/1"},
              {"@type": "ListItem", "position": 1, "item": {"@id": "https://s/", "name": "Home"}},
              {"@type": "ListItem", "position": 2, "name": "Dresses", "item": "https://s/c/d"}]  # fmt: skip
    page = _page({"@type": "Product", "name": "Red dress"},
                 {"@type": "BreadcrumbList", "itemListElement": crumbs})  # fmt: skip
    p = jsonld.product(page, "https://s/p/1/")
    assert p is not None and p.labels == ["Dresses"]


names = st.text(st.characters(categories=("L", "N", "Zs")), min_size=1, max_size=12).filter(
    lambda s: s.strip() and s.strip().lower() not in jsonld.HOME_NAMES
)


@given(
    middle=st.lists(names, min_size=1, max_size=5),
    product=names,
    home=st.booleans(),
    trailing=st.booleans(),
)
def test_label_path_is_the_breadcrumb_between_home_and_the_product(middle, product, home, trailing):
    crumbs = [("Home", "https://s/")] if home else []
    crumbs += [(m, None) for m in middle]
    if trailing:
        crumbs.append((product, None))
    got = jsonld.label_path(crumbs, product, "Ignored > Category", "https://s/p")
    want = list(middle)
    if not trailing and jsonld._norm(middle[-1]) == jsonld._norm(product):
        want = want[:-1]  # the last crumb names the product
    assert got == (want or ["Ignored", "Category"])


# -- sitemaps ------------------------------------------------------------------------------------
NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


def test_sitemap_kinds_gzip_and_relative_locs():
    xml = f"<urlset {NS}><url><loc>/p/1</loc></url><url><loc>ftp://x/y</loc></url></urlset>"
    s = sitemap.parse(gzip.compress(xml.encode()), "https://s.example/sitemap.xml.gz")
    assert (s.kind, s.locs) == ("urlset", ["https://s.example/p/1"])
    idx = f"<sitemapindex {NS}><sitemap><loc>https://s/a.xml</loc></sitemap></sitemapindex>"
    assert sitemap.parse(idx.encode(), "https://s/") == sitemap.Sitemap(
        "sitemapindex", ["https://s/a.xml"]
    )


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY l2 "&lol;&lol;">]>'
        b"<urlset><url><loc>&l2;</loc></url></urlset>",
        b'<!DOCTYPE x SYSTEM "file:///etc/passwd"><urlset/>',
        b"<html><body>not a sitemap</body></html>",
        b"not xml at all <",
        b"\x1f\x8b\x08garbage",
    ],
    ids=["billion-laughs", "external-dtd", "html", "not-xml", "bad-gzip"],
)
def test_hostile_or_broken_sitemaps_are_refused(body):
    with pytest.raises(sitemap.SitemapError):
        sitemap.parse(body, "https://s/sitemap.xml")


def test_gzip_bomb_is_refused():
    bomb = gzip.compress(b"<urlset>" + b" " * (2 * 1024 * 1024))
    with pytest.raises(sitemap.SitemapError, match="larger than"):
        sitemap.inflate(bomb, limit=1024 * 1024)
