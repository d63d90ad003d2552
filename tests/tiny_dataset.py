"""A tiny real-image dataset in the generic (hloc custom-data) layout, rendered in well under a second.

Two textured walls meet in a concave corner in front of the cameras, so every camera sees both walls and
nothing occludes anything. Each wall is a plane, so each view of it is an exact homography of its texture
(``cv2.warpPerspective``); the ground-truth poses are therefore exact up to resampling.

Layout written under ``root`` (as :class:`fuseloc.data.readers.generic.GenericDataset` reads it)::

    images/db/<k>.png, images/query/<k>.png   320 x 240 RGB
    sparse/{cameras,images,points3D}.txt       COLMAP text model of the database images, no 3D points
    queries_with_intrinsics.txt                name PINHOLE W H fx fy cx cy
    gt_poses.txt                               name qw qx qy qz tx ty tz (world-to-camera)

World frame: x right, y down, z forward (the cameras' frame at identity). Metres.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fuseloc.types import Camera, Pose

WIDTH, HEIGHT = 320, 240
CAMERA = Camera("PINHOLE", WIDTH, HEIGHT, (260.0, 260.0, 160.0, 120.0))

#: Wall corners (left end, right end) in the x-z plane; the corner at x = 0 is farthest from the cameras.
WALLS = (((-4.5, 4.0), (0.0, 7.0)), ((0.0, 7.0), (4.5, 4.0)))
WALL_TOP, WALL_BOTTOM = -1.8, 1.8  # y extent in metres (y points down)
TEXTURES = ("astronaut", "coffee")

DB_CENTERS = ((-1.4, 0.0, 0.0), (-0.8, 0.2, -0.5), (-0.2, -0.1, 0.3), (0.4, 0.1, -0.3), (1.0, -0.2, 0.2), (1.5, 0.0, -0.4))
QUERY_CENTERS = ((-1.1, 0.1, 0.1), (-0.5, -0.1, -0.2), (0.7, 0.0, 0.0), (1.25, 0.15, -0.1))


@dataclass
class TinyDataset:
    """What :func:`make_tiny_dataset` wrote."""

    root: Path
    db_names: list[str]
    query_names: list[str]
    db_poses: list[Pose]
    query_poses: list[Pose]


def look_at(center: np.ndarray, target: np.ndarray) -> Pose:
    """World-to-camera pose of a camera at ``center`` looking at ``target``, image y along world +y."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return Pose(R, -R @ center)


def _texture(name: str) -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    return np.ascontiguousarray(image[..., :3])


def _K(camera: Camera) -> np.ndarray:
    fx, fy, cx, cy = camera.params
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def render(pose: Pose, camera: Camera = CAMERA, textures: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3) view of the two walls from ``pose`` (mid-grey background)."""
    textures = textures or tuple(_texture(n) for n in TEXTURES)
    image = np.full((camera.height, camera.width, 3), 110, np.uint8)
    # OpenCV puts pixel centres at integers, COLMAP (and our intrinsics) at +0.5: shift on both sides.
    to_cv = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1.0]])
    from_cv = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    for (start, end), tex in zip(WALLS, textures, strict=True):
        th, tw = tex.shape[:2]
        origin = np.array([start[0], WALL_TOP, start[1]])
        e_s = (np.array([end[0], WALL_TOP, end[1]]) - origin) / tw  # metres per texel along the wall
        e_t = np.array([0.0, (WALL_BOTTOM - WALL_TOP) / th, 0.0])
        # Texel (s, t) -> world origin + s e_s + t e_t -> camera -> pixels: a homography.
        H = _K(camera) @ np.stack([pose.R @ e_s, pose.R @ e_t, pose.R @ origin + pose.t], 1)
        H_cv = to_cv @ H @ from_cv
        warped = cv2.warpPerspective(tex, H_cv, (camera.width, camera.height), flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(np.full((th, tw), 255, np.uint8), H_cv, (camera.width, camera.height), flags=cv2.INTER_NEAREST)
        image[mask > 0] = warped[mask > 0]
    return image


def _poses(centers: tuple[tuple[float, float, float], ...], seed: int) -> list[Pose]:
    rng = np.random.default_rng(seed)
    target = np.array([0.0, 0.0, 6.0])
    return [look_at(np.array(c), target + rng.uniform(-0.4, 0.4, 3) * [1, 0.3, 0]) for c in centers]


def _line(name: str, pose: Pose) -> str:
    return pose.to_line(name)


def make_tiny_dataset(root: str | Path, seed: int = 0) -> TinyDataset:
    """Render and write the tiny dataset under ``root`` (created); returns names and poses."""
    root = Path(root)
    (root / "images" / "db").mkdir(parents=True, exist_ok=True)
    (root / "images" / "query").mkdir(parents=True, exist_ok=True)
    (root / "sparse").mkdir(parents=True, exist_ok=True)
    textures = tuple(_texture(n) for n in TEXTURES)
    db_poses = _poses(DB_CENTERS, seed)
    query_poses = _poses(QUERY_CENTERS, seed + 1)
    db_names = [f"db/{k}.png" for k in range(len(db_poses))]
    query_names = [f"query/{k}.png" for k in range(len(query_poses))]
    for name, pose in zip(db_names + query_names, db_poses + query_poses, strict=True):
        cv2.imwrite(str(root / "images" / name), cv2.cvtColor(render(pose, CAMERA, textures), cv2.COLOR_RGB2BGR))
    cam = " ".join(CAMERA.to_tokens())
    (root / "sparse" / "cameras.txt").write_text(f"# Camera list\n1 {cam}\n")
    lines = ["# Image list with two lines of data per image"]
    for k, (name, pose) in enumerate(zip(db_names, db_poses, strict=True), start=1):
        _, *qt = pose.to_line(name).split()
        lines += [f"{k} {' '.join(qt)} 1 {name}", ""]
    (root / "sparse" / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "sparse" / "points3D.txt").write_text("# 3D point list\n")
    (root / "queries_with_intrinsics.txt").write_text("".join(f"{n} {cam}\n" for n in query_names))
    (root / "gt_poses.txt").write_text("".join(_line(n, p) + "\n" for n, p in zip(query_names, query_poses, strict=True)))
    return TinyDataset(root, db_names, query_names, db_poses, query_poses)


if __name__ == "__main__":
    import sys

    print(make_tiny_dataset(sys.argv[1]).root)
