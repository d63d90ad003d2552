"""Nearest-neighbour search over map descriptors with faiss (CPU by default, GPU when asked and present)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """k-NN result. ``distances``: (Q, k) squared L2; ``indices``: (Q, k) int64 rows of the indexed set."""

    distances: np.ndarray
    indices: np.ndarray


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def build_index(descriptors: np.ndarray, use_gpu: bool = False):  # noqa: ANN201 (faiss index)
    """An exact L2 index over (P, D) descriptors (fp16 input is widened: faiss' fp16 storage skips BLAS)."""
    import faiss

    data = np.ascontiguousarray(descriptors, dtype=np.float32)
    index = faiss.IndexFlatL2(data.shape[1])
    if use_gpu and gpu_available():
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    elif use_gpu:
        logger.warning("faiss GPU requested but not available; using the CPU index")
    index.add(data)
    return index


def search(index, queries: np.ndarray, k: int = 1) -> SearchResult:  # noqa: ANN001
    if len(queries) == 0:
        return SearchResult(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
    distances, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return SearchResult(distances, indices)
