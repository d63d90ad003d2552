"""A toy scene at the descriptor level: known points, cameras, exact projections, h5 caches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from fuseloc.data.feature_cache import write_global, write_local
from fuseloc.data.scene import QuerySet, Scene
from fuseloc.types import Camera, LocalFeatures, Pose


def look_at(center: np.ndarray, target: np.ndarray) -> Pose:
    """World-to-camera pose of a camera at ``center`` looking at ``target`` (y down)."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross([0.0, -1.0, 0.0], z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return Pose(R, -R @ center)


def project(camera: Camera, pose: Pose, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection in COLMAP pixel convention; returns (uv, visible mask)."""
    fx, fy, cx, cy = camera.params
    pc = pose.transform(points)
    z = pc[:, 2]
    uv = np.stack([fx * pc[:, 0] / np.maximum(z, 1e-9) + cx, fy * pc[:, 1] / np.maximum(z, 1e-9) + cy], 1)
    visible = (z > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height)
    return uv, visible


@dataclass
class ToyScene:
    scene: Scene
    queries: QuerySet
    local_path: Path
    global_path: Path
    point_desc: np.ndarray


def make_toy_scene(tmp_path: Path, seed: int = 0, num_points: int = 400, dim: int = 32, global_dim: int = 16,
                   descriptor_noise: float = 0.05, duplicate_fraction: float = 0.0) -> ToyScene:
    """Points on two walls, 6 database and 3 query cameras, descriptors = per-point vector + noise.

    With ``duplicate_fraction`` > 0, that share of points on the right wall copies the descriptor of a point on
    the left wall: local-only matching is then ambiguous while the global descriptors (one per wall side)
    tell the sides apart.
    """
    rng = np.random.default_rng(seed)
    camera = Camera("PINHOLE", 320, 240, (250.0, 250.0, 160.0, 120.0))
    half = num_points // 2
    left = np.c_[rng.uniform(-6, -1, half), rng.uniform(-1.5, 1.5, half), np.full(half, 8.0) + rng.uniform(-0.5, 0.5, half)]
    right = np.c_[rng.uniform(1, 6, num_points - half), rng.uniform(-1.5, 1.5, num_points - half),
                  np.full(num_points - half, 8.0) + rng.uniform(-0.5, 0.5, num_points - half)]
    xyz = np.vstack([left, right])
    point_desc = rng.standard_normal((num_points, dim)).astype(np.float32)
    n_dup = int(duplicate_fraction * (num_points - half))
    point_desc[half : half + n_dup] = point_desc[:n_dup]
    point_desc /= np.linalg.norm(point_desc, axis=1, keepdims=True)
    side_global = rng.standard_normal((2, global_dim)).astype(np.float32)

    def view(center_x: float, target_x: float, jitter: float) -> Pose:
        c = np.array([center_x, rng.uniform(-0.2, 0.2) * jitter, 0.0])
        return look_at(c, np.array([target_x, 0.0, 8.0]))

    db_poses = [view(x, x, 1) for x in (-4.5, -3.5, -2.5, 2.5, 3.5, 4.5)]
    query_poses = [view(-3.0, -3.2, 1), view(3.0, 2.8, 1), view(4.0, 4.2, 1)]
    local_path, global_path = tmp_path / "feats-toy.h5", tmp_path / "global-feats-toy.h5"
    obs_image, obs_point, obs_xy, obs_kp = [], [], [], []
    names = [f"db/{i}.png" for i in range(len(db_poses))] + [f"query/{i}.png" for i in range(len(query_poses))]
    with h5py.File(local_path, "w") as lf, h5py.File(global_path, "w") as gf:
        for k, (name, pose) in enumerate(zip(names, db_poses + query_poses)):
            uv, vis = project(camera, pose, xyz)
            idx = np.flatnonzero(vis)
            desc = point_desc[idx] + descriptor_noise * rng.standard_normal((len(idx), dim)).astype(np.float32)
            write_local(lf, name, LocalFeatures(uv[idx].astype(np.float32), desc.astype(np.float32),
                                                np.ones(len(idx), np.float32), (camera.width, camera.height)))
            side = int(pose.center[0] > 0)
            write_global(gf, name, side_global[side] + 0.05 * rng.standard_normal(global_dim).astype(np.float32))
            if k < len(db_poses):
                obs_image.append(np.full(len(idx), k))
                obs_point.append(idx)
                obs_xy.append(uv[idx])
                obs_kp.append(np.arange(len(idx)))
    scene = Scene(
        image_names=names[: len(db_poses)],
        image_cameras=[camera] * len(db_poses),
        R_cam_from_world=np.stack([p.R for p in db_poses]),
        t_cam_from_world=np.stack([p.t for p in db_poses]),
        points_xyz=xyz,
        obs_image=np.concatenate(obs_image).astype(np.int32),
        obs_point=np.concatenate(obs_point).astype(np.int32),
        obs_xy=np.concatenate(obs_xy).astype(np.float32),
        obs_keypoint=np.concatenate(obs_kp).astype(np.int32),
        keypoint_source="toy",
    )
    queries = QuerySet(names[len(db_poses):], [camera] * len(query_poses), query_poses, ["left", "right", "right"])
    return ToyScene(scene, queries, local_path, global_path, point_desc)
