"""Nearest-neighbour search over map descriptors with faiss: exact or approximate, CPU or (opt-in) GPU.

Which index fits depends on the map size (``benchmarks/bench_index_scale.py`` measures it): exact flat search
costs Q x P x D multiply-adds per query image, fine for small maps; from about ten thousand points on, an
inverted file (IVF) that scans a few lists per keypoint instead of every point is much faster at near-exact
agreement, and on an Aachen-sized map (1.6M points) flat search is out of the question.

Maps store float16 descriptors, and the default IVF index stores them as float16 too (faiss' scalar-quantised
inverted lists, ``codec="fp16"``): the index is then the map's descriptor store, half the bytes of IVF-Flat, and
no slower to scan (lists are scanned vector by vector either way; on a 1.6M x 128-D map it searched 0.8x the
time of IVF-Flat, ``benchmarks/bench_memory.py``). ``codec="8bit"`` halves it again at a small loss of
agreement; ``codec="fp32"`` is IVF-Flat. Exact (flat) search keeps float32: faiss'
float16 flat index skips BLAS and searched 1.2-2.3x slower on 5k-10k point maps at 128-512-D (the only maps
that get a flat index), which hold at most a few tens of MB. Descriptors are widened to float32 in chunks,
never as one full copy.

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
Codec = Literal["fp16", "8bit", "fp32"]

#: :class:`IndexConfig` fields that shape the built index, per kind (the cache key; ``auto`` values resolved).
BUILD_FIELDS = {
    "flat": (),
    "hnsw": ("hnsw_m", "ef_construction"),
    "ivf": ("train_points_per_list", "seed", "codec"),
    "ivfpq": ("train_points_per_list", "seed", "pq_m", "pq_bits"),
}

#: Part of every cache key: bump it when a fixed build choice below changes (k-means iterations, the two-level
#: switch at 1024 lists, the quantizer graph's degree 32 and construction beam 80, the sample sizes).
#: 2: IVF lists store ``codec``-coded vectors (float16 by default).
INDEX_CACHE_VERSION = 2

#: Rows widened to float32 at a time when adding a float16 map to an index (bounds the transient copy).
ADD_CHUNK_ROWS = 65536

#: The graph over IVF list centres: degree and construction beam (fixed: they hardly matter for 16k centres).
QUANTIZER_HNSW_M = 32
QUANTIZER_EF_CONSTRUCTION = 80


def _sq_types() -> dict[str, int]:
    import faiss

    return {"fp16": faiss.ScalarQuantizer.QT_fp16, "8bit": faiss.ScalarQuantizer.QT_8bit}


#: Bump when what an ``auto`` (0) setting resolves to changes (2: nprobe max(16, sqrt(nlist)), was sqrt(nlist) / 2):
#: runs record it next to their settings, so predictions made under the old rule are not reused.
AUTO_RULES_VERSION = 2


@dataclass(frozen=True)
class IndexConfig:
    """How map descriptors are indexed.

    Attributes:
        kind: ``flat`` (exact), ``ivf`` (inverted file: distances to the vectors of the ``nprobe`` nearest
            lists, stored as ``codec`` says), ``hnsw`` (graph), ``ivfpq`` (IVF with product-quantised codes:
            smallest, least exact), or ``auto``: flat up to ``flat_max_points`` points, IVF above.
        codec: how ``ivf`` lists store the vectors: ``fp16`` (faiss' float16 scalar quantizer: a float16 map
            exactly, so the index is the map's descriptor store), ``8bit`` (8 bits per dimension over the
            trained range of each dimension, coding the residual to the list centre: half of fp16, slightly
            less exact) or ``fp32`` (IVF-Flat). Exact ``flat`` search always stores float32 (see the module
            note).
        flat_max_points: the ``auto`` switch point.
        nlist: IVF lists; 0 picks the power of two nearest to 16·sqrt(P), at most P/39.
        nprobe: IVF lists visited per query keypoint; 0 picks max(16, sqrt(nlist)), 128 of 16384 lists on an
            Aachen-sized map: big maps have finer lists, so a smaller share of them finds the nearest neighbour.
            On a 1.6M-point fused map of real RootSIFT (``benchmarks/bench_memory.py``, λ 0.5) it agreed with
            exact search on 96.9% (128-D) and 97.5% (512-D) of the query keypoints at 47-86x its speed on 2
            cores; sqrt(nlist)/2 (64) agreed on 93%, 0.75·sqrt(nlist) (96) on 96%.
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
    codec: Codec = "fp16"
    # Below about ten thousand points exact search costs little; above, IVF keeps the recall at a fraction of the
    # search time (benchmarks/bench_localization.py and bench_index_scale.py print the agreement and speed-up).
    flat_max_points: int = 10_000
    nlist: int = 0
    # Finer lists on bigger maps: a smaller share of them holds the nearest neighbour, so nprobe grows only as
    # sqrt(nlist) (1/128 of the lists at Aachen's size); a floor keeps small maps from visiting too few lists.
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
        nprobe = self.nprobe if self.nprobe > 0 else max(16, round(math.sqrt(nlist)))
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


def split_lists(sizes: np.ndarray, total: int) -> np.ndarray:
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

    faiss ships the same scheme (``faiss.contrib.clustering.two_level_clustering``); it measured worse here:
    on 400k clustered 128-D points into 4096 lists it trained in 100 s against 25 s (2 cores, partly shared; its second level runs a
    fixed 25 k-means iterations, which cannot be lowered without also changing the first level's) at no better
    lists (agreement with exact search 0.994/0.995/0.997 against 0.995/0.997/0.998 at nprobe 16/32/64,
    imbalance 1.20 against 1.19), so this one stays.
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
    counts = split_lists(sizes[occupied], nlist)
    centres = [_kmeans(sample[group == g], int(c), niter, seed + 1 + int(g)) for g, c in zip(occupied, counts)]
    return np.vstack(centres).astype(np.float32)


def expected_faiss_class(kind: str, codec: str = "fp16"):  # noqa: ANN201 (a faiss class)
    """The faiss class :class:`MapIndex` builds for ``kind`` (resolved) and ``codec``."""
    import faiss

    if kind == "ivf":
        return faiss.IndexIVFFlat if codec == "fp32" else faiss.IndexIVFScalarQuantizer
    return {"flat": faiss.IndexFlatL2, "hnsw": faiss.IndexHNSWFlat, "ivfpq": faiss.IndexIVFPQ}[kind]


def _codec_of(index) -> str | None:  # noqa: ANN001 (faiss index)
    """The codec of an IVF index as :class:`IndexConfig` names it; None for the other kinds."""
    import faiss

    if isinstance(index, faiss.IndexIVFFlat):
        return "fp32"
    if isinstance(index, faiss.IndexIVFScalarQuantizer):
        return {v: k for k, v in _sq_types().items()}.get(index.sq.qtype, f"qtype {index.sq.qtype}")
    return None


def _training_sample(descriptors: np.ndarray, config: IndexConfig, kind: str, nlist: int) -> np.ndarray | None:
    """float32 rows to train an IVF index on (None for the kinds without training): all rows of a small map, else
    a seeded sample of ``train_points_per_list`` per list, read row by row (a memory-mapped map stays on disk)."""
    if kind not in ("ivf", "ivfpq"):
        return None
    limit = nlist * max(config.train_points_per_list, 39)
    if kind == "ivfpq":
        limit = max(limit, 39 * 2**config.pq_bits)  # each sub-quantiser's k-means needs its own sample
    if len(descriptors) <= limit:
        return np.ascontiguousarray(descriptors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(config.seed).choice(len(descriptors), limit, replace=False))
    return np.ascontiguousarray(descriptors[rows], dtype=np.float32)


class MapIndex:
    """A faiss index over (P, D) descriptors, with the configuration it was built with.

    Args:
        descriptors: (P, D) map descriptors, any float dtype, in memory or memory-mapped (read in chunks and
            widened to float32 chunk by chunk; the index keeps its own copy in its storage format, so the caller
            need not keep them). Row ``i`` is id ``i``: a search result indexes the map's points directly.
        config: index kind and parameters.
    """

    def __init__(self, descriptors: np.ndarray, config: IndexConfig = IndexConfig()):
        check_gpu_request(config)  # before training: an IVF build on a large map takes minutes
        if descriptors.ndim != 2:
            raise ValueError(f"descriptors must be (P, D), got shape {descriptors.shape}")
        num_points, dim = descriptors.shape
        kind = config.resolved_kind(num_points)
        nlist = config.resolved_nlist(num_points)
        sample = _training_sample(descriptors, config, kind, nlist)
        self._attach(self._trained_cpu_index(sample, dim, config, kind, nlist), config, num_points, dim)
        del sample
        # Adding after the move to the GPU lets the GPU assign points to lists, and keeps one copy of the data.
        quantizer = self._hnsw_quantizer()
        if quantizer is not None:
            # A point goes to its one nearest list, which a narrow beam finds; the search beam is sized for
            # nprobe lists and would only slow the adding down.
            quantizer.hnsw.efSearch = 16
        # Chunks: a float16 (or memory-mapped) map is never widened whole; ids are the map rows.
        for start in range(0, num_points, ADD_CHUNK_ROWS):
            self.index.add(np.ascontiguousarray(descriptors[start : start + ADD_CHUNK_ROWS], dtype=np.float32))
        self._set_search_params()

    def _hnsw_quantizer(self):  # noqa: ANN202 (faiss index or None)
        import faiss

        if self.kind not in ("ivf", "ivfpq") or self.on_gpu:
            return None
        quantizer = faiss.downcast_index(self.index.quantizer)
        return quantizer if isinstance(quantizer, faiss.IndexHNSW) else None

    @staticmethod
    def _trained_cpu_index(sample: np.ndarray | None, dim: int, config: IndexConfig, kind: str, nlist: int):  # noqa: ANN205 (faiss index)
        """An empty CPU index of ``kind``, trained on ``sample`` (float32 rows of the map) where the kind needs it."""
        import faiss

        if kind == "flat":
            return faiss.IndexFlatL2(dim)
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, config.hnsw_m)
            index.hnsw.efConstruction = config.ef_construction
            return index
        if kind not in ("ivf", "ivfpq"):
            raise ValueError(f"unknown index kind {kind!r} (auto, flat, ivf, hnsw, ivfpq)")
        if config.resolved_quantizer(nlist) == "hnsw":
            quantizer = faiss.IndexHNSWFlat(dim, QUANTIZER_HNSW_M)
            quantizer.hnsw.efConstruction = QUANTIZER_EF_CONSTRUCTION
        else:
            quantizer = faiss.IndexFlatL2(dim)
        if kind == "ivf" and config.codec == "fp32":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist)
        elif kind == "ivf":
            # float16 codes the vectors themselves (lossless for a float16 map); 8 bits code the residual to the
            # list centre, whose per-dimension range is much narrower than the vectors'.
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, _sq_types()[config.codec], faiss.METRIC_L2,
                                                  config.codec == "8bit")
        else:
            pq_m = config.pq_m or max(1, dim // 8)
            if dim % pq_m:
                raise ValueError(f"pq_m={pq_m} must divide the descriptor dimension {dim}")
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, config.pq_bits)
        # 10 k-means iterations on a bounded sample: the lists only need to be roughly balanced.
        quantizer.add(train_coarse_centroids(sample, nlist, niter=10, seed=config.seed))
        index.train(sample)  # faiss keeps the given centres; trains the scalar or product quantizer here
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

    def _flat_quantizer(self):  # noqa: ANN202 (faiss index or None)
        """The flat (BLAS-searched) coarse quantizer of a CPU ``ivf`` index; None otherwise."""
        import faiss

        if self.kind != "ivf" or self.on_gpu:
            return None
        quantizer = faiss.downcast_index(self.index.quantizer)
        return quantizer if isinstance(quantizer, faiss.IndexFlat) else None

    @property
    def thread_invariant(self) -> bool:
        """Searches return the same bits whatever faiss' thread count.

        True for ``ivf`` and ``hnsw`` on the CPU, and on the GPU: their distances are computed per query
        keypoint, and an IVF index's list centres, when a flat index holds them, are searched on one thread
        (:meth:`search`). False for CPU ``flat`` and ``ivfpq``: from 20 query rows on, faiss' flat search is a
        BLAS product, whose sums come out a few bits apart with another thread count (its OpenBLAS follows
        faiss' OpenMP thread count), which could flip a nearest neighbour at a near tie.
        """
        return self.on_gpu or self.kind in ("ivf", "hnsw")

    def search(self, queries: np.ndarray, k: int = 1) -> SearchResult:
        """k nearest map rows of each (Q, D) query descriptor; pass many keypoints (or images) at once."""
        if len(queries) == 0:
            return SearchResult(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        quantizer = self._flat_quantizer()
        if quantizer is None:
            distances, indices = self.index.search(queries, k)
            return SearchResult(distances, indices)
        import faiss

        # The list centres on one thread (a few milliseconds: a BLAS product of the keypoints with at most a few
        # thousand centres), so that which lists a keypoint visits never depends on the thread count; then the
        # lists are scanned as faiss' own search scans them, the keypoints shared among threads.
        threads = faiss.omp_get_max_threads()  # this thread's OpenMP setting: the caller's choice, restored below
        faiss.omp_set_num_threads(1)
        try:
            centre_distances, centres = quantizer.search(queries, self.index.nprobe)
        finally:
            faiss.omp_set_num_threads(threads)
        distances, indices = self.index.search_preassigned(queries, k, centres, centre_distances)
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
        expected = expected_faiss_class(kind, config.codec)
        found_nlist = getattr(index, "nlist", 0)
        found_codec = _codec_of(index)
        want_codec = config.codec if kind == "ivf" else None
        if (not isinstance(index, expected) or index.ntotal != num_points or index.d != dim or found_nlist != nlist
                or found_codec != want_codec):
            raise ValueError(f"{path} holds a {type(index).__name__} of {index.ntotal} x {index.d} (nlist {found_nlist}, "
                             f"codec {found_codec}), expected a {expected.__name__} of {num_points} x {dim} (nlist {nlist}, "
                             f"codec {want_codec})")
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
            return {"fp32": 4, "fp16": 2, "8bit": 1}[self.config.codec] * p * d + 8 * p + quantizer
        pq_m = self.config.pq_m or max(1, d // 8)
        # faiss precomputes a term of the list-to-code distances per (list, sub-vector, code) when under 2 GB.
        table = 4 * self.nlist * pq_m * 2**self.config.pq_bits
        return (p * math.ceil(pq_m * self.config.pq_bits / 8) + 8 * p + quantizer + 4 * 2**self.config.pq_bits * d
                + (table if table < 2**31 else 0))


def load_or_build_index(descriptors: np.ndarray, config: IndexConfig = IndexConfig(),
                        cache_dir: str | Path | None = None, digest: str | None = None) -> MapIndex:
    """A :class:`MapIndex`, read from ``cache_dir`` when an index of the same descriptors and build settings is
    there, else built (and, for the approximate kinds, written there). Flat indexes are never cached: building
    one is a copy. An unreadable cache file is rebuilt and replaced, with a warning.

    ``digest``: :func:`~fuseloc.cachekeys.array_digest` of ``descriptors`` when the caller knows it (a fused map
    records it when saved): then a cached index is loaded without reading the descriptors at all, so a
    memory-mapped map's descriptors never enter memory.
    """
    check_gpu_request(config)
    num_points, dim = descriptors.shape
    kind = config.resolved_kind(num_points)
    if cache_dir is None or kind == "flat":
        return MapIndex(descriptors, config)
    key = key_of({"version": INDEX_CACHE_VERSION, "descriptors": digest or array_digest(descriptors),
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
