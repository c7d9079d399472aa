"""fashion-tagger: classify fashion photos into a catalog's category tree and attributes.

The public API; everything else is machinery.
"""

from __future__ import annotations

from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.taxonomy import Taxonomy

__version__ = "0.1.0"
__all__ = ["Dataset", "FashionTaggerError", "Taxonomy", "__version__"]
