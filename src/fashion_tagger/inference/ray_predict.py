"""`predict --engine ray`: batch tagging on a Ray cluster, resumable by partition.

The input (a dataset dir, a folder or glob, or a Parquet/CSV manifest with a path or URL column;
local paths or fsspec URLs such as `s3://bucket/photos/`) is listed and sorted once, then cut
into fixed-size partitions, `part-00000.parquet`, `part-00001.parquet`, ... A partition already
in the output dir is skipped, so a killed job resumes where it stopped and a deleted partition is
the only one rewritten. The plan (the sorted paths of each partition) is kept in `_plan.json`
beside them, and a re-run whose input no longer matches it is refused rather than mixed in.

The pipeline is Ray Data's: read, decode (the model's own preprocessing, read from
model.json), then a `map_batches` actor pool where each actor holds one `Tagger` (one ONNX
Runtime session, or the torch model when the run dir has no model.onnx; an ONNX actor never
imports torch). Decoding runs in CPU tasks of its own when the actors hold GPUs, so they only run
the model; on CPUs each actor decodes its batches in threads beside its model, as the local
`predict` does, which measured faster than shipping pixels between processes (`DECODE_MODES`,
BENCHMARKS.md). The driver gathers each partition's rows and writes it atomically, with the
schema and values of the local `predict` Parquet output. Ray is an optional extra, imported only
here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fashion_tagger import storage
from fashion_tagger._io import write_bytes_atomic
from fashion_tagger.dataset import manifest
from fashion_tagger.errors import FashionTaggerError, require
from fashion_tagger.inference.predict import _parquet_schema, expand_inputs
from fashion_tagger.inference.tagger import Prediction, Tagger, resolve_backend
from fashion_tagger.model.preprocess import decode_for_model, normalize, to_uint8
from fashion_tagger.model.rundir import RunDir

PLAN_FILE = "_plan.json"
PART_PATTERN = "part-{:05d}.parquet"
PATH_COLUMNS = ("path", "url", "image", "image_path", "image_url", "file")
"""Manifest columns that may hold the images, in the order they are looked for."""
MANIFEST_EXTS = (".parquet", ".pq", ".csv")


# -- inputs -------------------------------------------------------------------------------------
def _fsspec(location: str) -> bool:
    """Whether to read `location` through fsspec: object storage (`storage.is_url`) or a
    `file://` URL, which storage counts as local but `Path` and Pillow cannot open."""
    return storage.is_url(location) or location.lower().startswith("file://")


def _fs(url: str):
    """The fsspec filesystem of a URL and the path inside it."""
    fsspec = require("fsspec", "s3")
    return fsspec.core.url_to_fs(url)


def _read_table(path: str):
    """A Parquet or CSV manifest, local or remote, as an Arrow table."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    reader = pcsv.read_csv if path.lower().endswith(".csv") else pq.read_table
    if not _fsspec(path):
        return reader(path)
    fs, inner = _fs(path)
    with fs.open(inner, "rb") as f:
        return reader(f)


def _join(base: str, rel: str) -> str:
    """`rel` inside `base` (a folder path or URL); absolute paths and URLs stay as they are."""
    if _fsspec(rel) or Path(rel).is_absolute():
        return rel
    return f"{base.rstrip('/')}/{rel}" if _fsspec(base) else str(Path(base) / rel)


def _manifest_paths(path: str) -> list[str]:
    table = _read_table(path)
    column = next((c for c in PATH_COLUMNS if c in table.column_names), None)
    if column is None:
        raise FashionTaggerError(
            f"{path} has no image column; name one of its columns {', '.join(PATH_COLUMNS)} "
            f"(it has {', '.join(table.column_names)})"
        )
    base = path.rsplit("/", 1)[0] if _fsspec(path) else str(Path(path).parent)
    return [_join(base, str(v)) for v in table.column(column).to_pylist() if v]


def _is_dataset_dir(source: str) -> bool:
    files = (manifest.ITEMS_FILE, manifest.INFO_FILE)
    if _fsspec(source):
        fs, inner = _fs(source)
        return all(fs.exists(f"{inner.rstrip('/')}/{f}") for f in files)
    return all((Path(source) / f).is_file() for f in files)


def _remote_images(source: str) -> list[str]:
    """Images under a folder URL or matching a glob URL, as full URLs."""
    from fashion_tagger.dataset.images import EXTENSIONS

    fs, inner = _fs(source)
    if any(c in inner for c in "*?["):
        found = fs.glob(inner)
    elif fs.isdir(inner):
        found = fs.find(inner)
    else:
        return [fs.unstrip_protocol(inner)] if fs.exists(inner) else []
    return [fs.unstrip_protocol(p) for p in found if Path(p).suffix.lower() in EXTENSIONS]


def resolve_source(source: str | Path | Sequence[str | Path]) -> list[str]:
    """Every image of SOURCE, sorted: a dataset dir's images, a folder's (recursive) or glob's
    files, or a manifest's path/URL column; local paths or fsspec URLs.

    Sorting makes the partitions a function of the input alone, whatever order a listing or a
    manifest gives, which is what lets a re-run find its partitions again.
    """
    if not isinstance(source, str | Path):
        return sorted(p for s in source for p in resolve_source(s))
    text = storage.normalize(source)
    if _is_dataset_dir(text):
        rels = _read_table(_join(text, manifest.ITEMS_FILE)).column("image").to_pylist()
        paths = [_join(text, r) for r in rels]
    elif text.lower().endswith(MANIFEST_EXTS):
        paths = _manifest_paths(text)
    elif _fsspec(text):
        paths = _remote_images(text)
    else:
        paths = [str(p) for p in expand_inputs([text]) if p.exists()]
    if not paths:
        raise FashionTaggerError(f"no images found in {text}; give a folder, glob or manifest")
    return sorted(paths)


# -- the plan: partitions of the sorted input ----------------------------------------------------
def plan_partitions(paths: Sequence[str], partition_size: int) -> list[list[str]]:
    """Consecutive slices of `partition_size` paths: partition k is always the same paths."""
    return [list(paths[i : i + partition_size]) for i in range(0, len(paths), partition_size)]


def _digest(paths: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]


class _Out:
    """The output dir, local (atomic temp file + rename) or an fsspec URL (one PUT per file)."""

    def __init__(self, root: str | Path) -> None:
        self.root = storage.normalize(root).rstrip("/")
        self.fs, self.inner = _fs(self.root) if _fsspec(self.root) else (None, self.root)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        if self.fs is not None:
            return self.fs.exists(f"{self.inner}/{name}")
        return Path(self.root, name).is_file()

    def read_text(self, name: str) -> str:
        if self.fs is not None:
            return self.fs.cat_file(f"{self.inner}/{name}").decode()
        return Path(self.root, name).read_text()

    def write(self, name: str, data: bytes) -> None:
        if self.fs is not None:
            self.fs.pipe_file(f"{self.inner}/{name}", data)
        else:
            write_bytes_atomic(Path(self.root, name), data)


def _plan(
    model_id: str, parts: list[list[str]], names: list[str], partition_size: int, top_k: int
) -> dict[str, Any]:
    """What `_plan.json` records of a job: enough to tell a resume from another job."""
    return {
        "model_id": model_id,
        "partition_size": partition_size,
        "top_k": top_k,
        "partitions": [
            {"name": n, "images": len(p), "paths": _digest(p)}
            for n, p in zip(names, parts, strict=True)
        ],
    }


def _check_plan(out: _Out, plan: dict[str, Any]) -> None:
    """Refuse to resume into an out dir that holds the partitions of another input or model."""
    if not out.exists(PLAN_FILE):
        out.write(PLAN_FILE, (json.dumps(plan, indent=2) + "\n").encode())
        return
    saved = json.loads(out.read_text(PLAN_FILE))
    for key in ("model_id", "partition_size", "partitions", "top_k"):
        if saved.get(key) != plan[key]:
            raise FashionTaggerError(
                f"{out.root} holds predictions of another job ({key} differs); resume with the "
                "same run dir, input and options, or choose another --out"
            )


# -- the pipeline's steps (they run on the cluster) ----------------------------------------------
DECODE_MODES = ("auto", "actor", "tasks")
"""Where images are decoded: `actor` in threads of each model actor (no pixels move between
processes; the fastest on CPU), `tasks` in CPU tasks of their own that feed the actors (so
GPU actors only run the model), `auto` = `tasks` with GPUs, else `actor`."""


def _decode_place(decode: str, num_gpus: float) -> str:
    """`actor` or `tasks`: where `decode` (one of `DECODE_MODES`) decodes, `auto` resolved."""
    if decode == "auto":
        return "tasks" if num_gpus else "actor"
    return decode


MODEL_BATCH = 64
"""Images per model call inside an actor that decodes: its threads decode the next images
while the model runs on these, as the local `predict` overlaps decoding and the model."""


def _read_pixels(path: str, spec: Any) -> np.ndarray | str:
    """One image as uint8 (C, H, W) at the model's size, or the reason it cannot be read.

    A path is read by Pillow as the local `predict` reads it; a URL through fsspec. The errors
    caught are `Tagger._load`'s, so an unreadable image is a row with `error`, never a crash.
    """
    try:
        source: Any = path
        if _fsspec(path):
            fs, inner = _fs(path)
            source = fs.cat_file(inner)
        return to_uint8(decode_for_model(source, spec), spec)
    except (FashionTaggerError, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def decode_batch(batch: dict[str, np.ndarray], spec: Any) -> dict[str, np.ndarray]:
    """Ray task (`--decode tasks`): read and decode a batch to uint8 (N, C, H, W) pixels, with
    each unreadable image's reason in `error` (its pixels zero)."""
    h, w = spec.input_size
    n = len(batch["path"])
    pixels = np.zeros((n, spec.channels, h, w), dtype=np.uint8)
    errors = []
    for i, path in enumerate(batch["path"]):
        loaded = _read_pixels(str(path), spec)
        if isinstance(loaded, str):
            errors.append(loaded)
        else:
            pixels[i] = loaded
            errors.append("")
    return {**batch, "pixels": pixels, "error": np.asarray(errors, dtype=object)}


class TaggerActor:
    """Ray actor: one `Tagger` (an ONNX Runtime session or the torch model) per actor, loaded
    once, turning its batches into rows of the local `predict` Parquet schema.

    A batch with `pixels` was decoded by the decode tasks; a batch of paths alone is decoded
    here by `decode_threads` threads, `MODEL_BATCH` images ahead of the model.
    """

    def __init__(
        self,
        run_dir: str,
        backend: str,
        top_k: int,
        device: str = "cpu",
        threads: int = 1,
        decode_threads: int = 0,
    ) -> None:
        run = RunDir.open(run_dir)
        gpu = device != "cpu" and backend in ("auto", "torch")
        name = "torch" if gpu else resolve_backend(run, backend)
        # model threads = the CPUs reserved: two actors on two cores do not fight over them
        if name == "onnx":  # imports onnxruntime only: no torch in an ONNX actor
            from fashion_tagger.inference.onnx import OnnxBackend

            model: Any = OnnxBackend(run.onnx, threads=threads)
        else:
            import torch

            from fashion_tagger.inference.tagger import TorchBackend

            torch.set_num_threads(threads)
            model = TorchBackend(run, device=device if gpu else "cpu")
        self.tagger = Tagger(run.spec, model, name)
        self.top_k = top_k
        self.pool = ThreadPoolExecutor(decode_threads) if decode_threads > 0 else None

    def _tag(self, names: list[str], loaded: Sequence[np.ndarray | str]) -> list[Prediction]:
        """Predictions of images already decoded (an error string where one was not)."""
        preds = [
            Prediction(image=n, error=a if isinstance(a, str) else None)
            for n, a in zip(names, loaded, strict=True)
        ]
        good = [i for i, a in enumerate(loaded) if not isinstance(a, str)]
        if good:
            x = normalize(np.stack([loaded[i] for i in good]), self.tagger.spec)
            decoded = self.tagger.decode(
                self.tagger.predict_arrays(x), top_k=self.top_k, names=[names[i] for i in good]
            )
            for i, p in zip(good, decoded, strict=True):
                preds[i] = p
        return preds

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        names = [str(p) for p in batch["path"]]
        if "pixels" in batch:
            pixels, errors = batch["pixels"], batch["error"]
            preds = self._tag(names, [e or pixels[i] for i, e in enumerate(errors)])
        else:
            if self.pool is None:  # a decoding actor without threads: one at a time
                self.pool = ThreadPoolExecutor(1)
            spec = self.tagger.spec
            pending = [self.pool.submit(_read_pixels, n, spec) for n in names]
            preds = []
            for s in range(0, len(names), MODEL_BATCH):
                loaded = [f.result() for f in pending[s : s + MODEL_BATCH]]
                preds += self._tag(names[s : s + MODEL_BATCH], loaded)
        table = pa.Table.from_pylist([p.to_dict() for p in preds], schema=_parquet_schema())
        table = table.append_column("_part", pa.array(batch["part"], pa.int64()))
        return table.append_column("_pos", pa.array(batch["pos"], pa.int64()))


# -- the driver -----------------------------------------------------------------------------------
def _fill_cluster(
    resources: dict[str, float], num_gpus: float, cpus_per_actor: float, decode_cpus: float = 0
) -> int:
    """How many model actors the cluster holds (at least one): one per `cpus_per_actor` CPUs,
    and with `num_gpus` no more than one per `num_gpus` GPUs. `decode_cpus` (decoding in tasks
    apart from the actors) is kept free for one decode task: actors holding every CPU would
    leave the tasks that feed them none, and the job would wait forever."""
    cpus = max(0.0, resources.get("CPU", 1) - decode_cpus)
    actors = int(cpus // cpus_per_actor)
    if num_gpus:
        actors = min(actors, int(resources.get("GPU", 0) // num_gpus))
    return max(1, actors)


def _ray(address: str | None, num_cpus: int | None):
    """Ray, connected: to `address`, to the cluster this process already joined, or to a new
    local one (shut down by the caller)."""
    ray = require("ray", "ray")
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
            started = True
    return ray, started


def _write_partition(out: _Out, name: str, tables: list) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables(tables)
    table = table.take(np.argsort(table.column("_pos").to_numpy(), kind="stable"))
    table = table.drop_columns(["_part", "_pos"]).cast(_parquet_schema())
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    out.write(name, sink.getvalue().to_pybytes())
    return sum(1 for e in table.column("error").to_pylist() if e is not None)


def _items(ray, parts: list[list[str]], pending: list[int], block: int):
    """The pending images as a dataset of (part, pos, path) rows in blocks of about `block`.

    `from_items` builds the blocks here; `from_arrow` would run a remote task per block to
    read its schema, which waits for free CPUs (measured 1.5 to 2.8 s of a job's start-up when
    the previous job's actors still held them).
    """
    rows = [{"part": k, "pos": j, "path": p} for k in pending for j, p in enumerate(parts[k])]
    return ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / block)))


def _dataset(ray, data, run_dir, spec, options: dict[str, Any]):
    """The Ray Data plan: paths -> [decode tasks] -> the model's actor pool."""
    gpus = options["num_gpus"]
    decode = _decode_place(options["decode"], gpus)
    if decode == "tasks":
        # with other resources than the actors' (always so with GPUs), Ray Data runs these
        # as tasks of their own spread over the cluster; with the same, it fuses them into
        # the actors, where they run before the model one batch at a time
        data = data.map_batches(
            decode_batch,
            fn_kwargs={"spec": spec},
            batch_format="numpy",
            compute=ray.data.TaskPoolStrategy(),
            num_cpus=options["decode_cpus"],
        )
    size = options["concurrency"]
    pool = (
        ray.data.ActorPoolStrategy(min_size=size[0], max_size=size[1])
        if isinstance(size, tuple)
        else ray.data.ActorPoolStrategy(size=size)
    )
    threads = max(1, math.ceil(options["cpus_per_actor"]))
    return data.map_batches(
        TaggerActor,
        fn_constructor_kwargs={
            "run_dir": str(run_dir),
            "backend": options["backend"],
            "top_k": options["top_k"],
            "device": "cuda" if gpus else "cpu",
            "threads": threads,
            # as the local predict: more decode threads than cores, as reads wait on disks
            "decode_threads": 0 if decode == "tasks" else 2 * threads,
        },
        batch_size=options["batch_size"],
        batch_format="numpy",
        compute=pool,
        num_gpus=gpus or None,
        num_cpus=options["cpus_per_actor"],
    )


def _run_pipeline(
    ray, parts, pending, run_dir, spec, out: _Out, options
) -> tuple[int, float | None]:
    """The plan's rows come back to the driver, which writes each partition once complete;
    returns the number of unreadable images and the seconds until the first rows came back."""
    import pyarrow.compute as pc

    items = _items(ray, parts, pending, max(1, options["batch_size"]))
    data = _dataset(ray, items, run_dir, spec, options)
    waiting: dict[int, list] = {k: [] for k in pending}
    have = dict.fromkeys(pending, 0)
    errors = 0
    started = time.perf_counter()
    first_rows_s = None
    for batch in data.iter_batches(batch_format="pyarrow", batch_size=None):
        if first_rows_s is None:  # the job's fixed cost: planning, actors, the first batch
            first_rows_s = round(time.perf_counter() - started, 2)
        for k in set(batch.column("_part").to_pylist()):
            piece = batch.filter(pc.equal(batch.column("_part"), k))
            waiting[k].append(piece)
            have[k] += len(piece)
            if have[k] == len(parts[k]):
                errors += _write_partition(out, PART_PATTERN.format(k), waiting.pop(k))
    if waiting:  # every row comes back once; anything else is a bug, not a user error
        raise RuntimeError(f"partitions {sorted(waiting)} did not receive all their rows")
    return errors, first_rows_s


def predict_ray(
    run_dir: str | Path,
    source: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    address: str | None = None,
    concurrency: int | tuple[int, int] | None = None,
    num_gpus: float = 0,
    batch_size: int = 256,
    backend: str = "auto",
    top_k: int = 5,
    partition_size: int = 1000,
    cpus_per_actor: float = 1,
    decode_cpus: float = 1,
    decode: str = "auto",
    num_cpus: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Tag every image of `source` on Ray with the model of `run_dir`, into partitioned Parquet.

    Args:
        address: a Ray cluster (`ray://host:10001`, `auto`); default the cluster this process
            joined, else a new local one (of `num_cpus` CPUs).
        concurrency: model actors (or `(min, max)` to autoscale), each holding one model;
            None: as many as the cluster holds (its CPUs / `cpus_per_actor`, or with `num_gpus`
            its GPUs / `num_gpus`).
        num_gpus: GPUs per actor; with GPUs the torch model runs on CUDA.
        batch_size: images per actor call and per decode task (256 measured best on 2 cores:
            fewer tasks and object transfers; see benchmarks/ray_bench.py).
        partition_size: images per output file; the unit of resuming.
        cpus_per_actor: CPUs each actor reserves, and its model's threads (rounded up); with
            decode tasks, below 1 when the model is light next to decoding.
        decode_cpus: CPUs each decode task reserves (below 1 runs more of them per core).
        decode: where images are decoded (`DECODE_MODES`): in the actors' threads, or in
            tasks of their own (the default with GPUs).

    Returns:
        A summary: images, errors (in the partitions written now), partitions, `written` and
        `skipped` partition names, out, backend, seconds, and `first_rows_s` (the job's
        start-up: seconds until the first rows came back from the actors).

    Example:
        >>> predict_ray("runs/p1", "s3://bucket/photos/", "preds/", address="auto", concurrency=8)
    """
    if batch_size < 1 or top_k < 1 or partition_size < 1:
        raise FashionTaggerError("--batch-size, --top-k and --partition-size must be 1 or more")
    if decode not in DECODE_MODES:
        raise FashionTaggerError(f"--decode must be one of {', '.join(DECODE_MODES)}")
    started_at = time.perf_counter()
    run = RunDir.open(run_dir)
    backend_name = resolve_backend(run, "torch" if num_gpus else backend)
    paths = resolve_source(source)
    parts = plan_partitions(paths, partition_size)
    out = _Out(out_dir)
    names = [PART_PATTERN.format(k) for k in range(len(parts))]
    _check_plan(out, _plan(run.spec.model_id, parts, names, partition_size, top_k))
    pending = [k for k, n in enumerate(names) if not out.exists(n)]
    errors, first_rows_s = 0, None
    if pending:
        ray, started = _ray(address, num_cpus)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = progress
            if concurrency is None:
                in_tasks = _decode_place(decode, num_gpus) == "tasks"
                concurrency = _fill_cluster(
                    ray.cluster_resources(), num_gpus, cpus_per_actor, decode_cpus * in_tasks
                )
            options = {
                "batch_size": batch_size,
                "backend": backend,
                "top_k": top_k,
                "num_gpus": num_gpus,
                "concurrency": concurrency,
                "cpus_per_actor": cpus_per_actor,
                "decode_cpus": decode_cpus,
                "decode": decode,
            }
            errors, first_rows_s = _run_pipeline(
                ray, parts, pending, run.path, run.spec, out, options
            )
        finally:
            if started:
                ray.shutdown()
    return {
        "engine": "ray",
        "first_rows_s": first_rows_s,
        "images": len(paths),
        "errors": errors,
        "partitions": len(parts),
        "written": [names[k] for k in pending],
        "skipped": [n for k, n in enumerate(names) if k not in set(pending)],
        "out": out.root,
        "backend": backend_name,
        "seconds": round(time.perf_counter() - started_at, 2),
    }
