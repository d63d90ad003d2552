"""RobotCar Seasons v2 from its standard download (DATASETS.md §5).

Layout::

    root/images/<condition>/{left,rear,right}/<timestamp>.jpg   overcast-reference is the map condition
    root/intrinsics/{left,rear,right}_intrinsics.txt             4 lines 'label value': fx, fy, cx, cy
    root/3D-models/all-merged/all.nvm                            reference model (names ./<cond>/<cam>/<ts>.png)
    root/robotcar_v2_test.txt                                    rear/<ts>.png (condition prefix tolerated)
    root/robotcar_v2_train.txt                                   <cond>/rear/<ts>.png + 4x4 camera-to-world

Quirks handled here: NVM names lose their leading ``./`` and their ``.png`` becomes ``.jpg`` (files on disk
are JPEG); the reference model was built with COLMAP, whose NVM exporter writes ABSOLUTE pixel measurements
(not VisualSFM's centre-relative ones): the convention is checked by reprojection when the file is read
(DATASETS.md §2.1); the test list's condition is found by looking the timestamp up in the condition folders;
training poses are camera-to-world and are inverted. The training queries train and validate only when the test
list is what gets localized (split per condition in time order, ``train_query_share``): no query is ever used both
for training or model selection and for evaluation.
Internal names are ``<condition>/<camera>/<timestamp>.jpg``; submissions use ``rear/<timestamp>.jpg``.
"""

from __future__ import annotations

import logging
import os
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
from fuseloc.data.readers.nvm import MeasurementConvention, read_nvm
from fuseloc.data.scene import QuerySet
from fuseloc.errors import InputError
from fuseloc.io import iter_lines, parse_floats
from fuseloc.types import Camera, Pose

logger = logging.getLogger(__name__)

REFERENCE_CONDITION = "overcast-reference"
QUERY_CONDITIONS = ("dawn", "dusk", "night", "night-rain", "overcast-summer", "overcast-winter", "rain", "snow", "sun")
CAMERAS = ("left", "rear", "right")
DAY_NIGHT_SPLITS = {
    "day": ("dawn", "dusk", "overcast-summer", "overcast-winter", "rain", "snow", "sun"),
    "night": ("night", "night-rain"),
}


def read_intrinsics(path: Path, width: int, height: int) -> Camera:
    """A PINHOLE camera from the first four ``label value`` lines (fx, fy, cx, cy) of an intrinsics file."""
    values = []
    for number, tokens in iter_lines(path):
        if len(values) == 4:
            break
        if len(tokens) < 2:
            raise InputError(f"expected 'label value', got {' '.join(tokens)!r}", path, number)
        values += parse_floats(tokens[1:2], path, number, "an intrinsic value")
    if len(values) < 4:
        raise InputError(f"expected 4 lines (fx, fy, cx, cy), found {len(values)}", path)
    return Camera("PINHOLE", width, height, tuple(values))


def camera_to_world_to_pose(matrix: np.ndarray) -> Pose:
    """A 4x4 camera-to-world matrix -> world-to-camera pose (``R = R_c2wᵀ``, ``t = -R_c2wᵀ c``)."""
    R_c2w, c = matrix[:3, :3], matrix[:3, 3]
    return Pose(R_c2w.T.copy(), -R_c2w.T @ c)


def pose_to_camera_to_world(pose: Pose) -> np.ndarray:
    return pose.inverse().matrix()


class RobotCarReader(DatasetReader):
    """RobotCar Seasons v2.

    Args:
        root: dataset root; default ``$FUSELOC_DATA/robotcar``. Environment variables are expanded.
        images: image folder relative to ``root``.
        nvm: reference NVM model relative to ``root``.
        intrinsics: folder of ``<camera>_intrinsics.txt`` files relative to ``root``.
        test_list: v2 test query list relative to ``root``.
        train_list: v2 training queries with poses relative to ``root``; when present and ``queries`` is ``test``,
            split into training queries (cross-condition supervision) and validation queries.
        queries: ``test`` (server submission) or ``train`` (local evaluation against the public poses; validation
            then holds out database images instead).
        image_size: (width, height) of the images; 1024x1024 in the release.
        check_images: fail early when a listed image file is missing.
        name: benchmark name used in output paths.
        measurements: pixel convention of the NVM measurements: ``auto`` (decided by reprojection; the release
            file is absolute), ``absolute`` or ``centered``.
        train_query_share: share of each condition's training queries (the first in time order) that training
            learns from; the rest validate (:func:`~fuseloc.data.readers.base.split_ground_truth_queries`).
    """

    def __init__(self, root: str | Path | None = None, images: str = "images", nvm: str = "3D-models/all-merged/all.nvm",
                 intrinsics: str = "intrinsics", test_list: str = "robotcar_v2_test.txt",
                 train_list: str = "robotcar_v2_train.txt", queries: Literal["test", "train"] = "test",
                 image_size: tuple[int, int] = (1024, 1024), check_images: bool = True, name: str = "robotcar_v2",
                 measurements: MeasurementConvention = "auto", train_query_share: float = 0.5):
        self.root = root
        self.images = images
        self.nvm = nvm
        self.intrinsics = intrinsics
        self.test_list = test_list
        self.train_list = train_list
        self.queries = queries
        self.image_size = image_size
        self.check_images = check_images
        self.name = name
        self.measurements = measurements
        self.train_query_share = train_query_share
        self._cameras: dict[str, Camera] = {}
        self._index: dict[tuple[str, str], list[str]] | None = None

    # -------------------------------------------------------------------------------------------- helpers

    def _camera(self, root: Path, camera: str, where: Path, line: int | None = None) -> Camera:
        if camera not in CAMERAS:
            raise InputError(f"unknown RobotCar camera folder {camera!r} (expected one of {', '.join(CAMERAS)})", where, line)
        if camera not in self._cameras:
            self._cameras[camera] = read_intrinsics(root / self.intrinsics / f"{camera}_intrinsics.txt", *self.image_size)
        return self._cameras[camera]

    def _condition_index(self, image_root: Path) -> dict[tuple[str, str], list[str]]:
        """(camera, timestamp) -> conditions whose folder holds that image."""
        if self._index is None:
            self._index = {}
            for condition in QUERY_CONDITIONS:
                for camera in CAMERAS:
                    folder = image_root / condition / camera
                    if folder.is_dir():
                        for file in os.listdir(folder):
                            self._index.setdefault((camera, Path(file).stem), []).append(condition)
        return self._index

    def _resolve(self, raw: str, image_root: Path, path: Path, line: int) -> tuple[str, str]:
        """A list entry (``rear/<ts>.png`` or ``<cond>/rear/<ts>.png``) -> (internal name, condition)."""
        parts = PurePosixPath(raw.removeprefix("./")).parts
        if len(parts) == 3 and parts[0] in (*QUERY_CONDITIONS, REFERENCE_CONDITION):
            condition, camera, file = parts
        elif len(parts) == 2:
            camera, file = parts
            found = self._condition_index(image_root).get((camera, PurePosixPath(file).stem), [])
            if not found:
                raise InputError(f"query {raw!r} not found in any condition folder under {image_root}", path, line)
            if len(found) > 1:
                raise InputError(f"query {raw!r} exists in several conditions ({', '.join(found)})", path, line)
            condition = found[0]
        else:
            raise InputError(f"expected '[<condition>/]<camera>/<timestamp>.png', got {raw!r}", path, line)
        name = f"{condition}/{camera}/{PurePosixPath(file).stem}.jpg"
        if self.check_images and not (image_root / name).is_file():
            raise InputError(f"query image {name!r} not found under {image_root}", path, line)
        return name, condition

    def read_test_list(self, root: Path) -> QuerySet:
        image_root = root / self.images
        path = root / self.test_list
        names, cameras, conditions = [], [], []
        for line, tokens in iter_lines(path):
            name, condition = self._resolve(tokens[0], image_root, path, line)
            names.append(name)
            cameras.append(self._camera(root, name.split("/")[1], path, line))
            conditions.append(condition)
        return QuerySet(names, cameras, None, conditions, image_root)

    def read_train_list(self, root: Path) -> QuerySet:
        image_root = root / self.images
        path = root / self.train_list
        names, cameras, conditions, poses = [], [], [], []
        for line, tokens in iter_lines(path):
            if len(tokens) != 17:
                raise InputError(f"expected 'name' + 16 numbers (4x4 camera-to-world), got {len(tokens)} fields", path, line)
            matrix = np.array(parse_floats(tokens[1:], path, line, "a 4x4 matrix")).reshape(4, 4)
            R = matrix[:3, :3]
            if not np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-6) or not np.allclose(R @ R.T, np.eye(3), atol=1e-3) \
                    or np.linalg.det(R) < 0:
                raise InputError("not a rigid 4x4 transform (last row 0 0 0 1, rotation block orthonormal)", path, line)
            name, condition = self._resolve(tokens[0], image_root, path, line)
            names.append(name)
            cameras.append(self._camera(root, name.split("/")[1], path, line))
            conditions.append(condition)
            poses.append(camera_to_world_to_pose(matrix))
        return QuerySet(names, cameras, poses, conditions, image_root)

    # ---------------------------------------------------------------------------------------------- load

    def load(self) -> LocalizationData:
        root = resolve_root(self.root, "robotcar")
        if not root.is_dir():
            raise InputError("RobotCar root not found", root)
        image_root = root / self.images
        nvm_path = root / self.nvm
        model = read_nvm(nvm_path)
        names, cameras = [], []
        for raw in model.names:
            parts = PurePosixPath(raw.removeprefix("./")).parts
            if len(parts) != 3:
                raise InputError(f"NVM image {raw!r} is not '<condition>/<camera>/<timestamp>.png'", nvm_path)
            names.append(f"{parts[0]}/{parts[1]}/{PurePosixPath(parts[2]).stem}.jpg")
            cameras.append(self._camera(root, parts[1], nvm_path))
        scene = model.to_scene(names, cameras, image_root=image_root, measurements=self.measurements)
        if self.check_images:
            check_images_exist(image_root, scene.image_names, nvm_path, "database")
        train = self.read_train_list(root) if (root / self.train_list).is_file() else None
        if self.queries == "train":
            if train is None:
                raise InputError("queries='train' needs the training poses file", root / self.train_list)
            queries, validation, training = train, None, None
        else:
            queries = self.read_test_list(root)
            training, validation = split_ground_truth_queries(train, self.train_query_share)
        logger.info("RobotCar: %d database images, %d points, %d %s queries", scene.num_images, scene.num_points,
                    len(queries), self.queries)
        spec = BenchmarkSpec(name=self.name, thresholds=STANDARD_THRESHOLDS, splits=DAY_NIGHT_SPLITS,
                             submission_names="parent_basename", submission_extension=".jpg")
        return LocalizationData(scene=scene, queries=queries, spec=spec, root=root, validation=validation,
                                training_queries=training)
