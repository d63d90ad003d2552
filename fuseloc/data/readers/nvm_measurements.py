"""Which pixel convention an NVM file's measurements use, decided by reprojection.

VisualSFM writes measurements relative to the image centre (Cambridge's ``reconstruction.nvm``); COLMAP's NVM
exporter writes absolute pixels from the top-left corner (RobotCar Seasons' ``all.nvm``). The format does not
say which, so :func:`fit_measurements` projects a sample of points with the file's poses and focal lengths and
compares both readings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from fuseloc.data.readers.nvm import NvmModel


@dataclass(frozen=True)
class MeasurementCheck:
    """How :func:`fit_measurements` decides between absolute and centre-relative measurements.

    Residuals are measured in units of each image's diagonal, so the thresholds hold for any image size.
    The wrong convention is off by half the diagonal (the (W/2, H/2) shift); the right one by the SfM
    reprojection error plus the distance between the true principal point and the image centre, which the
    NVM format cannot express (about 1 % of the diagonal for RobotCar's rectified cameras).

    Attributes:
        sample: measurements projected (a fixed-seed random sample when the file has more).
        min_samples: fewer measurements than this cannot decide (then pass the convention explicitly).
        tolerance: the median residual of the right convention must be below this fraction of the diagonal.
        separation: and the other convention's median residual at least this many times larger.
        seed: seed of the sample.
    """

    sample: int = 4000
    min_samples: int = 5
    tolerance: float = 0.03
    separation: float = 4.0
    seed: int = 0


@dataclass(frozen=True)
class MeasurementFit:
    """The outcome of :func:`fit_measurements`.

    Attributes:
        convention: ``absolute`` or ``centered``; None when neither fits or the evidence is too thin.
        residual_absolute: median reprojection residual (fraction of the image diagonal) if absolute.
        residual_centered: the same if centre-relative.
        distortion: the radial-distortion reading that explained the winning convention best: ``none``,
            ``undistort`` (``x (1 + k r²)`` of the measurement matches the projection, VisualSFM's documented
            model) or ``distort`` (the projection distorted by ``1 + k r²`` matches the measurement).
        samples: measurements used (sampled and in front of their cameras).
        sampled: measurements sampled.
    """

    convention: Literal["absolute", "centered"] | None
    residual_absolute: float
    residual_centered: float
    distortion: str
    samples: int
    sampled: int

    def describe(self) -> str:
        return (f"median reprojection residual {100 * self.residual_absolute:.2f}% of the image diagonal if absolute, "
                f"{100 * self.residual_centered:.2f}% if centre-relative, over {self.samples} measurements")


def fit_measurements(model: NvmModel, sizes: np.ndarray, check: MeasurementCheck = MeasurementCheck(),  # noqa: B008
                     R_cam_from_world: np.ndarray | None = None,
                     t_cam_from_world: np.ndarray | None = None) -> MeasurementFit:
    """Which measurement convention the file's points and poses agree with.

    A sample of measurements is compared with the projection ``f X / Z`` of its point by its camera (principal
    point at the image centre, as in VisualSFM) under both readings: ``x - (W/2, H/2)`` (absolute) and ``x``
    (centre-relative). The radial coefficient is tried as VisualSFM documents it (undistorting the
    measurement), the other way round, and ignored; each convention keeps its best reading (writers disagree
    on its units and sign, and most files have 0). A measurement behind its camera counts as an infinite
    residual, so a file whose poses do not fit its points fits neither convention.

    Args:
        model: the NVM model.
        sizes: (N, 2) width and height of each camera's images.
        check: sample size and decision thresholds.
        R_cam_from_world, t_cam_from_world: the model's world-to-camera poses, if already computed.
    """
    R = model.R_cam_from_world() if R_cam_from_world is None else R_cam_from_world
    t = model.t_cam_from_world(R) if t_cam_from_world is None else t_cam_from_world
    m = len(model.obs_image)
    rng = np.random.default_rng(check.seed)
    pick = np.sort(rng.choice(m, check.sample, replace=False)) if m > check.sample else np.arange(m)
    cam, point = model.obs_image[pick].astype(np.int64), model.obs_point[pick].astype(np.int64)
    xc = np.einsum("nij,nj->ni", R[cam], model.points_xyz[point]) + t[cam]
    depth_ok = xc[:, 2] > 1e-9 * np.maximum(np.linalg.norm(xc, axis=1), 1e-300)
    front = depth_ok & (model.focals[cam] > 0)
    proj = np.zeros((len(pick), 2))
    proj[front] = model.focals[cam[front], None] * xc[front, :2] / xc[front, 2:]
    diag = np.hypot(sizes[cam, 0], sizes[cam, 1])
    k = model.radial[cam][:, None]
    raw = model.obs_xy[pick].astype(np.float64)
    scores: dict[str, tuple[float, str]] = {}
    for convention, meas in (("absolute", raw - sizes[cam] / 2.0), ("centered", raw)):
        variants = {"none": meas - proj}
        if np.any(k != 0):
            with np.errstate(over="ignore", invalid="ignore"):
                variants["undistort"] = meas * (1 + k * (meas ** 2).sum(1, keepdims=True)) - proj
                variants["distort"] = meas - proj * (1 + k * (proj ** 2).sum(1, keepdims=True))
        best = (np.inf, "none")
        for name, diff in variants.items():
            residual = np.where(front, np.linalg.norm(diff, axis=1) / diag, np.inf)
            residual[~np.isfinite(residual)] = np.inf
            score = float(np.median(residual)) if len(residual) else np.inf
            best = min(best, (score, name))
        scores[convention] = best
    (abs_score, abs_dist), (cen_score, cen_dist) = scores["absolute"], scores["centered"]
    samples = int(front.sum())
    convention = None
    if samples >= check.min_samples:
        low, high, name = (abs_score, cen_score, "absolute") if abs_score <= cen_score else (cen_score, abs_score, "centered")
        if low <= check.tolerance and high >= check.separation * low and high > check.tolerance:
            convention = name
    distortion = abs_dist if convention == "absolute" else cen_dist
    return MeasurementFit(convention, abs_score, cen_score, distortion, samples, len(pick))  # type: ignore[arg-type]
