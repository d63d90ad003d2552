"""The query loop: fuse query keypoints, 1-NN against the fused map, PnP. Shared by evaluate.py and validation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from fuseloc.data.feature_cache import FeatureCache
from fuseloc.data.scene import QuerySet
from fuseloc.localize.fused_map import FusedMap
from fuseloc.localize.index import IndexConfig, MapIndex, SearchResult, load_or_build_index
from fuseloc.localize.pose import PnPConfig, check_query_settings, estimate_absolute_pose
from fuseloc.models.fusion import Fusion, fuse_numpy
from fuseloc.types import Camera, Pose, PoseResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalizerConfig:
    """Query-time settings.

    Attributes:
        query_global: ``light`` fuses with the query's own global descriptor, ``heavy`` with that of its
            nearest database image (by global descriptor).
        min_inliers: fewer PnP inliers marks the query failed; it then gets the fallback pose.
        pnp: RANSAC settings.
        index: nearest-neighbour index over the map descriptors (exact or approximate); ``index.use_gpu``
            puts it on the GPU. The fusion runs wherever it lives: pass one moved to ``cuda`` to fuse there.
        ratio_threshold: Lowe's ratio test on the two nearest map points (distance, not squared); 1 keeps
            every 1-NN match.
        unique_points: keep only the closest query keypoint per map point; the others matched to the same
            point are mostly outliers that would only slow RANSAC down.
    """

    query_global: Literal["light", "heavy"] = "light"
    min_inliers: int = 12
    pnp: PnPConfig = field(default_factory=PnPConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    ratio_threshold: float = 1.0
    unique_points: bool = True

    def __post_init__(self) -> None:
        check_query_settings(self.min_inliers, self.ratio_threshold)  # before any feature or map is built


@dataclass
class QueryMatches:
    """2D-3D matches of one query. ``p2d``: (M, 2) pixels; ``point_index``: (M,) rows of the map."""

    p2d: np.ndarray
    point_index: np.ndarray
    distances: np.ndarray


class Localizer:
    """Holds a fused map, its faiss index and the fusion, and localizes queries one by one.

    The fusion may live on any device and in any float dtype (``fusion.to("cuda")``): query descriptors go
    to it and come back as numpy through :func:`~fuseloc.models.fusion.fuse_numpy`. Without ``fusion``, the
    map's own is rebuilt on the CPU.

    ``index_cache_dir``: keep built approximate indexes there (keyed by the map's descriptors and the build
    settings), so a re-run over the same map loads instead of retraining. ``index``: an index already built
    over the map's descriptors (a map bundle's), used as it is.
    """

    def __init__(self, fused_map: FusedMap, config: LocalizerConfig = LocalizerConfig(), fusion: Fusion | None = None,
                 index_cache_dir: str | Path | None = None, index: MapIndex | None = None):
        self.map = fused_map
        self.config = config
        self.fusion = (fusion if fusion is not None else fused_map.fusion()).eval()
        # The index is the descriptor store from here on: with the recorded digest, a cached index loads without
        # reading the (memory-mapped) map descriptors; search rows are map rows, hence points_xyz rows.
        if index is not None:
            self.index = index
        else:
            digest = fused_map.descriptor_digest() if index_cache_dir is not None else None
            self.index = load_or_build_index(fused_map.descriptors, config.index, index_cache_dir, digest=digest)
        self.db_global = np.ascontiguousarray(fused_map.db_global, np.float32)
        self._points_xyz = np.ascontiguousarray(fused_map.points_xyz, np.float64)

    def nearest_database_image(self, global_desc: np.ndarray) -> int:
        return int(np.argmin(((self.db_global - global_desc[None]) ** 2).sum(1)))

    def fallback_pose(self, db_index: int) -> Pose:
        return Pose(self.map.db_R_cam_from_world[db_index], self.map.db_t_cam_from_world[db_index])

    @torch.no_grad()
    def match(self, local_desc: np.ndarray, keypoints: np.ndarray, global_desc: np.ndarray, timings: dict[str, float]) -> QueryMatches:
        t0 = time.perf_counter()
        if self.config.query_global == "heavy":
            global_desc = self.db_global[self.nearest_database_image(global_desc)]
        self.fusion.check_dims(local_desc.shape[1], global_desc.shape[0], "query features")
        fused = fuse_numpy(self.fusion, local_desc, global_desc)
        t1 = time.perf_counter()
        use_ratio = self.config.ratio_threshold < 1.0
        result = self.index.search(fused, k=2 if use_ratio else 1)
        keep = filter_matches(result, self.config.ratio_threshold, self.config.unique_points)
        timings["fusion"] = t1 - t0
        timings["search"] = time.perf_counter() - t1
        return QueryMatches(keypoints[keep], result.indices[keep, 0], result.distances[keep, 0])

    def localize(self, camera: Camera, keypoints: np.ndarray, local_desc: np.ndarray, global_desc: np.ndarray,
                 on_matches: Callable[[QueryMatches], None] | None = None) -> PoseResult:
        """Match, then PnP; ``on_matches`` sees the 2D-3D matches first (validation scores them, for one)."""
        timings: dict[str, float] = {}
        matches = self.match(local_desc, keypoints, global_desc, timings)
        if on_matches is not None:
            on_matches(matches)
        return self.pose_from_matches(matches, camera, global_desc, timings, num_keypoints=len(keypoints))

    def pose_from_matches(self, matches: QueryMatches, camera: Camera, global_desc: np.ndarray,
                          timings: dict[str, float], num_keypoints: int) -> PoseResult:
        """The second half of :meth:`localize`, for callers that also inspect the matches."""
        return solve_pose(matches.p2d, self._points_xyz[matches.point_index], matches.distances, camera, self.config.pnp,
                          self.config.min_inliers,
                          lambda: self.fallback_pose(self.nearest_database_image(global_desc)), timings, num_keypoints)


def solve_pose(
    p2d: np.ndarray,
    p3d: np.ndarray,
    distances: np.ndarray,
    camera: Camera,
    pnp_config: PnPConfig,
    min_inliers: int,
    fallback: Callable[[], Pose],
    timings: dict[str, float],
    num_keypoints: int,
) -> PoseResult:
    """PnP on 2D-3D matches; below ``min_inliers`` the query is failed and gets ``fallback()`` with a reason.

    The fallback is a callable so the retrieval it needs runs only for failed queries.
    """
    t0 = time.perf_counter()
    pnp = estimate_absolute_pose(p2d, p3d, camera, pnp_config, quality=-distances)
    timings["pnp"] = time.perf_counter() - t0
    num_inliers = 0 if pnp is None else pnp.num_inliers
    if pnp is None or num_inliers < min_inliers:
        reason = f"{num_inliers} inliers < {min_inliers}" if pnp is not None else f"only {len(p2d)} matches"
        if num_keypoints == 0:
            reason = "no keypoints detected in the query image (blank, black or featureless?)"
        return PoseResult(fallback(), False, len(p2d), num_inliers, reason, timings)
    return PoseResult(pnp.pose, True, len(p2d), num_inliers, "", timings)


def filter_matches(result: SearchResult, ratio_threshold: float = 1.0, unique_points: bool = False) -> np.ndarray:
    """Rows of a k-NN result kept as matches: a valid 1-NN, passing the ratio test, one per map point.

    Returns the kept query rows in ascending order, so filtering never reorders matches.
    """
    indices, distances = result.indices, result.distances
    keep = indices[:, 0] >= 0
    if ratio_threshold < 1.0 and indices.shape[1] > 1:
        # Squared distances: compare against the squared ratio. No second neighbour means no ambiguity.
        second = np.where(indices[:, 1] >= 0, distances[:, 1], np.inf)
        keep &= distances[:, 0] <= ratio_threshold**2 * second
    rows = np.flatnonzero(keep)
    if unique_points and len(rows):
        order = rows[np.lexsort((distances[rows, 0], indices[rows, 0]))]
        point = indices[order, 0]
        first = np.r_[True, point[1:] != point[:-1]]
        rows = np.sort(order[first])
    return rows


class QueryLocalizer(Protocol):
    """Anything that turns one query's cached features into a :class:`PoseResult` (fused, hierarchical...)."""

    def localize(self, camera: Camera, keypoints: np.ndarray, local_desc: np.ndarray, global_desc: np.ndarray) -> PoseResult: ...


MatchHook = Callable[[str, QueryMatches], None]
"""Called with a query's name and its 2D-3D matches, before PnP (fused :class:`Localizer` only)."""


def localize_one(localizer: QueryLocalizer, features: FeatureCache, name: str, camera: Camera,
                 on_matches: MatchHook | None = None) -> PoseResult:
    """Read one query's cached features and localize it; feature reading is timed as ``features_io``."""
    t0 = time.perf_counter()
    local = features.local(name)
    global_desc = features.global_descriptor(name)
    io_time = time.perf_counter() - t0
    if on_matches is None:
        result = localizer.localize(camera, local.keypoints, local.descriptors, global_desc)
    else:
        if not isinstance(localizer, Localizer):
            raise TypeError(f"on_matches needs a fused Localizer, not {type(localizer).__name__}")
        result = localizer.localize(camera, local.keypoints, local.descriptors, global_desc,
                                    on_matches=lambda matches: on_matches(name, matches))
    result.timings["features_io"] = io_time
    return result


def localize_queries(
    localizer: QueryLocalizer,
    queries: QuerySet,
    features: FeatureCache,
    skip: set[str] | None = None,
    on_result: Callable[[str, PoseResult], None] | None = None,
    progress: bool = True,
    on_matches: MatchHook | None = None,
) -> dict[str, PoseResult]:
    """Localize every query (except those in ``skip``); ``on_result`` sees each result as it comes (for logs),
    ``on_matches`` each query's 2D-3D matches before PnP (for match statistics; fused :class:`Localizer` only)."""
    from tqdm import tqdm

    results: dict[str, PoseResult] = {}
    failed = 0
    for name, camera in tqdm(list(zip(queries.names, queries.cameras)), desc="localizing", disable=not progress, leave=False):
        if skip and name in skip:
            continue
        result = localize_one(localizer, features, name, camera, on_matches)
        if not result.success:
            failed += 1
            logger.debug("query %s failed (%s); using the nearest database pose", name, result.reason)
        results[name] = result
        if on_result is not None:
            on_result(name, result)
    if failed:
        logger.warning("%d of %d queries failed to localize and got the fallback pose (nearest database image)", failed, len(results))
    return results
