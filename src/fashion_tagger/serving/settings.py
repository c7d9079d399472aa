"""The service's settings: one frozen dataclass, validated once, shared by the CLI and tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.inference.tagger import BACKENDS


class SettingsError(FashionTaggerError):
    """A serve option is out of range; the message names the flag."""


@dataclass(frozen=True)
class Settings:
    """How the service runs.

    Attributes:
        run_dir: the run dir whose model is served (None: tests provide a predictor themselves).
        backend: "auto" (ONNX when run_dir/model.onnx exists), "torch" or "onnx".
        max_batch: most images per model call; concurrent requests are batched up to this.
        max_wait_ms: how long the first image of a batch waits for others to join it.
        max_images: most images in one request (more: 413).
        max_body_mb: largest request body in MiB (more: 413).
        allow_private_urls: let `{"urls": [...]}` reach private, loopback and link-local hosts
            (off by default: a public service must not be a proxy into its own network).
        url_timeout_s: time limit to fetch one URL, redirects included.
        url_max_redirects: redirects followed per URL, each one checked again.
        top_k: default number of best leaves returned per image.
        decode_threads: threads that decode and preprocess uploaded images (None: the cores
            this process may use). More threads than cores only make them fight the model's
            own threads for the CPU.
    """

    run_dir: Path | None = None
    backend: str = "auto"
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_images: int = 16
    max_body_mb: float = 20.0
    allow_private_urls: bool = False
    url_timeout_s: float = 10.0
    url_max_redirects: int = 3
    top_k: int = 5
    decode_threads: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise SettingsError(
                f"--backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}"
            )
        if self.max_batch < 1:
            raise SettingsError("--max-batch must be at least 1")
        if self.max_wait_ms < 0:
            raise SettingsError("--max-wait-ms must be 0 or more")
        if self.max_images < 1:
            raise SettingsError("--max-images must be at least 1")
        if self.max_body_mb <= 0:
            raise SettingsError("--max-body-mb must be more than 0")
        if self.url_timeout_s <= 0:
            raise SettingsError("the URL time limit must be more than 0 seconds")
        if not 1 <= self.top_k <= 100:
            raise SettingsError("top_k must be between 1 and 100")
        if self.decode_threads is not None and self.decode_threads < 1:
            raise SettingsError("--decode-threads must be at least 1")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)
