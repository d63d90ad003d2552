"""Cambridge Landmarks (five scenes) with hloc's re-triangulated COLMAP models, or the original NVM (DATASETS.md §7).

Layout::

    root/<Scene>/seq<N>/frame<5 digits>.png                  1920x1080 frames
    root/<Scene>/dataset_train.txt, dataset_test.txt         3 header lines, then name X Y Z W P Q R (centre, q)
    root/<Scene>/reconstruction.nvm                          VisualSFM model, names end .jpg
    root/CambridgeLandmarks_Colmap_Retriangulated_1024px/<Scene>/
        model_train/ (binary, SIMPLE_RADIAL at 1024 px)  empty_all/ (text, all images, no points)
        list_query.txt (or list_query_linux.txt)

Image names are ``<Scene>/seqN/frameNNNNN.png`` relative to ``root``, so the five scenes share one image root
and their results can share one file. The 1024-px models are rescaled to the real image width (f, cx, cy
and observations scale; distortion does not). Scored locally: median translation (cm) and rotation (deg) per
scene, plus hloc's recall thresholds.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from fuseloc.data.readers.base import (
    BenchmarkSpec,
    DatasetReader,
    LocalizationData,
    check_images_exist,
    resolve_root,
)
from fuseloc.data.readers.colmap_model import read_model
from fuseloc.data.readers.generic import read_image_list
from fuseloc.data.readers.nvm import MeasurementConvention, read_nvm
from fuseloc.data.scene import QuerySet, Scene
from fuseloc.errors import InputError
from fuseloc.io import parse_floats
from fuseloc.types import Camera, Pose

logger = logging.getLogger(__name__)

SCENES: tuple[str, ...] = ("KingsCollege", "OldHospital", "ShopFacade", "StMarysChurch", "GreatCourt")
#: hloc's Cambridge recall thresholds (m, deg).
CAMBRIDGE_THRESHOLDS: tuple[tuple[float, float], ...] = (
    (0.01, 1.0), (0.02, 2.0), (0.03, 3.0), (0.05, 5.0), (0.25, 2.0), (0.5, 5.0), (5.0, 10.0))
#: Entries with a larger translation are degenerate in the release (ACE drops them too).
MAX_TRANSLATION = 10_000.0
QUERY_LISTS = ("list_query.txt", "list_query_linux.txt")


def read_dataset_poses(path: Path) -> dict[str, Pose | None]:
    """``dataset_{train,test}.txt``: 3 header lines, then ``name X Y Z W P Q R`` (centre, world-to-camera q).

    Degenerate entries (non-finite, or |t| > 10 km) map to None: the image exists but has no usable pose.
    """
    if not path.is_file():
        raise InputError("file not found", path)
    poses: dict[str, Pose | None] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            tokens = line.split()
            if number <= 3 or not tokens:
                continue
            if len(tokens) != 8:
                raise InputError(f"expected 'name X Y Z W P Q R' (8 fields), got {len(tokens)}", path, number)
            values = np.array(parse_floats(tokens[1:], path, number, "a pose"))
            if not np.all(np.isfinite(values)) or np.linalg.norm(values[3:]) < 1e-8:
                poses[tokens[0]] = None
                continue
            pose = Pose.from_center(values[3:], values[:3])
            poses[tokens[0]] = pose if np.linalg.norm(pose.t) <= MAX_TRANSLATION else None
    return poses


def pose_to_dataset_line(name: str, pose: Pose) -> str:
    """Inverse of :func:`read_dataset_poses` for one line (centre, then quaternion)."""
    return " ".join([name, *(f"{v:.10g}" for v in pose.center), *(f"{v:.10g}" for v in pose.qvec)])


def image_size(path: Path) -> tuple[int, int]:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError("cannot read image to get its size", path)
    return int(image.shape[1]), int(image.shape[0])


class CambridgeReader(DatasetReader):
    """Cambridge Landmarks, one part per scene.

    Args:
        root: dataset root; default ``$FUSELOC_DATA/cambridge``. Environment variables are expanded.
        scenes: scenes to load; default all five.
        map_source: ``colmap`` (hloc's ``model_train``) or ``nvm`` (the original ``reconstruction.nvm``
            restricted to ``dataset_train.txt``, focal from the NVM, principal point at the image centre).
        ground_truth: ``colmap`` (poses in hloc's ``empty_all``) or ``original`` (``dataset_test.txt``).
        colmap_dir: folder of hloc's models relative to ``root``.
        image_size: (width, height) of the frames; default: read from the first database image.
        check_images: fail early when a listed image file is missing.
        name: benchmark name used in output paths.
        measurements: pixel convention of ``reconstruction.nvm`` measurements (``map_source='nvm'``): ``auto``
            (decided by reprojection; the release files, written by VisualSFM, are centre-relative),
            ``absolute`` or ``centered``.

    No validation queries are handed out (``LocalizationData.validation`` is None): the only posed queries
    are the test images, and selecting checkpoints on them would tune on the test set. Training validates
    on held-out database images instead (the DataModule's ``holdout``).
    """

    def __init__(self, root: str | Path | None = None, scenes: list[str] | None = None,
                 map_source: Literal["colmap", "nvm"] = "colmap", ground_truth: Literal["colmap", "original"] = "colmap",
                 colmap_dir: str = "CambridgeLandmarks_Colmap_Retriangulated_1024px",
                 image_size: tuple[int, int] | None = None, check_images: bool = True, name: str = "cambridge",
                 measurements: MeasurementConvention = "auto"):
        self.root = root
        self.scenes = list(SCENES) if scenes is None else list(scenes)
        self.map_source = map_source
        self.ground_truth = ground_truth
        self.colmap_dir = colmap_dir
        self.image_size = image_size
        self.check_images = check_images
        self.name = name
        self.measurements = measurements

    def spec(self) -> BenchmarkSpec:
        return BenchmarkSpec(name=self.name, thresholds=CAMBRIDGE_THRESHOLDS, report="median")

    def load(self) -> LocalizationData:
        if len(self.scenes) != 1:
            raise InputError(f"Cambridge has one map per scene and {len(self.scenes)} scenes were selected: "
                             "use load_parts() (evaluate.py does) or select one scene")
        return self.load_scene(self.scenes[0])

    def load_parts(self) -> list[LocalizationData]:
        return [self.load_scene(s) for s in self.scenes]

    def load_scene(self, scene_name: str) -> LocalizationData:
        root = resolve_root(self.root, "cambridge")
        if not (root / scene_name).is_dir():
            raise InputError(f"scene {scene_name!r} not found (known: {', '.join(SCENES)})", root)
        if self.map_source == "nvm":
            scene, queries = self._from_nvm(root, scene_name)
        else:
            scene, queries = self._from_colmap(root, scene_name)
        if self.check_images:
            check_images_exist(root, scene.image_names, root / scene_name, "database")
            check_images_exist(root, queries.names, root / scene_name, "query")
        logger.info("Cambridge %s: %d database images, %d points, %d queries", scene_name, scene.num_images,
                    scene.num_points, len(queries))
        return LocalizationData(scene=scene, queries=queries, spec=self.spec(), root=root, validation=None,
                                part=scene_name)

    def _size(self, root: Path, first_image: str) -> tuple[int, int]:
        return tuple(self.image_size) if self.image_size is not None else image_size(root / first_image)  # type: ignore[return-value]

    def _original_gt(self, root: Path, scene_name: str, names: list[str]) -> list[Pose | None]:
        poses = read_dataset_poses(root / scene_name / "dataset_test.txt")
        return [poses.get(n) for n in names]

    def _from_colmap(self, root: Path, scene_name: str) -> tuple[Scene, QuerySet]:
        hloc_dir = root / self.colmap_dir / scene_name
        train = Scene.from_colmap(hloc_dir / "model_train", root)
        if train.num_images == 0:
            raise InputError("reference model has no images", hloc_dir / "model_train")
        width, height = self._size(root, f"{scene_name}/{train.image_names[0]}")
        scale = _scale(train.image_cameras[0], width, height, hloc_dir / "model_train")
        train.image_names = [f"{scene_name}/{n}" for n in train.image_names]
        train.image_cameras = [_scaled(c, scale, hloc_dir / "model_train") for c in train.image_cameras]
        train.obs_xy = (train.obs_xy * scale).astype(np.float32)
        everything = read_model(hloc_dir / "empty_all")
        index = {n: i for i, n in enumerate(everything.image_names)}
        list_path = next((hloc_dir / n for n in QUERY_LISTS if (hloc_dir / n).is_file()), None)
        if list_path is None:
            raise InputError(f"no {' or '.join(QUERY_LISTS)}", hloc_dir)
        raw_names = read_image_list(list_path)
        missing = [n for n in raw_names if n not in index]
        if missing:
            raise InputError(f"query {missing[0]!r} has no camera in empty_all ({len(missing)} missing)", list_path)
        rows = [index[n] for n in raw_names]
        cameras = [_scaled(everything.cameras[int(everything.image_camera_ids[r])], scale, hloc_dir / "empty_all") for r in rows]
        names = [f"{scene_name}/{n}" for n in raw_names]
        if self.ground_truth == "original":
            gt = self._original_gt(root, scene_name, raw_names)
        else:
            R = everything.R_cam_from_world
            gt = [Pose(R[r], everything.t_cam_from_world[r]) for r in rows]
        return train, QuerySet(names, cameras, gt, [scene_name] * len(names), root)

    def _from_nvm(self, root: Path, scene_name: str) -> tuple[Scene, QuerySet]:
        nvm_path = root / scene_name / "reconstruction.nvm"
        model = read_nvm(nvm_path)
        # The NVM names frames .jpg; the files are .png.
        raw_names = [str(PurePosixPath(n.removeprefix("./")).with_suffix(".png")) for n in model.names]
        train_names = set(read_dataset_poses(root / scene_name / "dataset_train.txt"))
        width, height = self._size(root, f"{scene_name}/{raw_names[0]}") if raw_names else (0, 0)
        cameras = [Camera("SIMPLE_PINHOLE", width, height, (float(f), width / 2.0, height / 2.0)) for f in model.focals]
        keep = np.array([n in train_names for n in raw_names])
        if not keep.any():
            raise InputError("no NVM image is listed in dataset_train.txt", nvm_path)
        scene = model.to_scene([f"{scene_name}/{n}" for n in raw_names], cameras, keep, image_root=root,
                               measurements=self.measurements)
        test_poses = read_dataset_poses(root / scene_name / "dataset_test.txt")
        camera_of = dict(zip(raw_names, cameras))
        missing = [n for n in test_poses if n not in camera_of]
        if missing:
            raise InputError(f"test image {missing[0]!r} is not in {nvm_path} (no focal length)",
                             root / scene_name / "dataset_test.txt")
        names = list(test_poses)
        queries = QuerySet([f"{scene_name}/{n}" for n in names], [camera_of[n] for n in names],
                           [test_poses[n] for n in names], [scene_name] * len(names), root)
        return scene, queries


def _scale(camera: Camera, width: int, height: int, where: Path) -> float:
    scale_x, scale_y = width / camera.width, height / camera.height
    if abs(scale_x - scale_y) > 0.01 * scale_x:
        raise InputError(f"model camera {camera.width}x{camera.height} and images {width}x{height} differ in aspect", where)
    return scale_x


def _scaled(camera: Camera, scale: float, where: Path) -> Camera:
    if camera.model not in ("SIMPLE_RADIAL", "SIMPLE_PINHOLE", "PINHOLE", "RADIAL", "OPENCV"):
        raise InputError(f"unexpected camera model {camera.model} in hloc's Cambridge model", where)
    return camera if scale == 1.0 else camera.scaled(scale)
