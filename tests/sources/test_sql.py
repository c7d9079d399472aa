"""`import sql`: the rows of a query, against SQLite and a real PostgreSQL server, streamed in
batches, with the column options of `import csv` and a crawl's category tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import image_bytes
from pg_server import pg_url_fixture  # noqa: F401
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.errors import DatasetError
from fashion_tagger.sources import get_importer, sql
from fashion_tagger.sources.vinted.categories import Leaf
from fashion_tagger.sources.vinted.state import State

sa = pytest.importorskip("sqlalchemy")

ROWS = [
    # image, cat, sub, colour, pid, fold, catalog_id, price
    ("img/0.png", "Women", "Tops", "red", "p1", "train", 1904, 10),
    ("img/1.png", "Women", "Tops", "", "p1", "validation", 1904, None),
    ("img/2.png", "Men", "", "blue", "p2", "test", 77, 3),
    ("img/3.png", "Men", "Shoes", "", "p3", "", 12345, None),  # id not in the tree
    ("../secret.png", "Men", "", "", "p4", "", 77, None),
    ("img/missing.png", "Kids", "", "", "p5", "", 77, None),
    ("img/4.png", "", "", "", "p6", "train", 77, None),  # no label
]


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "shop"
    for i in range(5):
        p = root / "img" / f"{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(image_bytes("PNG", color=(i * 40, 10, 10)))
    (tmp_path / "secret.png").write_bytes(image_bytes("PNG", color=(1, 2, 3)))
    return root


def _fill(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS listings"))
        conn.execute(
            sa.text(
                "CREATE TABLE listings (path TEXT, cat TEXT, sub TEXT, colour TEXT, pid TEXT,"
                " fold TEXT, catalog_id INTEGER, price INTEGER)"
            )
        )
        conn.execute(
            sa.text("INSERT INTO listings VALUES (:a, :b, :c, :d, :e, :f, :g, :h)"),
            [dict(zip("abcdefgh", r, strict=True)) for r in ROWS],
        )
    engine.dispose()


KW = dict(image_column="path", label_columns=["cat", "sub"], attribute_columns=["colour"],
          item_column="pid", split_column="fold", workers=1, progress=False)  # fmt: skip
QUERY = "SELECT * FROM listings ORDER BY pid, path"


def _check_labels(result) -> None:
    rows = {r["source_url"]: r for r in result.dataset.table.to_pylist()}
    assert set(rows) == {"img/0.png", "img/1.png", "img/2.png", "img/3.png"}
    assert rows["img/0.png"]["labels"] == ["Women", "Tops"]
    assert rows["img/0.png"]["attributes"] == ["colour=red"]
    assert rows["img/0.png"]["split"] == "train" and rows["img/1.png"]["split"] == "val"
    assert rows["img/2.png"]["labels"] == ["Men"] and rows["img/2.png"]["split"] == "test"
    assert json.loads(rows["img/0.png"]["meta"]) == {"catalog_id": "1904", "price": "10"}
    assert rows["img/1.png"]["item_id"] == rows["img/0.png"]["item_id"] == "p1"
    assert result.report["reasons"] == {"missing_image": 1, "no_label": 1, "path_outside_root": 1}
    assert result.dataset.level_names == ("cat", "sub")


def _streamed_parts(monkeypatch) -> list[int]:
    """Record the size of each batch the server hands over."""
    sizes: list[int] = []
    orig = sql._streamed

    def spy(result, batch_rows):
        for part in result.partitions(batch_rows):
            sizes.append(len(part))
            for row in part:
                yield dict(row._mapping)

    monkeypatch.setattr(sql, "_streamed", spy)
    assert orig is not spy
    return sizes


def test_sqlite(tmp_path, images, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    _fill(url)
    sizes = _streamed_parts(monkeypatch)
    result = sql.import_sql(
        url, tmp_path / "ds", query=QUERY, image_root=images, batch_rows=3, **KW
    )
    _check_labels(result)
    assert sizes == [3, 3, 1]  # streamed in batches of batch_rows


def test_postgresql(pg_url, tmp_path, images, monkeypatch) -> None:
    """A real server: the rows come through a server-side cursor, batch by batch."""
    _fill(pg_url)
    sizes = _streamed_parts(monkeypatch)
    result = get_importer("sql")(
        pg_url, tmp_path / "ds", query=QUERY, image_root=images, batch_rows=2, **KW
    )
    _check_labels(result)
    assert sizes == [2, 2, 2, 1]
    again = sql.import_sql(pg_url, tmp_path / "ds", query=QUERY, image_root=images, batch_rows=2,
                           **KW)  # fmt: skip
    assert again.up_to_date  # same arguments: nothing to do
    with pytest.raises(DatasetError, match=r"query on postgresql\+psycopg://postgres@.* failed"):
        sql.import_sql(pg_url, tmp_path / "ds2", query="SELECT * FROM nowhere", **KW)


def _crawl_db(root: Path) -> Path:
    """A crawl.db as `crawl vinted` writes it, with three leaf categories."""
    state = State(root)
    state.add_categories(
        [
            Leaf(1904, ("Women", "Clothing", "Dresses"), gender="women"),
            Leaf(77, ("Men", "Shoes"), gender="men"),
            Leaf(5, ("Kids", "Toys", "Dolls", "Rag dolls", "Tiny", "Tinier"), gender=""),
        ]
    )
    state.db.close()
    return root / "crawl.db"


def test_category_tree_maps_ids_to_paths(tmp_path, images) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    _fill(url)
    tree = _crawl_db(tmp_path / "crawl")
    result = sql.import_sql(
        url, tmp_path / "ds", query=QUERY, image_root=images, image_column="path",
        category_column="catalog_id", category_tree=tree, item_column="pid", workers=1,
        progress=False,
    )  # fmt: skip
    rows = {r["source_url"]: r for r in result.dataset.table.to_pylist()}
    assert rows["img/0.png"]["labels"] == ["Women", "Clothing", "Dresses"]
    assert rows["img/2.png"]["labels"] == ["Men", "Shoes"]
    assert rows["img/4.png"]["labels"] == ["Men", "Shoes"]  # the tree labels it, not the columns
    assert "img/3.png" not in rows
    assert result.report["reasons"]["unknown_category"] == 1
    assert "12345" in json.dumps(result.report["skipped_records"])
    assert result.dataset.level_names == ("department", "group", "category")


def test_a_damaged_tree_is_one_line(tmp_path) -> None:
    from fashion_tagger.sources.csv_manifest import read_category_tree

    tree = _crawl_db(tmp_path / "crawl")
    import sqlite3

    db = sqlite3.connect(tree)
    db.execute("UPDATE categories SET path='not json' WHERE id=77")
    db.commit()
    db.close()
    with pytest.raises(DatasetError, match="category 77 has no valid path"):
        read_category_tree(tree)
    (tmp_path / "x.db").write_bytes(b"garbage" * 100)
    with pytest.raises(DatasetError, match=r"not a crawl\.db"):
        read_category_tree(tmp_path / "x.db")


def test_cli(tmp_path, images) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    _fill(url)
    args = ["import", "sql", url, "--query", QUERY, "--image-column", "path",
            "--label-columns", "cat,sub", "--image-root", str(images), "--out",
            str(tmp_path / "ds"), "--workers", "1", "--no-progress", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["imported"] == 4
    bad = CliRunner().invoke(app, [*args[:4], "SELECT 1 AS x", *args[5:]])
    assert bad.exit_code != 0 and isinstance(bad.exception, DatasetError)
    assert "has no column ['path', 'cat', 'sub']; its columns are ['x']" in str(bad.exception)


def test_relative_paths_need_an_image_root(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    _fill(url)
    with pytest.raises(DatasetError, match="no usable image"):
        sql.import_sql(url, tmp_path / "ds", query=QUERY, **KW)
