"""End-to-end crawls of the fake marketplace: what lands in the dataset dir, and the CLI."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
from typer.testing import CliRunner
from vinted_fixtures import expected, fast

from fashion_tagger.cli import app
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.sources.vinted import CrawlError, crawl_status, crawl_vinted
from fashion_tagger.testing.fake_marketplace import FakeVinted


@pytest.fixture(scope="module")
def market():
    with FakeVinted(categories=5, items_per_category=30, page_cap=8) as fake:
        yield fake


def test_crawl_keeps_every_listing_once_with_its_photo_and_label(market, tmp_path):
    result = crawl_vinted(tmp_path / "ds", fast(market, per_category=20), progress=False)
    assert result.stopped == "done"
    want = expected(market, 20)
    ds = Dataset.open(tmp_path / "ds")
    df = ds.to_pandas()
    assert sorted(df.item_id) == sorted(want)  # every listing, each once
    assert {r.item_id: tuple(r.labels) for r in df.itertuples()} == want
    assert Counter(lbl[0] for lbl in want.values())["Unisex"] > 0
    for i in range(len(ds)):
        img = ds.load_image(i)
        assert max(img.size) == 224 and img.size == (168, 224)
        assert (df.width[i], df.height[i]) == img.size
    row = df[df.item_id == "1000001"].iloc[0]
    assert set(row.attributes) == {"brand=H&M", "size=M", "condition=New with tags"}
    meta = json.loads(row.meta)
    assert (meta["price"], meta["currency"]) == ("6.0", "EUR")
    assert meta["photo_url"].endswith("?s=" + meta["photo_url"].split("?s=")[1])
    assert row.source == "vinted" and row.source_url.endswith("/items/1000001-listing-1000001")
    assert ds.info.sources[0].kind == "vinted"
    # pages were walked (8 per page), no request made twice
    assert all(n == 1 for n in market.count("/api/").values())
    assert all(n == 1 for n in market.count("/t/").values())
    # non-fashion branches were never crawled
    hit_ids = {k.split("catalog_ids=")[1].split("&")[0] for k in market.count("/api/v2/catalog")}
    assert hit_ids == {str(leaf.id) for leaf in market.fashion_leaves()}


def test_rerun_of_a_finished_crawl_fetches_nothing_again(tmp_path):
    with FakeVinted(categories=2, items_per_category=6) as fake:
        crawl_vinted(tmp_path, fast(fake, per_category=4), progress=False)
        before = sum(fake.hits.values())
        again = crawl_vinted(tmp_path, fast(fake, per_category=4), progress=False)
        assert again.requests == 1 and sum(fake.hits.values()) == before + 1  # the home page
        assert len(again.dataset) == len(expected(fake, 4))
        # a larger --per-category continues the full categories; photos are not fetched again
        more = crawl_vinted(tmp_path, fast(fake, per_category=6), progress=False)
        assert sorted(more.dataset.to_pandas().item_id) == sorted(expected(fake, 6))
        assert max(fake.count("/t/").values()) == 1


@pytest.mark.parametrize(
    ("rule", "labels"),
    [
        ("relabel", [("Unisex", "Shoes", "Sneakers")]),
        ("keep-first", [("Women", "Shoes", "Sneakers")]),
        ("keep-both", [("Women", "Shoes", "Sneakers"), ("Men", "Shoes", "Sneakers")]),
    ],
)
def test_unisex_rule(tmp_path, rule, labels):
    with FakeVinted(categories=2, items_per_category=4, unisex_every=2) as fake:
        crawl_vinted(tmp_path, fast(fake, per_category=4, unisex=rule), progress=False)
    df = Dataset.open(tmp_path).to_pandas()
    shared = df[df.item_id == "1000000"]  # listing 0 of Women Sneakers is also under Men
    assert [tuple(x) for x in shared.labels] == labels
    assert len(set(shared.image)) == 1  # one photo, downloaded once
    only_men = df[df.item_id == "1010001"]
    assert [tuple(x) for x in only_men.labels] == [("Men", "Shoes", "Sneakers")]


def test_all_photos_and_other_options(tmp_path):
    with FakeVinted(categories=1, items_per_category=3, photos_per_item=3) as fake:
        cfg = fast(fake, per_category=2, all_photos=True, image_size=64, quality=30)
        crawl_vinted(tmp_path, cfg, progress=False)
        assert len(fake.count("/api/v2/items/")) == 2
    ds = Dataset.open(tmp_path)
    df = ds.to_pandas()
    assert len(df) == 6 and df.groupby("item_id").size().tolist() == [3, 3]
    assert len(set(df.sha256)) == 6
    assert {ds.load_image(i).size for i in range(6)} == {(48, 64)}


@pytest.mark.parametrize("shape", ["rails", "next", "none"])
def test_tree_shapes_and_initializers_fallback(tmp_path, shape):
    with FakeVinted(categories=2, items_per_category=2, tree_shape=shape) as fake:
        result = crawl_vinted(tmp_path, fast(fake, per_category=2), progress=False)
        assert len(result.dataset) == 3  # 4 listings, one shared by Women and Men
        assert bool(fake.count("/api/v2/catalog/initializers")) == (shape == "none")


def test_categories_option_limits_the_crawl(tmp_path):
    with FakeVinted(categories=5, items_per_category=3) as fake:
        cfg = fast(fake, per_category=3, categories=("Kids",))
        df = crawl_vinted(tmp_path, cfg, progress=False).dataset.to_pandas()
    assert {tuple(x) for x in df.labels} == {("Kids", "Girls", "Dresses")}


runner = CliRunner()


def test_cli_crawl_status_and_list(tmp_path):
    with FakeVinted(categories=2, items_per_category=3) as fake:
        base = ["crawl", "vinted", "--base-url", fake.url, "--delay", "0", "--photo-delay", "0"]
        base += ["--allow-private-hosts", "--no-progress"]
        listed = runner.invoke(app, [*base, "--list-categories"])
        assert listed.exit_code == 0, listed.output
        assert "Sneakers [20000] (3 items)" in listed.output and "(excluded)" in listed.output
        res = runner.invoke(
            app,
            [
                *base,
                "--out",
                str(tmp_path),
                "--per-category",
                "2",
                "--categories",
                "Women,5",
                "--json",
            ],
        )
        assert res.exit_code == 0, res.output
        summary = json.loads(res.output)
        assert summary["stopped"] == "done" and summary["images"] == 3
    status = runner.invoke(app, ["crawl", "status", str(tmp_path), "--json"])
    assert status.exit_code == 0, status.output
    st = json.loads(status.output)
    assert st["photos"] == {"done": 3} and st["categories"] == {"full": 2}
    assert st["dataset_images"] == 3 and st["journaled_answers"] == 0
    human = runner.invoke(app, ["crawl", "status", str(tmp_path)])
    assert "photos" in human.output and human.exit_code == 0
    assert crawl_status(tmp_path)["listings"]["total"] == 3


def test_refuses_to_overwrite_other_datasets(tmp_path):
    with FakeVinted(categories=1, items_per_category=2) as fake:
        crawl_vinted(tmp_path / "a", fast(fake, per_category=1), progress=False)
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "dataset.json").write_text("{}")
        with pytest.raises(CrawlError, match="not crawled"):
            crawl_vinted(tmp_path / "b", fast(fake), progress=False)
        other = dataclasses.replace(fast(fake, per_category=1), base_url="http://127.0.0.1:9")
        with pytest.raises(CrawlError, match="another --out"):
            crawl_vinted(tmp_path / "a", other, progress=False)
    assert (tmp_path / "b" / "dataset.json").read_text() == "{}"


def test_cli_errors_are_one_line(tmp_path):
    res = runner.invoke(app, ["crawl", "vinted", "--domain", "xx", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "--domain" in str(res.exception or res.output)
    res = runner.invoke(app, ["crawl", "vinted", "--base-url", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "--out" in res.output
    for verb in (["crawl", "vinted"], ["crawl", "status"]):
        out = runner.invoke(app, [*verb, "--help"]).output
        assert "Example: fashion-tagger" in out
