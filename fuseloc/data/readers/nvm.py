"""The VisualSFM NVM format (RobotCar ``all.nvm``, Cambridge ``reconstruction.nvm``), read line by line.

Conventions (DATASETS.md §2): the camera line is ``name focal qw qx qy qz Cx Cy Cz radial 0`` with the
world-to-camera rotation and the camera *centre*; point measurements are pixels relative to the image centre.
Only the first model of a file is read. Name fix-ups (``./`` prefixes, extensions) belong to the dataset
readers, which pass the real image sizes to :meth:`NvmModel.to_scene`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuseloc.data.scene import Scene
from fuseloc.errors import InputError
from fuseloc.io import iter_lines
from fuseloc.types import Camera, qvec_to_rotmat

logger = logging.getLogger(__name__)


@dataclass
class NvmModel:
    """The first model of an NVM file as flat arrays.

    Attributes:
        names: N camera-line file names, verbatim.
        focals: (N,) focal lengths in pixels.
        qvecs: (N, 4) world-to-camera rotations (w, x, y, z).
        centers: (N, 3) camera centres in world coordinates.
        radial: (N,) VisualSFM radial distortion coefficients (pixel-radius units).
        points_xyz: (P, 3) point positions.
        obs_image: (M,) int32 camera index of each measurement.
        obs_point: (M,) int32 point index.
        obs_feature: (M,) int32 feature index in its image.
        obs_xy_centered: (M, 2) float32 measurement in pixels relative to the image centre.
    """

    names: list[str]
    focals: np.ndarray
    qvecs: np.ndarray
    centers: np.ndarray
    radial: np.ndarray
    points_xyz: np.ndarray
    obs_image: np.ndarray
    obs_point: np.ndarray
    obs_feature: np.ndarray
    obs_xy_centered: np.ndarray

    @property
    def num_cameras(self) -> int:
        return len(self.names)

    def rotations(self) -> np.ndarray:
        return np.stack([qvec_to_rotmat(q) for q in self.qvecs]).reshape(-1, 3, 3)

    def translations(self, rotations: np.ndarray | None = None) -> np.ndarray:
        """(N, 3) world-to-camera translations ``t = -R C`` (``rotations``: :meth:`rotations`, if already at hand)."""
        return -np.einsum("nij,nj->ni", self.rotations() if rotations is None else rotations, self.centers)

    def to_scene(self, names: list[str], cameras: list[Camera], keep: np.ndarray | None = None,
                 image_root: Path | None = None) -> Scene:
        """A scene of the cameras in ``keep`` (default all), renamed to ``names`` and given ``cameras``.

        Measurements move from centre-relative to COLMAP pixels by adding (W/2, H/2) of each camera: the
        principal point VisualSFM assumes is the image centre, which is (W/2, H/2) in COLMAP's convention.
        """
        if len(names) != self.num_cameras or len(cameras) != self.num_cameras:
            raise ValueError("names and cameras must have one entry per NVM camera")
        keep = np.ones(self.num_cameras, bool) if keep is None else np.asarray(keep, bool)
        half = np.array([[c.width / 2.0, c.height / 2.0] for c in cameras], np.float32).reshape(-1, 2)
        obs_xy = self.obs_xy_centered + half[self.obs_image] if len(self.obs_image) else self.obs_xy_centered
        rotations = self.rotations()
        full = Scene(
            image_names=list(names),
            image_cameras=list(cameras),
            R_cam_from_world=rotations,
            t_cam_from_world=self.translations(rotations).reshape(-1, 3),
            points_xyz=self.points_xyz,
            obs_image=self.obs_image,
            obs_point=self.obs_point,
            obs_xy=obs_xy.astype(np.float32),
            obs_keypoint=self.obs_feature,
            image_root=image_root,
        )
        return full if keep.all() else full.subset_images(keep)


def read_nvm(path: str | Path) -> NvmModel:
    """Parse the first model of an NVM file; errors name the file and line."""
    path = Path(path)
    lines = iter_lines(path)
    try:
        number, tokens = next(lines)
    except StopIteration:
        raise InputError("empty NVM file", path) from None
    if not tokens[0].startswith("NVM_V3"):
        raise InputError(f"not an NVM_V3 file (first line {' '.join(tokens)!r})", path, number)
    num_cameras = _count(lines, path, "camera count")
    names: list[str] = []
    cam_values = np.zeros((num_cameras, 10), np.float64)
    for k in range(num_cameras):
        number, tokens = _next(lines, path, f"camera line {k + 1} of {num_cameras}")
        if len(tokens) != 11:
            raise InputError(f"camera line needs 11 fields 'name focal qw qx qy qz Cx Cy Cz radial 0', got {len(tokens)}",
                             path, number)
        try:
            cam_values[k] = [float(t) for t in tokens[1:]]
        except ValueError:
            raise InputError(f"non-numeric field in camera line of {tokens[0]!r}", path, number) from None
        if not np.all(np.isfinite(cam_values[k])) or np.linalg.norm(cam_values[k, 1:5]) < 1e-8:
            raise InputError(f"invalid focal, quaternion or centre for {tokens[0]!r}", path, number)
        names.append(tokens[0])
    # A file may end after the cameras (no points).
    try:
        num_points = _count(lines, path, "point count")
    except InputError as exc:
        if "missing" not in exc.raw_message:
            raise
        num_points = 0
    xyz = np.zeros((num_points, 3), np.float64)
    obs_parts: list[np.ndarray] = []
    obs_counts = np.zeros(num_points, np.int64)
    for k in range(num_points):
        number, tokens = _next(lines, path, f"point line {k + 1} of {num_points}")
        if len(tokens) < 7:
            raise InputError(f"point line needs 'X Y Z R G B n_meas (img feat x y)*', got {len(tokens)} fields", path, number)
        try:
            n = int(tokens[6])
            values = np.array(tokens[7:], np.float64)
            xyz[k] = [float(t) for t in tokens[:3]]
        except ValueError:
            raise InputError("non-numeric field in point line", path, number) from None
        if n < 0 or len(tokens) != 7 + 4 * n:
            raise InputError(f"point declares {n} measurements, which needs {7 + 4 * n} fields, got {len(tokens)}", path, number)
        meas = values.reshape(n, 4)
        if n and (meas[:, 0].min() < 0 or meas[:, 0].max() >= num_cameras or np.any(meas[:, 0] != np.round(meas[:, 0]))):
            raise InputError(f"measurement image index outside 0..{num_cameras - 1}", path, number)
        obs_parts.append(meas)
        obs_counts[k] = n
    meas_all = np.concatenate(obs_parts) if obs_parts else np.zeros((0, 4))
    logger.info("%s: %d cameras, %d points, %d measurements", path, num_cameras, num_points, len(meas_all))
    return NvmModel(
        names=names,
        focals=cam_values[:, 0].copy(),
        qvecs=cam_values[:, 1:5].copy(),
        centers=cam_values[:, 5:8].copy(),
        radial=cam_values[:, 8].copy(),
        points_xyz=xyz,
        obs_image=meas_all[:, 0].astype(np.int32),
        obs_point=np.repeat(np.arange(num_points, dtype=np.int32), obs_counts),
        obs_feature=meas_all[:, 1].astype(np.int32),
        obs_xy_centered=meas_all[:, 2:4].astype(np.float32),
    )


def _next(lines, path: Path, what: str) -> tuple[int, list[str]]:  # noqa: ANN001 (iterator of iter_lines)
    try:
        return next(lines)
    except StopIteration:
        raise InputError(f"file ends early: missing {what}", path) from None


def _count(lines, path: Path, what: str) -> int:  # noqa: ANN001
    number, tokens = _next(lines, path, what)
    try:
        value = int(tokens[0])
    except ValueError:
        raise InputError(f"expected the {what} (an integer), got {' '.join(tokens)[:80]!r}", path, number) from None
    if len(tokens) != 1 or value < 0:
        raise InputError(f"expected the {what} alone on its line, got {' '.join(tokens)[:80]!r}", path, number)
    return value


def write_nvm(path: str | Path, names: list[str], focals: np.ndarray, qvecs: np.ndarray, centers: np.ndarray,
              points_xyz: np.ndarray, measurements: list[list[tuple[int, int, float, float]]]) -> Path:
    """Write a one-model NVM file (a TAB after each name, as some real files have); for fixtures and tools."""
    path = Path(path)
    out = ["NVM_V3", "", str(len(names))]
    for name, f, q, c in zip(names, focals, qvecs, centers):
        out.append(f"{name}\t{f:.12g} " + " ".join(f"{v:.17g}" for v in [*q, *c]) + " 0 0")
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
