"""fuseloc: visual localization by direct 2D-3D matching of fused local and global descriptors.

``fuseloc.load_bundle(path)`` loads a map bundle written by ``evaluate.py --export_bundle`` and returns a
:class:`~fuseloc.localize.bundle.Bundle`, whose ``localize(image, camera=None)`` localizes a photo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fuseloc.localize.bundle import Bundle, LocalizationResult, load_bundle

__all__ = ["Bundle", "LocalizationResult", "__version__", "load_bundle"]


def __getattr__(name: str) -> Any:
    # Imported on first use: ``import fuseloc`` stays free of torch, faiss and pycolmap.
    if name in ("load_bundle", "Bundle", "LocalizationResult"):
        from fuseloc.localize import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'fuseloc' has no attribute {name!r}")
