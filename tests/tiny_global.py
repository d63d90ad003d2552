"""Tiny non-VLAD global extractors for training tests (selected by ``class_path``, like MegaLoc or SALAD).

Both aggregate an image's local features, so they run on the toy scene, which has no images to decode; what
matters for training is only that they are :class:`~fuseloc.data.extractors.base.GlobalExtractor` subclasses that are
not VLAD, and that one declares its dimension (as network extractors do) while the other does not.
"""

from __future__ import annotations

import numpy as np

from fuseloc.data.extractors import GlobalExtractor
from fuseloc.errors import InputError
from fuseloc.types import LocalFeatures


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / max(float(np.linalg.norm(x)), 1e-12)).astype(np.float32)


class MeanProjection(GlobalExtractor):
    """Mean local descriptor times a fixed seeded Gaussian matrix, L2-normalised; declares ``dim`` = ``out_dim``.

    Args:
        out_dim: descriptor size G.
        seed: seed of the projection.
    """

    uses_image = False
    uses_local_features = True

    def __init__(self, out_dim: int = 24, seed: int = 0):
        self.out_dim = out_dim
        self.seed = seed

    def tag(self) -> str:
        return f"meanproj-d{self.out_dim}-s{self.seed}"

    def config(self) -> dict:
        return {"name": "meanproj", "out_dim": self.out_dim, "seed": self.seed}

    @property
    def dim(self) -> int:
        return self.out_dim

    def describe(self, image: np.ndarray | None, local: LocalFeatures | None = None) -> np.ndarray:
        if local is None:
            raise InputError("MeanProjection needs local features")
        d = local.descriptors.shape[1]
        projection = np.random.default_rng([self.seed, d]).standard_normal((d, self.out_dim))
        return _normalize(local.descriptors.mean(0) @ projection)


class MeanMax(GlobalExtractor):
    """Mean and max of the local descriptors, concatenated (2·D): a size that follows from the local features
    and is declared nowhere, like VLAD's."""

    uses_image = False
    uses_local_features = True

    def tag(self) -> str:
        return "meanmax"

    def config(self) -> dict:
        return {"name": "meanmax"}

    def describe(self, image: np.ndarray | None, local: LocalFeatures | None = None) -> np.ndarray:
        if local is None:
            raise InputError("MeanMax needs local features")
        return _normalize(np.r_[local.descriptors.mean(0), local.descriptors.max(0)])
