"""Tie a posed image's keypoints to map points by projection with its ground-truth pose.

For real queries with public ground truth that are not test queries (RobotCar's training queries, CMU's
released poses): their keypoints become training observations of the map points they see. A point is a
candidate when a database image near the query, looking the same way, observes it, and it projects in front of
the query camera and inside its image; each projected point takes the nearest detected keypoint within a radius,
and a keypoint claimed by several points keeps the one nearest to the camera (the others are behind it).

Conventions as in :mod:`fuseloc.types`: world-to-camera poses, COLMAP pixels (top-left pixel centre at (0.5, 0.5)).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from fuseloc.data.scene import Scene
from fuseloc.errors import InputError
from fuseloc.types import Camera, Pose, project

logger = logging.getLogger(__name__)

#: camera models without distortion: their projection cannot fold a point from outside the view into the image
_UNDISTORTED = ("SIMPLE_PINHOLE", "PINHOLE")


@dataclass
class ProjectedAssociation:
    """Keypoints of one posed image tied to scene points.

    Attributes:
        keypoint_index: (K,) int64 rows of the image's keypoints, increasing, each at most once.
        point_index: (K,) int64 scene point indices, each at most once.
    """

    keypoint_index: np.ndarray
    point_index: np.ndarray

    def __len__(self) -> int:
        return len(self.keypoint_index)


def _empty() -> ProjectedAssociation:
    return ProjectedAssociation(np.zeros(0, np.int64), np.zeros(0, np.int64))


def _check_pose(pose: Pose) -> None:
    if not isinstance(pose, Pose):
        raise InputError(f"expected a Pose, got {type(pose).__name__}")
    if not (np.all(np.isfinite(pose.R)) and np.all(np.isfinite(pose.t))):
        raise InputError("the pose is not finite")


def _viewing_direction(R: np.ndarray) -> np.ndarray:
    """World direction of the optical axis (camera +z) of world-to-camera rotations R (..., 3, 3)."""
    return R[..., 2, :]


def project_in_view(camera: Camera, pose: Pose, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 2) pixels, (N,) depths and the (N,) mask of points in front of the camera whose pixel lies inside the
    image ([0, W) x [0, H), COLMAP convention). With a distortion model, a point counts only when its pixel
    undistorts back to its own ray: a polynomial folds some points far outside the view into the image."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    uv, front = project(camera, pose, points)
    p_cam = pose.transform(points)
    depth = p_cam[:, 2]
    size = np.array([camera.width, camera.height], np.float64)
    with np.errstate(invalid="ignore"):
        inside = front & np.all(np.isfinite(uv), axis=1) & np.all((uv >= 0) & (uv < size), axis=1)
    if camera.model not in _UNDISTORTED and inside.any():
        import pycolmap

        cam = pycolmap.Camera(model=camera.model, width=camera.width, height=camera.height,
                              params=list(camera.params))
        rows = np.flatnonzero(inside)
        ray = p_cam[rows, :2] / p_cam[rows, 2:]
        back = np.asarray(cam.cam_from_img(uv[rows]), np.float64)
        consistent = np.all(np.isfinite(back), axis=1) & (
            np.linalg.norm(back - ray, axis=1) <= 1e-3 * np.maximum(1.0, np.linalg.norm(ray, axis=1)))
        inside[rows[~consistent]] = False
    return uv, depth, inside


def nearby_images(scene: Scene, pose: Pose, max_images: int = 10, max_distance: float | None = None,
                  max_angle_deg: float = 60.0) -> np.ndarray:
    """Indices of the database images (at most ``max_images``, nearest first) whose camera centre is within
    ``max_distance`` metres (when given) of the pose's and whose optical axis is within ``max_angle_deg``
    of its."""
    _check_pose(pose)
    if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 1:
        raise InputError(f"max_images must be a positive integer, got {max_images!r}")
    if max_distance is not None and not (math.isfinite(max_distance) and max_distance > 0):
        raise InputError(f"max_distance must be a positive number of metres or None, got {max_distance!r}")
    if not (math.isfinite(max_angle_deg) and 0 < max_angle_deg <= 180):
        raise InputError(f"max_angle_deg must be in (0, 180], got {max_angle_deg!r}")
    if scene.num_images == 0:
        return np.zeros(0, np.int64)
    centres = scene.centers
    distance = np.linalg.norm(centres - pose.center, axis=1)
    cos_angle = _viewing_direction(scene.R_cam_from_world) @ _viewing_direction(pose.R)
    ok = cos_angle >= math.cos(math.radians(max_angle_deg)) - 1e-12
    if max_distance is not None:
        ok &= distance <= max_distance
    rows = np.flatnonzero(ok & np.isfinite(distance))
    rows = rows[np.lexsort((rows, distance[rows]))]
    return rows[:max_images].astype(np.int64)


def visible_points(scene: Scene, camera: Camera, pose: Pose, max_images: int = 10, max_distance: float | None = None,
                   max_angle_deg: float = 60.0) -> np.ndarray:
    """Indices of scene points plausibly visible from ``pose``: points observed by the database images nearest to
    the camera centre (at most ``max_images``, within ``max_distance`` metres when given) whose viewing direction
    is within ``max_angle_deg`` of the query's; then kept only when they project in front of the camera and
    inside the image. Sorted, int64.
    """
    points = _observed_nearby(scene, pose, max_images, max_distance, max_angle_deg)
    if len(points) == 0:
        return points
    _, _, inside = project_in_view(camera, pose, scene.points_xyz[points])
    return points[inside]


def _observed_nearby(scene: Scene, pose: Pose, max_images: int, max_distance: float | None,
                     max_angle_deg: float) -> np.ndarray:
    """Sorted indices of the points observed by :func:`nearby_images` (not yet checked against the view)."""
    images = nearby_images(scene, pose, max_images, max_distance, max_angle_deg)
    if len(images) == 0 or scene.num_points == 0:
        return np.zeros(0, np.int64)
    chosen = np.zeros(scene.num_images, bool)
    chosen[images] = True
    return np.unique(scene.obs_point[chosen[scene.obs_image]]).astype(np.int64)


def associate_by_projection(scene: Scene, camera: Camera, pose: Pose, keypoints: np.ndarray, radius: float = 3.0,
                            candidates: np.ndarray | None = None, *, max_images: int = 10,
                            max_distance: float | None = None, max_angle_deg: float = 60.0) -> ProjectedAssociation:
    """Project candidate points (default: :func:`visible_points`) with ``pose``; each projected point takes the
    nearest detected keypoint within ``radius`` px; a keypoint claimed by several points keeps the point nearest
    to the camera (occlusion: the front one; equal depths: the nearer projection, then the lower index).

    Args:
        keypoints: (N, 2) keypoint pixels of the image, COLMAP convention, at ``camera``'s resolution.
        candidates: scene point indices to consider; they are projected and checked like the default ones
            (in front, inside the image).
        max_images, max_distance, max_angle_deg: :func:`visible_points`' settings when ``candidates`` is None.

    Returns:
        The association, ordered by keypoint row.
    """
    _check_pose(pose)
    if not (math.isfinite(radius) and radius > 0):
        raise InputError(f"the association radius must be a positive number of pixels, got {radius!r}")
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.ndim != 2 or keypoints.shape[1] != 2:
        raise InputError(f"keypoints must be an (N, 2) array, got shape {keypoints.shape}")
    if candidates is None:
        # visible_points' candidates, projected (and checked against the view) once, below
        candidates = _observed_nearby(scene, pose, max_images, max_distance, max_angle_deg)
    else:
        candidates = np.unique(np.asarray(candidates, np.int64).reshape(-1))
        if len(candidates) and (candidates[0] < 0 or candidates[-1] >= scene.num_points):
            raise InputError(f"candidate point indices must lie in [0, {scene.num_points}), got "
                             f"{candidates[0]}..{candidates[-1]}")
    finite = np.all(np.isfinite(keypoints), axis=1)
    if len(candidates) == 0 or not finite.any():
        return _empty()
    uv, depth, inside = project_in_view(camera, pose, scene.points_xyz[candidates])
    points, uv, depth = candidates[inside], uv[inside], depth[inside]
    if len(points) == 0:
        return _empty()
    rows = np.flatnonzero(finite)
    dist, nearest = cKDTree(keypoints[rows]).query(uv, k=1, distance_upper_bound=radius)
    hit = np.isfinite(dist)
    points, depth, dist, kp = points[hit], depth[hit], dist[hit], rows[nearest[hit]]
    # Per keypoint, the front point wins: sort by keypoint, then depth, then pixel distance, then point index.
    order = np.lexsort((points, dist, depth, kp))
    kp, points = kp[order], points[order]
    first = np.ones(len(kp), bool)
    first[1:] = kp[1:] != kp[:-1]
    logger.debug("projection association: %d candidates in view, %d within %.3g px, %d keypoints tied",
                 int(inside.sum()), int(hit.sum()), radius, int(first.sum()))
    return ProjectedAssociation(kp[first].astype(np.int64), points[first].astype(np.int64))
