"""The hierarchical baseline: retrieve database images, match 2D-2D, lift to 3D, PnP.

This is the pipeline FUSELOC is measured against (as in hloc: global retrieval, pairwise local matching, then
absolute pose), run here on the very same cached features and the same PnP solver, so that differences in
recall, time and memory come from the method and not from the plumbing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from fuseloc.data.extractors.base import LocalExtractor
from fuseloc.data.feature_cache import FeatureCache
from fuseloc.data.observations import associate_image, resolve_association
from fuseloc.data.scene import Scene
from fuseloc.errors import InputError
from fuseloc.localize.matchers import (
    LearnedMatcher,
    MatchImage,
    PairMatches,
    check_matcher,
    check_matcher_dim,
    fit_matcher_weights,
    no_matches,
)
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
            mutual nearest neighbour. Mutual NN only.
        min_inliers: fewer PnP inliers marks the query failed; it then gets the top-1 database pose.
        pnp: RANSAC settings (the same solver as the fused pipeline).
        matcher: how a query is matched with a retrieved image: ``mutual_nn`` (mutual nearest neighbours of the
            descriptors), ``lightglue`` (LightGlue, ALIKED or DISK features) or ``lighterglue`` (XFeat's
            LighterGlue, XFeat features); see :mod:`fuseloc.localize.matchers`.
        lightglue_weights: LightGlue's weights, ``aliked`` or ``disk``; ``auto``: those of the local features
            (:meth:`fitted_to`).
    """

    top_k: int = 10
    ratio_threshold: float = 1.0
    min_inliers: int = 12
    pnp: PnPConfig = field(default_factory=PnPConfig)
    matcher: Literal["mutual_nn", "lightglue", "lighterglue"] = "mutual_nn"
    lightglue_weights: Literal["auto", "aliked", "disk"] = "auto"

    def __post_init__(self) -> None:
        # checked when the configuration is made, before any feature or map is built
        if self.top_k < 1:
            raise InputError(f"top_k must be at least 1, got {self.top_k}")
        check_query_settings(self.min_inliers, self.ratio_threshold)
        check_matcher(self.matcher, self.lightglue_weights)  # and its package and weight file
        if self.matcher != "mutual_nn" and self.ratio_threshold < 1.0:
            raise InputError(f"ratio_threshold applies to --matcher mutual_nn only, not {self.matcher}")

    @property
    def method_name(self) -> str:
        """The method's output folder: ``hierarchical-top10`` for mutual NN (as before matchers were options),
        ``hierarchical-lightglue-top10``..."""
        matcher = "" if self.matcher == "mutual_nn" else f"{self.matcher}-"
        return f"hierarchical-{matcher}top{self.top_k}"

    def record(self) -> dict:
        """The settings the predictions depend on; mutual NN's record is that of runs made before matchers were
        options, so their prediction logs stay valid."""
        record = asdict(self)
        if self.matcher == "mutual_nn":
            del record["matcher"], record["lightglue_weights"]
        return record

    def fitted_to(self, extractor: LocalExtractor | None) -> HierarchicalConfig:
        """This configuration with LightGlue's ``auto`` weights resolved for ``extractor``'s features; an
        InputError when the matcher does not fit them (None: features from a file, unknown extractor)."""
        return replace(self, lightglue_weights=fit_matcher_weights(self.matcher, self.lightglue_weights, extractor))

    def check_dim(self, dim: int) -> None:
        """An InputError when the matcher's weights take descriptors of another dimension than ``dim``."""
        check_matcher_dim(self.matcher, self.lightglue_weights, dim)


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
        db_image_sizes: (N, 2) int64 (width, height) of the database images (the learned matchers normalise
            keypoints by them).
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
    db_image_sizes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))

    @property
    def num_points(self) -> int:
        return len(self.points_xyz)

    def nbytes(self) -> int:
        """Bytes localization must hold: database keypoints, descriptors, their 3D lifting, globals and poses."""
        arrays = (self.keypoints, self.descriptors, self.offsets, self.keypoint_point, self.points_xyz, self.db_global,
                  self.db_R_cam_from_world, self.db_t_cam_from_world, self.db_image_sizes)
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
    by_image = scene.observations_by_image()
    keypoints, descriptors, lifts, sizes = [], [], [], []
    for i in tqdm(range(scene.num_images), desc="gathering database features", disable=not progress, leave=False):
        local = features.local(scene.image_names[i])
        obs = by_image[i]
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
        db_image_sizes=np.array([[c.width, c.height] for c in scene.image_cameras], np.int64).reshape(-1, 2),
    )


def mutual_nearest_neighbours(query: torch.Tensor, db: torch.Tensor, ratio_threshold: float = 1.0) -> PairMatches:
    """Mutual 1-NN (squared L2) between (Q, D) and (B, D) descriptors (same device, any), optionally with Lowe's
    ratio test. The matches come back as numpy."""
    if len(query) == 0 or len(db) == 0:
        return no_matches()
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
    """Localizes queries against a :class:`HierarchicalMap` (same interface as the fused ``Localizer``).

    ``device``: where a learned matcher runs (mutual NN runs on the CPU).
    """

    def __init__(self, hmap: HierarchicalMap, config: HierarchicalConfig = HierarchicalConfig(),
                 device: torch.device | str = "cpu"):
        if config.top_k < 1:
            raise InputError(f"top_k must be at least 1, got {config.top_k}")
        self.map = hmap
        self.config = config
        self.db_global = np.ascontiguousarray(hmap.db_global, np.float32)
        self._points_xyz = np.ascontiguousarray(hmap.points_xyz, np.float64)
        self.matcher: LearnedMatcher | None = None
        if config.matcher != "mutual_nn":
            config.check_dim(hmap.descriptors.shape[1])
            if len(hmap.db_image_sizes) != len(hmap.db_names):
                raise InputError(f"{config.matcher} needs the database image sizes; this map records none")
            self.matcher = LearnedMatcher(config.matcher, config.lightglue_weights, device)

    def retrieve(self, global_desc: np.ndarray) -> np.ndarray:
        """The ``top_k`` database images nearest in global descriptor, nearest first."""
        dist = ((self.db_global - np.asarray(global_desc, np.float32)[None]) ** 2).sum(1)
        k = min(self.config.top_k, len(dist))
        top = np.argpartition(dist, k - 1)[:k]
        return top[np.lexsort((top, dist[top]))]

    def _pair_matches(self, retrieved: np.ndarray, keypoints: np.ndarray, local_desc: np.ndarray,
                      image_size: tuple[int, int] | None) -> list[PairMatches]:
        """The query's matches with each retrieved database image."""
        bounds = [(int(self.map.offsets[j]), int(self.map.offsets[j + 1])) for j in retrieved]
        if self.matcher is None:
            query = torch.from_numpy(np.ascontiguousarray(local_desc, np.float32))
            return [mutual_nearest_neighbours(query, torch.from_numpy(self.map.descriptors[lo:hi].astype(np.float32)),
                                              self.config.ratio_threshold) for lo, hi in bounds]
        if image_size is None:
            raise InputError(f"{self.config.matcher} needs the query image size")
        database = [MatchImage(self.map.keypoints[lo:hi], self.map.descriptors[lo:hi],
                               (int(self.map.db_image_sizes[j, 0]), int(self.map.db_image_sizes[j, 1])))
                    for j, (lo, hi) in zip(retrieved, bounds)]
        return self.matcher.match(MatchImage(keypoints, local_desc, image_size), database)

    @torch.no_grad()
    def match(self, keypoints: np.ndarray, local_desc: np.ndarray, global_desc: np.ndarray,
              timings: dict[str, float], image_size: tuple[int, int] | None = None) -> HierarchicalMatches:
        """2D-3D matches of a query through its retrieved images; ``image_size``: the query's (width, height),
        which the learned matchers need."""
        t0 = time.perf_counter()
        retrieved = self.retrieve(global_desc)
        t1 = time.perf_counter()
        rows, points, dists = [], [], []
        for j, pair in zip(retrieved, self._pair_matches(retrieved, keypoints, local_desc, image_size)):
            lo = self.map.offsets[j]
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
        matches = self.match(keypoints, local_desc, global_desc, timings, (camera.width, camera.height))
        # The same 2D keypoint may match 3D points through several database images, as in hloc; RANSAC sorts it out.
        return solve_pose(matches.p2d, self._points_xyz[matches.point_index], matches.distances, camera, self.config.pnp,
                          self.config.min_inliers,
                          lambda: self.fallback_pose(int(matches.retrieved[0])), timings, num_keypoints=len(keypoints))
