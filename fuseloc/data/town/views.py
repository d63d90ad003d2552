"""The town's cameras: database views along each street's centre line and seeded day/night query views."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fuseloc.data.town.config import TownConfig
from fuseloc.types import qvec_to_rotmat, rotmat_to_qvec


def rotation_from_angles(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """World-to-camera rotation of a camera heading ``yaw`` (from +x, counter-clockwise seen from above),
    looking ``pitch`` up (positive: above the horizon) and rolled by ``roll`` about its viewing direction
    (positive turns the camera's x axis towards its y axis); all in degrees. Camera frame: x right, y down,
    z forward."""
    yaw, pitch, roll = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    right, down = (
        math.cos(roll) * right + math.sin(roll) * down,
        -math.sin(roll) * right + math.cos(roll) * down,
    )
    return np.stack([right, down, forward])  # rows: camera axes in world coordinates


@dataclass(frozen=True)
class View:
    """A camera to render: image name (relative to ``images/``), world-to-camera pose, condition.

    ``qvec`` is (w, x, y, z); the renderer uses exactly ``qvec_to_rotmat(qvec)`` and ``tvec`` so the
    written pose and the pixels agree to floating-point precision.
    """

    name: str
    qvec: tuple[float, float, float, float]
    tvec: tuple[float, float, float]
    condition: str  # "db", "day" or "night"
    index: int  # per-condition index, seeds the photometric randomness

    @property
    def R(self) -> np.ndarray:
        return qvec_to_rotmat(self.qvec)

    @property
    def t(self) -> np.ndarray:
        return np.asarray(self.tvec, dtype=np.float64)

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t


def _make_view(name: str, center: np.ndarray, R: np.ndarray, condition: str, index: int) -> View:
    q = rotmat_to_qvec(R)
    R_exact = qvec_to_rotmat(q)
    t = -R_exact @ np.asarray(center, dtype=np.float64)
    qvec = (float(q[0]), float(q[1]), float(q[2]), float(q[3]))
    return View(name, qvec, (float(t[0]), float(t[1]), float(t[2])), condition, index)


def plan_views(config: TownConfig) -> list[View]:
    """All database and query cameras, in writing order (database first)."""
    views: list[View] = []
    length = config.street_length
    n_pos = int(math.floor((length - 2 * config.db_margin) / config.db_spacing + 1e-9)) + 1
    offset = 0.5 * (length - (n_pos - 1) * config.db_spacing)  # centre the positions in the street
    for j in range(config.n_streets):
        k = 0
        for p in range(n_pos):
            center = np.array([offset + p * config.db_spacing, j * config.street_pitch, config.camera_height])
            for yaw in config.db_yaws_deg:
                R = rotation_from_angles(yaw, config.db_pitch_deg, 0.0)
                views.append(_make_view(f"db/street{j}_{k:03d}.png", center, R, "db", len(views)))
                k += 1

    for condition, count, stream in (("day", config.n_day_queries, 1), ("night", config.n_night_queries, 2)):
        rng = np.random.default_rng([config.effective_query_seed, stream])
        for i in range(count):
            j = int(rng.integers(config.n_streets))
            x = rng.uniform(config.query_margin, length - config.query_margin)
            lateral = rng.uniform(0.3, max(config.query_max_lateral, 0.3)) * rng.choice([-1.0, 1.0])
            z = config.camera_height + rng.uniform(-1.0, 1.0) * config.query_height_jitter
            base_yaw = float(config.db_yaws_deg[int(rng.integers(len(config.db_yaws_deg)))])
            yaw = base_yaw + rng.uniform(-1.0, 1.0) * config.query_max_yaw_deg
            pitch = config.db_pitch_deg + rng.uniform(-1.0, 1.0) * config.query_max_pitch_deg
            roll = rng.uniform(-1.0, 1.0) * config.query_max_roll_deg
            center = np.array([x, j * config.street_pitch + lateral, z])
            views.append(
                _make_view(
                    f"query/{condition}/{i:04d}.png",
                    center,
                    rotation_from_angles(yaw, pitch, roll),
                    condition,
                    i,
                )
            )
    return views

