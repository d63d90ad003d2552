"""Extended CMU Seasons from its standard download (DATASETS.md §6): one reference map per slice.

Layout::

    root/intrinsics.txt                                  c0/c1 OPENCV 1024x768 (camera = 3rd '_' token of a name)
    root/slice<N>/database/img_<k>_c<0|1>_<ts>us.jpg
    root/slice<N>/query/img_<k>_c<0|1>_<ts>us.jpg
    root/slice<N>/sparse/{cameras,images,points3D}.bin   model of the database images (names are basenames)
    root/slice<N>/ground-truth-database-images-slice<N>.txt   name qw qx qy qz Cx Cy Cz (camera centres)
    root/slice<N>/test-images-slice<N>.txt                query basenames
    root/slice<N>/camera-poses/*.txt                      query ground truth (training slices), centres

Each slice is one :class:`LocalizationData` part (``load_parts``); images are named ``database/<file>`` and
``query/<file>`` relative to the slice folder. Submissions use bare file names, all slices in one file.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from fuseloc.data.readers.base import (
    STANDARD_THRESHOLDS,
    BenchmarkSpec,
    DatasetReader,
    LocalizationData,
    check_images_exist,
    resolve_root,
    split_ground_truth_queries,
)
from fuseloc.data.readers.generic import read_pose_list
from fuseloc.data.scene import QuerySet, Scene
from fuseloc.errors import InputError
from fuseloc.io import iter_lines
from fuseloc.types import Camera, Pose

logger = logging.getLogger(__name__)

URBAN, SUBURBAN, PARK = tuple(range(2, 7)), tuple(range(13, 18)), tuple(range(18, 22))
TEST_SLICES: tuple[int, ...] = URBAN + SUBURBAN + PARK
TRAINING_SLICES: tuple[int, ...] = (*range(7, 13), *range(22, 26))


def environment(slice_number: int) -> str:
    """urban (2-8), suburban (9-17) or park (18-25); the training-slice grouping is an assumption (UNSURE)."""
    if 2 <= slice_number <= 8:
        return "urban"
    if 9 <= slice_number <= 17:
        return "suburban"
    if 18 <= slice_number <= 25:
        return "park"
    raise InputError(f"Extended CMU has slices 2-25, got {slice_number}")


def read_cmu_intrinsics(path: Path) -> dict[str, Camera]:
    """``camID MODEL W H params...`` lines -> camera id -> Camera."""
    cameras = {}
    for line, tokens in iter_lines(path):
        if len(tokens) < 5:
            raise InputError(f"expected 'camID MODEL W H params...', got {' '.join(tokens)!r}", path, line)
        try:
            cameras[tokens[0]] = Camera.from_tokens(tokens[1:])
        except InputError as exc:
            raise exc.at(path, line) from None
    return cameras


def camera_id(name: str) -> str:
    """``img_00122_c0_1303398475046031us.jpg`` -> ``c0``."""
    parts = PurePosixPath(name).name.split("_")
    return parts[2] if len(parts) > 3 else ""


class CMUReader(DatasetReader):
    """Extended CMU Seasons, one part per slice.

    Args:
        root: dataset root; default ``$FUSELOC_DATA/cmu_extended``. Environment variables are expanded.
        slices: slice numbers to load; default: the 14 test slices (2-6, 13-17, 18-21).
        queries: ``test`` (the slice's test list, for the server) or ``train`` (the ``camera-poses`` ground
            truth of training slices, for local evaluation).
        model: reference model folder inside each slice; when missing, the database ground-truth poses are
            used and the map is triangulated.
        check_images: fail early when a listed image file is missing.
        name: benchmark name used in output paths.
        train_query_share: with ``queries: test``, share of a slice's ``camera-poses`` ground-truth queries (the
            first in name order) that training learns from; the rest validate.
    """

    def __init__(self, root: str | Path | None = None, slices: list[int] | None = None,
                 queries: Literal["test", "train"] = "test", model: str = "sparse", check_images: bool = True,
                 name: str = "cmu_extended", train_query_share: float = 0.5):
        self.root = root
        self.slices = list(TEST_SLICES) if slices is None else list(slices)
        self.queries = queries
        self.model = model
        self.check_images = check_images
        self.name = name
        self.train_query_share = train_query_share

    def spec(self) -> BenchmarkSpec:
        return BenchmarkSpec(name=self.name, thresholds=STANDARD_THRESHOLDS,
                             splits={"urban": ("urban",), "suburban": ("suburban",), "park": ("park",)},
                             submission_names="basename")

    def load(self) -> LocalizationData:
        if len(self.slices) != 1:
            raise InputError(f"Extended CMU has one map per slice and {len(self.slices)} slices were selected: "
                             "use load_parts() (evaluate.py does) or select one slice")
        return self.load_slice(self.slices[0])

    def load_parts(self) -> list[LocalizationData]:
        return [self.load_slice(n) for n in self.slices]

    def load_slice(self, number: int) -> LocalizationData:
        root = resolve_root(self.root, "cmu_extended")
        condition = environment(number)
        slice_dir = root / f"slice{number}"
        if not slice_dir.is_dir():
            raise InputError(f"slice {number} not found (untar slice{number}.tar in the dataset root)", slice_dir)
        intrinsics_path = root / "intrinsics.txt"
        cameras = read_cmu_intrinsics(intrinsics_path)
        scene = self._scene(slice_dir, number, cameras, intrinsics_path)
        ground_truth = self._camera_poses(slice_dir, cameras, condition)
        if self.queries == "train":
            if ground_truth is None:
                raise InputError("queries='train' needs non-empty camera-poses/*.txt ground truth", slice_dir / "camera-poses")
            queries, training, validation = ground_truth, None, None  # evaluated queries never train or validate
        else:
            list_path = slice_dir / f"test-images-slice{number}.txt"
            names, query_cameras = [], []
            for line, tokens in iter_lines(list_path):
                names.append(f"query/{PurePosixPath(tokens[0]).name}")
                query_cameras.append(self._query_camera(cameras, tokens[0], intrinsics_path, list_path, line))
                if self.check_images and not (slice_dir / names[-1]).is_file():
                    raise InputError(f"query image {names[-1]!r} not found under {slice_dir}", list_path, line)
            queries = QuerySet(names, query_cameras, None, [condition] * len(names), slice_dir)
            training, validation = split_ground_truth_queries(ground_truth, self.train_query_share)
        if self.check_images:
            check_images_exist(slice_dir, scene.image_names, slice_dir / self.model, "database")
        logger.info("CMU slice %d (%s): %d database images, %d points, %d queries", number, condition, scene.num_images,
                    scene.num_points, len(queries))
        return LocalizationData(scene=scene, queries=queries, spec=self.spec(), root=root, validation=validation,
                                part=f"slice{number}", training_queries=training)

    @staticmethod
    def _query_camera(cameras: dict[str, Camera], name: str, intrinsics_path: Path, path: Path, line: int | None) -> Camera:
        cam = camera_id(name)
        if cam not in cameras:
            raise InputError(f"image {name!r}: camera {cam!r} (third '_' token) not in {intrinsics_path}", path, line)
        return cameras[cam]

    def _scene(self, slice_dir: Path, number: int, cameras: dict[str, Camera], intrinsics_path: Path) -> Scene:
        model_dir = slice_dir / self.model
        if model_dir.is_dir():
            scene = Scene.from_colmap(model_dir, slice_dir)
            scene.image_names = [f"database/{PurePosixPath(n).name}" for n in scene.image_names]
            return scene
        gt_path = slice_dir / f"ground-truth-database-images-slice{number}.txt"
        logger.info("slice %d has no %s model: using %s (the map will be triangulated)", number, self.model, gt_path.name)
        poses = read_pose_list(gt_path, centers=True)
        names = list(poses)
        db_cameras = [self._query_camera(cameras, n, intrinsics_path, gt_path, None) for n in names]
        return Scene([f"database/{PurePosixPath(n).name}" for n in names], db_cameras,
                     np.stack([poses[n].R for n in names]).reshape(-1, 3, 3),
                     np.stack([poses[n].t for n in names]).reshape(-1, 3), image_root=slice_dir)

    def _camera_poses(self, slice_dir: Path, cameras: dict[str, Camera], condition: str) -> QuerySet | None:
        folder = slice_dir / "camera-poses"
        if not folder.is_dir():
            return None
        poses: dict[str, Pose] = {}
        for path in sorted(folder.glob("*.txt")):
            if path.stat().st_size == 0:  # some releases ship empty files
                continue
            poses.update(read_pose_list(path, centers=True))
        if not poses:
            return None
        names = [f"query/{PurePosixPath(n).name}" for n in poses]
        query_cameras = [self._query_camera(cameras, n, slice_dir / "intrinsics.txt", folder, None) for n in poses]
        return QuerySet(names, query_cameras, list(poses.values()), [condition] * len(names), slice_dir)
