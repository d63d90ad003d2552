import numpy as np

from fuseloc.eval.metrics import pose_errors
from fuseloc.localize.pose import PnPConfig, estimate_absolute_pose
from fuseloc.types import Camera, Pose


def _setup(seed=0, n=200):
    rng = np.random.default_rng(seed)
    camera = Camera("PINHOLE", 640, 480, (500.0, 500.0, 320.0, 240.0))
    truth = Pose.from_center([0.98, 0.05, -0.15, 0.1], [0.3, -0.2, -5.0])
    pts_cam = np.c_[rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(4, 8, n)]
    xyz = truth.inverse().transform(pts_cam)
    uv = np.c_[500 * pts_cam[:, 0] / pts_cam[:, 2] + 320, 500 * pts_cam[:, 1] / pts_cam[:, 2] + 240]
    return rng, camera, truth, xyz, uv


def test_known_pose_from_exact_matches():
    _, camera, truth, xyz, uv = _setup()
    result = estimate_absolute_pose(uv, xyz, camera)
    dt, dr = pose_errors(result.pose, truth)
    assert dt < 1e-6 and dr < 1e-6
    assert result.num_inliers == len(uv)


def test_known_pose_from_noisy_matches_with_outliers():
    rng, camera, truth, xyz, uv = _setup(1, 400)
    uv = uv + rng.normal(0, 0.5, uv.shape)
    outliers = rng.random(len(uv)) < 0.5
    uv[outliers] = rng.uniform([0, 0], [640, 480], (outliers.sum(), 2))
    result = estimate_absolute_pose(uv, xyz, camera, PnPConfig(max_reproj_error=4.0))
    dt, dr = pose_errors(result.pose, truth)
    assert dt < 0.05 and dr < 0.5
    # inliers are (nearly) exactly the uncorrupted matches
    assert (result.inliers == ~outliers).mean() > 0.97


def test_too_few_matches_gives_none():
    _, camera, _, xyz, uv = _setup()
    assert estimate_absolute_pose(uv[:3], xyz[:3], camera) is None


def test_same_seed_same_pose():
    rng, camera, _, xyz, uv = _setup(2, 300)
    uv[::2] = rng.uniform([0, 0], [640, 480], (len(uv[::2]), 2))
    a = estimate_absolute_pose(uv, xyz, camera)
    b = estimate_absolute_pose(uv, xyz, camera)
    np.testing.assert_array_equal(a.pose.t, b.pose.t)
    np.testing.assert_array_equal(a.pose.R, b.pose.R)
    np.testing.assert_array_equal(a.inliers, b.inliers)
