"""The FUSELOC map: one fused descriptor per 3D point (the mean over its observations), saved as one file."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch

from fuseloc.cachekeys import array_digest
from fuseloc.data.feature_cache import FeatureCache
from fuseloc.data.observations import ImageObservations, iter_image_observations, resolve_association
from fuseloc.data.scene import Scene
from fuseloc.errors import InputError
from fuseloc.io import atomic_path
from fuseloc.models.fusion import (
    Fusion,
    fusion_class_path,
    fusion_init_args,
    instantiate_fusion,
    to_fusion,
    to_numpy,
)

logger = logging.getLogger(__name__)

#: Bumped whenever the file's datasets change; a map of another version is refused (rebuild it).
#: 2: ``xyz``, ``db_R``, ``db_t`` renamed ``points_xyz``, ``db_R_cam_from_world``, ``db_t_cam_from_world``.
MAP_FORMAT_VERSION = 2


@dataclass
class FusedMap:
    """What localization holds in memory.

    Attributes:
        points_xyz: (P, 3) float64 point positions (metres).
        descriptors: (P, E) float16 fused point descriptors.
        db_names: N database image names.
        db_global: (N, G) float16 database global descriptors (heavy mode and fallback retrieval).
        db_R_cam_from_world, db_t_cam_from_world: (N, 3, 3), (N, 3) database world-to-camera poses (fallback poses).
        fusion_class: import path of the fusion that made the descriptors.
        fusion_args: its constructor arguments.
        fusion_state: its state dict (projection, weights) as numpy arrays.
        config: how the map was built (feature tags, association), for cache checks.
        descriptors_digest: :func:`~fuseloc.cachekeys.array_digest` of ``descriptors`` as saved (recorded in the
            file), or None (computed when asked). It keys the map's search index, so a cached index loads without
            reading the descriptors.

    A loaded map memory-maps ``descriptors`` from its file (read-only): once the search index holds them, which
    localization searches, they are never read, so the map's descriptors are not held twice.
    """

    points_xyz: np.ndarray
    descriptors: np.ndarray
    db_names: list[str]
    db_global: np.ndarray
    db_R_cam_from_world: np.ndarray
    db_t_cam_from_world: np.ndarray
    fusion_class: str
    fusion_args: dict
    fusion_state: dict[str, np.ndarray]
    config: dict = field(default_factory=dict)
    descriptors_digest: str | None = None

    def descriptor_digest(self) -> str:
        """The digest of ``descriptors`` (the recorded one when the map was loaded from a file)."""
        if self.descriptors_digest is None:
            self.descriptors_digest = array_digest(self.descriptors)
        return self.descriptors_digest

    @property
    def num_points(self) -> int:
        return len(self.points_xyz)

    def nbytes(self) -> int:
        """Bytes localization must hold: point positions and descriptors, database globals and poses."""
        return int(self.points_xyz.nbytes + self.descriptors.nbytes + self.db_global.nbytes
                   + self.db_R_cam_from_world.nbytes + self.db_t_cam_from_world.nbytes)

    def fusion(self) -> Fusion:
        return instantiate_fusion(self.fusion_class, self.fusion_args, self.fusion_state)

    def save(self, path: str | Path) -> Path:
        """Write the map atomically (a killed write never leaves a file a later run would load)."""
        path = Path(path)
        with atomic_path(path, suffix=".h5.tmp") as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = "fuseloc-map"
                f.attrs["format_version"] = MAP_FORMAT_VERSION
                f.attrs["config"] = json.dumps(self.config, sort_keys=True)
                f.attrs["fusion_class"] = self.fusion_class
                f.attrs["fusion_args"] = json.dumps(self.fusion_args)
                f.attrs["descriptors_digest"] = self.descriptor_digest()
                f.create_dataset("points_xyz", data=self.points_xyz)
                f.create_dataset("descriptors", data=self.descriptors)  # contiguous: load memory-maps it
                f.create_dataset("db_names", data=np.array(self.db_names, dtype=h5py.string_dtype()))
                f.create_dataset("db_global", data=self.db_global)
                f.create_dataset("db_R_cam_from_world", data=self.db_R_cam_from_world)
                f.create_dataset("db_t_cam_from_world", data=self.db_t_cam_from_world)
                state = f.create_group("fusion_state")
                for k, v in self.fusion_state.items():
                    state.create_dataset(k, data=v)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FusedMap:
        path = Path(path)
        if not path.is_file():
            raise InputError("map file not found", path)
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != "fuseloc-map":
                    raise InputError("not a fuseloc map file", path)
                version = int(f.attrs["format_version"])
                if version != MAP_FORMAT_VERSION:
                    raise InputError(f"map format version {version}, this fuseloc reads {MAP_FORMAT_VERSION}; rebuild the map", path)
                return cls(
                    points_xyz=f["points_xyz"][()],
                    descriptors=_map_descriptors(f["descriptors"], path),
                    db_names=[n.decode() if isinstance(n, bytes) else n for n in f["db_names"][()]],
                    db_global=f["db_global"][()],
                    db_R_cam_from_world=f["db_R_cam_from_world"][()],
                    db_t_cam_from_world=f["db_t_cam_from_world"][()],
                    fusion_class=str(f.attrs["fusion_class"]),
                    fusion_args=json.loads(f.attrs["fusion_args"]),
                    fusion_state={k: v[()] for k, v in f["fusion_state"].items()},
                    config=json.loads(f.attrs["config"]),
                    descriptors_digest=str(f.attrs["descriptors_digest"]) if "descriptors_digest" in f.attrs else None,
                )
        except OSError as exc:
            raise InputError(f"cannot read map file ({exc})", path) from None


def _map_descriptors(dataset: h5py.Dataset, path: Path) -> np.ndarray:
    """The descriptors dataset memory-mapped read-only (h5py stores an uncompressed, unchunked dataset as one
    contiguous block); read into memory when it is stored otherwise (a file written by other tools)."""
    offset = dataset.id.get_offset()
    if offset is None or dataset.chunks is not None or dataset.compression is not None or dataset.size == 0:
        return dataset[()]
    return np.memmap(path, dtype=dataset.dtype, mode="r", offset=offset, shape=dataset.shape)


@torch.no_grad()
def build_fused_map(
    scene: Scene,
    features: FeatureCache,
    fusion: Fusion,
    association: Literal["auto", "index", "radius"] = "auto",
    feature_tag: str | None = None,
    radius: float = 5.0,
    config: dict | None = None,
    progress: bool = True,
    observations: Iterable[ImageObservations] | None = None,
) -> FusedMap:
    """Fuse every observation of every point and average per point.

    Args:
        scene: reference scene with points and observations.
        features: cache holding the database images' local features and global descriptors.
        fusion: a fitted fusion.
        association: ``index`` takes the observation's keypoint index (map triangulated from these very
            features), ``radius`` takes the nearest detected keypoint within ``radius`` pixels, ``auto`` picks
            ``index`` when ``scene.keypoint_source == feature_tag``.
        feature_tag: tag of the local features in ``features``.
        radius: association radius in pixels.
        config: recorded in the map.
        observations: the associated observations per image when already at hand (training keeps them as
            :class:`~fuseloc.data.correspondences.Correspondences`), instead of reading every database image's
            features again; they must come from the same scene, association and radius.
    """
    if scene.num_points == 0:
        raise InputError("the reference model has no 3D points; triangulate it first (fuseloc builds it from posed images)")
    association = resolve_association(scene, association, feature_tag)
    db_global = features.global_descriptors(scene.image_names)
    first_local = features.local(scene.image_names[0])
    fusion.check_dims(first_local.descriptors.shape[1], db_global.shape[1], str(features.local_path))
    # The fusion runs where it lives (CPU or GPU, any float dtype); the sums stay float64 on the host.
    reduced = fusion.reduce_global(to_fusion(fusion, db_global))
    sums = np.zeros((scene.num_points, fusion.out_dim), np.float64)
    counts = np.zeros(scene.num_points, np.int64)
    if observations is None:
        observations = iter_image_observations(scene, features, association, radius, "fusing map" if progress else None)
    for observed in observations:
        if len(observed.points) == 0:
            continue
        i = observed.image_index
        fused = to_numpy(fusion.fuse(to_fusion(fusion, observed.descriptors), reduced[i : i + 1]))
        points = observed.points
        # np.add.at is ~20x slower than buffered fancy-index adds (minutes at Aachen scale); an image sees a
        # point at most once in SfM models, so the buffered add is exact unless a point repeats in this image.
        if len(np.unique(points)) == len(points):
            sums[points] += fused
            counts[points] += 1
        else:
            np.add.at(sums, points, fused)
            np.add.at(counts, points, 1)
    has = counts > 0
    if not has.any():
        raise InputError(f"no map observation could be associated with a detected keypoint (radius {radius} px)")
    logger.info("fused map: %d of %d points have associated observations (%s association)", has.sum(), scene.num_points, association)
    descriptors = (sums[has] / counts[has, None]).astype(np.float16)
    return FusedMap(
        points_xyz=scene.points_xyz[has].astype(np.float64),
        descriptors=descriptors,
        db_names=list(scene.image_names),
        db_global=db_global.astype(np.float16),
        db_R_cam_from_world=scene.R_cam_from_world.astype(np.float64),
        db_t_cam_from_world=scene.t_cam_from_world.astype(np.float64),
        fusion_class=fusion_class_path(fusion),
        fusion_args=fusion_init_args(fusion),
        fusion_state={k: to_numpy(v) for k, v in fusion.state_dict().items()},
        config={**(config or {}), "association": association, "radius": radius},
    )
