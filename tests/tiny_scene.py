"""A toy dataset reader for training tests: toy_scene's descriptor-level scene, with no images to decode.

The toy scene's local features are written straight into the DataModule's cache as ``feats-toy.h5``, so
feature "extraction" finds every image already done; VLAD, correspondences, confusers, the fused map and PnP
then run for real. Point ``root`` at ``<output_dir>/<name>/cache``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from toy_scene import make_toy_scene

from fuseloc.data.extractors import LocalExtractor
from fuseloc.data.readers.base import BenchmarkSpec, DatasetReader, LocalizationData
from fuseloc.errors import InputError
from fuseloc.types import LocalFeatures


class ToyExtractor(LocalExtractor):
    """Stands for the precomputed toy features (32-D); never asked to describe an image."""

    def tag(self) -> str:
        return "toy"

    def config(self) -> dict:
        return {"name": "toy"}

    @property
    def dim(self) -> int:
        return 32

    def __call__(self, image: np.ndarray) -> LocalFeatures:
        raise InputError("toy features are precomputed; there is no image to describe")


class ToyReader(DatasetReader):
    """Args:
        root: the DataModule's cache dir, ``<output_dir>/<name>/cache``.
        name: benchmark name.
        num_points, duplicate_fraction, descriptor_noise, seed: as :func:`toy_scene.make_toy_scene`.
    """

    def __init__(self, root: str | Path, name: str = "toy", num_points: int = 400, duplicate_fraction: float = 0.5,
                 descriptor_noise: float = 0.05, seed: int = 0):
        self.root = Path(root)
        self.name = name
        self.num_points = num_points
        self.duplicate_fraction = duplicate_fraction
        self.descriptor_noise = descriptor_noise
        self.seed = seed

    def load(self) -> LocalizationData:
        with tempfile.TemporaryDirectory() as tmp:
            toy = make_toy_scene(Path(tmp), seed=self.seed, num_points=self.num_points,
                                 duplicate_fraction=self.duplicate_fraction, descriptor_noise=self.descriptor_noise)
            self.root.mkdir(parents=True, exist_ok=True)
            if not (self.root / "feats-toy.h5").is_file():
                shutil.copy(toy.local_path, self.root / "feats-toy.h5")
        images = self.root / "images"
        toy.scene.image_root = images
        toy.queries.image_root = images
        return LocalizationData(toy.scene, toy.queries, BenchmarkSpec(self.name), self.root)
