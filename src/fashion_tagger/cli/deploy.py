"""`fashion-tagger export` and `fashion-tagger serve`: put a trained model to work."""

from __future__ import annotations

from pathlib import Path

import typer

from fashion_tagger.cli._app import PROGRESS, app, console, err_console, fail, print_json
from fashion_tagger.inference.onnx import DEFAULT_OPSET

RUN_DIR = typer.Argument(..., help="A run dir (written by train).")


@app.command("export")
def export_cmd(
    run_dir: Path = RUN_DIR,
    fmt: str = typer.Option("onnx", "--format", help="Export format (only onnx)."),
    out: Path | None = typer.Option(
        None, "--out", help="Output file (default RUN_DIR/model.onnx)."
    ),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset version."),
    images: Path | None = typer.Option(
        None,
        "--images",
        help="Image file or folder for the parity check (default: the run's dataset, if found).",
    ),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="int8: a statically quantised graph, faster on CPU; calibrated on real images, "
        "and refused if it changes more than 2 % of their predicted paths.",
    ),
    calibration_images: int = typer.Option(
        256, "--calibration-images", help="Images to calibrate int8 ranges on.", min=1
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    progress: bool = PROGRESS,
) -> None:
    """Export the model to one ONNX graph (with its taxonomy and preprocessing as metadata) and
    check that ONNX Runtime and PyTorch give the same probabilities and paths.

    Example: fashion-tagger export runs/products --format onnx --json

    Example: fashion-tagger export runs/products --quantize int8
    """
    if fmt.lower() != "onnx":
        fail(f"--format {fmt!r} is not supported; use --format onnx")
    from fashion_tagger._progress import bar
    from fashion_tagger.inference.onnx import ParityError, export_onnx

    try:
        with bar("exporting to ONNX and checking parity", total=None, enabled=progress):
            result = export_onnx(
                run_dir,
                out,
                opset=opset,
                images=images,
                quantize=quantize,
                calibration_images=calibration_images,
            )
    except ParityError as exc:
        if as_json:
            print_json({"ok": False, "error": str(exc), "parity": exc.report.to_dict()})
        else:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    if as_json:
        print_json({"ok": True, **result.to_dict()})
        return
    p = result.parity
    console.print(
        f"[green]wrote[/] {result.path} ({result.size_bytes / 1e6:.1f} MB, opset {result.opset}, "
        f"model {result.model_id}" + (f", {p.quantization}" if p.quantization else "") + ")"
    )
    if p.quantization:
        console.print(
            f"{p.quantization} check: {p.images - p.path_mismatches} of {p.images} images keep "
            f"PyTorch's path (at least {1 - p.max_path_mismatch:.0%} needed); max abs "
            f"difference in probabilities {p.max_abs_diff:.3f}"
            + (f"; images from {p.image_source}" if p.image_source else "")
        )
        return
    console.print(
        f"parity: max abs difference {p.max_abs_diff:.2e} (allowed {p.atol:g}) on "
        f"{p.random_inputs} random inputs + {p.real_images} images"
        + (f" from {p.image_source}" if p.image_source else "")
        + f"; same path on all {p.images}"
    )


@app.command("serve")
def serve_cmd(
    run_dir: Path = RUN_DIR,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    max_batch: int = typer.Option(32, "--max-batch", help="Most images per model call."),
    max_wait_ms: float = typer.Option(
        5.0, "--max-wait-ms", help="How long a request waits for others to share its batch."
    ),
    max_images: int = typer.Option(16, "--max-images", help="Most images per request."),
    max_body_mb: float = typer.Option(20.0, "--max-body-mb", help="Largest request body in MiB."),
    allow_private_urls: bool = typer.Option(
        False,
        "--allow-private-urls",
        help="Let {'urls': [...]} reach private/loopback hosts (trusted networks only).",
    ),
    backend: str = typer.Option(
        "auto", "--backend", help="auto (ONNX if model.onnx), torch, onnx."
    ),
    decode_threads: int | None = typer.Option(
        None, "--decode-threads", help="Threads decoding uploads (default: the usable cores)."
    ),
) -> None:
    """Serve the model over HTTP: POST /v1/predict, GET /v1/model, /healthz, /metrics, and a
    web page at / to try it.

    Example: fashion-tagger serve runs/products --port 8000
    """
    from fashion_tagger.errors import require

    require("fastapi", "serve")
    uvicorn = require("uvicorn", "serve")
    from fashion_tagger.serving.app import create_app
    from fashion_tagger.serving.predictor import TaggerPredictor
    from fashion_tagger.serving.settings import Settings

    settings = Settings(
        run_dir=run_dir,
        backend=backend,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_images=max_images,
        max_body_mb=max_body_mb,
        allow_private_urls=allow_private_urls,
        decode_threads=decode_threads,
    )
    app_ = create_app(settings)
    predictor = TaggerPredictor.load(run_dir, backend)  # fail here, not inside the server
    app_.state.predictor = predictor
    console.print(
        f"serving [bold]{predictor.model_id}[/] ({predictor.backend_name}) on "
        f"http://{host}:{port}  (page: /, API schema: /openapi.json)"
    )
    uvicorn.run(app_, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
