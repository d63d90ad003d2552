"""The hierarchical baseline: retrieve database images, match 2D-2D, lift to 3D, PnP.

This is the pipeline FUSELOC is measured against (as in hloc: global retrieval, pairwise local matching, then
absolute pose), run here on the very same cached features and the same PnP solver, so that differences in
recall, time and memory come from the method and not from the plumbing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from fuseloc.data.feature_cache import FeatureCache
from fuseloc.data.observations import associate_image, resolve_association
from fuseloc.data.scene import Scene
from fuseloc.errors import InputError
from fuseloc.localize.pipeline import solve_pose
from fuseloc.localize.pose import PnPConfig, check_query_settings
from fuseloc.models.fusion import to_numpy
from fuseloc.types import Camera, Pose, PoseResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HierarchicalConfig:
    """Query-time settings of the hierarchical baseline.

    Attributes:
        top_k: database images retrieved per query (by global-descriptor distance).
        ratio_threshold: Lowe's ratio test on each pairwise match (distance, not squared); 1 keeps every
            mutual nearest neighbour.
        min_inliers: fewer PnP inliers marks the query failed; it then gets the top-1 database pose.
        pnp: RANSAC settings (the same solver as the fused pipeline).
    """

    top_k: int = 10
    ratio_threshold: float = 1.0
    min_inliers: int = 12
    pnp: PnPConfig = field(default_factory=PnPConfig)

    def __post_init__(self) -> None:
        # checked when the configuration is made, before any feature or map is built
        if self.top_k < 1:
            raise InputError(f"top_k must be at least 1, got {self.top_k}")
        check_query_settings(self.min_inliers, self.ratio_threshold)


@dataclass
class HierarchicalMap:
    """What the hierarchical baseline holds in memory: every database image's local features and their 3D points.

    Attributes:
        keypoints: (K, 2) float32 keypoints of all database images, concatenated (COLMAP pixel convention).
        descriptors: (K, D) float16 their local descriptors.
        offsets: (N + 1,) int64: image i owns rows ``offsets[i]:offsets[i + 1]``.
        keypoint_point: (K,) int32 3D point of each keypoint, -1 for keypoints with none.
        points_xyz: (P, 3) float64 3D points.
        db_names: N database image names.
        db_global: (N, G) float16 global descriptors (retrieval).
        db_R_cam_from_world, db_t_cam_from_world: (N, 3, 3), (N, 3) database world-to-camera poses (fallback poses).
        config: how the map was built (feature tags, association).
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    offsets: np.ndarray
    keypoint_point: np.ndarray
    points_xyz: np.ndarray
    db_names: list[str]
    db_global: np.ndarray
    db_R_cam_from_world: np.ndarray
    db_t_cam_from_world: np.ndarray
    config: dict = field(default_factory=dict)

    @property
    def num_points(self) -> int:
        return len(self.points_xyz)

    def nbytes(self) -> int:
        """Bytes localization must hold: database keypoints, descriptors, their 3D lifting, globals and poses."""
        arrays = (self.keypoints, self.descriptors, self.offsets, self.keypoint_point, self.points_xyz, self.db_global,
                  self.db_R_cam_from_world, self.db_t_cam_from_world)
        return int(sum(a.nbytes for a in arrays))


def build_hierarchical_map(
    scene: Scene,
    features: FeatureCache,
    association: Literal["auto", "index", "radius"] = "auto",
    feature_tag: str | None = None,
    radius: float = 5.0,
    triangulated_only: bool = False,
    progress: bool = True,
) -> HierarchicalMap:
    """Gather the database images' cached local features and the 3D point behind each keypoint.

    Args:
        scene: reference scene with points and observations.
        features: cache with the database images' local features and global descriptors.
        association: ``index`` takes the observation's keypoint index (map triangulated from these features),
            ``radius`` the nearest keypoint within ``radius`` pixels, ``auto`` picks ``index`` when
            ``scene.keypoint_source == feature_tag`` (as :func:`~fuseloc.localize.fused_map.build_fused_map`).
        feature_tag: tag of the local features in ``features``.
        radius: association radius in pixels.
        triangulated_only: keep only keypoints with a 3D point (less memory, but pairwise matching then sees
            fewer competitors, which is not how hloc matches).
    """
    from tqdm import tqdm

    if scene.num_points == 0:
        raise InputError("the reference model has no 3D points; triangulate it first (fuseloc builds it from posed images)")
    association = resolve_association(scene, association, feature_tag)
    order = np.argsort(scene.obs_image, kind="stable")
    bounds = np.searchsorted(scene.obs_image[order], np.arange(scene.num_images + 1))
    keypoints, descriptors, lifts, sizes = [], [], [], []
    for i in tqdm(range(scene.num_images), desc="gathering database features", disable=not progress, leave=False):
        local = features.local(scene.image_names[i])
        obs = order[bounds[i] : bounds[i + 1]]
        lift = np.full(len(local.keypoints), -1, np.int32)
        if len(obs):
            kp = associate_image(scene, i, obs, local.keypoints, association, radius, features.local_path)
            ok = kp >= 0
            lift[kp[ok]] = scene.obs_point[obs[ok]]
        keep = lift >= 0 if triangulated_only else slice(None)
        keypoints.append(local.keypoints[keep].astype(np.float32))
        descriptors.append(local.descriptors[keep].astype(np.float16))
        lifts.append(lift[keep])
        sizes.append(len(lifts[-1]))
    lifted = sum(int((lift >= 0).sum()) for lift in lifts)
    if lifted == 0:
        raise InputError(f"no database keypoint could be associated with a 3D point ({association} association)")
    logger.info("hierarchical map: %d database keypoints, %d with a 3D point (%s association)",
                sum(sizes), lifted, association)
    dim = descriptors[0].shape[1] if descriptors else 0
    return HierarchicalMap(
        keypoints=np.concatenate(keypoints) if keypoints else np.zeros((0, 2), np.float32),
        descriptors=np.concatenate(descriptors) if descriptors else np.zeros((0, dim), np.float16),
        offsets=np.r_[0, np.cumsum(sizes)].astype(np.int64),
        keypoint_point=np.concatenate(lifts) if lifts else np.zeros(0, np.int32),
        points_xyz=scene.points_xyz.astype(np.float64),
        db_names=list(scene.image_names),
        db_global=features.global_descriptors(scene.image_names).astype(np.float16),
        db_R_cam_from_world=scene.R_cam_from_world.astype(np.float64),
        db_t_cam_from_world=scene.t_cam_from_world.astype(np.float64),
        config={"association": association, "radius": radius, "triangulated_only": triangulated_only},
    )


@dataclass
class PairMatches:
    """Mutual nearest-neighbour matches between a query and one database image (rows of each side)."""

    query_rows: np.ndarray
    db_rows: np.ndarray
    distances: np.ndarray


def mutual_nearest_neighbours(query: torch.Tensor, db: torch.Tensor, ratio_threshold: float = 1.0) -> PairMatches:
    """Mutual 1-NN (squared L2) between (Q, D) and (B, D) descriptors (same device, any), optionally with Lowe's
    ratio test. The matches come back as numpy."""
    if len(query) == 0 or len(db) == 0:
        empty = np.zeros(0, np.int64)
        return PairMatches(empty, empty, np.zeros(0, np.float32))
    query_sq = (query * query).sum(1)
    db_sq = (db * db).sum(1)
    # ||q - d||² = ||q||² + ||d||² - 2 q·d. Each side's argmin ignores its own constant term, so one GEMM with
    # the database norms as bias serves the forward search, and in-place shifts of the same (Q, B) buffer serve
    # the backward one: the matrix is never copied.
    scores = torch.addmm(db_sq[None], query, db.T, alpha=-2.0)
    if ratio_threshold < 1.0 and scores.shape[1] > 1:
        best2 = scores.topk(2, dim=1, largest=False)
        forward, nn = best2.values[:, 0] + query_sq, best2.indices[:, 0]
        passes = forward <= ratio_threshold**2 * (best2.values[:, 1] + query_sq)
    else:
        best, nn = scores.min(1)
        forward = best + query_sq
        passes = torch.ones_like(nn, dtype=torch.bool)
    scores.sub_(db_sq[None]).add_(query_sq[:, None])
    backward = scores.argmin(0)
    mutual = backward[nn] == torch.arange(len(query), device=query.device)
    rows = torch.nonzero(mutual & passes).squeeze(1)
    return PairMatches(to_numpy(rows), to_numpy(nn[rows]), to_numpy(forward[rows].clamp_min(0)))


@dataclass
class HierarchicalMatches:
    """2D-3D matches of one query gathered over its retrieved images. ``retrieved``: database rows, best first."""

    p2d: np.ndarray
    point_index: np.ndarray
    distances: np.ndarray
    retrieved: np.ndarray


class HierarchicalLocalizer:
    """Localizes queries against a :class:`HierarchicalMap` (same interface as the fused ``Localizer``)."""

    def __init__(self, hmap: HierarchicalMap, config: HierarchicalConfig = HierarchicalConfig()):
        if config.top_k < 1:
            raise InputError(f"top_k must be at least 1, got {config.top_k}")
        self.map = hmap
        self.config = config
        self.db_global = np.ascontiguousarray(hmap.db_global, np.float32)
        self._points_xyz = np.ascontiguousarray(hmap.points_xyz, np.float64)

    def retrieve(self, global_desc: np.ndarray) -> np.ndarray:
        """The ``top_k`` database images nearest in global descriptor, nearest first."""
        dist = ((self.db_global - np.asarray(global_desc, np.float32)[None]) ** 2).sum(1)
        k = min(self.config.top_k, len(dist))
        top = np.argpartition(dist, k - 1)[:k]
        return top[np.lexsort((top, dist[top]))]

    @torch.no_grad()
    def match(self, keypoints: np.ndarray, local_desc: np.ndarray, global_desc: np.ndarray,
              timings: dict[str, float]) -> HierarchicalMatches:
        t0 = time.perf_counter()
        retrieved = self.retrieve(global_desc)
        t1 = time.perf_counter()
        query = torch.from_numpy(np.ascontiguousarray(local_desc, np.float32))
        rows, points, dists = [], [], []
        for j in retrieved:
            lo, hi = self.map.offsets[j], self.map.offsets[j + 1]
            db = torch.from_numpy(self.map.descriptors[lo:hi].astype(np.float32))
            pair = mutual_nearest_neighbours(query, db, self.config.ratio_threshold)
            lifted = self.map.keypoint_point[lo + pair.db_rows]
            ok = lifted >= 0
            rows.append(pair.query_rows[ok])
            points.append(lifted[ok])
            dists.append(pair.distances[ok])
        timings["retrieval"] = t1 - t0
        timings["matching"] = time.perf_counter() - t1
        query_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return HierarchicalMatches(keypoints[query_rows], np.concatenate(points).astype(np.int64) if points else query_rows,
                                   np.concatenate(dists) if dists else np.zeros(0, np.float32), retrieved)

    def fallback_pose(self, db_index: int) -> Pose:
        return Pose(self.map.db_R_cam_from_world[db_index], self.map.db_t_cam_from_world[db_index])

    def localize(self, camera: Camera, keypoints: np.ndarray, local_desc: np.ndarray, global_desc: np.ndarray) -> PoseResult:
        timings: dict[str, float] = {}
        if local_desc.shape[1] != self.map.descriptors.shape[1] or len(global_desc) != self.db_global.shape[1]:
            raise InputError(f"query features are {local_desc.shape[1]}-D local / {len(global_desc)}-D global, the "
                             f"map holds {self.map.descriptors.shape[1]}-D / {self.db_global.shape[1]}-D")
        matches = self.match(keypoints, local_desc, global_desc, timings)
        # The same 2D keypoint may match 3D points through several database images, as in hloc; RANSAC sorts it out.
        return solve_pose(matches.p2d, self._points_xyz[matches.point_index], matches.distances, camera, self.config.pnp,
                          self.config.min_inliers,
                          lambda: self.fallback_pose(int(matches.retrieved[0])), timings, num_keypoints=len(keypoints))
