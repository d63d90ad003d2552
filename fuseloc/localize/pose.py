"""Absolute pose from 2D-3D matches with poselib's LO-RANSAC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fuseloc.types import Camera, Pose


@dataclass(frozen=True)
class PnPConfig:
    """RANSAC PnP settings.

    Attributes:
        max_reproj_error: inlier threshold in pixels.
        min_iterations, max_iterations: RANSAC iteration bounds.
        seed: RANSAC seed (same inputs and seed give the same pose).
    """

    max_reproj_error: float = 12.0
    min_iterations: int = 100
    max_iterations: int = 10_000
    seed: int = 0


@dataclass
class PnPResult:
    pose: Pose
    inliers: np.ndarray  # (M,) bool
    num_inliers: int


def estimate_absolute_pose(p2d: np.ndarray, p3d: np.ndarray, camera: Camera, config: PnPConfig = PnPConfig()) -> PnPResult | None:
    """Pose from (M, 2) pixel points (COLMAP convention) and (M, 3) world points; None with fewer than 4 matches."""
    import poselib

    if len(p2d) < 4:
        return None
    ransac = {"max_reproj_error": config.max_reproj_error, "min_iterations": config.min_iterations,
              "max_iterations": config.max_iterations, "seed": config.seed}
    # poselib's camera models take pixel coordinates with the same principal point as COLMAP.
    pose, info = poselib.estimate_absolute_pose(
        np.ascontiguousarray(p2d, np.float64), np.ascontiguousarray(p3d, np.float64), camera.to_poselib(), ransac, {}
    )
    inliers = np.asarray(info["inliers"], bool)
    return PnPResult(Pose.from_qt(pose.q, pose.t), inliers, int(inliers.sum()))
