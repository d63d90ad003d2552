"""The common scene model every reader produces: a reference reconstruction and a query set.

Everything is held in flat numpy arrays (one row per image, point or observation) rather than one Python
object per point, so an Aachen-sized model (1.6M points, ~10M observations) fits in memory and slices fast.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuseloc.errors import InputError
from fuseloc.types import Camera, Pose

logger = logging.getLogger(__name__)


@dataclass
class Scene:
    """A reference (database) reconstruction.

    Attributes:
        image_names: N image names, relative to ``image_root``.
        image_cameras: list of N cameras (shared objects are fine).
        R_cam_from_world: (N, 3, 3) world-to-camera rotations.
        t_cam_from_world: (N, 3) world-to-camera translations in metres.
        points_xyz: (P, 3) float64 3D point positions in metres.
        obs_image: (M,) int32 index into the images of each observation.
        obs_point: (M,) int32 index into the points of each observation.
        obs_xy: (M, 2) float32 observation pixel position, COLMAP convention (pixel centre at +0.5).
        obs_keypoint: (M,) int32 index of the observing keypoint in its image (point2D_idx), -1 if unknown.
        image_root: directory the image names are relative to.
        point_ids: (P,) int64 original ids of the points (COLMAP point3D_id), for provenance.
        keypoint_source: tag of the local-feature cache whose keypoint indices ``obs_keypoint`` refers to,
            when the map was triangulated from it; None for models made with other features.
    """

    image_names: list[str]
    image_cameras: list[Camera]
    R_cam_from_world: np.ndarray
    t_cam_from_world: np.ndarray
    points_xyz: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    obs_image: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    obs_point: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    obs_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    obs_keypoint: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    image_root: Path | None = None
    point_ids: np.ndarray | None = None
    keypoint_source: str | None = None

    def __post_init__(self) -> None:
        n = len(self.image_names)
        if len(self.image_cameras) != n or self.R_cam_from_world.shape != (n, 3, 3) or self.t_cam_from_world.shape != (n, 3):
            raise InputError("scene arrays disagree on the number of images")
        m = len(self.obs_image)
        if not (len(self.obs_point) == len(self.obs_xy) == len(self.obs_keypoint) == m):
            raise InputError("scene observation arrays disagree in length")
        if self.point_ids is None:
            self.point_ids = np.arange(len(self.points_xyz), dtype=np.int64)

    @property
    def num_images(self) -> int:
        return len(self.image_names)

    @property
    def num_points(self) -> int:
        return len(self.points_xyz)

    def pose(self, index: int) -> Pose:
        return Pose(self.R_cam_from_world[index], self.t_cam_from_world[index])

    @property
    def centers(self) -> np.ndarray:
        """(N, 3) camera centres in world coordinates."""
        return -np.einsum("nji,nj->ni", self.R_cam_from_world, self.t_cam_from_world)

    def image_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.image_names)}

    def observations_by_image(self) -> list[np.ndarray]:
        """For each image, the indices of its observations (int64, in stored order)."""
        order = np.argsort(self.obs_image, kind="stable")
        bounds = np.searchsorted(self.obs_image[order], np.arange(self.num_images + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(self.num_images)]

    def without_points(self) -> Scene:
        return Scene(self.image_names, self.image_cameras, self.R_cam_from_world, self.t_cam_from_world, image_root=self.image_root)

    def subset_images(self, keep: np.ndarray) -> Scene:
        """The scene restricted to the images with ``keep`` True; points seen by no kept image are dropped."""
        keep = np.asarray(keep, bool)
        new_index = np.full(self.num_images, -1, np.int64)
        new_index[keep] = np.arange(keep.sum())
        obs_keep = keep[self.obs_image]
        point_used = np.zeros(self.num_points, bool)
        point_used[self.obs_point[obs_keep]] = True
        new_point = np.full(self.num_points, -1, np.int64)
        new_point[point_used] = np.arange(point_used.sum())
        return Scene(
            image_names=[n for n, k in zip(self.image_names, keep) if k],
            image_cameras=[c for c, k in zip(self.image_cameras, keep) if k],
            R_cam_from_world=self.R_cam_from_world[keep],
            t_cam_from_world=self.t_cam_from_world[keep],
            points_xyz=self.points_xyz[point_used],
            obs_image=new_index[self.obs_image[obs_keep]].astype(np.int32),
            obs_point=new_point[self.obs_point[obs_keep]].astype(np.int32),
            obs_xy=self.obs_xy[obs_keep],
            obs_keypoint=self.obs_keypoint[obs_keep],
            image_root=self.image_root,
            point_ids=self.point_ids[point_used],
            keypoint_source=self.keypoint_source,
        )

    def save(self, path: str | Path) -> Path:
        """Save as one compressed npz (atomically)."""
        from fuseloc.io import atomic_path

        cams = [[c.model, c.width, c.height, list(c.params)] for c in self.image_cameras]
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, image_names=np.array(self.image_names), cameras=np.array(json.dumps(cams)),
                         R=self.R_cam_from_world, t=self.t_cam_from_world, xyz=self.points_xyz,
                         obs_image=self.obs_image, obs_point=self.obs_point, obs_xy=self.obs_xy,
                         obs_keypoint=self.obs_keypoint, point_ids=self.point_ids,
                         keypoint_source=np.array(self.keypoint_source or ""))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, image_root: str | Path | None = None) -> Scene:
        with np.load(path) as z:
            cams = [Camera(m, w, h, tuple(p)) for m, w, h, p in json.loads(str(z["cameras"]))]
            return cls(image_names=[str(n) for n in z["image_names"]], image_cameras=cams, R_cam_from_world=z["R"],
                       t_cam_from_world=z["t"], points_xyz=z["xyz"], obs_image=z["obs_image"], obs_point=z["obs_point"],
                       obs_xy=z["obs_xy"], obs_keypoint=z["obs_keypoint"], point_ids=z["point_ids"],
                       keypoint_source=str(z["keypoint_source"]) or None,
                       image_root=None if image_root is None else Path(image_root))

    @classmethod
    def from_colmap(cls, model_dir: str | Path, image_root: str | Path | None = None) -> Scene:
        """Read a COLMAP model (binary or text, with or without rigs/frames).

        Uses the vectorised reader of :mod:`fuseloc.data.readers.colmap_model` (an Aachen-sized model in
        seconds); pycolmap's object-per-point route (:meth:`from_reconstruction`) stays for in-memory
        reconstructions.
        """
        from fuseloc.data.readers.colmap_model import read_model

        model = read_model(model_dir)
        return cls(
            image_names=model.image_names,
            image_cameras=[model.cameras[int(c)] for c in model.image_camera_ids],
            R_cam_from_world=model.R_cam_from_world.reshape(-1, 3, 3),
            t_cam_from_world=model.t_cam_from_world.reshape(-1, 3),
            points_xyz=model.points_xyz,
            obs_image=model.obs_image,
            obs_point=model.obs_point,
            obs_xy=model.obs_xy,
            obs_keypoint=model.obs_keypoint,
            image_root=None if image_root is None else Path(image_root),
            point_ids=model.point_ids,
        )

    @classmethod
    def from_reconstruction(cls, rec, image_root: str | Path | None = None) -> Scene:  # noqa: ANN001
        cameras: dict[int, Camera] = {}
        for cid, cam in rec.cameras.items():
            cameras[cid] = Camera(cam.model.name, int(cam.width), int(cam.height), tuple(float(p) for p in cam.params))
        image_ids = sorted(iid for iid, im in rec.images.items() if im.has_pose)
        names, cams, Rs, ts = [], [], [], []
        id_to_index = {}
        for index, iid in enumerate(image_ids):
            im = rec.images[iid]
            id_to_index[iid] = index
            T = im.cam_from_world()
            names.append(im.name)
            cams.append(cameras[im.camera_id])
            Rs.append(T.rotation.matrix())
            ts.append(np.asarray(T.translation))
        point3d_ids = np.array(sorted(rec.point3D_ids()), dtype=np.int64)
        xyz = np.array([rec.points3D[int(pid)].xyz for pid in point3d_ids]).reshape(-1, 3)
        pid_to_index = {int(pid): i for i, pid in enumerate(point3d_ids)}
        obs_image, obs_point, obs_xy, obs_kp = [], [], [], []
        for iid in image_ids:
            im = rec.images[iid]
            kp_idx = np.asarray(im.get_observation_point2D_idxs(), dtype=np.int64)
            if len(kp_idx) == 0:
                continue
            points2d = im.points2D
            obs_kp.append(kp_idx)
            obs_image.append(np.full(len(kp_idx), id_to_index[iid]))
            obs_xy.append(np.array([points2d[int(k)].xy for k in kp_idx]))
            obs_point.append(np.array([pid_to_index[int(points2d[int(k)].point3D_id)] for k in kp_idx]))
        def cat(parts: list, dtype: type, shape: tuple) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

        return cls(
            image_names=names,
            image_cameras=cams,
            R_cam_from_world=np.array(Rs).reshape(-1, 3, 3),
            t_cam_from_world=np.array(ts).reshape(-1, 3),
            points_xyz=xyz,
            obs_image=cat(obs_image, np.int32, (0,)),
            obs_point=cat(obs_point, np.int32, (0,)),
            obs_xy=cat(obs_xy, np.float32, (0, 2)),
            obs_keypoint=cat(obs_kp, np.int32, (0,)),
            image_root=None if image_root is None else Path(image_root),
            point_ids=point3d_ids,
        )


@dataclass
class QuerySet:
    """Query images with their intrinsics, optional ground truth and a condition tag each.

    Attributes:
        names: Q query names relative to ``image_root``.
        cameras: Q cameras.
        gt_poses: Q ground-truth world-to-camera poses (None where unknown), or None if no ground truth at all.
        conditions: Q condition tags ("day", "night", a season, a slice...); "all" when the dataset has none.
        image_root: directory the names are relative to.
    """

    names: list[str]
    cameras: list[Camera]
    gt_poses: list[Pose | None] | None = None
    conditions: list[str] | None = None
    image_root: Path | None = None

    def __post_init__(self) -> None:
        if len(self.cameras) != len(self.names):
            raise InputError("query names and cameras disagree in length")
        if self.conditions is None:
            self.conditions = ["all"] * len(self.names)
        if self.gt_poses is not None and len(self.gt_poses) != len(self.names):
            raise InputError("query names and ground-truth poses disagree in length")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_ground_truth(self) -> bool:
        return self.gt_poses is not None and any(p is not None for p in self.gt_poses)

    def subset(self, indices: list[int] | np.ndarray) -> QuerySet:
        idx = [int(i) for i in indices]
        return QuerySet(
            names=[self.names[i] for i in idx],
            cameras=[self.cameras[i] for i in idx],
            gt_poses=None if self.gt_poses is None else [self.gt_poses[i] for i in idx],
            conditions=[self.conditions[i] for i in idx],
            image_root=self.image_root,
        )
