"""VLAD: a global descriptor aggregated from an image's local features, its vocabulary trained on the database."""

from __future__ import annotations

import numpy as np

from fuseloc.data.extractors.base import GlobalExtractor
from fuseloc.errors import InputError
from fuseloc.types import LocalFeatures


class Vlad(GlobalExtractor):
    """VLAD over local descriptors with a k-means vocabulary trained on the database (needs no weights).

    Intra-normalised per cluster, then power- (signed square root) and L2-normalised. Works over any local
    feature, which makes it the offline default of every pipeline.

    Args:
        num_clusters: vocabulary size k; the descriptor has k x D dimensions.
        max_training_descriptors: descriptors sampled from the database to train the vocabulary.
        seed: k-means seed.
    """

    uses_image = False
    uses_local_features = True

    def __init__(self, num_clusters: int = 32, max_training_descriptors: int = 100_000, seed: int = 0):
        self.num_clusters = num_clusters
        self.max_training_descriptors = max_training_descriptors
        self.seed = seed
        self.centroids: np.ndarray | None = None

    def config(self) -> dict:
        return {"name": "vlad", "num_clusters": self.num_clusters, "max_training_descriptors": self.max_training_descriptors,
                "seed": self.seed}

    def tag(self) -> str:
        return f"vlad-k{self.num_clusters}"

    @property
    def needs_fit(self) -> bool:
        return True

    def fit(self, descriptors: np.ndarray) -> Vlad:
        import faiss

        rng = np.random.default_rng(self.seed)
        if len(descriptors) > self.max_training_descriptors:
            descriptors = descriptors[rng.choice(len(descriptors), self.max_training_descriptors, replace=False)]
        if len(descriptors) < self.num_clusters:
            raise InputError(f"VLAD needs at least {self.num_clusters} training descriptors, got {len(descriptors)}")
        kmeans = faiss.Kmeans(descriptors.shape[1], self.num_clusters, niter=25, seed=self.seed, verbose=False)
        kmeans.train(np.ascontiguousarray(descriptors, np.float32))
        self.centroids = kmeans.centroids.copy()
        return self

    def state(self) -> dict[str, np.ndarray]:
        return {} if self.centroids is None else {"vocabulary": self.centroids}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.centroids = np.asarray(state["vocabulary"], np.float32)

    def describe(self, image: np.ndarray | None, local: LocalFeatures | None = None) -> np.ndarray:
        if local is None:
            raise InputError("VLAD describes an image from its local features, and none were given")
        return self(local.descriptors)

    def __call__(self, descriptors: np.ndarray) -> np.ndarray:  # type: ignore[override]
        """(N, D) local descriptors -> (k*D,) VLAD vector."""
        if self.centroids is None:
            raise RuntimeError("Vlad.fit must run before describing images")
        k, d = self.centroids.shape
        vlad = np.zeros((k, d), np.float32)
        if len(descriptors):
            dist = (descriptors**2).sum(1)[:, None] - 2 * descriptors @ self.centroids.T + (self.centroids**2).sum(1)[None]
            assign = dist.argmin(1)
            np.add.at(vlad, assign, descriptors - self.centroids[assign])
        vlad /= np.maximum(np.linalg.norm(vlad, axis=1, keepdims=True), 1e-12)
        vlad = vlad.reshape(-1)
        vlad = np.sign(vlad) * np.sqrt(np.abs(vlad))
        return vlad / max(float(np.linalg.norm(vlad)), 1e-12)
