"""dataset relevel: any level or attribute group as the label path, nothing lost on the way."""

import hashlib
import json
import sys

import pytest
from conftest import image_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fashion_tagger.cli import app, main
from fashion_tagger.dataset import manifest, store
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.fields import field, known_names
from fashion_tagger.dataset.relevel import parse_levels, relevel
from fashion_tagger.errors import DatasetError

LEVELS = ["master", "sub"]


def rows_of(spec, root=None):
    """Manifest rows from (master, sub, gender or None, colour) tuples; images stored under
    `root` when given."""
    rows = []
    for k, (master, sub, gender, colour) in enumerate(spec):
        data = image_bytes(color=(k, 0, 0))
        sha = hashlib.sha256(data).hexdigest()
        if root is not None:
            store.put(root, sha, "jpg", data)
        attrs = [f"colour={colour}", "season=Summer"]
        if gender is not None:
            attrs.append(f"gender={gender}")
        rows.append(
            {
                "image": store.relpath(sha, "jpg"),
                "sha256": sha,
                "item_id": f"i{k}",
                "labels": [master, sub],
                "attributes": attrs,
                "meta": json.dumps({"title": f"t{k}"}),
            }
        )
    return rows


SPEC = [
    ("Footwear", "Shoes", "Men", "Black"),
    ("Footwear", "Shoes", "Women", "Pink"),
    ("Footwear", "Sandal", "Women", "Black"),
    ("Apparel", "Topwear", "Men", "Pink"),
    ("Apparel", "Topwear", None, "Blue"),
]


def make(root, spec=SPEC, images=False):
    rows = rows_of(spec, root if images else None)
    return Dataset.create(root, manifest.rows_to_table(rows), {"name": "d", "levels": LEVELS})


def _attrs(ds):
    return ds.table.column("attributes").to_pylist()


def test_relevel_gender_keeps_old_path_and_levels(tmp_path):
    ds = make(tmp_path)
    with pytest.raises(DatasetError, match=r"1 rows have no gender \(of 5\).*--drop-missing"):
        relevel(ds, "gender")
    out, r = relevel(ds, "gender", drop_missing=True)
    assert out.labels == [["Men"], ["Women"], ["Women"], ["Men"]]
    assert out.info.levels == ("gender",) and out.level_names == ("gender",)
    assert r.dropped == 1 and r.missing == {"gender": 1} and r.changed == 4
    assert r.classes_per_level == {"gender": 2} and r.levels_before == LEVELS
    assert not any(a.startswith("gender=") for attrs in _attrs(out) for a in attrs)
    assert "colour=Pink" in _attrs(out)[1]
    meta = out.meta(0)
    assert meta["former_levels"] == {"master": "Footwear", "sub": "Shoes"}
    assert meta["label_history"][-1]["labels"] == ["Footwear", "Shoes"]
    assert meta["label_history"][-1]["levels"] == LEVELS and meta["title"] == "t0"
    saved = out.save()
    info = Dataset.open(saved.root).info
    assert info.levels == ("gender",) and info.history[-1]["op"] == "relevel"
    assert info.history[-1]["args"] == {"levels": ["gender"], "drop_missing": True}
    # the old levels stay usable by name, and can come back as the path
    assert known_names(saved)["master"] == "former level"
    assert field(saved, "sub", "--x").values[2] == ("Sandal",)
    back, r2 = relevel(saved, ["master", "sub"])
    assert back.labels == [list(s[:2]) for s in SPEC[:4]]
    assert back.meta(0)["former_levels"] == {"gender": "Men"}
    assert len(back.meta(0)["label_history"]) == 2 and r2.changed == 4


def test_relevel_errors_are_one_line(tmp_path, monkeypatch, capsys):
    ds = make(tmp_path)
    with pytest.raises(DatasetError, match="known names: master, sub, colour"):
        relevel(ds, "genre")
    with pytest.raises(DatasetError, match="twice"):
        parse_levels("gender,gender")
    with pytest.raises(DatasetError, match="at least one"):
        parse_levels(" , ")
    rows = rows_of([("A", "B", "Men", "Red")])
    rows[0]["attributes"].append("colour=Blue")
    two = Dataset.create(tmp_path / "two", manifest.rows_to_table(rows), {"levels": LEVELS})
    with pytest.raises(DatasetError, match="1 rows carry several colour values"):
        relevel(two, "colour")
    monkeypatch.setattr(sys, "argv", ["fashion-tagger", "dataset", "relevel", str(ds.root),
                                      "--levels", "gender"])  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "have no gender" in err and "Traceback" not in err
    assert Dataset.open(ds.root).info.levels == tuple(LEVELS)  # refused: nothing written


def test_relevel_cli_out_and_json(tmp_path):
    ds = make(tmp_path / "src", images=True)
    res = CliRunner().invoke(
        app,
        ["dataset", "relevel", str(ds.root), "--levels", "gender,master", "--drop-missing",
         "--out", str(tmp_path / "dst"), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["levels_after"] == ["gender", "master"] and r["images_after"] == 4
    dst = Dataset.open(tmp_path / "dst")
    assert dst.labels[0] == ["Men", "Footwear"] and dst.meta(0)["former_levels"] == {"sub": "Shoes"}
    assert Dataset.open(tmp_path / "src").info.levels == tuple(LEVELS)
    assert dst.missing_images() == [] and len(dst.info.history) == 1


ROW = st.tuples(
    st.sampled_from(["Footwear", "Apparel"]),
    st.sampled_from(["Shoes", "Topwear", "Bags"]),
    st.sampled_from(["Men", "Women", "Unisex", None]),
    st.sampled_from(["Black", "Pink"]),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=st.lists(ROW, min_size=1, max_size=12), order=st.permutations(["sub", "colour"]))
def test_relevel_round_trip_restores_every_path(tmp_path_factory, spec, order):
    """Any relevel then back to the original levels gives the original paths, for the rows kept."""
    ds = make(tmp_path_factory.mktemp("d"), spec)
    names = ["gender", *order] if any(g is not None for _, _, g, _ in spec) else list(order)
    if any(g is None for _, _, g, _ in spec) and "gender" in names:
        with pytest.raises(DatasetError, match="no gender"):
            relevel(ds, names)
    out, r = relevel(ds, names, drop_missing=True)
    kept = [s for s in spec if s[2] is not None] if "gender" in names else spec
    assert r.images_after == len(kept) == len(out)
    assert out.labels == [[{"gender": g, "sub": b, "colour": c}[n] for n in names]
                          for _, b, g, c in kept]  # fmt: skip
    back, _ = relevel(out, LEVELS)
    assert back.labels == [[a, b] for a, b, _, _ in kept]
    assert all(len(back.meta(i)["label_history"]) == 2 for i in range(len(back)))
