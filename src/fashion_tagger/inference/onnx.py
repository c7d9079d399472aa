"""ONNX: export a run dir's model to one graph, check it against PyTorch, and run it.

The graph computes `probabilities` (backbone and heads): input `image` (N, C, H, W) float32 with
a dynamic batch axis, outputs `level_<i>` (softmax per level) and `attributes` (sigmoid). The
preprocessing parameters, the taxonomy, the attribute names and thresholds and the model id ride
along in the ONNX `metadata_props`, so the file is usable without its run dir. `OnnxBackend` is
the backend of the `Tagger` contract: numpy in, numpy out, no torch needed.

`quantize="int8"` writes a statically quantised graph instead (QDQ, per-channel int8 weights,
uint8 activations calibrated on real images of the run's dataset): faster on CPU, and no longer
equal to PyTorch to 1e-4, so its check is on real images only: the share of images whose
predicted path differs from PyTorch's must stay under `max_path_mismatch` (2 % by default).
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fashion_tagger._cpu import usable_cores
from fashion_tagger._io import atomic_path, check_output
from fashion_tagger.errors import FashionTaggerError, RunDirError, require
from fashion_tagger.model.decode import LeafTable
from fashion_tagger.model.rundir import RunPaths

if TYPE_CHECKING:  # pragma: no cover
    from fashion_tagger.model.spec import ModelSpec

DEFAULT_OPSET = 17
PARITY_ATOL = 1e-4
"""Largest allowed difference between PyTorch and ONNX Runtime probabilities."""
INPUT_NAME = "image"
METADATA_VERSION = "1"
QUANTIZE = ("int8",)
INT8_MAX_PATH_MISMATCH = 0.02
"""Largest share of real images whose path may change when the graph is quantised to int8."""


class ParityError(FashionTaggerError):
    """The exported graph does not compute what the PyTorch model computes."""

    def __init__(self, report: ParityReport) -> None:
        if report.quantization:
            message = (
                f"the {report.quantization} graph changes the predicted path of "
                f"{report.path_mismatches} of {report.images} images "
                f"(allowed {report.max_path_mismatch:.0%}); the ONNX file was not written. "
                "Export without --quantize, or calibrate on more images"
            )
        else:
            message = (
                f"ONNX and PyTorch disagree: max abs difference {report.max_abs_diff:.3g} "
                f"(allowed {report.atol:g}), {report.path_mismatches} of {report.images} images "
                "with another predicted path; the ONNX file was not written. Try another "
                "--opset, or report the backbone as not exportable"
            )
        super().__init__(message)
        self.report = report


@dataclass
class ParityReport:
    """How the ONNX graph compares with PyTorch on the same inputs."""

    max_abs_diff: float
    random_inputs: int
    real_images: int
    path_mismatches: int
    atol: float
    image_source: str | None = None
    quantization: str | None = None
    max_path_mismatch: float = 0.0
    """Share of images allowed another path (0 for a float graph; see INT8_MAX_PATH_MISMATCH)."""

    @property
    def images(self) -> int:
        return self.random_inputs + self.real_images

    @property
    def ok(self) -> bool:
        if self.quantization:  # probabilities move by design; what counts is the answer
            return self.path_mismatches <= self.max_path_mismatch * self.images
        return self.max_abs_diff <= self.atol and self.path_mismatches == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images": self.images, "ok": self.ok}


@dataclass
class ExportResult:
    """What `export_onnx` wrote and how well it matches PyTorch."""

    path: Path
    opset: int
    model_id: str
    size_bytes: int
    parity: ParityReport
    outputs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "opset": self.opset,
            "model_id": self.model_id,
            "size_bytes": self.size_bytes,
            "outputs": self.outputs,
            "quantization": self.parity.quantization,
            "parity": self.parity.to_dict(),
        }


# -- metadata ---------------------------------------------------------------------------------
def spec_metadata(spec: ModelSpec) -> dict[str, str]:
    """The ONNX `metadata_props` of a `ModelSpec`: its model.json keys, JSON text per key."""
    keys = spec.to_json()
    return {
        "fashion_tagger.format_version": METADATA_VERSION,
        "model_id": str(keys.pop("model_id")),
        **{k: json.dumps(v, ensure_ascii=False) for k, v in keys.items()},
    }


def parse_metadata(props: dict[str, str]) -> dict[str, Any]:
    """`metadata_props` back to values (JSON-decoded where they are JSON)."""
    out: dict[str, Any] = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v) if k not in ("model_id", "fashion_tagger.format_version") else v
        except json.JSONDecodeError:
            out[k] = v
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The fashion-tagger metadata of an exported ONNX file (without loading its weights)."""
    onnx = require("onnx", "onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise FashionTaggerError(f"{path} is not a readable ONNX file: {exc}") from exc
    return parse_metadata({p.key: p.value for p in model.metadata_props})


# -- export -----------------------------------------------------------------------------------
def _wrapper(module: Any) -> Any:
    import torch

    class Probabilities(torch.nn.Module):
        """What the graph computes: the model's `probabilities`, nothing else."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(self.inner.probabilities(x))

    return Probabilities(module).eval()


def export_module(module: Any, spec: Any, out: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write `module.probabilities` as an ONNX graph with the spec in its metadata (atomically).

    Uses the TorchScript exporter: it needs no extra package (the dynamo exporter needs
    onnxscript) and handles every timm backbone we ship.
    """
    import torch

    onnx = require("onnx", "onnx")
    depth = spec.taxonomy.depth
    outputs = [f"level_{i}" for i in range(depth)] + ["attributes"]
    h, w = spec.input_size
    dummy = torch.zeros(2, spec.channels, h, w)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _wrapper(module.eval()),
            (dummy,),
            buf,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
            opset_version=opset,
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    for k, v in spec_metadata(spec).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "fashion-tagger"
    onnx.checker.check_model(model)
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_bytes(model.SerializeToString())
    return out


def path_mismatches(leaves: LeafTable, ref: list[np.ndarray], got: list[np.ndarray]) -> int:
    """Rows whose decoded path differs between two sets of outputs `[level_0, ..., attributes]`
    (decoded as `predict` decodes them)."""
    depth = leaves.index.shape[0]
    return int(np.sum(leaves.best_leaves(ref[:depth]) != leaves.best_leaves(got[:depth])))


def check_parity(
    module: Any,
    spec: Any,
    onnx_path: str | Path,
    images: np.ndarray | None = None,
    *,
    random_inputs: int = 8,
    atol: float = PARITY_ATOL,
    batch_size: int = 32,
    seed: int = 0,
) -> ParityReport:
    """Run PyTorch and ONNX Runtime on the same random inputs and real images; compare.

    Args:
        images: preprocessed real images (N, C, H, W), or None for random inputs only.
    """
    import torch

    h, w = spec.input_size
    rng = np.random.default_rng(seed)
    batches = []
    if random_inputs:
        batches.append(rng.standard_normal((random_inputs, spec.channels, h, w)).astype(np.float32))
    n_real = 0 if images is None else len(images)
    for start in range(0, n_real, batch_size):
        batches.append(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32))
    backend = OnnxBackend(onnx_path)
    wrapped = _wrapper(module.eval())
    leaves = LeafTable.from_taxonomy(spec.taxonomy)
    worst, mismatches = 0.0, 0
    for x in batches:
        with torch.inference_mode():
            ref = [t.float().numpy() for t in wrapped(torch.from_numpy(x))]
        got = backend(x)
        for a, b in zip(ref, got, strict=True):
            if a.size:
                worst = max(worst, float(np.max(np.abs(a - b))))
        mismatches += path_mismatches(leaves, ref, got)
    return ParityReport(worst, random_inputs, n_real, mismatches, atol)


def _image_files(path: Path, limit: int) -> list[Path]:
    from fashion_tagger.dataset.images import EXTENSIONS

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FashionTaggerError(f"--images {path} does not exist; give an image file or a folder")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    return files[:limit]


def _dataset_images(run: Any, limit: int, split: str = "test") -> tuple[list[Path], str | None]:
    """Up to `limit` images of the run's dataset (`split` first) when its dir is known."""
    from fashion_tagger.dataset.core import Dataset

    name = (run.config.get("data") or {}).get("dataset")
    if not name:
        return [], None
    candidates = [Path(name)] if Path(name).is_absolute() else [Path(name), run.path / name]
    root = next((c for c in candidates if (c / "items.parquet").is_file()), None)
    if root is None:
        return [], None
    ds = Dataset.open(root)
    splits = ds.table.column("split").to_pylist()
    order = sorted(range(len(ds)), key=lambda i: (splits[i] != split, i))
    files = [ds.image_path(i) for i in order[: limit * 2]]
    return [f for f in files if f.is_file()][:limit], str(root)


def quantize_int8(src: str | Path, out: str | Path, calibration: np.ndarray) -> Path:
    """Statically quantise the float graph `src` to int8 (QDQ) into `out`, keeping its metadata.

    Weights per channel in int8, activations in uint8 with ranges calibrated (min-max) on
    `calibration`, preprocessed images (N, C, H, W). Weights use 7 bits (`reduce_range`): CPUs
    without VNNI multiply uint8 by int8 in 16-bit pairs, which full-range weights can overflow.
    """
    onnx = require("onnx", "onnx")
    require("onnxruntime", "onnx")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 32)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {INPUT_NAME: np.ascontiguousarray(x, np.float32)}

    src, out = Path(src), Path(out)
    props = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch, atomic_path(out) as tmp:
        pre = Path(scratch) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        for k, v in {**props, "quantization": "int8"}.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        tmp.write_bytes(model.SerializeToString())
    return out


def export_onnx(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    images: str | Path | None = None,
    max_images: int = 64,
    atol: float = PARITY_ATOL,
    quantize: str | None = None,
    calibration_images: int = 256,
    max_path_mismatch: float = INT8_MAX_PATH_MISMATCH,
) -> ExportResult:
    """Export a run dir's model to ONNX (default `RUN_DIR/model.onnx`) and prove it matches.

    Parity is checked on random inputs and on real images: `images` (a file or folder) when
    given, else the run's dataset when model.json's `data.dataset` still exists. The file only
    replaces `out` when parity holds.

    With `quantize="int8"` the float graph is checked as above, then quantised with ranges
    calibrated on `calibration_images` real images (the dataset's train split, or `images`),
    and the int8 graph is checked against PyTorch on the real images (the test split first):
    at most `max_path_mismatch` of them may get another path.

    Raises:
        ParityError: probabilities differ by more than `atol`, or a predicted path differs (for
            int8: more paths differ than allowed).
    """
    from fashion_tagger.model.load import load_model
    from fashion_tagger.model.preprocess import load_for_model
    from fashion_tagger.model.rundir import RunDir

    run = RunDir.open(run_dir)
    out = Path(out) if out is not None else run.onnx
    check_output(out, [images] if images is not None else [])
    module, spec = load_model(run)
    if opset < 11:
        raise FashionTaggerError(
            f"--opset {opset} is too old; use 11 or newer (default {DEFAULT_OPSET})"
        )
    if quantize is not None and quantize not in QUANTIZE:
        raise FashionTaggerError(f"--quantize {quantize!r}: use {', '.join(QUANTIZE)}")
    if images is not None:
        limit = max(max_images, calibration_images) if quantize else max_images
        files, source = _image_files(Path(images), limit), str(images)
        calib_files = files
    else:
        files, source = _dataset_images(run, max_images)
        calib_files = _dataset_images(run, calibration_images, "train")[0] if quantize else []
    if quantize and not (files and calib_files):
        raise FashionTaggerError(
            f"--quantize {quantize} needs real images to calibrate and check on: give --images "
            "FOLDER, or keep the run's dataset where model.json says it is"
        )
    arrays = np.stack([load_for_model(f, spec) for f in files]) if files else None
    with atomic_path(out) as tmp:
        try:
            export_module(module, spec, tmp, opset)
        except FashionTaggerError:
            raise
        except Exception as exc:
            raise RunDirError(
                f"cannot export {run.path} to ONNX opset {opset}: {str(exc)[:300]}"
            ) from exc
        report = check_parity(module, spec, tmp, arrays, atol=atol)
        report.image_source = source
        if not report.ok:
            raise ParityError(report)
        if quantize:
            calibration = np.stack([load_for_model(f, spec) for f in calib_files])
            quantize_int8(tmp, tmp, calibration)
            report = check_parity(module, spec, tmp, arrays, random_inputs=0, atol=1.0)
            report.image_source = source
            report.quantization, report.max_path_mismatch = quantize, max_path_mismatch
            if not report.ok:
                raise ParityError(report)
    outputs = [f"level_{i}" for i in range(spec.taxonomy.depth)] + ["attributes"]
    return ExportResult(out, opset, spec.model_id, out.stat().st_size, report, outputs)


# -- runtime ----------------------------------------------------------------------------------
class OnnxBackend:
    """ONNX Runtime on CPU as a `Tagger` backend: `(N, C, H, W) float32 -> [level_0, ..., attributes]`.

    Graph optimisations are on and intra-op threads default to the cores this process may use;
    `spinning=True` lets idle threads busy-wait (a little lower latency on an otherwise idle machine).
    `run` is thread-safe, so the service's batcher may call it from a worker thread.
    """

    def __init__(
        self, path: str | Path, threads: int | None = None, spinning: bool = False
    ) -> None:
        ort = require("onnxruntime", "onnx")
        self.path = Path(path)
        if not self.path.is_file():
            raise RunDirError(f"{self.path} does not exist; create it with `fashion-tagger export`")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or usable_cores()
        options.inter_op_num_threads = 1
        # Idle ORT threads busy-wait for the next run by default; with spinning off they sleep,
        # leaving the cores to image decoding threads (predict, the service) and to neighbours.
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if spinning else "0"
        )
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise RunDirError(
                f"{self.path} is not a usable ONNX model ({str(exc)[:200]}); re-run `fashion-tagger export`"
            ) from exc
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = parse_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.model_id = str(self.metadata.get("model_id", ""))
        _check_same_model(self.path, self.model_id)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return list(self.session.run(self.output_names, {INPUT_NAME: x}))


def _check_same_model(path: Path, model_id: str) -> None:
    """Refuse a model.onnx left over from another training run in the same dir."""
    paths = RunPaths(path.parent)
    model_json = paths.model_json
    if path != paths.onnx or not model_json.is_file():
        return
    try:
        expected = json.loads(model_json.read_text()).get("model_id")
    except (OSError, ValueError, AttributeError):
        return
    if expected and model_id and expected != model_id:
        raise RunDirError(
            f"{path} was exported from model {model_id}, but the run dir now holds {expected}; "
            f"re-run `fashion-tagger export {path.parent} --format onnx`"
        )
