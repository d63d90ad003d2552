"""A posed image collection split into map and queries, e.g. the Strecha scenes: map from every other image.

Reads a COLMAP model whose images are posed (points optional); images whose index in name order is
``query_offset`` modulo ``query_every`` become queries with their model pose as ground truth, the others
form the database.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fuseloc.data.readers.base import STANDARD_THRESHOLDS, BenchmarkSpec, DatasetReader, LocalizationData
from fuseloc.data.readers.colmap_model import locate_image
from fuseloc.data.scene import QuerySet, Scene
from fuseloc.errors import InputError


class PosedImagesReader(DatasetReader):
    """Args:
        root: scene folder.
        images: image folder relative to ``root``.
        model: COLMAP model (with poses) relative to ``root``.
        query_every: every ``query_every``-th image (sorted by name) is a query.
        query_offset: index of the first query.
        name: benchmark name for outputs.
    """

    def __init__(self, root: str | Path, images: str = "images", model: str = "sparse_gt", query_every: int = 2,
                 query_offset: int = 1, name: str = "posed"):
        self.root = Path(root)
        self.images = images
        self.model = model
        self.query_every = query_every
        self.query_offset = query_offset
        self.name = name

    def load(self) -> LocalizationData:
        if self.query_every < 2:
            raise InputError(f"query_every must be >= 2, got {self.query_every}")
        image_root = self.root / self.images
        full = Scene.from_colmap(self.root / self.model, image_root)
        for name in full.image_names:
            if not (image_root / name).is_file():
                raise InputError(f"image {name!r} listed in the model not found under {image_root}",
                                 *locate_image(self.root / self.model, name=name))
        order = np.argsort(full.image_names)
        is_query = np.zeros(full.num_images, bool)
        is_query[order[self.query_offset :: self.query_every]] = True
        scene = full.subset_images(~is_query)
        q = np.flatnonzero(is_query)
        q = q[np.argsort([full.image_names[i] for i in q])]
        queries = QuerySet([full.image_names[i] for i in q], [full.image_cameras[i] for i in q],
                           [full.pose(i) for i in q], None, image_root)
        spec = BenchmarkSpec(name=self.name, thresholds=((0.05, 1.0), *STANDARD_THRESHOLDS))
        return LocalizationData(scene=scene, queries=queries, spec=spec, root=self.root)
