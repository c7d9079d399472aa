"""`fashion-tagger import <kind> SRC --out DIR`: one verb per importer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fashion_tagger.cli._app import PROGRESS, WORKERS, console, import_app, print_json
from fashion_tagger.sources import get_importer

OUT = typer.Option(
    ...,
    "--out",
    "-o",
    help="Dataset dir to write, local or a URL like s3://bucket/data (resumable).",
)
JSON = typer.Option(False, "--json", help="Print the import report as JSON.")


def report(result, as_json: bool) -> None:
    """Print what an import did: counts, and why records were skipped."""
    rep = result.report
    if as_json:
        print_json(
            {k: v for k, v in rep.items() if k != "skipped_records"} | {"out": result.dataset.url}
        )
        return
    if result.up_to_date:
        console.print(
            f"[green]{result.dataset.url}[/] is already imported with these arguments; nothing to do."
        )
        return
    verb = "resumed and imported" if result.resumed else "imported"
    console.print(
        f"{verb} [bold]{rep.get('imported', len(result.dataset))}[/] images into {result.dataset.url}"
    )
    if rep.get("skipped"):
        table = Table("skipped because", "count", title=f"{rep['skipped']} records skipped")
        for reason, n in rep["reasons"].items():
            table.add_row(reason, str(n))
        console.print(table)
        console.print(f"details: {result.dataset.url}/import_report.json")


@import_app.command("folders")
def import_folders_cmd(
    src: Path = typer.Argument(..., help="Root folder of the image tree."),
    out: str = OUT,
    levels: list[str] = typer.Option(None, "--level", help="Name of a level, root first (repeat)."),
    workers: int = WORKERS,
    progress: bool = PROGRESS,
    as_json: bool = JSON,
) -> None:
    """Import a folder tree: nested folders are category levels, `a__b` splits into levels, a
    top-level train/validation/test folder is the split.

    Example: fashion-tagger import folders ../shared/datasets/clothing-dataset-small --out data/clothing
    """
    report(
        get_importer("folders")(
            src, out, levels=levels or None, workers=workers, progress=progress
        ),
        as_json,
    )


def _split_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@import_app.command("kaggle-products")
def import_kaggle_products_cmd(
    src: Path = typer.Argument(..., help="The Kaggle zip, or its unpacked folder."),
    out: str = OUT,
    workers: int = WORKERS,
    progress: bool = PROGRESS,
    as_json: bool = JSON,
) -> None:
    """Import Kaggle's Fashion Product Images (styles.csv + images/): masterCategory >
    subCategory > articleType, with gender, colour, season and usage attributes.

    Example: fashion-tagger import kaggle-products ../shared/datasets/fashion-product-images-small.zip --out data/products
    """
    report(get_importer("kaggle-products")(src, out, workers=workers, progress=progress), as_json)


@import_app.command("fashion-mnist")
def import_fashion_mnist_cmd(
    src: Path = typer.Argument(
        None,
        help="Folder with the four IDX .gz files, or a Kaggle CSV (or its folder). "
        "Omit to download the official files.",
    ),
    out: str = OUT,
    cache_dir: Path = typer.Option(
        None,
        "--cache-dir",
        help="Download cache (default $FASHION_TAGGER_CACHE or ~/.cache/fashion-tagger).",
    ),
    base_url: str = typer.Option(
        None,
        "--base-url",
        help="Where to download from (default $FASHION_TAGGER_FASHION_MNIST_URL or Zalando's).",
    ),
    workers: int = WORKERS,
    progress: bool = PROGRESS,
    as_json: bool = JSON,
) -> None:
    """Import Fashion-MNIST (two levels: group > class, official train/test split), from
    IDX files, Kaggle CSVs, or a checksummed download.

    Example: fashion-tagger import fashion-mnist ../shared/datasets/fashion-mnist/fashion-mnist_test-1000.csv --out data/fmnist
    """
    result = get_importer("fashion-mnist")(
        src, out, cache_dir=cache_dir, base_url=base_url, workers=workers, progress=progress
    )
    report(result, as_json)


IMAGE_COLUMN = typer.Option(
    "image",
    "--image-column",
    help="Image path (relative to the manifest's folder / --image-root), http(s) or s3:// URL.",
)
LABEL_COLUMNS = typer.Option(
    None, "--label-columns", help="Label columns, one per level, root first: a,b,c."
)
ATTRIBUTE_COLUMNS = typer.Option(
    None, "--attribute-columns", help="Columns that become column=value attributes: x,y."
)
ITEM_COLUMN = typer.Option(None, "--item-column", help="Product id column.")
SPLIT_COLUMN = typer.Option(None, "--split-column", help="train/val/test column.")
CATEGORY_COLUMN = typer.Option(
    None,
    "--category-column",
    help="Marketplace category id column (e.g. catalog_id), mapped by --category-tree.",
)
CATEGORY_TREE = typer.Option(
    None,
    "--category-tree",
    help="crawl.db of a marketplace crawl: its category tree maps ids to label paths.",
)
TIMEOUT = typer.Option(30.0, "--timeout", help="Seconds per image download.")
ALLOW_PRIVATE = typer.Option(
    False,
    "--allow-private-hosts",
    help="Fetch image URLs on private, loopback or link-local addresses (trusted networks).",
)


@import_app.command("csv")
def import_csv_cmd(
    src: Path = typer.Argument(..., help="A .csv or .parquet manifest, one row per image."),
    out: str = OUT,
    image_column: str = IMAGE_COLUMN,
    label_columns: str = LABEL_COLUMNS,
    attribute_columns: str = ATTRIBUTE_COLUMNS,
    item_column: str = ITEM_COLUMN,
    split_column: str = SPLIT_COLUMN,
    category_column: str = CATEGORY_COLUMN,
    category_tree: Path = CATEGORY_TREE,
    timeout: float = TIMEOUT,
    allow_private_hosts: bool = ALLOW_PRIVATE,
    workers: int = WORKERS,
    progress: bool = PROGRESS,
    as_json: bool = JSON,
) -> None:
    """Import any CSV or Parquet manifest: choose the image, label, attribute, item and split
    columns; paths leaving the manifest's folder are refused; s3:// images are fetched
    concurrently; a category id column can give the label path through a crawl's tree.

    Example: fashion-tagger import csv shop/manifest.csv --label-columns category,type --attribute-columns colour --out data/shop
    """
    result = get_importer("csv")(
        src,
        out,
        image_column=image_column,
        label_columns=_split_list(label_columns),
        attribute_columns=_split_list(attribute_columns),
        item_column=item_column,
        split_column=split_column,
        category_column=category_column,
        category_tree=category_tree,
        timeout=timeout,
        workers=workers,
        progress=progress,
        allow_private_hosts=allow_private_hosts,
    )
    report(result, as_json)


@import_app.command("sql")
def import_sql_cmd(
    url: str = typer.Argument(
        ..., help="SQLAlchemy database URL: postgresql://user@host/db, sqlite:///shop.db."
    ),
    out: str = OUT,
    query: str = typer.Option(..., "--query", help='The rows to import: "SELECT ..."'),
    image_column: str = IMAGE_COLUMN,
    label_columns: str = LABEL_COLUMNS,
    attribute_columns: str = ATTRIBUTE_COLUMNS,
    item_column: str = ITEM_COLUMN,
    split_column: str = SPLIT_COLUMN,
    category_column: str = CATEGORY_COLUMN,
    category_tree: Path = CATEGORY_TREE,
    image_root: Path = typer.Option(
        None,
        "--image-root",
        help="Folder that relative image paths are under (default: URLs only).",
    ),
    timeout: float = TIMEOUT,
    allow_private_hosts: bool = ALLOW_PRIVATE,
    workers: int = WORKERS,
    progress: bool = PROGRESS,
    as_json: bool = JSON,
) -> None:
    """Import the rows of a SQL query (through SQLAlchemy, streamed in batches), with the same
    column options as `import csv`.

    Example: fashion-tagger import sql postgresql://shop@db/catalogue --query "SELECT url, category, type FROM listings" --image-column url --label-columns category,type --out data/shop
    """
    result = get_importer("sql")(
        url,
        out,
        query=query,
        image_column=image_column,
        label_columns=_split_list(label_columns),
        attribute_columns=_split_list(attribute_columns),
        item_column=item_column,
        split_column=split_column,
        category_column=category_column,
        category_tree=category_tree,
        image_root=image_root,
        timeout=timeout,
        workers=workers,
        progress=progress,
        allow_private_hosts=allow_private_hosts,
    )
    report(result, as_json)


@import_app.command("hdf5")
def import_hdf5_cmd(
    src: Path = typer.Argument(..., help="HDF5 file: train_images, train_labels, ..., label_map."),
    out: str = OUT,
    levels: list[str] = typer.Option(None, "--level", help="Name of a level, root first (repeat)."),
    workers: int = WORKERS,
    progress: bool = PROGRESS,
    as_json: bool = JSON,
) -> None:
    """Import an HDF5 file in the shared array layout (label_map names may be `a__b` paths).

    Example: fashion-tagger import hdf5 export/products.h5 --out data/products-h5
    """
    report(
        get_importer("hdf5")(src, out, levels=levels or None, workers=workers, progress=progress),
        as_json,
    )


@import_app.command("zappos")
def import_zappos_cmd(
    src: Path = typer.Argument(..., help="Folder with meta-data.csv, image-path.mat and images/."),
    out: str = OUT,
    workers: int = WORKERS,
    progress: bool = PROGRESS,
    as_json: bool = JSON,
) -> None:
    """Import UT-Zappos50K: Category > SubCategory, with a gender attribute.

    Example: fashion-tagger import zappos downloads/ut-zap50k --out data/zappos
    """
    report(get_importer("zappos")(src, out, workers=workers, progress=progress), as_json)
