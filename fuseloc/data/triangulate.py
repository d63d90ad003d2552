"""Turn posed database images without 3D points into a map: match overlapping pairs, triangulate (pycolmap).

The keypoints written to the COLMAP database are exactly those of our feature cache, in the same order, so
the resulting observations carry our keypoint indices and the fused map needs no radius association.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuseloc.data.feature_cache import FeatureCache
from fuseloc.data.scene import Scene
from fuseloc.errors import InputError
from fuseloc.types import LocalFeatures

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TriangulationConfig:
    """Pair selection, matching and verification for triangulating with known poses.

    Attributes:
        num_neighbors: pair each image with this many others, nearest by camera centre among those whose
            viewing directions differ by at most ``max_view_angle``.
        max_view_angle: degrees.
        ratio_threshold: Lowe ratio test threshold on descriptor distances (1 disables it).
        max_epipolar_error: pixels; a match must lie this close to the epipolar line given by the known poses.
        min_track_length: drop points seen in fewer images (2 keeps two-view tracks).
    """

    num_neighbors: int = 8
    max_view_angle: float = 60.0
    ratio_threshold: float = 0.85
    max_epipolar_error: float = 2.0
    min_track_length: int = 2


def select_pairs(scene: Scene, config: TriangulationConfig) -> list[tuple[int, int]]:
    """Pairs of overlapping images from the known poses (close centres, similar viewing directions)."""
    centers = scene.centers
    directions = scene.R_cam_from_world[:, 2, :]  # optical axis in world coordinates
    cos_max = np.cos(np.deg2rad(config.max_view_angle))
    pairs = set()
    for i in range(scene.num_images):
        dist = np.linalg.norm(centers - centers[i], axis=1)
        ok = (directions @ directions[i] >= cos_max)
        ok[i] = False
        candidates = np.flatnonzero(ok)
        for j in candidates[np.argsort(dist[candidates])][: config.num_neighbors]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def _normalized(features: LocalFeatures, camera) -> np.ndarray:  # noqa: ANN001
    import pycolmap

    cam = pycolmap.Camera(model=camera.model, width=camera.width, height=camera.height, params=list(camera.params))
    return np.asarray(cam.cam_from_img(features.keypoints.astype(np.float64)))


def match_pair(desc0: np.ndarray, desc1: np.ndarray, ratio_threshold: float) -> np.ndarray:
    """Mutual nearest neighbours with a ratio test. Returns (M, 2) index pairs."""
    if len(desc0) < 2 or len(desc1) < 2:
        return np.zeros((0, 2), np.int64)
    dist = np.sqrt(np.maximum((desc0**2).sum(1)[:, None] - 2 * desc0 @ desc1.T + (desc1**2).sum(1)[None], 0))
    nn01 = dist.argmin(1)
    nn10 = dist.argmin(0)
    two = np.partition(dist, 1, axis=1)[:, :2]
    keep = (nn10[nn01] == np.arange(len(desc0))) & (two[:, 0] <= ratio_threshold * two[:, 1])
    idx0 = np.flatnonzero(keep)
    return np.stack([idx0, nn01[idx0]], 1)


def _epipolar_errors(x0: np.ndarray, x1: np.ndarray, R: np.ndarray, t: np.ndarray, focal: float) -> np.ndarray:
    """Symmetric point-to-epipolar-line distance (pixels, approximated with ``focal``) for normalised points."""
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    E = tx @ R
    h0 = np.c_[x0, np.ones(len(x0))]
    h1 = np.c_[x1, np.ones(len(x1))]
    l1 = h0 @ E.T  # lines in image 1
    l0 = h1 @ E  # lines in image 0
    num = np.abs((h1 * l1).sum(1))
    d1 = num / np.maximum(np.linalg.norm(l1[:, :2], axis=1), 1e-12)
    d0 = num / np.maximum(np.linalg.norm(l0[:, :2], axis=1), 1e-12)
    return focal * np.maximum(d0, d1)


def triangulate_scene(
    scene: Scene,
    features: FeatureCache,
    config: TriangulationConfig = TriangulationConfig(),
    keypoint_source: str = "",
) -> Scene:
    """Triangulate 3D points for a posed scene from the local features in ``features``.

    Raises:
        InputError: when no point can be triangulated (no overlapping pairs, or no verified matches).
    """
    import pycolmap

    pycolmap.logging.minloglevel = 2
    if scene.num_images < 2:
        raise InputError("cannot triangulate a map from fewer than two posed images")
    pairs = select_pairs(scene, config)
    local = [features.local(name) for name in scene.image_names]
    normalized = [_normalized(f, c) for f, c in zip(local, scene.image_cameras)]
    workdir = Path(tempfile.mkdtemp(prefix="fuseloc-triangulate-"))
    try:
        db_path = workdir / "database.db"
        db = pycolmap.Database.open(str(db_path))
        cameras = []
        for i, cam in enumerate(scene.image_cameras):
            colmap_cam = pycolmap.Camera(camera_id=i + 1, model=cam.model, width=cam.width, height=cam.height, params=list(cam.params))
            cameras.append(colmap_cam)
            db.write_camera(colmap_cam, use_camera_id=True)
            rig = pycolmap.Rig(rig_id=i + 1)
            rig.add_ref_sensor(colmap_cam.sensor_id)
            db.write_rig(rig, use_rig_id=True)
            image = pycolmap.Image(name=scene.image_names[i], camera_id=i + 1, image_id=i + 1)
            db.write_image(image, use_image_id=True)
            frame = pycolmap.Frame(frame_id=i + 1, rig_id=i + 1)
            frame.add_data_id(image.data_id)
            db.write_frame(frame, use_frame_id=True)
            db.write_keypoints(i + 1, local[i].keypoints.astype(np.float32))
        num_verified = 0
        for i, j in pairs:
            matches = match_pair(local[i].descriptors, local[j].descriptors, config.ratio_threshold)
            if len(matches) == 0:
                continue
            R_rel = scene.R_cam_from_world[j] @ scene.R_cam_from_world[i].T
            t_rel = scene.t_cam_from_world[j] - R_rel @ scene.t_cam_from_world[i]
            focal = 0.5 * (scene.image_cameras[i].focal + scene.image_cameras[j].focal)
            err = _epipolar_errors(normalized[i][matches[:, 0]], normalized[j][matches[:, 1]], R_rel, t_rel, focal)
            inliers = matches[err < config.max_epipolar_error].astype(np.uint32)
            if len(inliers) < 5:
                continue
            db.write_matches(i + 1, j + 1, inliers)
            geometry = pycolmap.TwoViewGeometry()
            geometry.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
            geometry.inlier_matches = inliers
            db.write_two_view_geometry(i + 1, j + 1, geometry)
            num_verified += len(inliers)
        db.close()
        logger.info("triangulation: %d pairs, %d verified matches", len(pairs), num_verified)
        if num_verified == 0:
            raise InputError("no verified matches between database images: cannot triangulate a map "
                             "(do the images overlap? are the poses right?)")
        rec = pycolmap.Reconstruction()
        for i, cam in enumerate(cameras):
            rec.add_camera_with_trivial_rig(cam)
            image = pycolmap.Image(name=scene.image_names[i], keypoints=local[i].keypoints.astype(np.float64),
                                   camera_id=i + 1, image_id=i + 1)
            rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(scene.R_cam_from_world[i]),
                                                                     scene.t_cam_from_world[i]))
        options = pycolmap.IncrementalPipelineOptions()
        options.triangulation.ignore_two_view_tracks = config.min_track_length <= 2
        options.extract_colors = False
        out = workdir / "model"
        out.mkdir()
        (workdir / "images").mkdir()
        rec = pycolmap.triangulate_points(rec, str(db_path), str(workdir / "images"), str(out), options=options)
        if rec.num_points3D() == 0:
            raise InputError("triangulation produced no 3D points (too few verified matches between database images)")
        result = Scene.from_reconstruction(rec, scene.image_root)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # Reconstruction sorts by image id, which we assigned in scene order, so names line up.
    if result.image_names != scene.image_names:
        raise RuntimeError("triangulation reordered the images")
    result.image_cameras = scene.image_cameras
    result.keypoint_source = keypoint_source
    logger.info("triangulated %d points, %d observations", result.num_points, len(result.obs_point))
    return result
