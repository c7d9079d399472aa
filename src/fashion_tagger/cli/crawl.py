"""CLI verbs of this stage (registered on import)."""

from __future__ import annotations
