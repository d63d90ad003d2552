"""The training data: database observations of any dataset (a reader is a config choice) and a validation split.

Features, global descriptors (any :class:`~fuseloc.data.extractors.base.GlobalExtractor`: VLAD, NetVLAD, MegaLoc, SALAD...)
and triangulated maps come from :mod:`fuseloc.data.prepare`, the functions evaluate.py uses, with the same cache
directory and file names as ``evaluate.py`` (``<output_dir>/<benchmark>/cache``), so training and evaluation share
caches and, crucially, the same global descriptors (for VLAD, the same vocabulary): the learned projection of the
global descriptor is only meaningful for the descriptor it was trained with. The global dimension G the fusion is
built for comes from the extractor (:func:`~fuseloc.data.prepare.global_descriptor_dim`) and is checked against
the cache.

Validation split (``validation``):

- ``auto``: the reader's ``LocalizationData.validation`` queries when it provides them, else ``holdout``.
- ``holdout``: every ``holdout_every``-th database image (in name order, from ``holdout_offset``) is removed
  from the training scene (and, for readers without 3D points, from the triangulation, so no held-out image
  contributes to the map) and localized against it with its database pose as ground truth, as it is
  (condition ``original``) and re-rendered under each training condition without the warp (one condition
  each), so that validation sees a change of light and can tell fusions apart. The evaluation queries are
  never used for training or model selection. The VLAD vocabulary is still trained on all database images,
  held-out ones included, exactly as in ``evaluate.py``.

Cross-condition training samples (:mod:`fuseloc.data.cross_condition`): every training database image is also
re-rendered under each of ``conditions`` (night, dusk, haze... by default) and its keypoints tied to the same
3D points, and a reader's ``training_queries`` (real queries with public ground truth, never evaluation or
validation queries) are tied to map points by projection. Batches then pair each point's observations across
conditions (:meth:`~fuseloc.data.correspondences.CorrespondenceBatches.pick_observations`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from fuseloc.data.conditions import ConditionTransform, default_conditions
from fuseloc.data.correspondences import (
    BatchConfig,
    CorrespondenceBatches,
    Correspondences,
    add_condition_observations,
    gather_correspondences,
    mine_confusers,
    same_place_images,
)
from fuseloc.data.cross_condition import (
    RenderedImages,
    projected_observations,
    render_database,
    rendered_observations,
)
from fuseloc.data.extractors import GlobalExtractor, LocalExtractor, Sift, Vlad
from fuseloc.data.feature_cache import FeatureCache
from fuseloc.data.prepare import PreparedFeatures, global_descriptor_dim, prepare_features, prepare_scene
from fuseloc.data.readers.base import BenchmarkSpec, DatasetReader, LocalizationData
from fuseloc.data.readers.town import TownReader
from fuseloc.data.scene import QuerySet, Scene
from fuseloc.data.triangulate import TriangulationConfig
from fuseloc.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class ValidationSet:
    """What the localization validation needs: the training map, its features, queries with ground truth.

    Attributes:
        scene: the training scene (the map the validation queries are localized against).
        features: the prepared feature caches .
        queries: validation queries with ground-truth poses.
        spec: benchmark rules (thresholds, splits) and name.
        source: ``reader`` (the dataset's own validation queries) or ``holdout`` (held-out database images).
        correspondences: the scene's observations tied to their descriptors, when already gathered for training
            (the validation map is then fused from them instead of re-reading the database features).
    """

    scene: Scene
    features: PreparedFeatures
    queries: QuerySet
    spec: BenchmarkSpec
    source: str
    correspondences: Correspondences | None = None


@dataclass
class TrainingSources:
    """What :meth:`FuseLocDataModule.setup` builds the training correspondences and the validation set from
    (prepared once, on rank 0 under DDP, and sent to the other processes).

    Attributes:
        scene: the training scene (held-out images removed, triangulated when the reader gives no points).
        validation: validation queries with ground truth.
        spec: the validation's benchmark rules (per-condition splits for re-rendered held-out images).
        source: ``reader`` or ``holdout``.
        rendered: training database images re-rendered under other conditions; None: none.
        training_queries: the reader's real queries with ground truth for training; None: none.
    """

    scene: Scene
    validation: QuerySet
    spec: BenchmarkSpec
    source: str
    rendered: RenderedImages | None = None
    training_queries: QuerySet | None = None


def holdout_queries(scene: Scene, every: int, offset: int = 0) -> tuple[np.ndarray, QuerySet]:
    """(mask of held-out images, QuerySet of them with their database poses as ground truth)."""
    if every < 2:
        raise InputError(f"holdout_every must be >= 2, got {every}")
    order = np.argsort(scene.image_names, kind="stable")
    held = np.zeros(scene.num_images, bool)
    held[order[offset::every]] = True
    idx = np.flatnonzero(held)
    if len(idx) == 0 or len(idx) == scene.num_images:
        raise InputError(f"holding out every {every}-th of {scene.num_images} database images leaves no "
                         "validation or no training images")
    queries = QuerySet([scene.image_names[i] for i in idx], [scene.image_cameras[i] for i in idx],
                       [scene.pose(i) for i in idx], None, scene.image_root)
    return held, queries


class FuseLocDataModule(pl.LightningDataModule):
    """Training batches of database observations and a validation split, for any dataset reader.

    The dataset and feature settings have evaluate.py's keys (``data.reader``, ``data.local_features``...; see
    :class:`~fuseloc.data.config.DataConfig`), so one YAML snippet configures both tools. As there, the reader
    and extractors default to None, not to an instance, so that naming another class in a config gets that
    class's own defaults (jsonargparse would carry a default instance's matching init_args over).

    Args:
        reader: the dataset reader; None: the embedded synthetic town, validated on day and night queries
            of a second rendering (query seed 1) of the same town and database.
        local_features: local feature extractor (as in evaluate.py); None: RootSIFT (``Sift()``).
        global_features: any global descriptor (``GlobalExtractor``: VLAD, NetVLAD, MegaLoc, SALAD...; selected
            by ``class_path`` as in evaluate.py, whose setting it must match for the checkpoint to apply); None:
            VLAD (``Vlad()``).
        output_dir: root of outputs; caches live in ``<output_dir>/<benchmark>/cache`` as for evaluate.py.
        triangulation: how a map is triangulated when the reader gives no 3D points.
        validation: ``auto`` or ``holdout`` (see the module docstring).
        holdout_every: hold out every n-th database image for validation.
        holdout_offset: index (in name order) of the first held-out image.
        max_val_queries: cap on validation queries (evenly spaced); 0 keeps all.
        conditions: conditions every training database image is re-rendered under (see the module docstring);
            None: :func:`~fuseloc.data.conditions.default_conditions`; an empty list trains on the database
            images alone.
        condition_seed: seed of the re-renderings (each image's randomness also depends on its name).
        render_every: re-render every n-th training database image (1: all), for large datasets.
        train_on_reader_queries: learn from the reader's ``training_queries`` (real queries with ground truth).
        association_radius: pixels; a re-rendered image's keypoint (or a real query's, by projection) within
            this distance of an observation's (warped or projected) position takes its 3D point.
        batches: P x M batch sampling.
        confuser_neighbors: look-alike candidates mined per point.
        confuser_min_distance: metres; a look-alike closer than this is the same structure, not a confuser.
        val_loss_batches: fixed batches on which ``val/loss`` is computed (drawn from the training
            observations with a fixed seed: a stable yardstick of the optimisation, not of generalisation;
            recall on the validation queries measures that).
    """

    def __init__(
        self,
        reader: DatasetReader | None = None,
        local_features: LocalExtractor | None = None,
        global_features: GlobalExtractor | None = None,
        output_dir: Path = Path("outputs"),
        triangulation: TriangulationConfig = TriangulationConfig(),  # noqa: B008 (frozen)
        validation: Literal["auto", "holdout"] = "auto",
        holdout_every: int = 8,
        holdout_offset: int = 0,
        max_val_queries: int = 0,
        conditions: list[ConditionTransform] | None = None,
        condition_seed: int = 0,
        render_every: int = 1,
        train_on_reader_queries: bool = True,
        association_radius: float = 3.0,
        batches: BatchConfig = BatchConfig(),  # noqa: B008 (frozen)
        confuser_neighbors: int = 8,
        confuser_min_distance: float = 5.0,
        val_loss_batches: int = 4,
    ):
        super().__init__()
        if val_loss_batches < 1:
            # Lightning skips the whole validation epoch (localization included) without validation batches.
            raise InputError(f"val_loss_batches must be >= 1, got {val_loss_batches}")
        self.reader = reader if reader is not None else TownReader(validation_query_seed=1)
        self.local_features = local_features if local_features is not None else Sift()
        self.global_features = global_features if global_features is not None else Vlad()
        self.output_dir = Path(output_dir)
        self.triangulation = triangulation
        self.validation = validation
        self.holdout_every = holdout_every
        self.holdout_offset = holdout_offset
        self.max_val_queries = max_val_queries
        if render_every < 1:
            raise InputError(f"render_every must be >= 1, got {render_every}")
        self.conditions = list(default_conditions()) if conditions is None else list(conditions)
        self.condition_seed = condition_seed
        self.render_every = render_every
        self.train_on_reader_queries = train_on_reader_queries
        self.association_radius = association_radius
        self.batches = batches
        self.confuser_neighbors = confuser_neighbors
        self.confuser_min_distance = confuser_min_distance
        self.val_loss_batches = val_loss_batches
        self._global_dim: int | None = None
        self.correspondences: Correspondences | None = None
        self.confusers: np.ndarray | None = None
        self.validation_set: ValidationSet | None = None
        self._train: CorrespondenceBatches | None = None
        self._val_batches: list[dict] | None = None

    @property
    def local_dim(self) -> int:
        """D, known from the extractor's configuration (linked to the model's fusion by train.py)."""
        return int(self.local_features.dim)

    @property
    def global_dim(self) -> int:
        """G, as the global extractor declares or measures it (see :func:`~fuseloc.data.prepare.global_descriptor_dim`)."""
        if self._global_dim is None:
            self._global_dim = global_descriptor_dim(self.global_features, self.local_dim)
        return self._global_dim

    # ----------------------------------------------------------------------------------------- preparation

    def _extract(self, data: LocalizationData, queries: QuerySet, cache_dir: Path) -> None:
        """Features of extra images (validation queries, re-renderings) into the evaluation's caches; the VLAD key
        depends on the database only, so they land in the same files."""
        prepare_features(LocalizationData(data.scene, queries, data.spec, data.root), self.local_features,
                         self.global_features, cache_dir, progress=False).cache.close()

    def _prepare(self) -> tuple[TrainingSources, PreparedFeatures]:
        data = self.reader.load()
        cache_dir = self.output_dir / data.spec.name / "cache"
        use_reader_validation = self.validation == "auto" and data.validation is not None
        if use_reader_validation:
            if not data.validation.has_ground_truth:
                raise InputError("the reader's validation queries have no ground-truth poses", data.root)
            self._extract(data, data.validation, cache_dir)
        # Features (and the VLAD vocabulary) exactly as evaluate.py makes them, over all database images.
        features = prepare_features(data, self.local_features, self.global_features, cache_dir, progress=False)
        spec = data.spec
        if use_reader_validation:
            train_data, val_queries, source = data, data.validation, "reader"
        else:
            held, val_queries = holdout_queries(data.scene, self.holdout_every, self.holdout_offset)
            train_data = replace(data, scene=data.scene.subset_images(~held))
            source = "holdout"
        scene = prepare_scene(train_data, features, self.triangulation, cache_dir)
        # The extra images below are extracted into the same files, which must not be open meanwhile.
        features.cache.close()
        if source == "holdout" and self.conditions:
            # Held-out images as they are and under each condition (no warp: the pose must stay exact).
            photometric = [replace(t, warp=0.0) for t in self.conditions]
            val_queries = render_database(data.scene, np.flatnonzero(held), photometric, self.condition_seed,
                                          cache_dir, keep_original=True).queries
            self._extract(data, val_queries, cache_dir)
            spec = replace(spec, splits={})  # one split per condition
        if self.max_val_queries and len(val_queries) > self.max_val_queries:
            pick = np.unique(np.linspace(0, len(val_queries) - 1, self.max_val_queries).round().astype(int))
            val_queries = val_queries.subset(pick)
        rendered = None
        if self.conditions:
            rows = np.arange(0, scene.num_images, self.render_every)
            rendered = render_database(scene, rows, self.conditions, self.condition_seed, cache_dir)
            self._extract(data, rendered.queries, cache_dir)
        training_queries = data.training_queries if self.train_on_reader_queries else None
        if training_queries is not None:
            if not training_queries.has_ground_truth:
                raise InputError("the reader's training queries have no ground-truth poses", data.root)
            self._extract(data, training_queries, cache_dir)
        features = replace(features, cache=FeatureCache(features.cache.local_path, features.cache.global_path))
        return TrainingSources(scene, val_queries, spec, source, rendered, training_queries), features

    def setup(self, stage: str | None = None) -> None:
        if self.correspondences is not None:
            return
        strategy = None if self.trainer is None else self.trainer.strategy
        if strategy is None or strategy.world_size == 1:
            sources, features = self._prepare()
        else:
            # Only rank 0 touches the caches for writing (h5 files opened for appending by several processes
            # collide); the others get what it prepared and open the same files read-only.
            payload = None
            if strategy.global_rank == 0:
                sources, features = self._prepare()
                payload = (sources, features.cache.local_path, features.cache.global_path, features.local_tag,
                           features.global_tag)
            payload = strategy.broadcast(payload, src=0)
            if strategy.global_rank != 0:
                sources, local_path, global_path, local_tag, global_tag = payload
                features = PreparedFeatures(FeatureCache(local_path, global_path), local_tag, global_tag)
        scene = sources.scene
        correspondences = gather_correspondences(scene, features.cache, features.local_tag)
        extra = []
        if sources.rendered is not None:
            extra.append(rendered_observations(scene, sources.rendered, features.cache, self.association_radius))
        if sources.training_queries is not None:
            extra.append(projected_observations(scene, sources.training_queries, features.cache,
                                                self.association_radius))
        self.correspondences = add_condition_observations(correspondences, itertools.chain(*extra)) if extra \
            else correspondences
        found = self.correspondences.global_desc.shape[1]
        if found != self.global_dim:
            # The fusion was built for global_dim (train.py links it); a cache of another size cannot train it.
            raise InputError(f"{self.global_features.tag()} declares {self.global_dim}-D global descriptors, but its "
                             f"cache holds {found}-D ones", features.cache.global_path)
        self.confusers = mine_confusers(self.correspondences, self.confuser_neighbors, self.confuser_min_distance)
        self.validation_set = ValidationSet(scene, features, sources.validation, sources.spec, sources.source,
                                            self.correspondences)
        logger.info("validation on %d %s queries of %s (%s)", len(sources.validation), sources.source,
                    sources.spec.name, ", ".join(f"{c} {sources.validation.conditions.count(c)}"
                                                 for c in sorted(set(sources.validation.conditions))))
        self._train = CorrespondenceBatches(self.correspondences, self.confusers, self.batches)
        self._train.epoch_source = self._trainer_epoch
        # A fixed set, identical in every process (Lightning shards it under DDP).
        rng = np.random.default_rng([self.batches.seed, 1_000_003])
        self._val_batches = [self._train.sample(rng) for _ in range(self.val_loss_batches)]

    def _trainer_epoch(self) -> int | None:
        """The epoch the trainer is in (restored from the checkpoint on a resumed run); None without a trainer."""
        return None if self.trainer is None else int(self.trainer.current_epoch)

    def fit_fusion(self, fusion) -> None:  # noqa: ANN001 (a fuseloc.models.fusion.Fusion)
        """Data-driven initialisation of a fusion from the training images' global descriptors: the map's images
        (the PCA evaluate.py's fixed fusion fits) and the cross-condition images, each with the map image showing
        the same place (:func:`~fuseloc.data.correspondences.same_place_images`), which a learned whitening of
        the global descriptor learns from."""
        if self.correspondences is None:
            raise RuntimeError("setup() must run before fit_fusion()")
        corr = self.correspondences
        fusion.fit(corr.global_desc[: corr.map_images], corr.local[: corr.num_map_observations],
                   global_other=corr.global_desc[corr.map_images:], same_place=same_place_images(corr))

    # ------------------------------------------------------------------------------------------ loaders

    def train_dataloader(self) -> DataLoader:
        # Batches are slices of in-memory arrays: worker processes would cost more than they save.
        return DataLoader(self._train, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._val_batches, batch_size=None, num_workers=0)

    def teardown(self, stage: str | None = None) -> None:
        if self.validation_set is not None:
            self.validation_set.features.cache.close()
        # A later fit/validate on this object sets up again (the caches are closed now).
        self.correspondences = None
