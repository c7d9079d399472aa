import math

import pytest
from decode_reference import best_path

from fashion_tagger.taxonomy import Taxonomy, TaxonomyError, sanitize_name

PATHS = [
    ["Apparel", "Topwear", "Shirts"],
    ["Apparel", "Topwear", "Tshirts"],
    ["Apparel", "Bottomwear", "Jeans"],
    ["Footwear", "Shoes", "Sneakers"],
    ["Footwear", "Other"],  # a shorter path: a leaf at level 1
    ["Accessories", "Other", "Belts"],  # "Other" under two parents is two nodes
]


@pytest.fixture
def tax():
    return Taxonomy.from_paths(PATHS, ["master", "sub", "article"])


def test_structure(tax):
    assert tax.level_names == ("master", "sub", "article")
    assert tax.sizes == (3, 5, 5)
    assert tax.names[0] == ("Accessories", "Apparel", "Footwear")
    # the two "Other" nodes have different parents
    others = [i for i, n in enumerate(tax.names[1]) if n == "Other"]
    assert len(others) == 2
    assert {tax.path(1, i) for i in others} == {("Accessories", "Other"), ("Footwear", "Other")}


def test_leaves_include_short_paths(tax):
    leaf_paths = {tax.path(lvl, i) for lvl, i in tax.leaves()}
    assert leaf_paths == {tuple(p) for p in PATHS}


def test_encode_decode_roundtrip(tax):
    for p in PATHS:
        idx = tax.encode(p)
        assert len(idx) == 3
        assert (idx[2] == -1) == (len(p) == 2)
        assert tax.decode(idx) == tuple(p)


def test_encode_rejects_unknown_path(tax):
    with pytest.raises(TaxonomyError, match="not a path"):
        tax.encode(["Apparel", "Shoes"])


def test_decode_rejects_inconsistent_indices(tax):
    shirts = tax.encode(["Apparel", "Topwear", "Shirts"])
    sneakers = tax.encode(["Footwear", "Shoes", "Sneakers"])
    with pytest.raises(TaxonomyError):
        tax.decode([shirts[0], sneakers[1], sneakers[2]])


def test_best_path_is_valid_and_maximal(tax):
    # Per-level argmax would pick Apparel / Shoes / Sneakers: not a path.
    lp = [[-9.0] * 3, [-9.0] * 5, [-9.0] * 5]
    apparel = tax.names[0].index("Apparel")
    shoes = tax.names[1].index("Shoes")
    sneakers = tax.names[2].index("Sneakers")
    tshirts = tax.names[2].index("Tshirts")
    lp[0][apparel] = math.log(0.6)
    lp[0][tax.names[0].index("Footwear")] = math.log(0.4)
    lp[1][shoes] = math.log(0.9)
    lp[2][sneakers] = math.log(0.9)
    lp[1][tax.names[1].index("Topwear")] = math.log(0.05)
    lp[2][tshirts] = math.log(0.05)
    idx, score = best_path(tax, lp)
    assert tax.decode(idx) == ("Footwear", "Shoes", "Sneakers")
    assert score == pytest.approx(math.log(0.4 * 0.9 * 0.9))


def test_dict_roundtrip(tax):
    again = Taxonomy.from_dict(tax.to_dict())
    assert again == tax
    assert again.encode(PATHS[4]) == tax.encode(PATHS[4])


def test_from_dict_rejects_bad_parent():
    d = {
        "levels": ["a", "b"],
        "nodes": [[{"name": "x", "parent": -1}], [{"name": "y", "parent": 3}]],
    }
    with pytest.raises(TaxonomyError):
        Taxonomy.from_dict(d)


def test_default_level_names():
    assert Taxonomy.from_paths([["a", "b"]]).level_names == ("level0", "level1")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Coats & jackets", "coats_and_jackets"),
        ("T-shirt/top", "t_shirt_top"),
        ("Men's, boys'", "mens_boys"),
        ("  ", "_"),
        ("Ankle boot", "ankle_boot"),
    ],
)
def test_sanitize_name(name, expected):
    assert sanitize_name(name) == expected
