"""Nearest-neighbour search over map descriptors with faiss: exact or approximate, CPU or (opt-in) GPU.

Which index fits depends on the map size (``benchmarks/bench_index_scale.py`` measures it): exact flat search
costs Q x P x D multiply-adds per query image, fine for small maps; from about ten thousand points on, an
inverted file (IVF) that scans a few lists per keypoint instead of every point is much faster at near-exact
agreement, and on an Aachen-sized map (1.6M points) flat search is out of the question.

Maps store float16 descriptors; every index here is built from float32 copies, because faiss' float16 storage
(the scalar quantizer) skips BLAS and searches several times slower than float32 flat search.

Building an IVF index over a large map takes a minute or more, so :func:`load_or_build_index` keeps built
indexes on disk, keyed by the descriptors' digest and the build settings (search-time knobs such as ``nprobe``
are not part of the key: they are applied after loading).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from fuseloc.cachekeys import array_digest, key_of, keyed_name, read_keyed
from fuseloc.errors import InputError
from fuseloc.io import atomic_path

logger = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "ivf", "hnsw", "ivfpq"]

#: :class:`IndexConfig` fields that shape the built index, per kind (the cache key; ``auto`` values resolved).
BUILD_FIELDS = {
    "flat": (),
    "hnsw": ("hnsw_m", "ef_construction"),
    "ivf": ("train_points_per_list", "seed"),
    "ivfpq": ("train_points_per_list", "seed", "pq_m", "pq_bits"),
}

#: Part of every cache key: bump it when a fixed build choice below changes (k-means iterations, the two-level
#: switch at 1024 lists, the quantizer graph's degree 32 and construction beam 80, the sample sizes).
INDEX_CACHE_VERSION = 1

#: The graph over IVF list centres: degree and construction beam (fixed: they hardly matter for 16k centres).
QUANTIZER_HNSW_M = 32
QUANTIZER_EF_CONSTRUCTION = 80


@dataclass(frozen=True)
class IndexConfig:
    """How map descriptors are indexed.

    Attributes:
        kind: ``flat`` (exact), ``ivf`` (IVF-Flat: exact distances within the ``nprobe`` nearest lists),
            ``hnsw`` (graph), ``ivfpq`` (IVF with product-quantised codes: smallest, least exact), or ``auto``:
            flat up to ``flat_max_points`` points, IVF-Flat above.
        flat_max_points: the ``auto`` switch point.
        nlist: IVF lists; 0 picks the power of two nearest to 16·sqrt(P), at most P/39.
        nprobe: IVF lists visited per query keypoint; 0 picks max(16, sqrt(nlist)/2), 64 of 16384 lists on an
            Aachen-sized map: big maps have finer lists, so a smaller share of them finds the nearest neighbour.
        coarse_quantizer: how a vector finds its nearest lists: ``flat`` (exact) or ``hnsw`` (a graph over the
            list centres: faster to add points to when lists are many, at the same agreement); ``auto`` takes ``hnsw``
            from ``hnsw_quantizer_min_lists`` lists on, on the CPU.
        hnsw_quantizer_min_lists: the ``auto`` switch point of ``coarse_quantizer``.
        train_points_per_list: k-means sample size per list when training the IVF quantiser.
        hnsw_m, ef_construction, ef_search: HNSW graph degree and beam widths.
        pq_m: product-quantiser sub-vectors for ``ivfpq``; 0 picks D/8.
        pq_bits: bits per sub-vector code.
        seed: seed of the training sample and k-means.
        use_gpu: put the index on GPU 0 (needs faiss-gpu and a CUDA device, else an InputError; HNSW stays on
            the CPU).
    """

    kind: IndexKind = "auto"
    # Below about ten thousand points exact search costs little; above, IVF keeps the recall at a fraction of the
    # search time (benchmarks/bench_localization.py and bench_index_scale.py print the agreement and speed-up).
    flat_max_points: int = 10_000
    nlist: int = 0
    # Finer lists on bigger maps: a smaller share of them holds the nearest neighbour, so nprobe grows only as
    # sqrt(nlist); a floor keeps small maps from visiting too few lists.
    nprobe: int = 0
    coarse_quantizer: Literal["auto", "flat", "hnsw"] = "auto"
    hnsw_quantizer_min_lists: int = 8192
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
        """IVF lists of the index over ``num_points`` points (0 for the kinds without lists)."""
        if self.resolved_kind(num_points) not in ("ivf", "ivfpq"):
            return 0
        if self.nlist > 0:
            return self.nlist
        nlist = 2 ** round(math.log2(max(16 * math.sqrt(max(num_points, 1)), 1)))
        # faiss wants ~39 training points per list; never let a small map ask for more lists than that allows.
        return int(max(1, min(nlist, num_points // 39)))

    def resolved_nprobe(self, nlist: int) -> int:
        nprobe = self.nprobe if self.nprobe > 0 else max(16, round(math.sqrt(nlist) / 2))
        return int(min(nprobe, nlist))

    def resolved_quantizer(self, nlist: int) -> str:
        # faiss' GPU IVF indexes copy their quantizer to the GPU, which only works for a flat one (and the GPU
        # searches the list centres by brute force anyway).
        on_gpu = self.use_gpu and gpu_available()
        if self.coarse_quantizer == "hnsw" and on_gpu:
            raise ValueError("coarse_quantizer='hnsw' cannot go to the GPU: use 'flat' or 'auto' with use_gpu")
        if self.coarse_quantizer != "auto":
            return self.coarse_quantizer
        return "hnsw" if nlist >= self.hnsw_quantizer_min_lists and not on_gpu else "flat"

    def build_key(self, num_points: int, dim: int) -> dict:
        """The settings that determine the built index (its cache key), with ``auto`` choices resolved."""
        kind = self.resolved_kind(num_points)
        key = {"kind": kind, "points": num_points, "dim": dim}
        key.update({name: getattr(self, name) for name in BUILD_FIELDS.get(kind, ())})
        if kind in ("ivf", "ivfpq"):
            key["nlist"] = self.resolved_nlist(num_points)
            key["coarse_quantizer"] = self.resolved_quantizer(key["nlist"])
        return key


@dataclass
class SearchResult:
    """k-NN result. ``distances``: (Q, k) squared L2; ``indices``: (Q, k) int64 rows of the indexed set (-1: none)."""

    distances: np.ndarray
    indices: np.ndarray


def faiss_has_gpu_support() -> bool:
    """faiss was built with GPU support (faiss-gpu), whether or not a GPU is visible."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "index_cpu_to_gpu")


def gpu_available() -> bool:
    """faiss can put an index on a GPU here: faiss-gpu is installed and sees at least one CUDA device."""
    import faiss

    return faiss_has_gpu_support() and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def check_gpu_request(config: IndexConfig) -> None:
    """Raise a one-line InputError when ``config.use_gpu`` asks for what this machine cannot give.

    A silent CPU fallback would hide a misconfigured GPU run behind 10-100x slower searches.
    """
    if not config.use_gpu or gpu_available():
        return
    if not faiss_has_gpu_support():
        raise InputError("use_gpu: this faiss has no GPU support (faiss-cpu); install faiss-gpu "
                         "(pip install 'fuseloc[gpu]', which needs CUDA 12) or leave use_gpu off")
    raise InputError("use_gpu: faiss-gpu is installed but sees no CUDA device (check nvidia-smi and "
                     "CUDA_VISIBLE_DEVICES) or leave use_gpu off")


def _kmeans(data: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    import faiss

    if k >= len(data):
        return np.ascontiguousarray(data[:k], np.float32)
    kmeans = faiss.Kmeans(data.shape[1], k, niter=niter, seed=seed, min_points_per_centroid=1,
                          max_points_per_centroid=1 << 30)
    kmeans.train(np.ascontiguousarray(data, np.float32))
    return kmeans.centroids


def _split_lists(sizes: np.ndarray, total: int) -> np.ndarray:
    """Share ``total`` lists among groups proportionally to ``sizes`` (largest remainder), each in [1, size]."""
    exact = sizes / sizes.sum() * total
    counts = np.clip(np.floor(exact).astype(np.int64), 1, sizes)
    while counts.sum() < total:
        room = np.where(counts < sizes, exact - counts, -np.inf)
        counts[int(np.argmax(room))] += 1
    while counts.sum() > total:
        spare = np.where(counts > 1, counts - exact, -np.inf)
        counts[int(np.argmax(spare))] -= 1
    return counts


def train_coarse_centroids(sample: np.ndarray, nlist: int, niter: int = 10, seed: int = 0) -> np.ndarray:
    """(nlist, D) IVF list centres from a training sample.

    Up to 1024 lists this is plain k-means. Beyond, k-means with nlist centres over a sample of 64·nlist points
    costs minutes (16384 lists at 128-D: about 27 TFLOP), so the sample is first split into sqrt(nlist) groups
    and each group gets k-means with its proportional share of the lists: about sqrt(nlist) times cheaper, and
    the lists only need to partition the space roughly evenly.
    """
    sample = np.ascontiguousarray(sample, np.float32)
    if len(sample) < nlist:
        raise ValueError(f"{nlist} IVF lists need at least {nlist} training points, got {len(sample)}")
    if nlist <= 1024:
        return _kmeans(sample, nlist, niter, seed)
    import faiss

    num_groups = int(round(math.sqrt(nlist)))
    group_centres = _kmeans(sample, num_groups, niter, seed)
    flat = faiss.IndexFlatL2(sample.shape[1])
    flat.add(group_centres)
    group = flat.search(sample, 1)[1][:, 0]
    sizes = np.bincount(group, minlength=num_groups)
    occupied = np.flatnonzero(sizes)
    counts = _split_lists(sizes[occupied], nlist)
    centres = [_kmeans(sample[group == g], int(c), niter, seed + 1 + int(g)) for g, c in zip(occupied, counts)]
    return np.vstack(centres).astype(np.float32)


class MapIndex:
    """A faiss index over (P, D) descriptors, with the configuration it was built with.

    Args:
        descriptors: (P, D) map descriptors, any float dtype (widened to float32 once, here).
        config: index kind and parameters.
    """

    def __init__(self, descriptors: np.ndarray, config: IndexConfig = IndexConfig()):
        check_gpu_request(config)  # before training: an IVF build on a large map takes minutes
        data = np.ascontiguousarray(descriptors, dtype=np.float32)
        num_points, dim = data.shape
        kind = config.resolved_kind(num_points)
        self._attach(self._trained_cpu_index(data, config, kind, config.resolved_nlist(num_points)), config, num_points, dim)
        # Adding after the move to the GPU lets the GPU assign points to lists, and keeps one copy of the data.
        quantizer = self._hnsw_quantizer()
        if quantizer is not None:
            # A point goes to its one nearest list, which a narrow beam finds; the search beam is sized for
            # nprobe lists and would only slow the adding down.
            quantizer.hnsw.efSearch = 16
        self.index.add(data)
        self._set_search_params()

    def _hnsw_quantizer(self):  # noqa: ANN202 (faiss index or None)
        import faiss

        if self.kind not in ("ivf", "ivfpq") or self.on_gpu:
            return None
        quantizer = faiss.downcast_index(self.index.quantizer)
        return quantizer if isinstance(quantizer, faiss.IndexHNSW) else None

    @staticmethod
    def _trained_cpu_index(data: np.ndarray, config: IndexConfig, kind: str, nlist: int):  # noqa: ANN205 (faiss index)
        """An empty CPU index of ``kind``, trained on a sample of ``data`` where the kind needs training."""
        import faiss

        dim = data.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatL2(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, config.hnsw_m)
            index.hnsw.efConstruction = config.ef_construction
        elif kind in ("ivf", "ivfpq"):
            if config.resolved_quantizer(nlist) == "hnsw":
                quantizer = faiss.IndexHNSWFlat(dim, QUANTIZER_HNSW_M)
                quantizer.hnsw.efConstruction = QUANTIZER_EF_CONSTRUCTION
            else:
                quantizer = faiss.IndexFlatL2(dim)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, dim, nlist)
            else:
                pq_m = config.pq_m or max(1, dim // 8)
                if dim % pq_m:
                    raise ValueError(f"pq_m={pq_m} must divide the descriptor dimension {dim}")
                index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, config.pq_bits)
            per_list = max(config.train_points_per_list, 39)
            limit = nlist * per_list
            if kind == "ivfpq":
                limit = max(limit, 39 * 2**config.pq_bits)  # each sub-quantiser's k-means needs its own sample
            sample = data
            if len(data) > limit:
                rng = np.random.default_rng(config.seed)
                sample = data[np.sort(rng.choice(len(data), limit, replace=False))]
            # 10 k-means iterations on a bounded sample: the lists only need to be roughly balanced.
            quantizer.add(train_coarse_centroids(sample, nlist, niter=10, seed=config.seed))
            index.train(sample)  # faiss keeps the given centres; IVF-PQ trains its codebooks here
        else:
            raise ValueError(f"unknown index kind {kind!r} (auto, flat, ivf, hnsw, ivfpq)")
        return index

    def _attach(self, index, config: IndexConfig, num_points: int, dim: int) -> None:  # noqa: ANN001
        import faiss

        self.config = config
        self.num_points, self.dim = num_points, dim
        self.kind, self.nlist = config.resolved_kind(num_points), config.resolved_nlist(num_points)
        self.on_gpu = False
        self._gpu_resources = None
        check_gpu_request(config)
        if config.use_gpu and self.kind == "hnsw":
            logger.warning("faiss GPU requested, but HNSW has no GPU version; using the CPU index")
        elif config.use_gpu:
            # The GPU index borrows the resources object (streams, scratch memory): keep it alive with the index.
            self._gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
            self.on_gpu = True
        self.index = index
        self._set_search_params()
        logger.debug("%s index over %d x %d descriptors%s", self.kind, num_points, dim,
                     f" (nlist {self.nlist})" if self.nlist else "")

    def _set_search_params(self) -> None:
        if self.kind in ("ivf", "ivfpq"):
            self.index.nprobe = self.config.resolved_nprobe(self.nlist)
            quantizer = self._hnsw_quantizer()
            if quantizer is not None:
                # The beam must be wider than the number of lists asked for, or some of them are missed.
                quantizer.hnsw.efSearch = max(64, 2 * self.index.nprobe)
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = self.config.ef_search

    def set_search(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the search-time knobs (IVF lists visited, HNSW beam) without rebuilding the index."""
        self.config = replace(self.config, nprobe=nprobe or self.config.nprobe, ef_search=ef_search or self.config.ef_search)
        self._set_search_params()

    def search(self, queries: np.ndarray, k: int = 1) -> SearchResult:
        """k nearest map rows of each (Q, D) query descriptor; pass many keypoints (or images) at once."""
        if len(queries) == 0:
            return SearchResult(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
        distances, indices = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return SearchResult(distances, indices)

    def cpu_index(self):  # noqa: ANN201 (faiss index)
        """The index in host memory (a copy when it lives on the GPU)."""
        import faiss

        return faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index

    def save(self, path: str | Path) -> Path:
        """Write the index atomically with faiss' own format."""
        import faiss

        with atomic_path(path) as tmp:
            faiss.write_index(self.cpu_index(), str(tmp))
        return Path(path)

    @staticmethod
    def read_checked(path: str | Path, config: IndexConfig, num_points: int, dim: int):  # noqa: ANN205 (faiss index)
        """The CPU index in ``path``, checked to be what ``config`` builds over ``num_points`` x ``dim``.

        Raises:
            ValueError: it holds another kind, size, dimension or number of lists.
            RuntimeError: faiss cannot read the file (truncated, foreign).
        """
        import faiss

        index = faiss.read_index(str(path))  # already of its concrete class; owns its quantizer
        kind = config.resolved_kind(num_points)
        nlist = config.resolved_nlist(num_points)
        expected = {"flat": faiss.IndexFlatL2, "hnsw": faiss.IndexHNSWFlat, "ivf": faiss.IndexIVFFlat,
                    "ivfpq": faiss.IndexIVFPQ}[kind]
        found_nlist = getattr(index, "nlist", 0)
        if not isinstance(index, expected) or index.ntotal != num_points or index.d != dim or found_nlist != nlist:
            raise ValueError(f"{path} holds a {type(index).__name__} of {index.ntotal} x {index.d} (nlist {found_nlist}), "
                             f"expected a {expected.__name__} of {num_points} x {dim} (nlist {nlist})")
        return index

    @classmethod
    def from_faiss(cls, index, config: IndexConfig, num_points: int, dim: int) -> MapIndex:  # noqa: ANN001
        """Wrap a filled CPU faiss index (from :meth:`read_checked`); moves it to the GPU if ``config`` asks."""
        self = cls.__new__(cls)
        self._attach(index, config, num_points, dim)
        return self

    def nbytes(self) -> int:
        """Approximate resident bytes of the index (vectors or codes, ids, graph links, centroids)."""
        p, d = self.num_points, self.dim
        if self.kind == "flat":
            return 4 * p * d
        if self.kind == "hnsw":
            # Level 0 holds 2·M links per point; upper levels add about 1/M of that again.
            return 4 * p * d + 4 * p * 2 * self.config.hnsw_m * (1 + 1 / self.config.hnsw_m) + 8 * p
        links = 4 * self.nlist * 2 * QUANTIZER_HNSW_M if self.config.resolved_quantizer(self.nlist) == "hnsw" else 0
        quantizer = 4 * self.nlist * d + links
        if self.kind == "ivf":
            return 4 * p * d + 8 * p + quantizer
        pq_m = self.config.pq_m or max(1, d // 8)
        # faiss precomputes a term of the list-to-code distances per (list, sub-vector, code) when under 2 GB.
        table = 4 * self.nlist * pq_m * 2**self.config.pq_bits
        return (p * math.ceil(pq_m * self.config.pq_bits / 8) + 8 * p + quantizer + 4 * 2**self.config.pq_bits * d
                + (table if table < 2**31 else 0))


def load_or_build_index(descriptors: np.ndarray, config: IndexConfig = IndexConfig(),
                        cache_dir: str | Path | None = None) -> MapIndex:
    """A :class:`MapIndex`, read from ``cache_dir`` when an index of the same descriptors and build settings is
    there, else built (and, for the approximate kinds, written there). Flat indexes are never cached: building
    one is a copy. An unreadable cache file is rebuilt and replaced, with a warning.
    """
    check_gpu_request(config)
    num_points, dim = descriptors.shape
    kind = config.resolved_kind(num_points)
    if cache_dir is None or kind == "flat":
        return MapIndex(descriptors, config)
    key = key_of({"version": INDEX_CACHE_VERSION, "descriptors": array_digest(descriptors),
                  "build": config.build_key(num_points, dim)})
    path = Path(cache_dir) / keyed_name(f"index-{kind}", key, ".faiss")
    # faiss raises RuntimeError on a truncated or foreign file, read_checked ValueError on an index of another shape
    index = read_keyed(path, lambda p: MapIndex.read_checked(p, config, num_points, dim), (RuntimeError, ValueError),
                       "index cache", logger)
    if index is not None:
        logger.info("loaded %s index from %s", kind, path)
        return MapIndex.from_faiss(index, config, num_points, dim)
    index = MapIndex(descriptors, config)
    try:
        index.save(path)
        logger.info("built %s index over %d points -> %s", kind, num_points, path)
    except OSError as error:  # a full disk or read-only cache costs a rebuild next time, not this run
        logger.warning("could not cache the %s index in %s: %s", kind, path, error)
    return index
