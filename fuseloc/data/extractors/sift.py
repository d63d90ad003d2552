"""SIFT (OpenCV), with RootSIFT by default: the weight-free local feature that runs everywhere."""

from __future__ import annotations

import cv2
import numpy as np

from fuseloc.data.extractors.base import LocalExtractor
from fuseloc.types import LocalFeatures


class Sift(LocalExtractor):
    """OpenCV SIFT with optional RootSIFT, a weight-free local feature that runs everywhere.

    Args:
        max_keypoints: keep the strongest keypoints (0 = all).
        resize_max: downscale so the longest side is at most this many pixels (0 = never); keypoints are
            returned in original-resolution pixels.
        root: RootSIFT (L1-normalise, square root); descriptors then have unit L2 norm.
        contrast_threshold: OpenCV's DoG contrast threshold; lower finds more keypoints in dark images.
    """

    def __init__(self, max_keypoints: int = 2048, resize_max: int = 1024, root: bool = True, contrast_threshold: float = 0.02):
        self.max_keypoints = max_keypoints
        self.resize_max = resize_max
        self.root = root
        self.contrast_threshold = contrast_threshold

    def config(self) -> dict:
        return {"name": "sift", "max_keypoints": self.max_keypoints, "resize_max": self.resize_max,
                "root": self.root, "contrast_threshold": self.contrast_threshold}

    def tag(self) -> str:
        return f"{'rootsift' if self.root else 'sift'}-n{self.max_keypoints}-r{self.resize_max}-c{self.contrast_threshold:g}"

    @property
    def dim(self) -> int:
        return 128

    def __call__(self, image: np.ndarray) -> LocalFeatures:
        height, width = image.shape[:2]
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        scale = 1.0
        if self.resize_max and max(height, width) > self.resize_max:
            scale = self.resize_max / max(height, width)
            gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        sift = cv2.SIFT_create(nfeatures=self.max_keypoints, contrastThreshold=self.contrast_threshold)
        cv_kps, desc = sift.detectAndCompute(gray, None)
        if desc is None or len(cv_kps) == 0:
            return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), np.zeros(0, np.float32), (width, height))
        # OpenCV can return a few more than nfeatures on ties; keep the strongest.
        order = np.argsort([-k.response for k in cv_kps], kind="stable")
        if self.max_keypoints:
            order = order[: self.max_keypoints]
        xy = np.array([cv_kps[i].pt for i in order], np.float32)
        scores = np.array([cv_kps[i].response for i in order], np.float32)
        desc = desc[order].astype(np.float32)
        # OpenCV puts pixel centres at integers; map to original resolution, then to COLMAP's +0.5.
        xy = (xy + 0.5) / scale
        if self.root:
            desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-12)
            desc = np.sqrt(desc)
        else:
            desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return LocalFeatures(xy, desc, scores, (width, height))
