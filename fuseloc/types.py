"""Typed data contracts shared by every stage: cameras, poses, local features, localization results.

Conventions (see DATASETS.md §0): poses are world-to-camera, ``x_cam = R @ x_world + t``; quaternions in
files and in this module are (w, x, y, z); pixel coordinates follow COLMAP (top-left pixel centre at
(0.5, 0.5)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fuseloc.errors import InputError

#: COLMAP camera models we understand, with their parameter count (DATASETS.md §1.3).
CAMERA_MODEL_PARAMS: dict[str, int] = {
    "SIMPLE_PINHOLE": 3,
    "PINHOLE": 4,
    "SIMPLE_RADIAL": 4,
    "RADIAL": 5,
    "OPENCV": 8,
    "OPENCV_FISHEYE": 8,
    "FULL_OPENCV": 12,
}


#: models whose first parameter is the one focal length (the others start with fx, fy)
SINGLE_FOCAL_MODELS = ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")


def check_camera_params(model: str, params: tuple[float, ...]) -> None:
    """A one-line InputError unless every parameter is finite and each focal length positive: a negative focal
    gives a pose turned 180 degrees, a zero or NaN one no pose at all. Every :class:`Camera` is checked on
    construction (readers add the file and line); call it to check parameters before making one."""
    values = np.asarray(params, np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError(f"camera {model} has a non-finite parameter: {' '.join(f'{p:g}' for p in params)}")
    focals = values[:1] if model in SINGLE_FOCAL_MODELS else values[:2]
    if np.any(focals <= 0):
        raise InputError(f"camera {model} focal length must be positive, got {' '.join(f'{f:g}' for f in focals)}")


@dataclass(frozen=True)
class Camera:
    """An intrinsic camera in COLMAP's parameterisation.

    Attributes:
        model: COLMAP model name, e.g. ``"PINHOLE"``.
        width, height: image size in pixels.
        params: model parameters in COLMAP order (focal lengths and principal point in pixels).
    """

    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.model not in CAMERA_MODEL_PARAMS:
            raise InputError(f"unknown camera model {self.model!r} (known: {', '.join(CAMERA_MODEL_PARAMS)})")
        if len(self.params) != CAMERA_MODEL_PARAMS[self.model]:
            raise InputError(
                f"camera model {self.model} takes {CAMERA_MODEL_PARAMS[self.model]} parameters, got {len(self.params)}"
            )
        if self.width <= 0 or self.height <= 0:
            raise InputError(f"camera size must be positive, got {self.width}x{self.height}")
        check_camera_params(self.model, self.params)

    @classmethod
    def from_tokens(cls, tokens: list[str]) -> Camera:
        """Parse ``MODEL W H params...`` (the query-list-with-intrinsics format)."""
        if len(tokens) < 3:
            raise InputError("expected 'MODEL WIDTH HEIGHT PARAMS...'")
        model = tokens[0]
        try:
            width, height = int(tokens[1]), int(tokens[2])
            params = tuple(float(x) for x in tokens[3:])
        except ValueError as exc:
            raise InputError(f"non-numeric camera field ({exc})") from None
        return cls(model, width, height, params)

    def to_tokens(self) -> list[str]:
        return [self.model, str(self.width), str(self.height), *(f"{p:.10g}" for p in self.params)]

    def to_poselib(self) -> dict[str, Any]:
        """The camera dict accepted by ``poselib.estimate_absolute_pose``."""
        return {"model": self.model, "width": self.width, "height": self.height, "params": list(self.params)}

    @property
    def focal(self) -> float:
        """Mean focal length in pixels."""
        if self.model in SINGLE_FOCAL_MODELS:
            return self.params[0]
        return 0.5 * (self.params[0] + self.params[1])

    def scaled(self, scale: float) -> Camera:
        """The camera of the image resized by ``scale`` (focal and principal point scale, distortion does not)."""
        n_scaled = 3 if self.model in SINGLE_FOCAL_MODELS else 4
        params = tuple(p * scale if i < n_scaled else p for i, p in enumerate(self.params))
        return Camera(self.model, round(self.width * scale), round(self.height * scale), params)


def qvec_to_rotmat(qvec: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation matrix (Hamilton convention, as COLMAP)."""
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> unit quaternion (w, x, y, z) with w >= 0."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()
    q = np.array([w, x, y, z])
    return q if q[0] >= 0 else -q


def pose_problem(qvec_tvec: list[float] | tuple[float, ...]) -> str:
    """What is wrong with an image's ``QW QX QY QZ TX TY TZ`` (a non-finite value, a zero quaternion), or ''.
    Such an image would otherwise be dropped from the map without a word, or fail far from its line."""
    values = np.asarray(qvec_tvec, np.float64)
    if not np.all(np.isfinite(values[:4])) or np.linalg.norm(values[:4]) < 1e-8:
        return f"invalid quaternion {' '.join(f'{v:g}' for v in values[:4])}"
    if not np.all(np.isfinite(values[4:])):
        return f"non-finite translation {' '.join(f'{v:g}' for v in values[4:])}"
    return ""


def _checked_qvec(qvec: np.ndarray | list[float]) -> np.ndarray:
    q = np.asarray(qvec, dtype=np.float64).reshape(4)
    problem = pose_problem(q)
    if problem:
        raise InputError(problem)
    return q


@dataclass(frozen=True)
class Pose:
    """A rigid world-to-camera transform ``x_cam = R @ x_world + t`` (metres)."""

    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,)

    @classmethod
    def from_qt(cls, qvec: np.ndarray | list[float], t: np.ndarray | list[float]) -> Pose:
        q = np.asarray(qvec, dtype=np.float64).reshape(4)
        t = np.asarray(t, dtype=np.float64).reshape(3)
        problem = pose_problem([*q, *t])
        if problem:
            raise InputError(problem)
        return cls(qvec_to_rotmat(q), t)

    @classmethod
    def from_center(cls, qvec: np.ndarray | list[float], center: np.ndarray | list[float]) -> Pose:
        """From the world-to-camera rotation and the camera centre C (``t = -R C``), as in NVM and Cambridge."""
        R = qvec_to_rotmat(_checked_qvec(qvec))
        center = np.asarray(center, dtype=np.float64).reshape(3)
        if not np.all(np.isfinite(center)):
            raise InputError(f"non-finite camera centre {' '.join(f'{v:g}' for v in center)}")
        return cls(R, -R @ center)

    @classmethod
    def identity(cls) -> Pose:
        return cls(np.eye(3), np.zeros(3))

    @property
    def qvec(self) -> np.ndarray:
        return rotmat_to_qvec(self.R)

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t

    def inverse(self) -> Pose:
        return Pose(self.R.T, -self.R.T @ self.t)

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix."""
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = self.R, self.t
        return T

    def transform(self, points: np.ndarray) -> np.ndarray:
        """Apply to (N, 3) world points."""
        return points @ self.R.T + self.t

    def to_line(self, name: str) -> str:
        """``name qw qx qy qz tx ty tz``: the visuallocalization.net submission line."""
        q, t = self.qvec, self.t
        return " ".join([name, *(f"{v:.10g}" for v in q), *(f"{v:.10g}" for v in t)])


@dataclass
class PoseResult:
    """Outcome of localizing one query.

    Attributes:
        pose: estimated world-to-camera pose (the fallback pose when ``success`` is False).
        success: whether PnP found at least the minimum number of inliers.
        num_matches: number of 2D-3D matches given to PnP.
        num_inliers: RANSAC inliers (0 when PnP was not run or failed).
        reason: why localization failed, empty on success.
        timings: seconds per stage (``"fusion"``, ``"search"``, ``"pnp"``, ...).
    """

    pose: Pose
    success: bool
    num_matches: int = 0
    num_inliers: int = 0
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class LocalFeatures:
    """Local features of one image, as extractors produce them and feature caches store them.

    Attributes:
        keypoints: (N, 2) float32 pixel coordinates, COLMAP convention, in the original image resolution.
        descriptors: (N, D) float32.
        scores: (N,) float32 detection scores.
        image_size: (width, height) of the original image in pixels.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]


def project(camera: Camera, pose: Pose, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) pixel projections (COLMAP convention, with distortion) and (N,) in-front-of-camera mask."""
    import pycolmap

    cam = pycolmap.Camera(model=camera.model, width=camera.width, height=camera.height, params=list(camera.params))
    p_cam = pose.transform(np.asarray(points, np.float64))
    front = p_cam[:, 2] > 1e-6
    uv = np.full((len(points), 2), np.inf)
    if front.any():
        uv[front] = cam.img_from_cam(p_cam[front])
    return uv, front
