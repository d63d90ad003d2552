"""Keypoints of a posed image tied to map points by projection with its pose (fuseloc/data/projection.py).

A street: a facade on each side (z = +8 and z = -8, world y down), database cameras along it looking at either
facade, observations made by exact projection. The query's keypoints are the projections of the facade points
it sees (plus sub-pixel noise) and distractors far from every projection, shuffled: the truth is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from fixtures.geometry import look_at, project

from fuseloc.data.projection import (
    ProjectedAssociation,
    associate_by_projection,
    nearby_images,
    project_in_view,
    visible_points,
)
from fuseloc.data.scene import Scene
from fuseloc.errors import InputError
from fuseloc.types import Camera, Pose

CAMERA = Camera("PINHOLE", 320, 240, (260.0, 260.0, 160.0, 120.0))
RADIUS = 3.0


def _facade(rng: np.random.Generator, z: float) -> np.ndarray:
    """A jittered 0.6 m grid on the plane z (x in [-32, 32], y in [-1.8, 1.8]): projections at 8 m are about
    20 px apart, over 3 radii; irregular, so a shifted pose does not land on other points by chance."""
    xs, ys = np.meshgrid(np.arange(-32.0, 32.01, 0.6), np.arange(-1.8, 1.81, 0.6))
    grid = np.c_[xs.ravel(), ys.ravel()] + rng.uniform(-0.15, 0.15, (xs.size, 2))
    return np.c_[grid, np.full(len(grid), z)]


@dataclass
class Street:
    scene: Scene
    front: np.ndarray  # indices of the facade points at z = +8
    back: np.ndarray  # indices of the facade points at z = -8
    portrait: int  # the database image turned exactly as the query, held in portrait (rolled 90 degrees)


def _scene_from(points: np.ndarray, poses: list[Pose]) -> Scene:
    obs_image, obs_point, obs_xy = [], [], []
    for i, pose in enumerate(poses):
        uv, seen = project(CAMERA, pose, points, min_depth=0.1)
        rows = np.flatnonzero(seen)
        obs_image.append(np.full(len(rows), i))
        obs_point.append(rows)
        obs_xy.append(uv[rows])
    return Scene(
        image_names=[f"db/{i}.png" for i in range(len(poses))],
        image_cameras=[CAMERA] * len(poses),
        R_cam_from_world=np.stack([p.R for p in poses]),
        t_cam_from_world=np.stack([p.t for p in poses]),
        points_xyz=points,
        obs_image=np.concatenate(obs_image).astype(np.int32),
        obs_point=np.concatenate(obs_point).astype(np.int32),
        obs_xy=np.concatenate(obs_xy).astype(np.float32),
        obs_keypoint=np.full(sum(len(r) for r in obs_point), -1, np.int32),
    )


#: the query: off the database track, turned a little (so t is far from -C and R != I)
QUERY = look_at(np.array([10.6, 0.1, 0.3]), np.array([11.8, -0.2, 8.0]))
ROLL_90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def street() -> Street:
    rng = np.random.default_rng(0)
    front, back = _facade(rng, 8.0), _facade(rng, -8.0)
    points = np.vstack([front, back])
    poses = []
    for x in np.arange(-30.0, 30.01, 3.0):
        poses.append(look_at(np.array([x, 0.0, 0.0]), np.array([x, 0.0, 8.0])))
        poses.append(look_at(np.array([x, 0.0, 0.0]), np.array([x, 0.0, -8.0])))
    # Same optical axis as the query, rolled: its rotation's third row is the query's, its third column is not.
    R = ROLL_90 @ QUERY.R
    poses.append(Pose(R, -R @ np.array([13.5, 0.0, 0.0])))
    scene = _scene_from(points, poses)
    return Street(scene, np.arange(len(front)), len(front) + np.arange(len(back)), len(poses) - 1)


@dataclass
class Keypoints:
    xy: np.ndarray  # (N, 2)
    point: np.ndarray  # (N,) the true scene point of each keypoint, -1 for a distractor


def _keypoints(scene: Scene, pose: Pose, seed: int = 1, noise: float = 0.3, distractors: int = 60) -> Keypoints:
    rng = np.random.default_rng(seed)
    uv, seen = project(CAMERA, pose, scene.points_xyz, min_depth=0.1)
    truth = np.flatnonzero(seen)
    xy = uv[truth] + np.clip(rng.normal(0.0, noise, (len(truth), 2)), -1.0, 1.0)
    extra = rng.uniform([0, 0], [CAMERA.width, CAMERA.height], (20 * distractors, 2))
    far = np.linalg.norm(extra[:, None] - uv[truth][None], axis=2).min(1) > 2 * RADIUS + 1
    extra = extra[far][:distractors]
    xy = np.vstack([xy, extra])
    point = np.r_[truth, np.full(len(extra), -1)]
    order = rng.permutation(len(xy))
    return Keypoints(xy[order], point[order].astype(np.int64))


def _pairs(assoc: ProjectedAssociation) -> set[tuple[int, int]]:
    return set(zip(assoc.keypoint_index.tolist(), assoc.point_index.tolist()))


def _truth(kp: Keypoints) -> set[tuple[int, int]]:
    rows = np.flatnonzero(kp.point >= 0)
    return set(zip(rows.tolist(), kp.point[rows].tolist()))


def test_recovers_known_correspondences(street):
    kp = _keypoints(street.scene, QUERY)
    truth = _truth(kp)
    assert len(truth) >= 80, len(truth)
    assoc = associate_by_projection(street.scene, CAMERA, QUERY, kp.xy, radius=RADIUS)
    assert assoc.keypoint_index.dtype == np.int64 and assoc.point_index.dtype == np.int64
    assert np.all(np.diff(assoc.keypoint_index) > 0) and len(np.unique(assoc.point_index)) == len(assoc)
    assert _pairs(assoc) == truth  # precision and recall 1
    # A noise beyond the radius loses them; the radius is a bound, not a hint.
    shifted = kp.xy + np.array([RADIUS + 0.5, 0.0])
    assert len(associate_by_projection(street.scene, CAMERA, QUERY, shifted, radius=RADIUS)) < 0.1 * len(truth)


def test_visible_points_come_from_nearby_images_looking_the_same_way(street):
    scene = street.scene
    visible = visible_points(scene, CAMERA, QUERY)
    _, seen = project(CAMERA, QUERY, scene.points_xyz, min_depth=0.1)
    in_view = set(np.flatnonzero(seen).tolist())
    assert set(visible.tolist()) == in_view  # all in view are seen by the nearby images; none out of view
    assert not set(visible.tolist()) & set(street.back.tolist())
    # No database image within 10 cm: nothing.
    assert len(visible_points(scene, CAMERA, QUERY, max_distance=0.1)) == 0
    # The nearest image only: the points in view that it observes.
    distance = np.linalg.norm(scene.centers - QUERY.center, axis=1)
    forward = scene.R_cam_from_world[:, 2, 2] > 0
    nearest = int(np.argmin(np.where(forward, distance, np.inf)))
    one = visible_points(scene, CAMERA, QUERY, max_images=1)
    assert set(one.tolist()) == in_view & set(scene.obs_point[scene.obs_image == nearest].tolist())
    assert 0 < len(one) < len(visible)
    # Within 3 degrees of the query's optical axis only the rolled image looks; it is not the nearest.
    assert nearby_images(scene, QUERY, max_angle_deg=3.0).tolist() == [street.portrait]
    assert nearest != street.portrait
    turned = visible_points(scene, CAMERA, QUERY, max_angle_deg=3.0)
    assert len(turned) > 0
    assert set(turned.tolist()) == in_view & set(scene.obs_point[scene.obs_image == street.portrait].tolist())


def test_points_behind_the_camera_never_associate(street):
    """Every database image, the backward-looking ones included (their points are all behind the query), and a
    keypoint where each point behind would land if its depth sign were dropped."""
    scene = street.scene
    kp = _keypoints(scene, QUERY)
    behind_cam = QUERY.transform(scene.points_xyz[street.back])
    fx, fy, cx, cy = CAMERA.params
    mirrored = np.c_[fx * behind_cam[:, 0] / -behind_cam[:, 2] + cx, fy * behind_cam[:, 1] / -behind_cam[:, 2] + cy]
    mirrored = mirrored[np.all((mirrored >= 0) & (mirrored < [CAMERA.width, CAMERA.height]), axis=1)]
    assert len(mirrored) >= 20
    xy = np.vstack([kp.xy, mirrored])
    for candidates in (None, np.arange(scene.num_points)):
        assoc = associate_by_projection(scene, CAMERA, QUERY, xy, radius=RADIUS, candidates=candidates,
                                        max_images=len(scene.image_names), max_angle_deg=180.0)
        assert not set(assoc.point_index.tolist()) & set(street.back.tolist())
        assert _truth(kp) <= _pairs(assoc)
    assert not set(visible_points(scene, CAMERA, QUERY, max_images=100, max_angle_deg=180.0).tolist()) & set(
        street.back.tolist())


def _with_points(scene: Scene, extra: np.ndarray) -> Scene:
    return Scene(scene.image_names, scene.image_cameras, scene.R_cam_from_world, scene.t_cam_from_world,
                 points_xyz=np.vstack([scene.points_xyz, extra]), obs_image=scene.obs_image, obs_point=scene.obs_point,
                 obs_xy=scene.obs_xy, obs_keypoint=scene.obs_keypoint)


def _at_pixel(pose: Pose, uv: np.ndarray, depth: float) -> np.ndarray:
    """World point at ``depth`` on the ray of COLMAP pixel ``uv``."""
    fx, fy, cx, cy = CAMERA.params
    p_cam = depth * np.array([(uv[0] - cx) / fx, (uv[1] - cy) / fy, 1.0])
    return pose.R.T @ (p_cam - pose.t)


def test_points_outside_the_image_never_associate(street):
    """Points projecting just outside the image, each with a keypoint just inside, within the radius."""
    width, height = CAMERA.width, CAMERA.height
    outside_uv = np.array([[-1.0, 100.0], [width + 1.0, 60.0], [200.0, -0.8], [90.0, height + 1.2]])
    inside_xy = np.array([[0.6, 100.0], [width - 0.6, 60.0], [200.0, 0.6], [90.0, height - 0.4]])
    extra = np.stack([_at_pixel(QUERY, uv, 6.0) for uv in outside_uv])
    scene = _with_points(street.scene, extra)
    new = street.scene.num_points + np.arange(len(extra))
    uv, _ = project(CAMERA, QUERY, extra)
    assert np.allclose(uv, outside_uv)
    assert np.all(np.linalg.norm(uv - inside_xy, axis=1) < RADIUS)
    assoc = associate_by_projection(scene, CAMERA, QUERY, inside_xy, radius=RADIUS, candidates=new)
    assert len(assoc) == 0
    # The same points moved 2 px inside do associate: the refusal is the image border's, not the geometry's.
    moved = np.stack([_at_pixel(QUERY, xy, 6.0) for xy in inside_xy])
    scene = _with_points(street.scene, moved)
    assoc = associate_by_projection(scene, CAMERA, QUERY, inside_xy, radius=RADIUS, candidates=new)
    assert sorted(assoc.point_index.tolist()) == new.tolist()


def test_an_occluded_point_loses_its_keypoint_to_the_front_one(street):
    scene = street.scene
    kp = _keypoints(scene, QUERY)
    rows = np.flatnonzero(kp.point >= 0)[:6]
    uv, _ = project(CAMERA, QUERY, scene.points_xyz[kp.point[rows]])
    # In front of three facade points (a lamp post), behind three others (seen through a window: hidden).
    front = np.stack([_at_pixel(QUERY, uv[i], 3.0) for i in range(3)])
    hidden = np.stack([_at_pixel(QUERY, uv[i], 20.0) for i in range(3, 6)])
    extended = _with_points(scene, np.vstack([front, hidden]))
    new = scene.num_points + np.arange(6)
    candidates = np.r_[visible_points(scene, CAMERA, QUERY), new]
    assoc = associate_by_projection(extended, CAMERA, QUERY, kp.xy, radius=RADIUS, candidates=candidates)
    pairs = _pairs(assoc)
    expected = (_truth(kp) - {(int(r), int(kp.point[r])) for r in rows[:3]}) | {
        (int(r), int(p)) for r, p in zip(rows[:3], new[:3])}
    assert pairs == expected
    # The same with the front points listed first among the scene's points: the order of indices does not matter.
    n = scene.num_points
    perm = np.r_[np.arange(n, n + 6), np.arange(n)]
    reordered = Scene(scene.image_names, scene.image_cameras, scene.R_cam_from_world, scene.t_cam_from_world,
                      points_xyz=extended.points_xyz[perm])
    inverse = np.argsort(perm)
    assoc2 = associate_by_projection(reordered, CAMERA, QUERY, kp.xy, radius=RADIUS, candidates=inverse[candidates])
    assert {(k, int(perm[p])) for k, p in _pairs(assoc2)} == expected


def test_a_wrong_pose_recovers_far_fewer(street):
    scene = street.scene
    kp = _keypoints(scene, QUERY)
    truth = _truth(kp)
    wrong_poses = {
        "shifted 1 m sideways": Pose(QUERY.R, QUERY.t - QUERY.R @ np.array([1.0, 0.0, 0.0])),
        "shifted 1 m up": Pose(QUERY.R, QUERY.t - QUERY.R @ np.array([0.0, -1.0, 0.0])),
        "camera-to-world": QUERY.inverse(),
    }
    for what, pose in wrong_poses.items():
        assoc = associate_by_projection(scene, CAMERA, pose, kp.xy, radius=RADIUS)
        right = len(_pairs(assoc) & truth)
        assert right < 0.2 * len(truth), (what, right, len(truth))


def test_distortion_cannot_fold_outside_points_into_the_image():
    """With a strong barrel term a point 60 degrees off-axis projects (by the polynomial) near the image centre;
    it is not in view, and a keypoint there stays free."""
    camera = Camera("OPENCV", 320, 240, (260.0, 260.0, 160.0, 120.0, -0.3, 0.0, 0.0, 0.0))
    pose = Pose.identity()
    folded = np.array([[1.8 * 5.0, 0.0, 5.0]])  # normalised radius 1.8: 1.8 * (1 - 0.3 * 1.8**2) = 0.05
    honest = np.array([[0.3 * 5.0, 0.1 * 5.0, 5.0]])
    points = np.vstack([folded, honest])
    uv, _, inside = project_in_view(camera, pose, points)
    assert 0 <= uv[0, 0] < camera.width and 0 <= uv[0, 1] < camera.height  # the polynomial says "inside"
    assert inside.tolist() == [False, True]
    scene = Scene(["db/0.png"], [camera], pose.R[None], pose.t[None], points_xyz=points,
                  obs_image=np.zeros(2, np.int32), obs_point=np.arange(2, dtype=np.int32),
                  obs_xy=uv.astype(np.float32), obs_keypoint=np.full(2, -1, np.int32))
    assert visible_points(scene, camera, pose).tolist() == [1]
    assoc = associate_by_projection(scene, camera, pose, uv, radius=RADIUS)
    assert _pairs(assoc) == {(1, 1)}


def test_edge_cases_and_bad_arguments(street):
    scene = street.scene
    empty = associate_by_projection(scene, CAMERA, QUERY, np.zeros((0, 2)))
    assert len(empty) == 0 and empty.keypoint_index.dtype == np.int64
    assert len(associate_by_projection(scene, CAMERA, QUERY, np.zeros((5, 2)), candidates=np.zeros(0, np.int64))) == 0
    with pytest.raises(InputError, match="radius"):
        associate_by_projection(scene, CAMERA, QUERY, np.zeros((5, 2)), radius=0.0)
    with pytest.raises(InputError, match="keypoints"):
        associate_by_projection(scene, CAMERA, QUERY, np.zeros((5, 3)))
    with pytest.raises(InputError, match="candidate"):
        associate_by_projection(scene, CAMERA, QUERY, np.zeros((5, 2)), candidates=np.array([scene.num_points]))
    with pytest.raises(InputError, match="max_images"):
        visible_points(scene, CAMERA, QUERY, max_images=0)
    with pytest.raises(InputError, match="max_angle"):
        visible_points(scene, CAMERA, QUERY, max_angle_deg=0.0)
    with pytest.raises(InputError, match="max_distance"):
        visible_points(scene, CAMERA, QUERY, max_distance=-1.0)
    bare = scene.without_points()
    assert len(visible_points(bare, CAMERA, QUERY)) == 0
