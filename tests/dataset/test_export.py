"""dataset export: folder tree, zip and HDF5 layouts, resizing, atomicity, round trip."""

import hashlib
import io
import json
import zipfile

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.dataset import export as export_mod
from fashion_tagger.dataset import manifest, store
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.export import class_names, export, letterbox
from fashion_tagger.errors import DatasetError

LEAVES = [
    ["Apparel", "Topwear", "T-Shirts"],
    ["Apparel", "Bottom wear", "Jeans"],
    ["Footwear", "Shoes & Boots"],
]


def _jpeg(colour, size=(40, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make(root, splits=("train", "train", "val", "test", "test", "train")):
    """Six photos over three leaves (one of depth 2), distinct solid colours."""
    rows = []
    for i, sp in enumerate(splits):
        data = _jpeg((40 * i, 255 - 40 * i, 100))
        sha = hashlib.sha256(data).hexdigest()
        rows.append(
            {
                "image": store.put(root, sha, "jpg", data),
                "sha256": sha,
                "item_id": f"item{i}",
                "labels": LEAVES[i % 3],
                "split": sp,
                "width": 40,
                "height": 20,
            }
        )
    return Dataset.create(
        root, manifest.rows_to_table(rows), {"name": "tiny", "levels": ["a", "b", "c"]}
    )


NAMES = ["apparel__bottom_wear__jeans", "apparel__topwear__t_shirts", "footwear__shoes_and_boots"]


def test_class_names_are_sanitised_and_collisions_refused(tmp_path):
    assert sorted(class_names(make(tmp_path / "a")).values()) == NAMES
    rows = [
        {"image": "x", "sha256": "a", "item_id": "1", "labels": ["Coats & Jackets"]},
        {"image": "y", "sha256": "b", "item_id": "2", "labels": ["coats and jackets"]},
    ]
    clash = Dataset(tmp_path, manifest.rows_to_table(rows), {})
    with pytest.raises(DatasetError, match="both export as"):
        class_names(clash)


def test_folders_tree_links_original_bytes(tmp_path):
    ds = make(tmp_path / "ds")
    result = export(ds, "folders", tmp_path / "out", progress=False)
    files = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.jpg")
    )
    shas = ds.table.column("sha256").to_pylist()
    assert f"train/apparel__topwear__t_shirts/{shas[0]}.jpg" in files
    assert f"val/footwear__shoes_and_boots/{shas[2]}.jpg" in files
    assert len(files) == 6 and result.images == 6 and result.classes == 3
    assert result.splits == {"test": 2, "train": 3, "val": 1}
    assert (
        tmp_path / "out" / f"train/apparel__topwear__t_shirts/{shas[0]}.jpg"
    ).read_bytes() == ds.image_path(0).read_bytes()
    with pytest.raises(DatasetError, match="already exists"):
        export(ds, "folders", tmp_path / "out", progress=False)


def test_folders_resized_square_on_white_and_unsplit_under_all(tmp_path):
    ds = make(tmp_path / "ds", splits=("",) * 6)
    export(ds, "folders", tmp_path / "out", size=32, progress=False)
    files = sorted((tmp_path / "out").rglob("*.jpg"))
    assert len(files) == 6 and all(p.parent.parent.name == "all" for p in files)
    img = Image.open(files[0])
    assert img.size == (32, 32) and img.format == "JPEG"
    px = np.asarray(img.convert("RGB"), dtype=int)
    assert px[0, 0].min() > 245  # 40x20 fitted to 32x16: padded on white above and below
    assert px[16, 16].min() < 200  # the photo itself (each colour has a channel <= 100)


def test_letterbox_grayscale():
    out = letterbox(Image.new("RGB", (10, 40), (0, 0, 0)), 20, grayscale=True)
    assert out.mode == "L" and out.size == (20, 20)
    a = np.asarray(out)
    assert a[10, 0] == 255 and a[10, 10] == 0


def test_zip_same_tree_stored(tmp_path):
    ds = make(tmp_path / "ds")
    export(ds, "zip", tmp_path / "out.zip", split="train", progress=False)
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        infos = zf.infolist()
        assert len(infos) == 3 and all(i.filename.startswith("train/") for i in infos)
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        first = next(i for i in infos if ds.table.column("sha256")[0].as_py() in i.filename)
        assert zf.read(first) == ds.image_path(0).read_bytes()
    assert not list(tmp_path.glob(".out.zip*"))  # no temp file left


def test_hdf5_layout(tmp_path):
    ds = make(tmp_path / "ds")
    export(ds, "hdf5", tmp_path / "out.h5", progress=False)
    with h5py.File(tmp_path / "out.h5") as f:
        assert set(f) == {
            "train_images",
            "train_labels",
            "val_images",
            "val_labels",
            "test_images",
            "test_labels",
            "label_map",
        }
        assert f["train_images"].shape == (3, 64, 64, 3) and f["train_images"].dtype == np.uint8
        assert f["train_images"].compression == "gzip"
        assert [s.decode() for s in f["label_map"][()]] == [f"{i},{n}" for i, n in enumerate(NAMES)]
        # rows 0, 1, 5 are train with leaves T-Shirts, Jeans, Shoes; rows 3, 4 test
        assert f["train_labels"][()].tolist() == [1, 0, 2]
        assert f["test_labels"][()].tolist() == [1, 0]
        centre = f["train_images"][0, 32, 32]
        assert centre.tolist() == pytest.approx([0, 255, 100], abs=8)
    export(ds, "hdf5", tmp_path / "grey.h5", size=16, grayscale=True, progress=False)
    with h5py.File(tmp_path / "grey.h5") as f:
        assert f["test_images"].shape == (2, 16, 16)


def test_hdf5_needs_splits(tmp_path):
    ds = make(tmp_path / "ds", splits=("train", "", "train", "", "train", "train"))
    with pytest.raises(DatasetError, match="dataset split"):
        export(ds, "hdf5", tmp_path / "out.h5", progress=False)
    ds = make(tmp_path / "ds2", splits=("train",) * 6)
    with pytest.raises(DatasetError, match="train and test"):
        export(ds, "hdf5", tmp_path / "out.h5", progress=False)
    assert not (tmp_path / "out.h5").exists()


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    ds = make(tmp_path / "ds")
    calls = {"n": 0}
    real = export_mod._pixels

    def boom(*args):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(export_mod, "_pixels", boom)
    monkeypatch.setattr(export_mod, "CHUNK", 2)
    with pytest.raises(KeyboardInterrupt):
        export(ds, "hdf5", tmp_path / "out" / "x.h5", workers=1, progress=False)
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(export_mod, "_render", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        export(ds, "folders", tmp_path / "out" / "tree", workers=1, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_arguments(tmp_path):
    ds = make(tmp_path / "ds")
    with pytest.raises(DatasetError, match="--format"):
        export(ds, "tar", tmp_path / "o", progress=False)
    with pytest.raises(DatasetError, match="--size"):
        export(ds, "folders", tmp_path / "o", size=2, progress=False)
    with pytest.raises(DatasetError, match="has no rows"):
        export(ds, "zip", tmp_path / "o.zip", split="validation", progress=False)


def test_cli_hdf5_round_trip_through_import(tmp_path):
    """export hdf5 then `import hdf5` gives back the same labels per split and the pixels."""
    from fashion_tagger.sources.hdf5 import import_hdf5

    make(tmp_path / "ds")
    res = CliRunner().invoke(
        app,
        [
            "dataset",
            "export",
            str(tmp_path / "ds"),
            "--format",
            "hdf5",
            "--size",
            "16",
            "--out",
            str(tmp_path / "x.h5"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["images"] == 6
    back = import_hdf5(tmp_path / "x.h5", tmp_path / "back", workers=1, progress=False).dataset
    assert back.level_names == ("a", "b", "c")
    got = sorted(
        zip(
            back.table.column("split").to_pylist(), ["__".join(p) for p in back.labels], strict=True
        )
    )
    splits = ("train", "train", "val", "test", "test", "train")
    want = sorted(zip(splits, [NAMES[1], NAMES[0], NAMES[2]] * 2, strict=True))
    assert got == want
    with h5py.File(tmp_path / "x.h5") as f:
        assert np.array_equal(np.asarray(back.load_image(0)), f["train_images"][0])


# -- the Vinted notebook's layout, both ways (#22) -----------------------------------------------
def _notebook_dataset(root):
    """`make`'s six photos plus a second photo of item0 and a PNG, in train/val/test."""
    ds = make(root)
    extra = []
    for k, (data, ext) in enumerate([(_jpeg((1, 2, 3)), "jpg"), (_png(), "png")]):
        sha = hashlib.sha256(data).hexdigest()
        extra.append({"image": store.put(root, sha, ext, data), "sha256": sha,
                      "item_id": ["item0", "a/b:c"][k], "labels": LEAVES[0], "split": "train",
                      "width": 40, "height": 20})  # fmt: skip
    table = manifest.rows_to_table([*ds.table.to_pylist(), *extra])
    return Dataset.create(root, table, {"name": "tiny", "levels": ["a", "b", "c"]})


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), (9, 9, 9)).save(buf, format="PNG")
    return buf.getvalue()


def test_vinted_notebook_layout_round_trips_through_import_folders(tmp_path):
    import datetime

    from fashion_tagger.sources.folders import import_folders

    ds = _notebook_dataset(tmp_path / "ds")
    out = tmp_path / "exports" / "vinted_dev"
    res = CliRunner().invoke(app, ["dataset", "export", str(tmp_path / "ds"), "--format", "folders",
                                   "--layout", "vinted-notebook", "--out", str(out), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    day = datetime.date.today().isoformat()
    assert result["archive"] == str(out / f"vinted_dev_{day}.zip")
    assert result["images"] == 8 and result["splits"] == {"test": 2, "train": 5, "val": 1}
    train = out / "vinted_dev_train"
    assert sorted(p.name for p in (train / NAMES[1]).iterdir()) == [
        "a_b_c.jpeg", "item0.jpeg", "item0__2.jpeg"
    ]  # fmt: skip
    assert {p.name for p in out.iterdir()} == {
        "vinted_dev_train", "vinted_dev_val", "vinted_dev_test", f"vinted_dev_{day}.zip"
    }  # fmt: skip
    png_copy = Image.open(train / NAMES[1] / "a_b_c.jpeg")
    assert png_copy.format == "JPEG"  # every file is the .jpeg its name says
    with zipfile.ZipFile(result["archive"]) as zf:
        names = sorted(zf.namelist())
    assert len(names) == 8 and all(n.startswith("vinted_dev_") for n in names)

    def back(src, dest):
        got = import_folders(src, dest, workers=1, progress=False).dataset.to_pandas()
        return sorted((r.item_id, tuple(r.labels), r.split, r.sha256) for r in got.itertuples())

    from_zip = back(result["archive"], tmp_path / "from_zip")
    from_dir = back(out, tmp_path / "from_dir")  # the unzipped folders read the same
    assert from_zip == from_dir
    orig = ds.to_pandas()
    want = sorted(
        (r.item_id.replace("/", "_").replace(":", "_"), tuple(class_names(ds)[tuple(r.labels)].split("__")), r.split)
        for r in orig.itertuples()
    )  # fmt: skip
    assert [t[:3] for t in from_zip] == want  # items, class paths and splits kept
    jpeg_shas = {r.sha256 for r in orig.itertuples() if r.image.endswith(".jpg")}
    assert jpeg_shas <= {t[3] for t in from_zip}  # JPEGs byte for byte


def test_vinted_notebook_layout_needs_splits_and_the_folders_format(tmp_path):
    ds = make(tmp_path / "ds", splits=("train", "", "val", "train", "val", "train"))
    with pytest.raises(DatasetError, match="split per image"):
        export(ds, "folders", tmp_path / "o", layout="vinted-notebook", progress=False)
    with pytest.raises(DatasetError, match="--format folders"):
        export(ds, "zip", tmp_path / "o.zip", layout="vinted-notebook", progress=False)
    with pytest.raises(DatasetError, match="--layout"):
        export(ds, "folders", tmp_path / "o", layout="nope", progress=False)
    assert not (tmp_path / "o").exists()
