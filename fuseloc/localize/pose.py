"""Absolute pose from 2D-3D matches with poselib's LO-RANSAC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fuseloc.errors import InputError
from fuseloc.types import Camera, Pose


@dataclass(frozen=True)
class PnPConfig:
    """RANSAC PnP settings.

    Attributes:
        max_reproj_error: inlier threshold in pixels.
        min_iterations, max_iterations: RANSAC iteration bounds.
        seed: RANSAC seed (same inputs and seed give the same pose).
        progressive_sampling: PROSAC: draw minimal samples from the best-quality matches first (needs the
            ``quality`` of each match, e.g. minus its descriptor distance); the stopping rule is unchanged.
    """

    max_reproj_error: float = 12.0
    min_iterations: int = 100
    max_iterations: int = 10_000
    seed: int = 0
    progressive_sampling: bool = False

    def __post_init__(self) -> None:
        # checked when the configuration is made, before any feature or map is built
        if not 0.0 < self.max_reproj_error < float("inf"):
            raise InputError(f"pnp.max_reproj_error must be a positive number of pixels, got {self.max_reproj_error}")
        if not 1 <= self.min_iterations <= self.max_iterations:
            raise InputError(f"pnp iterations need 1 <= min_iterations <= max_iterations, got {self.min_iterations} "
                             f"and {self.max_iterations}")


#: fewest inliers that can mark a pose found: P3P fits any 3 matches exactly, so 3 inliers prove nothing
MIN_INLIERS_FLOOR = 4


def check_query_settings(min_inliers: int, ratio_threshold: float) -> None:
    """One-line InputErrors for query settings that cannot be right (shared by both localizers' configs)."""
    if min_inliers < MIN_INLIERS_FLOOR:
        raise InputError(f"min_inliers must be at least {MIN_INLIERS_FLOOR} (3 matches always fit a pose), got {min_inliers}")
    if not 0.0 < ratio_threshold <= 1.0:
        raise InputError(f"ratio_threshold must be in (0, 1] (1: no ratio test), got {ratio_threshold}")


@dataclass
class PnPResult:
    pose: Pose
    inliers: np.ndarray  # (M,) bool
    num_inliers: int


def estimate_absolute_pose(
    p2d: np.ndarray, p3d: np.ndarray, camera: Camera, config: PnPConfig = PnPConfig(), quality: np.ndarray | None = None
) -> PnPResult | None:
    """Pose from (M, 2) pixel points (COLMAP convention) and (M, 3) world points; None with fewer than 4 matches.

    ``quality`` (M,), higher is better, orders the matches for progressive sampling; without it (or with
    ``progressive_sampling`` off) the matches are sampled uniformly.
    """
    import poselib

    if len(p2d) < 4:
        return None
    progressive = config.progressive_sampling and quality is not None
    order = np.argsort(-np.asarray(quality), kind="stable") if progressive else None
    if order is not None:
        p2d, p3d = p2d[order], p3d[order]
    ransac = {"max_reproj_error": config.max_reproj_error, "min_iterations": config.min_iterations,
              "max_iterations": config.max_iterations, "seed": config.seed, "progressive_sampling": progressive}
    # poselib's camera models take pixel coordinates with the same principal point as COLMAP.
    pose, info = poselib.estimate_absolute_pose(
        np.ascontiguousarray(p2d, np.float64), np.ascontiguousarray(p3d, np.float64), camera.to_poselib(), ransac, {}
    )
    # Degenerate samples (e.g. all matches on a few collinear map points) can make poselib return a NaN
    # pose; that is a failed query, not bad input.
    if not (np.all(np.isfinite(pose.q)) and np.all(np.isfinite(pose.t))):
        return None
    inliers = np.asarray(info["inliers"], bool)
    if order is not None:
        unsorted = np.empty_like(inliers)
        unsorted[order] = inliers
        inliers = unsorted
    return PnPResult(Pose.from_qt(pose.q, pose.t), inliers, int(inliers.sum()))
