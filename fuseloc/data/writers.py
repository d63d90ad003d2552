"""Writers of the reference-model formats the readers read: COLMAP binary and text models, NVM files.

The embedded town writes its model with them; tests and benchmarks write fixtures in each release's true
convention. Nothing in the localization pipeline writes these formats.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuseloc.data.readers.colmap_model import (
    CAMERA_HEAD,
    CAMERA_MODEL_NAMES_TO_IDS,
    IMAGE_HEAD,
    POINT2D_DTYPE,
)
from fuseloc.types import Camera


@dataclass
class ImageRecord:
    """One image for the writers: pose, camera and its 2D points (point3D id -1 where unobserved)."""

    image_id: int
    name: str
    camera_id: int
    qvec: np.ndarray
    tvec: np.ndarray
    xys: np.ndarray  # (K, 2)
    point3D_ids: np.ndarray  # (K,)


def write_cameras_binary(path: Path, cameras: dict[int, Camera]) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(cameras)))
        for camera_id, cam in cameras.items():
            f.write(CAMERA_HEAD.pack(camera_id, CAMERA_MODEL_NAMES_TO_IDS[cam.model], cam.width, cam.height))
            f.write(struct.pack(f"<{len(cam.params)}d", *cam.params))


def write_images_binary(path: Path, images: list[ImageRecord]) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(images)))
        for im in images:
            f.write(IMAGE_HEAD.pack(im.image_id, *np.asarray(im.qvec, float), *np.asarray(im.tvec, float), im.camera_id))
            f.write(im.name.encode() + b"\0")
            points = np.empty(len(im.xys), POINT2D_DTYPE)
            points["xy"] = im.xys
            points["point3D_id"] = im.point3D_ids
            f.write(struct.pack("<Q", len(points)))
            f.write(points.tobytes())


def write_points_binary(path: Path, point_ids: np.ndarray, points_xyz: np.ndarray, track_lengths: np.ndarray,
                        track_elements: np.ndarray) -> None:
    """Points with their tracks, grouped by track length.

    Args:
        track_lengths: (P,) observations per point.
        track_elements: (sum of lengths, 2) (image_id, point2D_idx) rows, point after point in ``point_ids`` order.

    Grouping makes one structured-array write per track length, so 1.6M points take seconds; COLMAP does
    not require points sorted by id.
    """
    lengths = np.asarray(track_lengths, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    elements = np.asarray(track_elements, np.int64).reshape(-1, 2)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(point_ids)))
        for length in np.unique(lengths):
            sel = np.flatnonzero(lengths == length)
            dtype = np.dtype([("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("error", "<f8"),
                              ("track_length", "<u8"), ("track", "<i4", (int(length), 2))])
            rec = np.zeros(len(sel), dtype)
            rec["id"] = point_ids[sel]
            rec["xyz"] = points_xyz[sel]
            rec["rgb"] = 128
            rec["error"] = -1.0
            rec["track_length"] = length
            if length:
                rec["track"] = elements[starts[sel][:, None] + np.arange(length)[None]]
            f.write(rec.tobytes())


def write_model_binary(model_dir: str | Path, cameras: dict[int, Camera], images: list[ImageRecord],
                       point_ids: np.ndarray, points_xyz: np.ndarray) -> Path:
    """A legacy three-file binary model; tracks are derived from the images' point3D ids."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_cameras_binary(model_dir / "cameras.bin", cameras)
    write_images_binary(model_dir / "images.bin", images)
    tracks = _tracks(images, point_ids)
    write_points_binary(model_dir / "points3D.bin", np.asarray(point_ids), np.asarray(points_xyz),
                        np.array([len(t) for t in tracks], np.int64), np.concatenate([np.zeros((0, 2), np.int64), *tracks]))
    return model_dir


def _tracks(images: list[ImageRecord], point_ids: np.ndarray) -> list[np.ndarray]:
    index = {int(p): i for i, p in enumerate(point_ids)}
    tracks: list[list[tuple[int, int]]] = [[] for _ in point_ids]
    for im in images:
        for k, pid in enumerate(np.asarray(im.point3D_ids).tolist()):
            if pid != -1:
                tracks[index[pid]].append((im.image_id, k))
    return [np.asarray(t, np.int64).reshape(-1, 2) for t in tracks]


def write_model_text(model_dir: str | Path, cameras: dict[int, Camera], images: list[ImageRecord],
                     point_ids: np.ndarray, points_xyz: np.ndarray) -> Path:
    """A legacy three-file text model (the second line of an image is written even when empty)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / "cameras.txt", "w") as f:
        f.write("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
        for camera_id, cam in cameras.items():
            # Full precision (Camera.to_tokens rounds to 10 digits for cache keys): the model must read back exactly.
            f.write(" ".join([str(camera_id), cam.model, str(cam.width), str(cam.height),
                              *(repr(float(v)) for v in cam.params)]) + "\n")
    with open(model_dir / "images.txt", "w") as f:
        f.write("# Image list with two lines of data per image:\n"
                "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
        for im in images:
            pose = " ".join(f"{v:.17g}" for v in [*im.qvec, *im.tvec])
            f.write(f"{im.image_id} {pose} {im.camera_id} {im.name}\n")
            f.write(" ".join(f"{x:.17g} {y:.17g} {int(p)}" for (x, y), p in zip(im.xys, im.point3D_ids)) + "\n")
    tracks = _tracks(images, point_ids)
    with open(model_dir / "points3D.txt", "w") as f:
        f.write("# 3D point list with one line of data per point:\n"
                "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
        for pid, p, track in zip(point_ids, points_xyz, tracks):
            f.write(f"{int(pid)} {p[0]:.17g} {p[1]:.17g} {p[2]:.17g} 128 128 128 -1 "
                    + " ".join(f"{a} {b}" for a, b in track.tolist()) + "\n")
    return model_dir


def write_nvm(path: str | Path, names: list[str], focals: np.ndarray, qvecs: np.ndarray, centers: np.ndarray,
              points_xyz: np.ndarray, measurements: list[list[tuple[int, int, float, float]]],
              radial: np.ndarray | None = None) -> Path:
    """Write a one-model NVM file (a TAB after each name, as some real files have); for fixtures and tools.

    Measurements are written as given: pass absolute pixels to imitate COLMAP's exporter (RobotCar), pixels
    relative to the image centre to imitate VisualSFM (Cambridge).
    """
    path = Path(path)
    radial = np.zeros(len(names)) if radial is None else np.asarray(radial, float)
    out = ["NVM_V3", "", str(len(names))]
    for name, f, q, c, k in zip(names, focals, qvecs, centers, radial):
        out.append(f"{name}\t{f:.12g} " + " ".join(f"{v:.17g}" for v in [*q, *c]) + f" {k:.12g} 0")
    out += ["", str(len(points_xyz))]
    for p, meas in zip(points_xyz, measurements):
        fields = [f"{v:.17g}" for v in p] + ["128", "128", "128", str(len(meas))]
        for img, feat, x, y in meas:
            fields += [str(img), str(feat), f"{x:.9g}", f"{y:.9g}"]
        out.append(" ".join(fields))
    out += ["", "0", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out))
    return path
