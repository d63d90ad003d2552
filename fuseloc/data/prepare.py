"""Cached data preparation shared by evaluate.py and training: features, VLAD, triangulated reference map.

Every file lands in ``cache_dir`` under a name carrying the configuration that produced it, so evaluation and
training (``fuseloc.data.datamodule``) reuse each other's caches, and a changed configuration never reuses a
stale one. It lives in the data layer so the training DataModule can use it without importing ``eval``.
"""

from __future__ import annotations

import copy
import logging
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fuseloc.cachekeys import image_stamps, key_of, keyed_name, read_keyed
from fuseloc.data.extract import check_image_size, extract_global_features, extract_local_features
from fuseloc.data.extractors.base import GlobalExtractor, LocalExtractor
from fuseloc.data.feature_cache import FeatureCache, check_feature_file
from fuseloc.data.readers.base import LocalizationData
from fuseloc.data.scene import Scene
from fuseloc.data.triangulate import TriangulationConfig, triangulate_scene
from fuseloc.errors import InputError
from fuseloc.types import LocalFeatures

logger = logging.getLogger(__name__)


@dataclass
class PreparedFeatures:
    """Feature caches for database and query images."""

    cache: FeatureCache
    local_tag: str
    global_tag: str
    #: key of the database images' stamps (sizes and modification times): what triangulation and vocabularies learn from
    database_key: str = ""


def prepare_features(
    data: LocalizationData,
    local: LocalExtractor,
    global_extractor: GlobalExtractor,
    cache_dir: Path,
    progress: bool = True,
    local_path: Path | None = None,
    global_path: Path | None = None,
) -> PreparedFeatures:
    """Extract (or reuse) local and global features for all database and query images.

    Args:
        data: the dataset; its scene's image names are the database (what a trained global extractor such
            as VLAD learns from).
        local: local extractor (ignored when ``local_path`` is given).
        global_extractor: any :class:`GlobalExtractor` (ignored when ``global_path`` is given).
        cache_dir: where extracted files go.
        progress: show progress bars.
        local_path: an existing local feature file (hloc's ``feats-*.h5`` or ours) to use instead of extracting.
        global_path: an existing global feature file (hloc's ``global-feats-*.h5`` or ours).
    """
    t0 = time.perf_counter()
    names = list(dict.fromkeys([*data.scene.image_names, *data.queries.names]))
    needs_images = local_path is None or (global_path is None and global_extractor.uses_image)
    if needs_images:
        if data.scene.image_root is None:
            raise InputError("the scene has no image root; readers must set it", data.root)
    # Queries under another root (e.g. a reader's validation queries rendered elsewhere) get their own
    # extraction pass; the caches are keyed by name, so their names must not be database names.
    query_root = data.queries.image_root
    separate = needs_images and query_root is not None and Path(query_root) != Path(data.scene.image_root)
    if separate and set(data.queries.names) & set(data.scene.image_names):
        raise InputError("queries under another image root must not share names with database images", data.root)
    if needs_images and query_root is None and len(data.queries):
        raise InputError("the queries have no image root; readers must set it", data.root)
    passes = ([(data.scene.image_root, list(data.scene.image_names)), (query_root, list(data.queries.names))]
              if separate else [(data.scene.image_root, names)])
    database_key = ""
    if needs_images:
        root = Path(data.scene.image_root)
        database_key = key_of(list(image_stamps(root, data.scene.image_names).items()))
    if local_path is not None:
        local_tag = check_feature_file(local_path, names, "local")
        local_path = Path(local_path)
    else:
        local_tag = local.tag()
        for image_root, part in passes:
            local_path = extract_local_features(local, image_root, part, cache_dir / f"feats-{local_tag}.h5",
                                                progress=progress)
    if global_path is not None:
        global_tag = check_feature_file(global_path, names, "global")
        global_path = Path(global_path)
    else:
        global_tag = global_extractor.tag()
        if global_extractor.uses_local_features:
            global_tag += f"-{local_tag}"
        if global_extractor.needs_fit or global_extractor.uses_local_features:
            # Every setting of the vocabulary (seed, sample size...) and its training images key the file, so a
            # changed setting gets its own cache instead of a refusal (or, worse, a stale vocabulary).
            global_tag += f"-{key_of({'config': global_extractor.config(), 'train': sorted(data.scene.image_names), 'content': database_key})}"
        for image_root, part in passes:
            global_path = extract_global_features(global_extractor, part, cache_dir / f"global-feats-{global_tag}.h5",
                                                  image_root=image_root, local_path=local_path,
                                                  train_names=data.scene.image_names, progress=progress)
    logger.info("features ready in %.1f s (%s, %s)", time.perf_counter() - t0, local_path.name, global_path.name)
    cache = FeatureCache(local_path, global_path)
    try:
        check_image_sizes(data, cache)
    except InputError:
        cache.close()
        raise
    return PreparedFeatures(cache, local_tag, global_tag, database_key)


def check_image_sizes(data: LocalizationData, cache: FeatureCache) -> None:
    """Every database and query image's size, as its local features record it, is its camera's
    (:func:`~fuseloc.data.extract.check_image_size`); images whose features record no size (some hloc files)
    are not checked."""
    sets = [(data.scene.image_names, data.scene.image_cameras, data.scene.image_root),
            (data.queries.names, data.queries.cameras, data.queries.image_root or data.scene.image_root)]
    for names, cameras, root in sets:
        for name, camera in zip(names, cameras, strict=True):
            size = cache.image_size(name)
            if size is not None:
                check_image_size(name if root is None else Path(root) / name, size, camera)


#: random local descriptors a local-feature aggregator is fitted on and run over to measure its output size
_PROBE_DESCRIPTORS = 4096


def global_descriptor_dim(extractor: GlobalExtractor, local_dim: int) -> int:
    """G, the size of the descriptors ``extractor`` writes, known before any image is described.

    Network extractors (NetVLAD, MegaLoc, SALAD...) declare it as ``dim``. An aggregator of local features
    whose size follows from them (VLAD: clusters x D) declares none; a copy of it is fitted on and run over
    random ``local_dim``-D descriptors instead, so no formula of any one aggregator lives here. The real
    caches are checked against this value once they exist.
    """
    declared = getattr(extractor, "dim", None)
    if declared is not None:
        return int(declared)
    if not extractor.uses_local_features:
        raise InputError(f"global extractor {type(extractor).__name__} ({extractor.tag()}) declares no descriptor "
                         "dimension; give it a `dim` property")
    probe = copy.deepcopy(extractor)
    sample = np.random.default_rng(0).standard_normal((_PROBE_DESCRIPTORS, local_dim)).astype(np.float32)
    if probe.needs_fit:
        probe.fit(sample)
    local = LocalFeatures(np.zeros((len(sample), 2), np.float32), sample, np.ones(len(sample), np.float32), (1, 1))
    return int(np.asarray(probe.describe(None, local)).size)


def prepare_scene(
    data: LocalizationData, features: PreparedFeatures, triangulation: TriangulationConfig, cache_dir: Path
) -> Scene:
    """The reference scene with 3D points: as read, or triangulated from the posed images (cached)."""
    scene = data.scene
    if scene.num_points > 0:
        return scene
    key = key_of({"triangulation": asdict(triangulation), "features": features.local_tag,
                  "images": scene.image_names, "poses": scene.t_cam_from_world.round(6),
                  # rotations and intrinsics shape the triangulation as much as the centres do
                  "rotations": scene.R_cam_from_world.round(9),
                  "cameras": [c.to_tokens() for c in scene.image_cameras],
                  "content": features.database_key})
    path = cache_dir / keyed_name(f"sfm-{features.local_tag}", key, ".npz")
    cached = read_keyed(path, lambda p: Scene.load(p, scene.image_root),
                        (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile), "triangulated map", logger)
    if cached is not None:
        logger.info("loaded triangulated map %s", path)
        return cached
    t0 = time.perf_counter()
    logger.info("the model has no 3D points: triangulating %d posed images with %s", scene.num_images, features.local_tag)
    triangulated = triangulate_scene(scene, features.cache, triangulation, keypoint_source=features.local_tag)
    triangulated.save(path)
    logger.info("triangulated %d points in %.1f s", triangulated.num_points, time.perf_counter() - t0)
    return triangulated
