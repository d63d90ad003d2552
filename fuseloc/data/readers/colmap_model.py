"""A fast COLMAP model reader (binary and text) into flat numpy arrays, and writers of legacy models.

pycolmap builds one C++ object per point and observation and our conversion then loops over them in Python,
which takes minutes for Aachen v1.1 (1.6M points, ~10M observations). Here binary files are memory-mapped
and each image's 2D points are read with one ``np.frombuffer``; only ``points3D.bin`` needs a per-point loop
(its records have variable length) and that loop reads just the id and position, because the observations
are already in ``images.bin``.

Formats (DATASETS.md §1): legacy three-file models and COLMAP >= 3.12 models (which add rigs/frames files,
ignored here: the three legacy files keep their layout) are both accepted, ``.bin`` or ``.txt``.
"""

from __future__ import annotations

import logging
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuseloc.errors import InputError
from fuseloc.types import CAMERA_MODEL_PARAMS, Camera, pose_problem

logger = logging.getLogger(__name__)

#: COLMAP camera model ids (DATASETS.md §1.3).
CAMERA_MODEL_IDS: dict[int, str] = {
    0: "SIMPLE_PINHOLE",
    1: "PINHOLE",
    2: "SIMPLE_RADIAL",
    3: "RADIAL",
    4: "OPENCV",
    5: "OPENCV_FISHEYE",
    6: "FULL_OPENCV",
}
CAMERA_MODEL_NAMES_TO_IDS = {v: k for k, v in CAMERA_MODEL_IDS.items()}

POINT2D_DTYPE = np.dtype([("xy", "<f8", (2,)), ("point3D_id", "<i8")])
IMAGE_HEAD = struct.Struct("<i7di")  # image_id, qvec, tvec, camera_id
POINT_HEAD = struct.Struct("<Q3d3BdQ")  # point3D_id, xyz, rgb, error, track_length
CAMERA_HEAD = struct.Struct("<iiQQ")


@dataclass
class ColmapModel:
    """A COLMAP model as flat arrays (images in file order, points sorted by id).

    Attributes:
        cameras: camera_id -> Camera.
        image_ids: (N,) int64 COLMAP image ids.
        image_names: N names relative to the image root.
        image_camera_ids: (N,) int64 camera id of each image.
        qvecs: (N, 4) world-to-camera rotations, (w, x, y, z).
        t_cam_from_world: (N, 3) world-to-camera translations.
        point_ids: (P,) int64 sorted point3D ids.
        points_xyz: (P, 3) float64.
        obs_image: (M,) int32 row in the images of each observation.
        obs_point: (M,) int32 row in the points.
        obs_xy: (M, 2) float32 pixel position (COLMAP convention).
        obs_keypoint: (M,) int32 point2D index in its image.
    """

    cameras: dict[int, Camera]
    image_ids: np.ndarray
    image_names: list[str]
    image_camera_ids: np.ndarray
    qvecs: np.ndarray
    t_cam_from_world: np.ndarray
    point_ids: np.ndarray
    points_xyz: np.ndarray
    obs_image: np.ndarray
    obs_point: np.ndarray
    obs_xy: np.ndarray
    obs_keypoint: np.ndarray

    @property
    def R_cam_from_world(self) -> np.ndarray:
        """(N, 3, 3) world-to-camera rotation matrices."""
        return qvecs_to_rotmats(self.qvecs)


def qvecs_to_rotmats(qvecs: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions (w, x, y, z) -> (N, 3, 3) rotations, vectorised version of ``qvec_to_rotmat``."""
    q = np.asarray(qvecs, np.float64).reshape(-1, 4)
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if np.any(~np.isfinite(norms)) or np.any(norms < 1e-8):
        raise InputError("invalid (zero or non-finite) quaternion in model")
    w, x, y, z = (q / norms).T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        1,
    )


def model_extension(model_dir: str | Path) -> str:
    """``.bin`` or ``.txt``, whichever complete set of the three legacy files ``model_dir`` holds."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError("COLMAP model directory not found", model_dir)
    for ext in (".bin", ".txt"):
        if all((model_dir / f"{n}{ext}").is_file() for n in ("cameras", "images", "points3D")):
            return ext
    raise InputError("not a COLMAP model: needs cameras, images and points3D, all .bin or all .txt", model_dir)


def read_model(model_dir: str | Path) -> ColmapModel:
    """Read a COLMAP model directory (binary or text, with or without rigs/frames files)."""
    model_dir = Path(model_dir)
    ext = model_extension(model_dir)
    if ext == ".bin":
        cameras = read_cameras_binary(model_dir / "cameras.bin")
        images = _read_images_binary(model_dir / "images.bin")
        point_ids, xyz = _read_points_binary(model_dir / "points3D.bin")
    else:
        cameras = read_cameras_text(model_dir / "cameras.txt")
        images = _read_images_text(model_dir / "images.txt")
        point_ids, xyz = _read_points_text(model_dir / "points3D.txt")
    model = _assemble(model_dir, cameras, images, point_ids, xyz)
    if not model.image_names:
        raise InputError("the COLMAP model has no images", model_dir / f"images{ext}")
    return model


def locate_image(model_dir: str | Path, name: str | None = None, camera_id: int | None = None) -> tuple[Path, int | None]:
    """The images file of a model and the line of the first image with this ``name`` or ``camera_id``.

    For error messages only (it rescans the file); binary models and images not found give no line.
    """
    model_dir = Path(model_dir)
    path = model_dir / "images.txt"
    if not path.is_file() or (model_dir / "images.bin").is_file():
        return model_dir / "images.bin", None
    expect_points = False
    for number, line in _numbered_lines(path):
        tokens = line.split()
        if expect_points and (not tokens or _is_points_line(tokens)):
            expect_points = False
            continue
        if len(tokens) < 10:
            continue
        expect_points = True
        if (name is not None and line.split(None, 9)[9] == name) or (camera_id is not None and tokens[8] == str(camera_id)):
            return path, number
    return path, None


# ------------------------------------------------------------------------------------------------ binary


def _map(path: Path) -> mmap.mmap | bytes:
    if not path.is_file():
        raise InputError("file not found", path)
    with open(path, "rb") as f:
        if path.stat().st_size == 0:
            raise InputError("empty file", path)
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read_cameras_binary(path: Path) -> dict[int, Camera]:
    buf = _map(path)
    cameras = {}
    try:
        (count,) = struct.unpack_from("<Q", buf, 0)
        offset = 8
        for k in range(count):
            camera_id, model_id, width, height = CAMERA_HEAD.unpack_from(buf, offset)
            offset += CAMERA_HEAD.size
            if model_id not in CAMERA_MODEL_IDS:
                raise InputError(f"camera {camera_id} (record {k + 1}) has unsupported model id {model_id}", path)
            model = CAMERA_MODEL_IDS[model_id]
            n = CAMERA_MODEL_PARAMS[model]
            params = struct.unpack_from(f"<{n}d", buf, offset)
            offset += 8 * n
            try:
                cameras[camera_id] = Camera(model, int(width), int(height), tuple(params))
            except InputError as exc:
                raise InputError(f"camera {camera_id} (record {k + 1}): {exc.raw_message}", path) from None
    except struct.error:
        raise InputError(f"truncated file (read {len(cameras)} cameras)", path) from None
    return cameras


@dataclass
class _Images:
    ids: np.ndarray
    names: list[str]
    camera_ids: np.ndarray
    qvecs: np.ndarray
    tvecs: np.ndarray
    obs_image: np.ndarray  # row in the images
    obs_point_id: np.ndarray  # int64 point3D ids
    obs_xy: np.ndarray
    obs_keypoint: np.ndarray


def _read_images_binary(path: Path) -> _Images:
    buf = _map(path)
    size = len(buf)
    ids, names, cam_ids, poses = [], [], [], []
    obs_image, obs_pid, obs_xy, obs_kp = [], [], [], []
    try:
        (count,) = struct.unpack_from("<Q", buf, 0)
        offset = 8
        for row in range(count):
            head = IMAGE_HEAD.unpack_from(buf, offset)
            offset += IMAGE_HEAD.size
            end = buf.find(b"\0", offset)
            if end < 0:
                raise struct.error
            name = bytes(buf[offset:end]).decode("utf-8", errors="replace")
            offset = end + 1
            (num_points,) = struct.unpack_from("<Q", buf, offset)
            offset += 8
            nbytes = num_points * POINT2D_DTYPE.itemsize
            if offset + nbytes > size:
                raise struct.error
            problem = pose_problem(head[1:8])
            if problem:
                raise InputError(f"image {name!r} (record {row + 1}): {problem}", path)
            ids.append(head[0])
            cam_ids.append(head[8])
            poses.append(head[1:8])
            names.append(name)
            if num_points:
                points = np.frombuffer(buf, POINT2D_DTYPE, count=num_points, offset=offset)
                observed = np.flatnonzero(points["point3D_id"] != -1)
                if len(observed):
                    obs_kp.append(observed.astype(np.int32))
                    obs_pid.append(points["point3D_id"][observed])
                    obs_xy.append(points["xy"][observed].astype(np.float32))
                    obs_image.append(np.full(len(observed), row, np.int32))
                del points
            offset += nbytes
    except struct.error:
        raise InputError(f"truncated or corrupt file after {len(names)} images (byte {offset})", path) from None
    poses_arr = np.asarray(poses, np.float64).reshape(-1, 7)
    return _Images(
        np.asarray(ids, np.int64), names, np.asarray(cam_ids, np.int64), poses_arr[:, :4], poses_arr[:, 4:],
        _cat(obs_image, np.int32, (0,)), _cat(obs_pid, np.int64, (0,)), _cat(obs_xy, np.float32, (0, 2)),
        _cat(obs_kp, np.int32, (0,)),
    )


def _read_points_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    buf = _map(path)
    try:
        (count,) = struct.unpack_from("<Q", buf, 0)
        ids = np.empty(count, np.int64)
        xyz = np.empty((count, 3), np.float64)
        offset = 8
        unpack = POINT_HEAD.unpack_from
        head_size = POINT_HEAD.size
        for k in range(count):
            pid, x, y, z, _, _, _, _, track_length = unpack(buf, offset)
            ids[k] = pid
            xyz[k] = (x, y, z)
            offset += head_size + 8 * track_length
        if offset > len(buf):
            raise struct.error
    except struct.error:
        raise InputError(f"truncated or corrupt file (byte {offset})", path) from None
    bad = np.flatnonzero(~np.all(np.isfinite(xyz), axis=1))
    if len(bad):
        raise InputError(f"point {ids[bad[0]]} (record {bad[0] + 1}) has a non-finite position"
                         f"{f' ({len(bad) - 1} more points too)' if len(bad) > 1 else ''}", path)
    return ids, xyz


def _cat(parts: list[np.ndarray], dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(shape, dtype)


# -------------------------------------------------------------------------------------------------- text


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without the newline) for every non-comment line, blank lines included."""
    if not path.is_file():
        raise InputError("file not found", path)
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            stripped = line.strip()
            if stripped.startswith("#"):
                continue
            yield number, stripped


def read_cameras_text(path: Path) -> dict[int, Camera]:
    cameras = {}
    for number, line in _numbered_lines(path):
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 5:
            raise InputError(f"expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', got {line!r}", path, number)
        try:
            camera_id = int(tokens[0])
            cameras[camera_id] = Camera.from_tokens(tokens[1:])
        except InputError as exc:  # before ValueError, of which InputError is a subclass
            raise exc.at(path, number) from None
        except ValueError:
            raise InputError(f"camera id must be an integer, got {tokens[0]!r}", path, number) from None
    return cameras


def _is_points_line(tokens: list[str]) -> bool:
    if len(tokens) % 3:
        return False
    try:
        [float(t) for t in tokens]
    except ValueError:
        return False
    return True


def _read_images_text(path: Path) -> _Images:
    ids, names, cam_ids, poses = [], [], [], []
    obs_image, obs_pid, obs_xy, obs_kp = [], [], [], []
    expect_points = False
    for number, line in _numbered_lines(path):
        tokens = line.split()
        if expect_points and (not tokens or _is_points_line(tokens)):
            # The second line of an image (may be empty): X Y POINT3D_ID triples.
            expect_points = False
            if not tokens:
                continue
            values = np.asarray(tokens, np.float64).reshape(-1, 3)
            if not np.all(np.isfinite(values)):
                raise InputError("non-finite value in POINTS2D line", path, number)
            observed = np.flatnonzero(values[:, 2] != -1)
            if len(observed):
                obs_kp.append(observed.astype(np.int32))
                obs_pid.append(values[observed, 2].astype(np.int64))
                obs_xy.append(values[observed, :2].astype(np.float32))
                obs_image.append(np.full(len(observed), len(ids) - 1, np.int32))
            continue
        if not tokens:
            continue
        if len(tokens) < 10:
            raise InputError(f"expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got {line!r}", path, number)
        try:
            image_id, camera_id = int(tokens[0]), int(tokens[8])
            pose = [float(t) for t in tokens[1:8]]
        except ValueError:
            raise InputError(f"expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got {line!r}", path, number) from None
        # Names may contain spaces: everything after CAMERA_ID.
        name = line.split(None, 9)[9]
        problem = pose_problem(pose)
        if problem:
            raise InputError(f"image {name!r}: {problem}", path, number)
        ids.append(image_id)
        cam_ids.append(camera_id)
        poses.append(pose)
        names.append(name)
        expect_points = True
    poses_arr = np.asarray(poses, np.float64).reshape(-1, 7)
    return _Images(
        np.asarray(ids, np.int64), names, np.asarray(cam_ids, np.int64), poses_arr[:, :4], poses_arr[:, 4:],
        _cat(obs_image, np.int32, (0,)), _cat(obs_pid, np.int64, (0,)), _cat(obs_xy, np.float32, (0, 2)),
        _cat(obs_kp, np.int32, (0,)),
    )


def _read_points_text(path: Path) -> tuple[np.ndarray, np.ndarray]:
    ids, xyz = [], []
    for number, line in _numbered_lines(path):
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 8 or (len(tokens) - 8) % 2:
            raise InputError(f"expected 'POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)*', got {len(tokens)} fields",
                             path, number)
        try:
            ids.append(int(tokens[0]))
            xyz.append([float(t) for t in tokens[1:4]])
        except ValueError:
            raise InputError(f"non-numeric point id or position in {line[:80]!r}", path, number) from None
        if not np.all(np.isfinite(xyz[-1])):
            raise InputError(f"point {ids[-1]} has a non-finite position", path, number)
    return np.asarray(ids, np.int64), np.asarray(xyz, np.float64).reshape(-1, 3)


# ------------------------------------------------------------------------------------------------ assembly


def _assemble(model_dir: Path, cameras: dict[int, Camera], images: _Images, point_ids: np.ndarray,
              xyz: np.ndarray) -> ColmapModel:
    missing = sorted(set(images.camera_ids.tolist()) - set(cameras))
    if missing:
        where, line = locate_image(model_dir, camera_id=missing[0])
        raise InputError(f"image refers to camera id {missing[0]}, which the cameras file does not define"
                         f"{f' (nor {len(missing) - 1} more ids)' if len(missing) > 1 else ''}", where, line)
    if len(set(images.ids.tolist())) != len(images.ids):
        raise InputError("duplicate image ids", model_dir)
    order = np.argsort(point_ids, kind="stable")
    point_ids, xyz = point_ids[order], xyz[order]
    if len(point_ids) > 1 and np.any(point_ids[1:] == point_ids[:-1]):
        raise InputError("duplicate point3D ids", model_dir)
    rows = np.searchsorted(point_ids, images.obs_point_id)
    rows = np.minimum(rows, max(len(point_ids) - 1, 0))
    found = (point_ids[rows] == images.obs_point_id) if len(point_ids) else np.zeros(len(rows), bool)
    obs_image, obs_xy, obs_kp = images.obs_image, images.obs_xy, images.obs_keypoint
    if not found.all():
        # Tolerated because some exporters leave dangling references after filtering points.
        logger.warning("%s: %d observations refer to 3D points not in the points file; ignoring them",
                       model_dir, int((~found).sum()))
        rows, obs_image, obs_xy, obs_kp = rows[found], obs_image[found], obs_xy[found], obs_kp[found]
    # Image-id order, as pycolmap gives it, so scenes read either way list images identically.
    image_order = np.argsort(images.ids, kind="stable")
    new_row = np.empty(len(image_order), np.int32)
    new_row[image_order] = np.arange(len(image_order), dtype=np.int32)
    return ColmapModel(
        cameras=cameras,
        image_ids=images.ids[image_order],
        image_names=[images.names[i] for i in image_order],
        image_camera_ids=images.camera_ids[image_order],
        qvecs=images.qvecs[image_order],
        t_cam_from_world=images.tvecs[image_order],
        point_ids=point_ids,
        points_xyz=xyz,
        obs_image=new_row[obs_image] if len(obs_image) else obs_image,
        obs_point=rows.astype(np.int32),
        obs_xy=obs_xy,
        obs_keypoint=obs_kp,
    )


# -------------------------------------------------------------------------------------------------- writers
