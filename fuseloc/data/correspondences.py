"""2D-3D training samples: every database observation with its local descriptor, labelled by its 3D point.

A training batch holds P points with up to M observations each. Half of the points (by default) are *hard
confusers*: points whose mean local descriptor is among the nearest of another sampled point's, yet which lie
far from it in 3D. Those are exactly the pairs local-only matching confuses and the global context must
separate; uniform sampling would almost never put both in one batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fuseloc.data.cross_condition import DATABASE_CONDITION, ConditionObservations
from fuseloc.data.feature_cache import FeatureCache
from fuseloc.data.observations import ImageObservations, iter_image_observations, resolve_association
from fuseloc.data.scene import Scene
from fuseloc.errors import InputError

logger = logging.getLogger(__name__)

#: Keys of a training batch, with shapes (B observations, U distinct images, D local dim, G global dim).
BATCH_KEYS = {
    "local": "[B x D] float32 local descriptors",
    "global": "[U x G] float32 global descriptors of the batch's images",
    "global_index": "[B] int64 row of ``global`` of each observation's image",
    "labels": "[B] int64 3D point index (the metric-learning label)",
    "is_confuser": "[B] bool, the observation's point was drawn as a confuser of another point",
}


@dataclass
class Correspondences:
    """Observations tied to a cached keypoint and labelled by 3D point: the map's database observations first,
    then (optionally) cross-condition ones (:mod:`fuseloc.data.cross_condition`).

    Attributes:
        local: (M, D) float32 local descriptor of each observation.
        obs_point: (M,) int64 3D point index (into ``points_xyz``) of each observation.
        obs_image: (M,) int64 image index (into ``global_desc`` and ``image_names``) of each observation.
        global_desc: (N, G) float32 global descriptor of each image.
        points_xyz: (P, 3) float64 point positions in metres.
        image_names: N image names; the first ``num_map_images`` are the scene's database images, in scene order.
        image_condition: (N,) int64 index into ``conditions`` of each image; None: all database.
        conditions: condition names; ``conditions[0]`` is the database's.
        num_map_images: images that make the map (the database); None: all.
        image_source: (N,) int64, for each image after the map's, the map image it was rendered from (-1: none,
            e.g. a real query); the map's images hold their own row. None: no image has a known source.
    """

    local: np.ndarray
    obs_point: np.ndarray
    obs_image: np.ndarray
    global_desc: np.ndarray
    points_xyz: np.ndarray
    image_names: list[str]
    image_condition: np.ndarray | None = None
    conditions: tuple[str, ...] = (DATABASE_CONDITION,)
    num_map_images: int | None = None
    image_source: np.ndarray | None = None

    @property
    def num_observations(self) -> int:
        return len(self.obs_point)

    @property
    def map_images(self) -> int:
        return len(self.image_names) if self.num_map_images is None else self.num_map_images

    @property
    def obs_condition(self) -> np.ndarray:
        """(M,) int64 condition index of each observation."""
        if self.image_condition is None:
            return np.zeros(len(self.obs_image), np.int64)
        return self.image_condition[self.obs_image]

    @property
    def num_map_observations(self) -> int:
        """Observations of the map's (database) images: the first ones, as observations are stored image by image."""
        if self.num_map_images is None:
            return len(self.obs_image)
        return int(np.searchsorted(self.obs_image, self.num_map_images))

    def map_observations(self) -> np.ndarray:
        """(M,) bool: the observation is one of the map's (a database image's)."""
        return np.arange(len(self.obs_image)) < self.num_map_observations

    def iter_images(self) -> Iterator[ImageObservations]:
        """The map's observations again per database image, as :func:`iter_image_observations` yielded them."""
        stop_all = self.num_map_observations
        obs_image = self.obs_image[:stop_all]
        starts = np.flatnonzero(np.r_[True, obs_image[1:] != obs_image[:-1]]) if stop_all else np.zeros(0, np.int64)
        for start, stop in zip(starts, np.r_[starts[1:], stop_all]):
            yield ImageObservations(int(obs_image[start]), self.local[start:stop], self.obs_point[start:stop])

    def observations_per_point(self) -> np.ndarray:
        return np.bincount(self.obs_point, minlength=len(self.points_xyz))

    def mean_local(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices of points with map observations, their (K, D) mean local descriptors over the map's observations)."""
        stop = self.num_map_observations  # slices, not a mask: no copy of the descriptors
        counts = np.bincount(self.obs_point[:stop], minlength=len(self.points_xyz))
        sums = np.zeros((len(self.points_xyz), self.local.shape[1]), np.float64)
        np.add.at(sums, self.obs_point[:stop], self.local[:stop])
        has = np.flatnonzero(counts > 0)
        return has, (sums[has] / counts[has, None]).astype(np.float32)


def same_place_images(corr: Correspondences) -> np.ndarray:
    """For each image after the map's (re-renderings, training queries): the map image showing the same place:
    its source when it was rendered from one, else the map image sharing most of its 3D points (the first of a
    tie; -1 for an image sharing none).

    Returns:
        (N - num_map_images,) int64 rows of ``corr.image_names`` (all < ``corr.map_images``).
    """
    from scipy import sparse

    num_map, num_images = corr.map_images, len(corr.image_names)
    if num_images == num_map:
        return np.zeros(0, np.int64)
    known = corr.image_source[num_map:] if corr.image_source is not None else np.full(num_images - num_map, -1)
    if (known >= 0).all():
        return known.astype(np.int64)
    ones = np.ones(len(corr.obs_point), np.float32)
    seen = sparse.csr_matrix((ones, (corr.obs_image, corr.obs_point)), shape=(num_images, len(corr.points_xyz)))
    shared = (seen[num_map:] @ seen[:num_map].T).tocsr()  # (extra, map): points seen in both
    partner = np.full(num_images - num_map, -1, np.int64)
    for row in range(shared.shape[0]):
        start, stop = shared.indptr[row], shared.indptr[row + 1]
        if stop > start:
            counts, images = shared.data[start:stop], shared.indices[start:stop]
            partner[row] = images[counts == counts.max()].min()  # ties: the first map image, whatever the storage order
    return np.where(known >= 0, known, partner)


def add_condition_observations(corr: Correspondences, extra: Iterable[ConditionObservations]) -> Correspondences:
    """``corr`` with extra images appended after the map's (their observations labelled by the same 3D points).

    Images without any tied keypoint are left out. The map part (``iter_images``, ``mean_local``) is unchanged.
    """
    conditions = list(corr.conditions)
    image_condition = list(corr.image_condition) if corr.image_condition is not None else [0] * len(corr.image_names)
    names, globals_, local, points, images = list(corr.image_names), [corr.global_desc], [corr.local], \
        [corr.obs_point], [corr.obs_image]
    source = list(corr.image_source) if corr.image_source is not None else \
        [*range(corr.map_images), *[-1] * (len(corr.image_names) - corr.map_images)]
    per_condition: dict[str, int] = {}
    for item in extra:
        if len(item.points) == 0:
            continue
        if item.condition not in conditions:
            conditions.append(item.condition)
        if item.global_desc.shape[-1] != corr.global_desc.shape[1] or item.descriptors.shape[1] != corr.local.shape[1]:
            raise InputError(f"image {item.name!r}: descriptor dimensions differ from the database's")
        images.append(np.full(len(item.points), len(names), np.int64))
        names.append(item.name)
        image_condition.append(conditions.index(item.condition))
        source.append(item.source)
        globals_.append(item.global_desc.reshape(1, -1).astype(np.float32))
        local.append(item.descriptors.astype(np.float32))
        points.append(item.points.astype(np.int64))
        per_condition[item.condition] = per_condition.get(item.condition, 0) + len(item.points)
    if per_condition:
        logger.info("cross-condition observations: %s", ", ".join(f"{c} {n}" for c, n in per_condition.items()))
    return Correspondences(np.concatenate(local), np.concatenate(points), np.concatenate(images),
                           np.concatenate(globals_), corr.points_xyz, names, np.asarray(image_condition, np.int64),
                           tuple(conditions), corr.map_images, np.asarray(source, np.int64))


def gather_correspondences(
    scene: Scene,
    features: FeatureCache,
    feature_tag: str | None = None,
    association: Literal["auto", "index", "radius"] = "auto",
    radius: float = 5.0,
) -> Correspondences:
    """Tie every observation of ``scene`` to its cached local descriptor, as the fused map does.

    Args:
        scene: database scene with points and observations.
        features: cache with the database images' local features and global descriptors.
        feature_tag: tag of the local features; with ``auto``, observations carry keypoint indices of these
            features when ``scene.keypoint_source`` equals it, otherwise they are associated by radius.
        association: ``index``, ``radius`` or ``auto`` (see :func:`fuseloc.localize.fused_map.build_fused_map`).
        radius: association radius in pixels.
    """
    if scene.num_points == 0:
        raise InputError("the training scene has no 3D points")
    association = resolve_association(scene, association, feature_tag)
    global_desc = features.global_descriptors(scene.image_names).astype(np.float32)
    local_parts, point_parts, image_parts = [], [], []
    for observed in iter_image_observations(scene, features, association, radius):
        local_parts.append(observed.descriptors)
        point_parts.append(observed.points)
        image_parts.append(np.full(len(observed.points), observed.image_index, np.int64))
    if not local_parts or sum(len(p) for p in point_parts) == 0:
        raise InputError("no database observation could be tied to a cached keypoint")
    corr = Correspondences(np.concatenate(local_parts), np.concatenate(point_parts), np.concatenate(image_parts),
                           global_desc, np.asarray(scene.points_xyz, np.float64), list(scene.image_names))
    logger.info("training correspondences: %d observations of %d points in %d images (%s association)",
                corr.num_observations, int((corr.observations_per_point() > 0).sum()), scene.num_images, association)
    return corr


def mine_confusers(corr: Correspondences, k: int = 8, min_distance: float = 5.0) -> np.ndarray:
    """Hard confusers of every point, from the local-only map.

    For each point, the ``k`` points whose mean local descriptors are nearest to its own (faiss exact k-NN),
    keeping only those more than ``min_distance`` metres away in 3D: look-alikes elsewhere in the scene.

    Returns:
        (P, k) int64 point indices, nearest first, padded with -1.
    """
    import faiss

    has, means = corr.mean_local()
    confusers = np.full((len(corr.points_xyz), k), -1, np.int64)
    if len(has) < 2 or k == 0:
        return confusers
    kk = min(k + 1, len(has))
    _, nn = faiss.knn(np.ascontiguousarray(means), np.ascontiguousarray(means), kk)
    neighbours = has[nn]  # (K, kk) point indices, self usually first
    xyz = corr.points_xyz
    far = np.linalg.norm(xyz[neighbours] - xyz[has][:, None], axis=2) > min_distance
    far &= neighbours != has[:, None]
    for row, point in enumerate(has):
        picked = neighbours[row][far[row]][:k]
        confusers[point, : len(picked)] = picked
    logger.info("confusers: %d of %d points have a look-alike more than %g m away", int((confusers[:, 0] >= 0).sum()),
                len(has), min_distance)
    return confusers


@dataclass(frozen=True)
class BatchConfig:
    """How training batches are drawn.

    Attributes:
        points_per_batch: P, distinct 3D points per batch.
        obs_per_point: M, observations drawn per point (fewer when a point has fewer).
        confuser_fraction: share of the P points drawn as hard confusers of the others.
        batches_per_epoch: batches each process yields per epoch.
        seed: base seed; a batch depends only on (seed, epoch, rank, batch index).
    """

    points_per_batch: int = 64
    obs_per_point: int = 4
    confuser_fraction: float = 0.5
    batches_per_epoch: int = 50
    seed: int = 0


class CorrespondenceBatches(torch.utils.data.IterableDataset):
    """Yields ready-made P x M batches (a dict with :data:`BATCH_KEYS`); use with ``DataLoader(batch_size=None)``.

    Under DDP every process draws its own batches (the rank is in the seed) and yields the same number of
    them, so no process waits on another. Each new iteration (epoch) draws new batches.
    """

    def __init__(self, corr: Correspondences, confusers: np.ndarray, config: BatchConfig = BatchConfig()):  # noqa: B008
        super().__init__()
        self.corr = corr
        self.confusers = confusers
        self.config = config
        self.epoch = 0
        #: the training epoch under way (the trainer's), so that a run resumed from a checkpoint draws the batches
        #: an uninterrupted run draws; None: count iterations from 0
        self.epoch_source: Callable[[], int | None] | None = None
        counts = corr.observations_per_point()
        self.anchor_points = np.flatnonzero(counts >= 2)
        if len(self.anchor_points) == 0:
            raise InputError("no 3D point has two or more usable observations; cannot form positive pairs")
        self._order = np.argsort(corr.obs_point, kind="stable")
        self._bounds = np.searchsorted(corr.obs_point[self._order], np.arange(len(corr.points_xyz) + 1))
        self._obs_condition = corr.obs_condition if len(corr.conditions) > 1 else None

    def __len__(self) -> int:
        return self.config.batches_per_epoch

    def __iter__(self):  # noqa: ANN204
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        epoch = self.epoch_source() if self.epoch_source is not None else None
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.config.seed, epoch, rank])
        self.epoch = epoch + 1
        for _ in range(self.config.batches_per_epoch):
            yield self.sample(rng)

    def sample_points(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(P,) point indices and (P,) bool confuser flags."""
        cfg = self.config
        n_points = min(cfg.points_per_batch, len(self.anchor_points))
        n_conf = int(round(cfg.confuser_fraction * n_points))
        anchors = list(rng.choice(self.anchor_points, n_points - n_conf, replace=False))
        chosen = set(anchors)
        confusers: list[int] = []
        for a in anchors:
            if len(confusers) >= n_conf:
                break
            candidates = [int(c) for c in self.confusers[a] if c >= 0 and int(c) not in chosen]
            if candidates:
                c = candidates[int(rng.integers(len(candidates)))]
                confusers.append(c)
                chosen.add(c)
        # Not enough look-alikes (a scene without repetition): fill up with random points.
        rest = np.setdiff1d(self.anchor_points, np.fromiter(chosen, np.int64, len(chosen)))
        fill = list(rng.choice(rest, min(n_points - len(chosen), len(rest)), replace=False))
        points = np.array(anchors + fill + confusers, np.int64)
        is_conf = np.r_[np.zeros(len(anchors) + len(fill), bool), np.ones(len(confusers), bool)]
        return points, is_conf

    def pick_observations(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Up to M of a point's observations ``obs``, spread over as many conditions as it has: conditions in a
        random order, one observation each, round after round, so that a point seen under two conditions always
        brings a cross-condition positive pair."""
        m = min(self.config.obs_per_point, len(obs))
        if self._obs_condition is None:
            return rng.choice(obs, m, replace=False)
        shuffled = rng.permutation(obs)
        condition = self._obs_condition[shuffled]
        ranks = rng.permutation(int(condition.max()) + 1)[condition]  # a random order of the conditions
        # round r holds the r-th observation of every condition; within a round, conditions in the random order
        within = np.zeros(len(shuffled), np.int64)
        for c in np.unique(condition):
            members = np.flatnonzero(condition == c)
            within[members] = np.arange(len(members))
        return shuffled[np.lexsort((ranks, within))[:m]]

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        points, is_conf = self.sample_points(rng)
        rows, flags = [], []
        for p, c in zip(points, is_conf, strict=True):
            obs = self._order[self._bounds[p] : self._bounds[p + 1]]
            take = self.pick_observations(obs, rng)
            rows.append(take)
            flags.append(np.full(len(take), c))
        rows_all = np.concatenate(rows)
        images, global_index = np.unique(self.corr.obs_image[rows_all], return_inverse=True)
        return {
            "local": torch.from_numpy(self.corr.local[rows_all]),
            "global": torch.from_numpy(self.corr.global_desc[images]),
            "global_index": torch.from_numpy(global_index.astype(np.int64)),
            "labels": torch.from_numpy(self.corr.obs_point[rows_all]),
            "is_confuser": torch.from_numpy(np.concatenate(flags)),
        }
