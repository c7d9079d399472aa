"""User-facing errors: the CLI prints their message and exits non-zero, never a traceback."""

from __future__ import annotations


class FashionTaggerError(Exception):
    """An error the user can fix; the message says how."""


class DatasetError(FashionTaggerError):
    """A dataset dir is missing, malformed, or of an unknown format version."""


class RunDirError(FashionTaggerError):
    """A run dir is missing, malformed, or its weights do not match its model.json."""


class MissingExtraError(FashionTaggerError):
    """An optional dependency is not installed."""


def require(module: str, extra: str):
    """Import an optional dependency, or raise with the pip line that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            f"{module!r} is not installed; install it with: pip install 'fashion-tagger[{extra}]'"
        ) from exc
