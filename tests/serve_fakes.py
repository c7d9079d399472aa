"""A fake predictor for the service tests: no torch, no weights, answers from the pixels.

Red-dominant images are `round > red`, blue-dominant ones `square > blue`, anything else
`square > green`; images wider than tall get `size=big`. It follows the service's `Predictor`
interface exactly, so the routes, batcher and page are tested without a trained model.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from decode_reference import best_path
from PIL import Image

from fashion_tagger.dataset import images
from fashion_tagger.taxonomy import Taxonomy

TAXONOMY = Taxonomy.from_paths(
    [
        ("round", "red"),
        ("round", "blue"),
        ("square", "red"),
        ("square", "green"),
        ("square", "blue"),
    ],
    ["shape", "colour"],
)
ATTRIBUTES = ["size=big", "size=small"]


def png(colour: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


class FakePredictor:
    model_id = "fake-000000000000"
    backend_name = "fake"

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()

    def info(self) -> dict:
        return {
            "model_id": self.model_id,
            "backend": self.backend_name,
            "backbone": {"name": "fake-net", "pretrained": False, "in_chans": 3},
            "head": {"kind": "unified"},
            "input": {
                "size": [8, 8],
                "channels": 3,
                "mean": [0.5] * 3,
                "std": [0.25] * 3,
                "resize": "squash",
            },
            "taxonomy": TAXONOMY.to_dict(),
            "attributes": {"names": ATTRIBUTES, "thresholds": [0.75, 0.75]},
        }

    def preprocess(self, data: bytes) -> np.ndarray:
        img = images.decode(data, size=8)
        wide = img.width > img.height
        arr = np.asarray(img.resize((8, 8)), dtype=np.float32).transpose(2, 0, 1) / 255.0
        arr[:, 0, 0] = 1.0 if wide else 0.0  # carries the aspect to `run`
        return arr

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            self.batch_sizes.append(len(x))
        n = len(x)
        mean = x[:, :, 1:, 1:].mean(axis=(2, 3))  # (N, 3)
        red = mean[:, 0] > mean[:, 2] + 0.1
        blue = mean[:, 2] > mean[:, 0] + 0.1
        # level 0: round, square; level 1 (names sorted): blue, green, red under their parents
        l0 = np.where(red[:, None], [[0.9, 0.1]], [[0.1, 0.9]]).astype(np.float32)
        names1 = TAXONOMY.names[1]
        l1 = np.full((n, len(names1)), 0.02, dtype=np.float32)
        for i in range(n):
            parent = 0 if red[i] else 1
            want = "red" if red[i] else ("blue" if blue[i] else "green")
            j = next(
                k for k, nm in enumerate(names1) if nm == want and TAXONOMY.parents[1][k] == parent
            )
            l1[i, j] = 0.9
        l1 /= l1.sum(axis=1, keepdims=True)
        wide = x[:, 0, 0, 0] > 0.5
        attrs = np.stack([np.where(wide, 0.95, 0.05), np.where(wide, 0.05, 0.95)], axis=1).astype(
            np.float32
        )
        return [l0, l1, attrs]

    def decode(self, outputs: list[np.ndarray], top_k: int, names: Sequence[str]) -> list[dict]:
        levels, attrs = outputs[:-1], outputs[-1]
        out = []
        for i in range(len(attrs)):
            logs = [np.log(lv[i] + 1e-12) for lv in levels]
            idx, _ = best_path(TAXONOMY, logs)
            path = [
                {
                    "level": TAXONOMY.level_names[lvl],
                    "label": TAXONOMY.names[lvl][j],
                    "score": float(levels[lvl][i][j]),
                }
                for lvl, j in enumerate(idx)
            ]
            leaves = sorted(
                (
                    (float(np.exp(sum(logs[lvl][j] for lvl, j in enumerate(p)))), p)
                    for p in TAXONOMY.leaf_index_paths()
                ),
                reverse=True,
            )[:top_k]
            out.append(
                {
                    "image": names[i],
                    "path": path,
                    "top_k": [{"path": list(TAXONOMY.decode(p)), "score": s} for s, p in leaves],
                    "attributes": [
                        {"name": n, "score": float(attrs[i][a])}
                        for a, n in enumerate(ATTRIBUTES)
                        if attrs[i][a] >= 0.75
                    ],
                }
            )
        return out


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Run `app` under a real uvicorn on 127.0.0.1 (a free port) in a thread; yield its URL."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def make_random_run(
    root: Path,
    dataset: Path,
    *,
    head: str = "unified",
    attributes: bool = True,
    backbone: str = "simple-cnn",
    size: int = 32,
    seed: int = 0,
) -> Path:
    """A run dir written with the real `save_model`, random weights (training is not the point:
    `make_tiny_run` trains for minutes on a busy 2-core machine; export and serving only need a
    real model of the real architecture)."""
    import torch

    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.model import ModelSpec, save_model
    from fashion_tagger.model.load import build_model

    ds = Dataset.open(dataset)
    spec = ModelSpec(
        model_id="",
        backbone={"name": backbone, "pretrained": False, "in_chans": 3},
        head={"kind": head, "hidden": 32, "dropout": 0.0},
        input_size=(size, size),
        channels=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        resize="squash",
        taxonomy=ds.taxonomy,
        attribute_names=ds.attribute_names if attributes else [],
    )
    torch.manual_seed(seed)
    module = build_model(spec)
    with torch.no_grad():  # make the levels confident enough that paths are well defined
        for p in module.parameters():
            p.mul_(3.0)
    return save_model(root, module.eval(), spec, {"data": {"dataset": str(dataset)}}).path
