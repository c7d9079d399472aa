"""Parsing of the marketplace's answers and the choice of categories (no network)."""

from __future__ import annotations

import json

import pytest

from fashion_tagger.sources.vinted import api, categories
from fashion_tagger.testing.fake_marketplace import FakeVinted

TREE = [
    {
        "id": 1904,
        "title": "Women",
        "code": "WOMEN_ROOT",
        "item_count": 10,
        "catalogs": [
            {
                "id": 4,
                "title": "Clothes",
                "catalogs": [
                    {
                        "id": 1037,
                        "title": "Coats & jackets",
                        "catalogs": [
                            {"id": 2525, "title": "Parkas", "catalogs": [], "item_count": 7}
                        ],
                    },
                    {"id": 10, "title": "Dresses", "catalogs": []},
                ],
            },
            {"id": 146, "title": "Beauty", "catalogs": [{"id": 960, "title": "Make-up"}]},
        ],
    },
    {
        "id": 5,
        "title": "Men",
        "code": "MEN_ROOT",
        "catalogs": [{"id": 2050, "title": "Clothes", "catalogs": [{"id": 257, "title": "Jeans"}]}],
    },
    {
        "id": 1918,
        "title": "Home",
        "code": "HOME_ROOT",
        "catalogs": [{"id": 1919, "title": "Textiles"}],
    },
    {"title": "no id, dropped"},
]


def _titles(roots):
    return [r.title for r in roots]


def test_tree_from_plain_script():
    page = f'<html><script type="application/json">{json.dumps({"x": 1, "catalogTree": TREE})}</script>'
    roots = api.tree_from_html(page)
    assert _titles(roots) == ["Women", "Men", "Home"]
    parkas = roots[0].children[0].children[0].children[0]
    assert (parkas.id, parkas.title, parkas.item_count) == (2525, "Parkas", 7)


@pytest.mark.parametrize("shape", ["script", "rails", "next"])
def test_tree_shapes_of_the_fake_home_page(shape):
    fake = FakeVinted(categories=3, items_per_category=2, tree_shape=shape)
    roots = api.tree_from_html(fake.home_html())
    assert _titles(roots) == ["Women", "Men", "Kids", "Home", "Entertainment"]


def test_tree_from_next_f_escaped_chunks():
    tree = json.dumps({"catalogTree": TREE})
    page = "".join(
        f"<script>self.__next_f.push([1,{json.dumps(part)}])</script>"
        for part in ("1:HL[x]\n2:" + tree[:50], tree[50:])
    )
    assert _titles(api.tree_from_html(page)) == ["Women", "Men", "Home"]
    assert api.tree_from_html("<html>nothing here</html>") == []
    assert api.tree_from_html('"catalogTree": {broken') == []


def test_tree_from_initializers():
    roots = api.tree_from_initializers({"dtos": {"catalogs": TREE}})
    assert _titles(roots) == ["Women", "Men", "Home"]
    assert api.tree_from_initializers({"dtos": {}}) == []
    assert api.tree_from_initializers(["junk"]) == []


def test_listing_price_shapes_and_missing_fields():
    old = api.parse_listing(
        {
            "id": 7,
            "title": "Coat",
            "price": "15.0",
            "currency": "EUR",
            "brand_title": "Zara",
            "size_title": "M",
            "status": "Very good",
            "url": "https://x/items/7",
            "photo": {
                "url": "https://img/1.jpeg?s=abc",
                "full_size_url": "https://img/f.jpeg?s=def",
            },
        }
    )
    assert (old.id, old.price, old.currency, old.brand, old.size, old.condition) == (
        "7",
        "15.0",
        "EUR",
        "Zara",
        "M",
        "Very good",
    )
    assert old.photos == ["https://img/f.jpeg?s=def"]  # largest, signature kept
    new = api.parse_listing(
        {
            "id": "8",
            "price": {"amount": "9.5", "currency_code": "GBP"},
            "brand": {"title": "Nike"},
            "size": {"title": "42"},
            "photo": None,
        }
    )
    assert (new.price, new.currency, new.brand, new.size, new.photos) == (
        "9.5",
        "GBP",
        "Nike",
        "42",
        [],
    )
    bare = api.parse_listing({"id": 9})
    assert bare.title == "" and bare.price is None and bare.photos == []
    assert api.parse_listing({"title": "no id"}) is None
    assert api.parse_listing("junk") is None
    thumbs = {
        "id": 1,
        "photo": {
            "thumbnails": [
                {"url": "small", "width": 70, "height": 100},
                {"url": "big", "width": 310, "height": 430},
            ]
        },
    }
    assert api.parse_listing(thumbs).photos == ["big"]


def test_detail_photos_main_first_without_repeats():
    detail = api.parse_detail(
        {
            "item": {
                "id": 3,
                "photos": [
                    {"url": "b", "is_main": False},
                    {"url": "a", "is_main": True},
                    {"url": "b"},
                ],
            }
        }
    )
    assert detail.photos == ["a", "b"]


def test_parse_page():
    page = api.parse_page({"items": [{"id": 1}, {"nope": 2}], "pagination": {"total_pages": "3"}})
    assert [x.id for x in page.listings] == ["1"] and page.total_pages == 3 and page.dropped == 1
    assert api.parse_page({"items": []}).total_pages is None
    with pytest.raises(api.ParseError):
        api.parse_page({"error": "x"} | {"items": "oops"})
    with pytest.raises(api.ParseError):
        api.parse_page(["not", "a", "dict"])
    assert api.auth_error_code(b'{"code": 100}') == 100
    assert api.auth_error_code(b"<html>") is None


def test_leaves_drop_non_fashion_and_keep_paths():
    roots = api.parse_nodes(TREE)
    leaves = categories.leaves(roots)
    assert [leaf.path for leaf in leaves] == [
        ("Women", "Clothes", "Coats & jackets", "Parkas"),
        ("Women", "Clothes", "Dresses"),
        ("Men", "Clothes", "Jeans"),
    ]
    assert [leaf.gender for leaf in leaves] == ["women", "women", "men"]
    everything = categories.leaves(roots, exclude=())
    assert ("Home", "Textiles") in [leaf.path for leaf in everything]
    assert ("Women", "Beauty", "Make-up") in [leaf.path for leaf in everything]
    fewer = categories.leaves(roots, (*categories.DEFAULT_EXCLUDE, "Dresses"))
    assert len(fewer) == 2
    # non-fashion root names only count at the root: "Home shoes" is fashion
    shoes = api.parse_nodes(
        [{"id": 9, "title": "Men", "catalogs": [{"id": 3, "title": "Home shoes"}]}]
    )
    assert [x.path for x in categories.leaves(shoes)] == [("Men", "Home shoes")]


def test_select_by_id_title_and_path():
    roots = api.parse_nodes(TREE)
    leaves = categories.leaves(roots)
    assert [x.id for x in categories.select(leaves, roots, ["5"])] == [257]
    assert [x.id for x in categories.select(leaves, roots, ["1037"])] == [2525]
    assert [x.id for x in categories.select(leaves, roots, ["clothes"])] == [2525, 10, 257]
    assert [x.id for x in categories.select(leaves, roots, ["Women > Clothes > Dresses"])] == [10]
    with pytest.raises(categories.CategoryError, match="--list-categories"):
        categories.select(leaves, roots, ["Make-up"])
    lines = categories.render_tree(roots, [x.id for x in leaves])
    assert lines[0] == "Women [1904] (10 items)"
    assert any("Home [1918]" in line and "(excluded)" in line for line in lines)


def test_fake_server_faults_and_control_endpoints():
    import httpx

    from fashion_tagger.testing.fake_marketplace import Faults

    f = Faults.parse("rate_limit_every=7, retry_after=0.5")
    assert (f.rate_limit_every, f.retry_after, f.server_error_every) == (7, 0.5, 0)
    with pytest.raises(ValueError, match="unknown fault"):
        Faults.parse("nope=1")
    with FakeVinted(categories=1, items_per_category=1) as fake, httpx.Client() as client:
        assert client.get(fake.url + "/").status_code == 200
        assert client.get(fake.url + "/api/v2/catalog/items").status_code == 200  # cookie kept
        fresh = httpx.get(fake.url + "/api/v2/catalog/items")
        assert fresh.status_code == 401  # no cookie
        r = client.post(fake.url + "/__faults", json={"server_error_every": 1})
        assert r.json()["server_error_every"] == 1
        assert client.get(fake.url + "/api/v2/items/1000000").status_code == 503
        stats = client.get(fake.url + "/__stats").json()
        assert stats["hits"]["/"] == 1 and stats["hits"]["/api/v2/catalog/items"] == 2
        bad = fake.photo_url(1000000, 0).replace("?s=", "?s=x")
        fake.faults.server_error_every = 0
        assert client.get(bad).status_code == 403  # the signature is part of the URL
        assert client.get(fake.photo_url(1000000, 0)).headers["content-type"] == "image/jpeg"
