"""Cross-condition training samples: database images re-rendered under other conditions, and real queries with
public ground truth, both tied to the map's 3D points.

Every training pair of database observations is two images under the same light; these sources add what the
fusion must learn to survive (night, dusk, haze, another season):

- :func:`render_database` writes each database image under each :class:`~fuseloc.data.conditions.ConditionTransform`
  (photometric, optionally with a mild known homography) into the cache, deterministically by seed. Features are
  extracted on them like on any image (same h5 caches, keyed by name and file stamp), and
  :func:`rendered_observations` ties each rendered image's keypoints to its source's observations through the
  homography, within the association radius.
- :func:`projected_observations` ties the keypoints of real queries with ground-truth poses (a reader's
  ``training_queries``; never evaluation queries) to map points by projection
  (:func:`~fuseloc.data.projection.associate_by_projection`).

Both yield :class:`ConditionObservations`, which :func:`fuseloc.data.correspondences.add_condition_observations`
appends to the training correspondences.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fuseloc.cachekeys import file_stamp, key_of, keyed_name, read_keyed, stamp_matches
from fuseloc.data.conditions import ConditionTransform, check_conditions, render_condition, warp_points
from fuseloc.data.extract import read_image
from fuseloc.data.feature_cache import FeatureCache
from fuseloc.data.observations import associate_by_radius
from fuseloc.data.projection import associate_by_projection
from fuseloc.data.scene import QuerySet, Scene
from fuseloc.errors import InputError
from fuseloc.io import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

#: Bump when rendering changes so that images rendered by older code are not reused.
RENDER_VERSION = 1  # this module's; the renderer's own version is in ConditionTransform.config()

#: condition name of the map's own (database) observations in the training correspondences
DATABASE_CONDITION = "database"

#: condition name of unmodified copies of held-out database images in a validation set
ORIGINAL_CONDITION = "original"


@dataclass
class RenderedImages:
    """Database images re-rendered under conditions.

    Attributes:
        queries: the rendered images as a query set: names ``<folder>/<condition>/<database name>`` relative to
            ``queries.image_root`` (the cache directory, so that they never share a name with a dataset image),
            the source's camera and pose (exact only without a warp), the condition names as conditions.
        source: (R,) row in the scene of each rendered image's source.
        homography: (R, 3, 3) source pixel -> rendered pixel (COLMAP convention), identity without a warp.
    """

    queries: QuerySet
    source: np.ndarray
    homography: np.ndarray

    def __len__(self) -> int:
        return len(self.queries)


@dataclass
class ConditionObservations:
    """One extra training image: its global descriptor and its keypoints tied to map points.

    Attributes:
        name: image name in the feature cache.
        condition: its condition (a transform's name, or a real query's condition).
        global_desc: (G,) float32 global descriptor.
        descriptors: (K, D) float32 local descriptors of the tied keypoints.
        points: (K,) int64 scene point of each.
        source: scene row of the database image it shows the same place as (a rendering's source); -1 when
            none is known (a real query).
    """

    name: str
    condition: str
    global_desc: np.ndarray
    descriptors: np.ndarray
    points: np.ndarray
    source: int = -1


def _image_seed(seed: int, condition_index: int, name: str) -> list[int]:
    return [seed, condition_index, zlib.crc32(name.encode())]


def render_database(
    scene: Scene,
    rows: Sequence[int] | np.ndarray,
    transforms: Sequence[ConditionTransform],
    seed: int,
    cache_dir: Path,
    keep_original: bool = False,
) -> RenderedImages:
    """Render database images ``rows`` of ``scene`` under every transform into ``cache_dir`` (reused when done).

    The output folder is named by the transforms, the seed and :data:`RENDER_VERSION`; a manifest records each
    rendered file's source stamp and homography, so an image is rendered again only when its source changed (or
    the file is gone). Files are written atomically.

    Args:
        keep_original: also list an unmodified copy of each image (condition :data:`ORIGINAL_CONDITION`), so that
            a validation set of held-out images has the original beside its re-renderings under one image root.
    """
    transforms = check_conditions(transforms)
    names = [t.name for t in transforms]
    if DATABASE_CONDITION in names or ORIGINAL_CONDITION in names:
        raise InputError(f"condition names must not be {DATABASE_CONDITION!r} or {ORIGINAL_CONDITION!r}: {names}")
    if scene.image_root is None:
        raise InputError("the scene has no image root; cannot re-render its images")
    folder = keyed_name("conditions", key_of({"transforms": [t.config() for t in transforms], "seed": seed,
                                               "version": RENDER_VERSION}))
    out_root = Path(cache_dir) / folder
    manifest_path = out_root / "manifest.json"
    manifest = _read_manifest(manifest_path)
    jobs: list[tuple[int, int, ConditionTransform | None]] = []
    if keep_original:
        jobs += [(-1, int(r), None) for r in rows]
    jobs += [(k, int(r), t) for k, t in enumerate(transforms) for r in rows]
    stamps: dict[int, str] = {}
    for row in dict.fromkeys(r for _, r, _ in jobs):
        source_path = Path(scene.image_root) / scene.image_names[row]
        if not source_path.is_file():
            raise InputError("database image not found", source_path)
        stamps[row] = file_stamp(source_path)

    def relative(row: int, transform: ConditionTransform | None) -> str:
        return f"{ORIGINAL_CONDITION if transform is None else transform.name}/{scene.image_names[row]}"

    # What is missing or stale, by source image: each source is read once for all its renderings.
    stale: dict[int, list[tuple[int, ConditionTransform | None]]] = {}
    for k, row, transform in jobs:
        entry = manifest.get(relative(row, transform))
        if entry is None or not stamp_matches(entry.get("source"), stamps[row]) or \
                not (out_root / relative(row, transform)).is_file():
            stale.setdefault(row, []).append((k, transform))
    rendered = 0
    for row, items in stale.items():
        db_name = scene.image_names[row]
        image = read_image(Path(scene.image_root) / db_name)
        for k, transform in items:
            out, H = (image, np.eye(3)) if transform is None else \
                render_condition(image, transform, _image_seed(seed, k, db_name))
            target = out_root / relative(row, transform)
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target, suffix=".png") as tmp:
                if not cv2.imwrite(str(tmp), np.ascontiguousarray(out[:, :, ::-1])):
                    raise OSError(f"could not write {target}")
            manifest[relative(row, transform)] = {"source": stamps[row], "homography": np.asarray(H, np.float64).tolist()}
            rendered += 1
            if rendered % 100 == 0:
                write_json_atomic(manifest_path, manifest)
                logger.info("re-rendered %d database images under other conditions", rendered)
    if rendered:
        write_json_atomic(manifest_path, manifest)
        logger.info("re-rendered %d images under %s into %s", rendered, ", ".join(names), out_root)
    out_names = [f"{folder}/{relative(row, t)}" for _, row, t in jobs]
    sources = [row for _, row, _ in jobs]
    homographies = [np.asarray(manifest[relative(row, t)]["homography"], np.float64) for _, row, t in jobs]
    conditions = [ORIGINAL_CONDITION if t is None else t.name for _, _, t in jobs]
    queries = QuerySet(out_names, [scene.image_cameras[r] for r in sources], [scene.pose(r) for r in sources],
                       conditions, Path(cache_dir))
    return RenderedImages(queries, np.asarray(sources, np.int64), np.stack(homographies) if homographies else
                          np.zeros((0, 3, 3)))


def _read_manifest(path: Path) -> dict:
    manifest = read_keyed(path, lambda p: json.loads(p.read_text()), (OSError, ValueError), "rendering manifest",
                          logger)
    return manifest if isinstance(manifest, dict) else {}


def rendered_observations(scene: Scene, rendered: RenderedImages, features: FeatureCache,
                          radius: float = 3.0) -> Iterator[ConditionObservations]:
    """The rendered images' keypoints tied to their sources' observations: each observation, mapped through the
    image's homography, takes the nearest keypoint detected on the rendering within ``radius`` pixels."""
    by_image = scene.observations_by_image()
    for name, condition, row, H in zip(rendered.queries.names, rendered.queries.conditions, rendered.source,
                                       rendered.homography, strict=True):
        obs = by_image[row]
        if len(obs) == 0:
            continue
        local = features.local(name)
        kp = associate_by_radius(local.keypoints, warp_points(H, scene.obs_xy[obs].astype(np.float64)), radius)
        ok = kp >= 0
        yield ConditionObservations(name, condition, features.global_descriptor(name).astype(np.float32),
                                    local.descriptors[kp[ok]].astype(np.float32),
                                    scene.obs_point[obs[ok]].astype(np.int64), int(row))


def projected_observations(scene: Scene, queries: QuerySet, features: FeatureCache,
                           radius: float = 3.0) -> Iterator[ConditionObservations]:
    """Real queries with ground-truth poses, their keypoints tied to map points by projection."""
    if queries.gt_poses is None:
        return
    for name, camera, pose, condition in zip(queries.names, queries.cameras, queries.gt_poses, queries.conditions,
                                             strict=True):
        if pose is None:
            continue
        local = features.local(name)
        tied = associate_by_projection(scene, camera, pose, local.keypoints, radius=radius)
        yield ConditionObservations(name, condition, features.global_descriptor(name).astype(np.float32),
                                    local.descriptors[tied.keypoint_index].astype(np.float32),
                                    tied.point_index.astype(np.int64))
