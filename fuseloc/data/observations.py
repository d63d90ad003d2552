"""Tie a scene's 2D observations to cached keypoints, image by image (shared by the fused map and training)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree

from fuseloc.data.feature_cache import FeatureCache
from fuseloc.data.scene import Scene
from fuseloc.errors import InputError

Association = Literal["auto", "index", "radius"]


@dataclass
class ImageObservations:
    """Observations of one database image that found their keypoint.

    Attributes:
        image_index: row of the image in the scene.
        descriptors: (K, D) float32 local descriptors of the associated keypoints.
        points: (K,) int64 scene point index of each observation.
    """

    image_index: int
    descriptors: np.ndarray
    points: np.ndarray


def resolve_association(scene: Scene, association: Association, feature_tag: str | None) -> Literal["index", "radius"]:
    """``auto`` means ``index`` when the scene was triangulated from the features tagged ``feature_tag``."""
    if association == "auto":
        return "index" if scene.keypoint_source and scene.keypoint_source == feature_tag else "radius"
    return association


def associate_by_radius(keypoints: np.ndarray, obs_xy: np.ndarray, radius: float) -> np.ndarray:
    """Index of the nearest keypoint within ``radius`` pixels of each observation, -1 if none."""
    if len(keypoints) == 0 or len(obs_xy) == 0:
        return np.full(len(obs_xy), -1, np.int64)
    dist, idx = cKDTree(keypoints).query(obs_xy, k=1, distance_upper_bound=radius)
    return np.where(np.isfinite(dist), idx, -1).astype(np.int64)


def associate_image(scene: Scene, image_index: int, obs: np.ndarray, keypoints: np.ndarray,
                    association: Literal["index", "radius"], radius: float, source: Path | str) -> np.ndarray:
    """Keypoint row (-1: none) of each of the observations ``obs`` of database image ``image_index``.

    Raises:
        InputError: (``index``) an observation names a keypoint beyond those cached in ``source``.
    """
    if association == "radius":
        return associate_by_radius(keypoints, scene.obs_xy[obs], radius)
    kp = scene.obs_keypoint[obs].astype(np.int64)
    if kp.max(initial=-1) >= len(keypoints):
        raise InputError(f"image {scene.image_names[image_index]!r}: observation keypoint index beyond the "
                         f"{len(keypoints)} cached keypoints (map made with other features?)", source)
    return kp


def iter_image_observations(
    scene: Scene,
    features: FeatureCache,
    association: Literal["index", "radius"],
    radius: float = 5.0,
    progress: str | None = None,
) -> Iterator[ImageObservations]:
    """Yield, per database image with observations, the descriptors of its observed keypoints.

    Args:
        association: ``index`` takes the observation's keypoint index (map triangulated from these very
            features), ``radius`` the nearest detected keypoint within ``radius`` pixels.
        progress: a progress-bar label, or None for no bar.
    """
    from tqdm import tqdm

    by_image = scene.observations_by_image()
    for i in tqdm(range(scene.num_images), desc=progress, disable=progress is None, leave=False):
        obs = by_image[i]
        if len(obs) == 0:
            continue
        local = features.local(scene.image_names[i])
        kp = associate_image(scene, i, obs, local.keypoints, association, radius, features.local_path)
        ok = kp >= 0
        yield ImageObservations(i, local.descriptors[kp[ok]].astype(np.float32), scene.obs_point[obs[ok]].astype(np.int64))
