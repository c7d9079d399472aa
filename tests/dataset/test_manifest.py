"""The dataset dir's two typed records: a ManifestRow per image and the DatasetInfo of dataset.json."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fashion_tagger.dataset import manifest
from fashion_tagger.dataset.manifest import DatasetInfo, ManifestRow, SourceRef
from fashion_tagger.errors import DatasetError

text = st.text(max_size=8)
names = st.lists(text, max_size=4).map(tuple)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
infos = st.builds(
    DatasetInfo,
    name=text,
    levels=names,
    attribute_groups=names,
    counts=st.dictionaries(text, st.integers(), max_size=3),
    created=text,
    updated=text,
    sources=st.lists(st.builds(SourceRef, text, text, text), max_size=2).map(tuple),
    import_=st.none() | st.dictionaries(text, text, max_size=2),
    crawl=st.none() | st.dictionaries(text, json_values, max_size=2),
    derived_from=st.none() | text,
    history=st.lists(st.dictionaries(text, json_values, max_size=3), max_size=3).map(tuple),
    extra=st.dictionaries(
        text.filter(lambda k: k not in manifest.INFO_KEYS), json_values, max_size=3
    ),
)


@given(infos)
def test_info_survives_json(info):
    text_form = json.dumps(info.to_json())
    assert json.loads(text_form)["format_version"] == manifest.FORMAT_VERSION
    assert manifest.parse_info(text_form.encode(), "x") == info


def test_unknown_keys_are_kept_and_versions_are_checked(tmp_path):
    obj = {"format_version": manifest.FORMAT_VERSION, "name": "n", "added_later": {"a": 1}}
    info = manifest.parse_info(json.dumps(obj).encode(), "x")
    assert info.extra == {"added_later": {"a": 1}} and info.name == "n"
    manifest.write_info(tmp_path, info.with_history("split", {"val": 0.1}, {"n": 3}))
    again = manifest.read_info(tmp_path)
    assert again.extra == {"added_later": {"a": 1}}
    assert [h["op"] for h in again.history] == ["split"]
    for bad in (b"{}", b'{"format_version": 2}', b"[1]", b"not json"):
        with pytest.raises(DatasetError):
            manifest.parse_info(bad, "x")


def test_rows_and_dicts_give_the_same_table():
    row = ManifestRow("images/ab/ab.jpg", "ab", "item1", ["A", "B"], ["colour=red"],
                      width=3, height=2, meta={"title": "été"})  # fmt: skip
    as_dict = {"image": "images/ab/ab.jpg", "sha256": "ab", "item_id": "item1",
               "labels": ["A", "B"], "attributes": ["colour=red"], "width": 3, "height": 2,
               "meta": json.dumps({"title": "été"}, ensure_ascii=False)}  # fmt: skip
    table = manifest.rows_to_table([row])
    assert table.equals(manifest.rows_to_table([as_dict]))
    assert table.schema == manifest.SCHEMA
    assert table.to_pylist()[0] == row.to_dict()
