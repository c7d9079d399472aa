"""What the service needs from a model, and the adapter that gives it from a `Tagger`.

Routes only see this small interface, so tests can serve a fake predictor (no torch, no weights)
through `app.dependency_overrides[get_predictor]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Predictor(Protocol):
    """A loaded model as the service uses it."""

    model_id: str
    backend_name: str

    def info(self) -> dict[str, Any]:
        """What `GET /v1/model` shows: taxonomy, attributes, thresholds, input, backbone."""
        ...

    def preprocess(self, data: bytes) -> np.ndarray:
        """Decode and preprocess one image to (C, H, W) float32; raises `ImageError`."""
        ...

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Probabilities for a batch: `[level_0, ..., level_{L-1}, attributes]` (thread-safe)."""
        ...

    def decode(
        self, outputs: list[np.ndarray], top_k: int, names: Sequence[str]
    ) -> list[dict[str, Any]]:
        """One `{"image", "path", "top_k", "attributes"}` dict per row of `outputs`."""
        ...


class TaggerPredictor:
    """The real predictor: a `Tagger` loaded from a run dir (ONNX or PyTorch backend)."""

    def __init__(self, tagger: Any) -> None:
        self.tagger = tagger
        self.spec = tagger.spec
        self.model_id = str(self.spec.model_id)
        self.backend_name = str(tagger.backend_name)

    @classmethod
    def load(cls, run_dir, backend: str = "auto") -> TaggerPredictor:
        """Load the run dir's model; "auto" prefers model.onnx when it exists."""
        from fashion_tagger.inference.tagger import Tagger

        return cls(Tagger.load(run_dir, backend=backend))

    def info(self) -> dict[str, Any]:
        spec = self.spec.to_json()
        return {
            **spec,
            "model_id": self.model_id,
            "backend": self.backend_name,
            "quantization": (getattr(self.tagger.backend, "metadata", None) or {}).get(
                "quantization"
            ),
        }

    def preprocess(self, data: bytes) -> np.ndarray:
        from fashion_tagger.model.preprocess import load_for_model

        return load_for_model(data, self.spec)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        probs = self.tagger.predict_arrays(x)
        return [*probs.levels, probs.attributes]

    def decode(
        self, outputs: list[np.ndarray], top_k: int, names: Sequence[str]
    ) -> list[dict[str, Any]]:
        from fashion_tagger.inference.tagger import Probs

        probs = Probs(levels=list(outputs[:-1]), attributes=outputs[-1])
        preds = self.tagger.decode(probs, top_k=top_k, names=list(names))
        return [p.to_dict() for p in preds]
