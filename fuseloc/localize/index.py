"""Nearest-neighbour search over map descriptors with faiss: exact or approximate, CPU or (opt-in) GPU.

Which index fits depends on the map size (``benchmarks/bench_index_scale.py`` measures it): exact flat search
costs Q x P x D multiply-adds per query image, fine for small maps; from about ten thousand points on, an
inverted file (IVF) that scans a few lists per keypoint instead of every point is much faster at near-exact
agreement, and on an Aachen-sized map (1.6M points) flat search is out of the question.

Maps store float16 descriptors; every index here is built from float32 copies, because faiss' float16 storage
(the scalar quantizer) skips BLAS and searches several times slower than float32 flat search.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "ivf", "hnsw", "ivfpq"]


@dataclass(frozen=True)
class IndexConfig:
    """How map descriptors are indexed.

    Attributes:
        kind: ``flat`` (exact), ``ivf`` (IVF-Flat: exact distances within the ``nprobe`` nearest lists),
            ``hnsw`` (graph), ``ivfpq`` (IVF with product-quantised codes: smallest, least exact), or ``auto``:
            flat up to ``flat_max_points`` points, IVF-Flat above.
        flat_max_points: the ``auto`` switch point.
        nlist: IVF lists; 0 picks the power of two nearest to 4·sqrt(P).
        nprobe: IVF lists visited per query keypoint.
        train_points_per_list: k-means sample size per list when training the IVF quantiser.
        hnsw_m, ef_construction, ef_search: HNSW graph degree and beam widths.
        pq_m: product-quantiser sub-vectors for ``ivfpq``; 0 picks D/8.
        pq_bits: bits per sub-vector code.
        seed: seed of the training sample and k-means.
        use_gpu: move the index to the GPU when faiss has one (HNSW stays on the CPU).
    """

    kind: IndexKind = "auto"
    # Measured on the embedded town (10.5k points, benchmarks/bench_localization.py): IVF with nprobe 16 agrees
    # with exact 1-NN on 99.9% of fused (96.9% of local-only) keypoints, keeps recall, and searches 5-8x faster.
    flat_max_points: int = 10_000
    nlist: int = 0
    nprobe: int = 16
    train_points_per_list: int = 64
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 64
    pq_m: int = 0
    pq_bits: int = 8
    seed: int = 0
    use_gpu: bool = False

    def resolved_kind(self, num_points: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "flat" if num_points <= self.flat_max_points else "ivf"

    def resolved_nlist(self, num_points: int) -> int:
        if self.nlist > 0:
            return self.nlist
        nlist = 2 ** round(math.log2(max(4 * math.sqrt(max(num_points, 1)), 1)))
        # faiss wants ~39 training points per list; never let a small map ask for more lists than that allows.
        return int(max(1, min(nlist, num_points // 39)))


@dataclass
class SearchResult:
    """k-NN result. ``distances``: (Q, k) squared L2; ``indices``: (Q, k) int64 rows of the indexed set (-1: none)."""

    distances: np.ndarray
    indices: np.ndarray


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


class MapIndex:
    """A faiss index over (P, D) descriptors, with the configuration it was built with.

    Args:
        descriptors: (P, D) map descriptors, any float dtype (widened to float32 once, here).
        config: index kind and parameters.
    """

    def __init__(self, descriptors: np.ndarray, config: IndexConfig = IndexConfig()):
        import faiss

        self.config = config
        data = np.ascontiguousarray(descriptors, dtype=np.float32)
        self.num_points, self.dim = data.shape
        self.kind = config.resolved_kind(self.num_points)
        self.nlist = config.resolved_nlist(self.num_points) if self.kind in ("ivf", "ivfpq") else 0
        if self.kind == "flat":
            index = faiss.IndexFlatL2(self.dim)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, config.hnsw_m)
            index.hnsw.efConstruction = config.ef_construction
        elif self.kind in ("ivf", "ivfpq"):
            quantizer = faiss.IndexFlatL2(self.dim)
            if self.kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist)
            else:
                pq_m = config.pq_m or max(1, self.dim // 8)
                if self.dim % pq_m:
                    raise ValueError(f"pq_m={pq_m} must divide the descriptor dimension {self.dim}")
                index = faiss.IndexIVFPQ(quantizer, self.dim, self.nlist, pq_m, config.pq_bits)
            index.cp.seed = config.seed
            # 10 k-means iterations on a bounded sample: the lists only need to be roughly balanced, and the
            # full-default training (25 iterations, 256 points per list) takes minutes on a 1.6M-point map.
            index.cp.niter = 10
            index.cp.max_points_per_centroid = max(config.train_points_per_list, 39)
            sample = data
            limit = self.nlist * max(config.train_points_per_list, 39)
            if self.kind == "ivfpq":
                limit = max(limit, 39 * 2**config.pq_bits)  # each sub-quantiser's k-means needs its own sample
            if len(data) > limit:
                rng = np.random.default_rng(config.seed)
                sample = data[np.sort(rng.choice(len(data), limit, replace=False))]
            index.train(sample)
        else:
            raise ValueError(f"unknown index kind {self.kind!r} (auto, flat, ivf, hnsw, ivfpq)")
        self.on_gpu = False
        if config.use_gpu and self.kind != "hnsw" and gpu_available():
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
            self.on_gpu = True
        elif config.use_gpu:
            logger.warning("faiss GPU requested but %s; using the CPU index",
                           "HNSW has no GPU version" if self.kind == "hnsw" else "no GPU is available")
        index.add(data)
        self._set_search_params(index)
        self.index = index
        logger.debug("built %s index over %d x %d descriptors%s", self.kind, self.num_points, self.dim,
                     f" (nlist {self.nlist})" if self.nlist else "")

    def _set_search_params(self, index) -> None:  # noqa: ANN001 (faiss index)
        if self.kind in ("ivf", "ivfpq"):
            index.nprobe = min(self.config.nprobe, self.nlist)
        elif self.kind == "hnsw":
            index.hnsw.efSearch = self.config.ef_search

    def set_search(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the search-time knobs (IVF lists visited, HNSW beam) without rebuilding the index."""
        from dataclasses import replace

        self.config = replace(self.config, nprobe=nprobe or self.config.nprobe, ef_search=ef_search or self.config.ef_search)
        self._set_search_params(self.index)

    def search(self, queries: np.ndarray, k: int = 1) -> SearchResult:
        """k nearest map rows of each (Q, D) query descriptor; pass many keypoints (or images) at once."""
        if len(queries) == 0:
            return SearchResult(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
        distances, indices = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return SearchResult(distances, indices)

    def nbytes(self) -> int:
        """Approximate resident bytes of the index (vectors or codes, ids, graph links, centroids)."""
        p, d = self.num_points, self.dim
        if self.kind == "flat":
            return 4 * p * d
        if self.kind == "hnsw":
            # Level 0 holds 2·M links per point; upper levels add about 1/M of that again.
            return 4 * p * d + 4 * p * 2 * self.config.hnsw_m * (1 + 1 / self.config.hnsw_m) + 8 * p
        if self.kind == "ivf":
            return 4 * p * d + 8 * p + 4 * self.nlist * d
        pq_m = self.config.pq_m or max(1, d // 8)
        return p * math.ceil(pq_m * self.config.pq_bits / 8) + 8 * p + 4 * self.nlist * d + 4 * 2**self.config.pq_bits * d


def build_index(descriptors: np.ndarray, config: IndexConfig | None = None, use_gpu: bool = False) -> MapIndex:
    """A :class:`MapIndex` over (P, D) descriptors (``use_gpu`` overrides ``config.use_gpu`` when True)."""
    config = config or IndexConfig()
    if use_gpu and not config.use_gpu:
        from dataclasses import replace

        config = replace(config, use_gpu=True)
    return MapIndex(descriptors, config)


def search(index: MapIndex, queries: np.ndarray, k: int = 1) -> SearchResult:
    return index.search(queries, k)
