"""A deterministic synthetic town: the project's embedded demo scene.

The town is a few parallel streets, each a closed canyon lined with planar rectangular facades that carry
real photo textures (shipped offline with scikit-image and scikit-learn). A handful of textures is
deliberately reused at several places far apart, each time between different neighbours, so that a query
keypoint's nearest database descriptor is often a copy at the wrong place: local-only direct 2D-3D matching
is ambiguous, while the set of facades seen together (global image context) tells the places apart.

The scene is rendered with exact pinhole geometry (per-pixel ray/plane intersection with a z-buffer,
trilinear mip-mapped texture lookups) and written in the generic dataset layout
(:mod:`fuseloc.data.readers.generic`)::

    root/
      images/db/street<j>_<k>.png         database images
      images/query/{day,night}/<k>.png     query images
      sparse/{cameras,images,points3D}.txt COLMAP text model of the database images, no points
      queries_with_intrinsics.txt          name PINHOLE W H fx fy cx cy
      gt_poses.txt                         name qw qx qy qz tx ty tz (world-to-camera)
      query_conditions.txt                 name day|night
      scene.json                           facade geometry and texture names (for debugging and tests)
      .complete                            written last: the config as JSON

Conventions: metres; world z up, ground plane z = 0, streets run along world x; camera frame x right,
y down, z forward; poses world-to-camera (``x_cam = R @ x_world + t``); COLMAP pixel coordinates (the centre
of the top-left pixel is (0.5, 0.5)).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fuseloc.io import config_hash
from fuseloc.types import qvec_to_rotmat

logger = logging.getLogger(__name__)

#: Bump when the rendering or layout code changes in a way that changes the output for the same config, so
#: that caches written by older code are not trusted.
GENERATOR_VERSION = 1

#: Texture mip levels below the full resolution (texture sizes are multiples of 2**MIP_LEVELS texels).
MIP_LEVELS = 4

#: Near clipping distance in metres.
NEAR_PLANE = 0.05


@dataclass(frozen=True)
class TownConfig:
    """Everything that determines the generated town (it is hashed into the cache key).

    Lengths are in metres, angles in degrees, image sizes and focal lengths in pixels.
    """

    seed: int = 0
    image_width: int = 640  # px
    image_height: int = 480  # px
    focal: float = 500.0  # px, PINHOLE fx = fy; principal point at the image centre

    # Layout: streets run along +x, at y = j * (street_width + block_depth), each closed by two end walls.
    n_streets: int = 3
    facades_per_side: int = 5  # street length = facades_per_side * facade_width
    facade_width: float = 8.0  # m; facade height follows from the texture's aspect ratio (about 5 to 11 m)
    street_width: float = 14.0  # m, facade to facade; also the width of the end walls
    block_depth: float = 16.0  # m between the backs of the facades of neighbouring streets
    texels_per_metre: float = 64.0  # texture resolution on the facades

    # Repetition: n_repeated_textures side-facade textures are each used copies_per_repeated times, at
    # facade centres at least min_repeat_separation apart and between different neighbours; the other side
    # facades are unique. The 2 * n_streets end walls cycle through n_end_textures textures (set it to
    # 2 * n_streets, at most 5, for unique end walls). Most keypoints of a view then lie on repeated
    # facades, which is what makes local-only matching ambiguous.
    n_repeated_textures: int = 6
    copies_per_repeated: int = 4
    min_repeat_separation: float = 20.0  # m
    n_end_textures: int = 2

    # Database cameras: on the street centre line, every db_spacing metres, one image per yaw.
    camera_height: float = 1.6  # m above the ground
    db_spacing: float = 4.0  # m along the street
    db_margin: float = 2.0  # m from the end walls to the first/last database position
    db_yaws_deg: tuple[float, ...] = (45.0, 135.0, -45.0, -135.0)  # heading from +x, counter-clockwise
    db_pitch_deg: float = 5.0  # positive looks up

    # Queries: random positions in the streets, headings near the database headings.
    n_day_queries: int = 24
    n_night_queries: int = 24
    query_margin: float = 3.0  # m from the end walls
    query_max_lateral: float = 1.5  # m off the centre line (at least 0.3 m)
    query_height_jitter: float = 0.15  # m
    query_max_yaw_deg: float = 15.0  # heading offset from the nearest database heading
    query_max_pitch_deg: float = 5.0  # pitch offset from db_pitch_deg
    query_max_roll_deg: float = 3.0
    # Seeds the query cameras and their photometry (None: ``seed``). Another value renders new day/night
    # queries of the same town and database, e.g. a validation set that never touches the evaluation queries.
    query_seed: int | None = None

    # Photometry.
    exposure_jitter: float = 0.15  # relative gain range (+-) for database and day images
    night_brightness: tuple[float, float] = (0.45, 0.7)  # gain after the night gamma curve
    night_gamma: tuple[float, float] = (1.3, 1.7)
    night_noise: tuple[float, float] = (3.0, 6.0)  # Gaussian noise std in 8-bit levels
    night_blur_sigma: tuple[float, float] = (0.8, 1.4)  # px
    night_shake_px: tuple[float, float] = (1.0, 4.0)  # length of the motion blur
    night_mottle: tuple[float, float] = (0.15, 12.0)  # (log-illumination std, correlation length px)

    def __post_init__(self) -> None:
        if self.image_width <= 0 or self.image_height <= 0 or self.focal <= 0:
            raise ValueError("image size and focal length must be positive")
        if self.n_streets < 1 or self.facades_per_side < 1:
            raise ValueError("need at least one street with one facade per side")
        if not self.db_yaws_deg:
            raise ValueError("db_yaws_deg must not be empty")
        if self.db_spacing <= 0 or 2 * self.db_margin > self.street_length:
            raise ValueError("db_spacing must be positive and db_margin less than half the street length")
        if 2 * self.query_margin > self.street_length:
            raise ValueError("query_margin must be less than half the street length")
        if not 1 <= self.n_end_textures <= len(_END_TEXTURES):
            raise ValueError(f"n_end_textures must be between 1 and {len(_END_TEXTURES)}")

    @property
    def street_length(self) -> float:
        """Length of each street in metres."""
        return self.facades_per_side * self.facade_width

    @property
    def street_pitch(self) -> float:
        """Distance in metres between the centre lines of neighbouring streets."""
        return self.street_width + self.block_depth

    def to_json(self) -> dict[str, Any]:
        """The config as JSON-ready values (tuples become lists)."""
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        if values["query_seed"] is None:
            # Left out so that towns generated before the field existed keep their hash and cache.
            del values["query_seed"]
        return values

    @property
    def effective_query_seed(self) -> int:
        return self.seed if self.query_seed is None else self.query_seed


# ----------------------------------------------------------------------------------------------------------
# Textures


@dataclass(frozen=True)
class _TextureSource:
    name: str
    loader: str  # "skimage:<function>", "skimage:stereo_motorcycle" (left view) or "sklearn:<index>"
    crop: tuple[float, float, float, float]  # (y0, y1, x0, x1) as fractions of the source image
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RGB multiplier for grey sources
    rich: bool = False  # many SIFT keypoints at street distances: preferred for the repeated facades


_FULL = (0.0, 1.0, 0.0, 1.0)

#: Side-facade textures (aspect ratio 0.74 to 1.5). Crops of one source never overlap, so no content is
#: shared between textures except where the layout repeats a texture on purpose. Sources with few SIFT
#: features (moon, clock, retina, colorwheel...) are left out; so are sources that need a download.
#: ``rich`` marks the textures with the most SIFT keypoints (about 300 to 1300 on a facade at half
#: resolution, against 70 to 260 for the others): the repeated facades are drawn from them first, so that
#: most keypoints of a view are ambiguous whatever the seed.
_SIDE_TEXTURES: tuple[_TextureSource, ...] = (
    _TextureSource("astronaut", "skimage:astronaut", _FULL, rich=True),
    _TextureSource("china_left", "sklearn:0", (0.0, 1.0, 0.0, 0.5), rich=True),
    _TextureSource("china_right", "sklearn:0", (0.0, 1.0, 0.5, 1.0), rich=True),
    _TextureSource("motorcycle_left", "skimage:stereo_motorcycle", (0.0, 1.0, 0.0, 0.5), rich=True),
    _TextureSource("motorcycle_right", "skimage:stereo_motorcycle", (0.0, 1.0, 0.5, 1.0), rich=True),
    _TextureSource("brick", "skimage:brick", _FULL, (1.0, 0.78, 0.62), rich=True),
    _TextureSource("coins", "skimage:coins", _FULL, (1.0, 0.9, 0.7), rich=True),
    _TextureSource("grass", "skimage:grass", _FULL, (0.75, 1.0, 0.7), rich=True),
    _TextureSource("chelsea", "skimage:chelsea", _FULL),
    _TextureSource("coffee", "skimage:coffee", _FULL),
    _TextureSource("rocket", "skimage:rocket", _FULL),
    _TextureSource("flower", "sklearn:1", _FULL),
    _TextureSource("hubble_bottom_left", "skimage:hubble_deep_field", (0.5, 1.0, 0.0, 0.5)),
    _TextureSource("hubble_bottom_right", "skimage:hubble_deep_field", (0.5, 1.0, 0.5, 1.0)),
    _TextureSource("camera", "skimage:camera", _FULL, (0.95, 0.95, 1.0)),
)

#: End-wall textures (aspect ratio >= 2, they span the street width). Gravel is left out: its dense
#: noise-like keypoints would crowd out everything else in a view.
_END_TEXTURES: tuple[_TextureSource, ...] = (
    _TextureSource("hubble_top", "skimage:hubble_deep_field", (0.0, 0.5, 0.0, 1.0)),
    _TextureSource("ihc_top", "skimage:immunohistochemistry", (0.0, 0.5, 0.0, 1.0)),
    _TextureSource("ihc_bottom", "skimage:immunohistochemistry", (0.5, 1.0, 0.0, 1.0)),
    _TextureSource("page", "skimage:page", _FULL, (1.0, 0.96, 0.85)),
    _TextureSource("text", "skimage:text", _FULL, (0.85, 0.9, 1.0)),
)


def _load_source(loader: str) -> np.ndarray:
    """Load a bundled source image as RGB uint8 (no network access)."""
    kind, _, name = loader.partition(":")
    if kind == "skimage":
        from skimage import data

        image = data.stereo_motorcycle()[0] if name == "stereo_motorcycle" else getattr(data, name)()
    elif kind == "sklearn":
        from sklearn.datasets import load_sample_images

        image = load_sample_images().images[int(name)]
    else:
        raise ValueError(f"unknown texture loader {loader!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"texture source {loader} is {image.dtype}, expected uint8")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _texture_size(width_m: float, aspect: float, texels_per_metre: float) -> tuple[int, int]:
    """Texture (width, height) in texels, both multiples of 2**MIP_LEVELS so mip levels halve exactly."""
    unit = 2**MIP_LEVELS
    tw = max(unit, int(round(width_m * texels_per_metre / unit)) * unit)
    th = max(unit, int(round(tw / aspect / unit)) * unit)
    return tw, th


@dataclass
class Texture:
    """A facade texture with its mip pyramid.

    Attributes:
        name: texture name (see ``_SIDE_TEXTURES``/``_END_TEXTURES``).
        levels: RGB uint8 images; ``levels[k]`` has ``2**-k`` times the resolution of ``levels[0]``.
    """

    name: str
    levels: list[np.ndarray]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the full-resolution texture in texels."""
        return self.levels[0].shape[1], self.levels[0].shape[0]


def _make_texture(
    source: _TextureSource, image: np.ndarray, width_m: float, texels_per_metre: float
) -> Texture:
    h, w = image.shape[:2]
    y0, y1, x0, x1 = source.crop
    crop = image[int(round(y0 * h)) : int(round(y1 * h)), int(round(x0 * w)) : int(round(x1 * w))]
    tw, th = _texture_size(width_m, crop.shape[1] / crop.shape[0], texels_per_metre)
    shrink = tw < crop.shape[1]
    resized = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    if source.tint != (1.0, 1.0, 1.0):
        resized = (
            np.clip(resized.astype(np.float32) * np.float32(source.tint), 0, 255).round().astype(np.uint8)
        )
    # Box-filtered halving keeps texel centres aligned across levels (level k texel i covers level-0 texels
    # [2**k i, 2**k (i+1))), which the renderer relies on for exact texture coordinates.
    levels = [np.ascontiguousarray(resized)]
    for _ in range(MIP_LEVELS):
        prev = levels[-1]
        levels.append(
            cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA)
        )
    return Texture(source.name, levels)


# ----------------------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class Facade:
    """A vertical textured rectangle, visible from its front side only.

    The texture's top-left corner is at ``top_left``; texture columns run along ``u`` (unit, horizontal,
    left to right as seen from the front) and rows run down along -z. The front normal is ``u x z``.

    Attributes:
        index: position in :attr:`Town.facades`.
        texture: texture name.
        top_left: 3D top-left corner in metres.
        u: horizontal unit vector.
        width, height: size in metres.
        street: index of the street the facade belongs to.
        role: ``"left"``, ``"right"``, ``"end_start"`` or ``"end_finish"``.
    """

    index: int
    texture: str
    top_left: tuple[float, float, float]
    u: tuple[float, float, float]
    width: float
    height: float
    street: int
    role: str

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.u), np.array([0.0, 0.0, 1.0]))

    @property
    def corners(self) -> np.ndarray:
        """(4, 3) corners: top-left, top-right, bottom-right, bottom-left."""
        p = np.asarray(self.top_left, dtype=np.float64)
        u = np.asarray(self.u, dtype=np.float64) * self.width
        down = np.array([0.0, 0.0, -self.height])
        return np.stack([p, p + u, p + u + down, p + down])

    @property
    def center(self) -> np.ndarray:
        return self.corners.mean(axis=0)

    def point_at(self, s: float | np.ndarray, t: float | np.ndarray) -> np.ndarray:
        """3D point at fractional texture coordinates (0..1 left to right, 0..1 top to bottom)."""
        s = np.asarray(s, dtype=np.float64)[..., None]
        t = np.asarray(t, dtype=np.float64)[..., None]
        return (
            np.asarray(self.top_left)
            + s * self.width * np.asarray(self.u)
            - t * self.height * np.array([0.0, 0.0, 1.0])
        )


@dataclass
class Town:
    """The town's geometry and textures, ready to render."""

    facades: list[Facade]
    textures: dict[str, Texture]


def _street_slots(config: TownConfig) -> list[tuple[int, str, int]]:
    """Side-facade slots as (street, side, position along the street)."""
    return [
        (j, side, k)
        for j in range(config.n_streets)
        for side in ("left", "right")
        for k in range(config.facades_per_side)
    ]


def _slot_center(config: TownConfig, slot: tuple[int, str, int]) -> np.ndarray:
    j, side, k = slot
    y = j * config.street_pitch + (0.5 if side == "left" else -0.5) * config.street_width
    return np.array([(k + 0.5) * config.facade_width, y])


def _assign_side_textures(
    config: TownConfig, tiers: Sequence[Sequence[str]], rng: np.random.Generator
) -> list[str]:
    """Choose which texture goes on each side slot.

    The texture names are shuffled within each tier (seeded) and the tiers concatenated; the first
    ``n_repeated_textures`` names are each placed
    ``copies_per_repeated`` times; copies must be ``min_repeat_separation`` apart and no two copies may
    share a neighbour along the street (so each copy sits in a different context). A seeded local search
    over slot swaps minimises the violations; when they cannot all be removed (tiny towns) the best
    assignment is kept, with a warning.
    """
    slots = _street_slots(config)
    n_rep = min(config.n_repeated_textures, len(slots) // max(config.copies_per_repeated, 1))
    copies = config.copies_per_repeated if n_rep > 0 else 0
    n_unique = len(slots) - n_rep * copies
    order = [tier[i] for tier in tiers for i in rng.permutation(len(tier))]
    if n_rep + n_unique > len(order):
        raise ValueError(
            f"the town needs {n_rep + n_unique} side textures ({n_rep} repeated x {copies} + {n_unique} unique) "
            f"but only {len(order)} exist: use fewer streets/facades or more repetition"
        )
    repeated, unique = order[:n_rep], order[n_rep : n_rep + n_unique]
    pool = [name for name in repeated for _ in range(copies)] + unique
    centers = np.array([_slot_center(config, s) for s in slots])
    too_close = np.linalg.norm(centers[:, None] - centers[None], axis=2) < config.min_repeat_separation
    neighbours = [
        [i2 for i2, s2 in enumerate(slots) if s2[:2] == s[:2] and abs(s2[2] - s[2]) == 1] for s in slots
    ]
    repeated_set = set(repeated)

    def violations(assignment: list[str]) -> int:
        count = 0
        for name in repeated_set:
            where = [i for i, a in enumerate(assignment) if a == name]
            count += int(np.triu(too_close[np.ix_(where, where)], 1).sum())
            contexts = [assignment[n] for i in where for n in neighbours[i]]
            count += len(contexts) - len(set(contexts))  # a neighbour texture shared by two copies
        return count

    assignment = [pool[i] for i in rng.permutation(len(pool))]
    cost = violations(assignment)
    for _ in range(20000):
        if cost == 0:
            break
        i, j = (int(v) for v in rng.integers(len(pool), size=2))
        if assignment[i] == assignment[j]:
            continue
        assignment[i], assignment[j] = assignment[j], assignment[i]
        new_cost = violations(assignment)
        if new_cost <= cost:  # accepting sideways moves lets the search cross plateaus
            cost = new_cost
        else:
            assignment[i], assignment[j] = assignment[j], assignment[i]
    if cost:
        logger.warning("synthetic town: %d repetition constraints could not be met (town too small)", cost)
    return assignment


def build_town(config: TownConfig) -> Town:
    """Lay out the facades and load their textures (deterministic in ``config``)."""
    rng = np.random.default_rng([config.seed, 0])
    tiers = [[s.name for s in _SIDE_TEXTURES if s.rich], [s.name for s in _SIDE_TEXTURES if not s.rich]]
    assignment = _assign_side_textures(config, tiers, rng)
    chosen = [_END_TEXTURES[i].name for i in rng.permutation(len(_END_TEXTURES))[: config.n_end_textures]]
    end_names: list[str] = []  # start and finish wall of each street in turn
    for j in range(config.n_streets):
        if len(chosen) >= 2 * config.n_streets:
            end_names += [chosen[2 * j], chosen[2 * j + 1]]
        else:
            # Texture j at the start, j + 1 at the finish (cyclically): copies land in different streets.
            end_names += [chosen[j % len(chosen)], chosen[(j + 1) % len(chosen)]]

    sources = {s.name: s for s in (*_SIDE_TEXTURES, *_END_TEXTURES)}
    used = sorted(set(assignment) | set(end_names))
    images: dict[str, np.ndarray] = {}
    textures: dict[str, Texture] = {}
    for name in used:
        source = sources[name]
        if source.loader not in images:
            images[source.loader] = _load_source(source.loader)
        width = config.street_width if name in end_names else config.facade_width
        textures[name] = _make_texture(source, images[source.loader], width, config.texels_per_metre)

    facades: list[Facade] = []

    def add(
        texture: str,
        bottom_left: np.ndarray,
        u: tuple[float, float, float],
        width: float,
        street: int,
        role: str,
    ) -> None:
        tw, th = textures[texture].size
        height = width * th / tw  # keep texels square
        top_left = (float(bottom_left[0]), float(bottom_left[1]), float(height))
        facades.append(Facade(len(facades), texture, top_left, u, width, height, street, role))

    length, half = config.street_length, 0.5 * config.street_width
    for slot, texture in zip(_street_slots(config), assignment, strict=True):
        j, side, k = slot
        y0 = j * config.street_pitch
        if side == "left":  # at y0 + half, facing -y: seen from the street, x increases to the right
            add(
                texture,
                np.array([k * config.facade_width, y0 + half]),
                (1.0, 0.0, 0.0),
                config.facade_width,
                j,
                side,
            )
        else:  # at y0 - half, facing +y
            add(
                texture,
                np.array([(k + 1) * config.facade_width, y0 - half]),
                (-1.0, 0.0, 0.0),
                config.facade_width,
                j,
                side,
            )
    for j in range(config.n_streets):
        y0 = j * config.street_pitch
        add(
            end_names[2 * j], np.array([0.0, y0 - half]), (0.0, 1.0, 0.0), config.street_width, j, "end_start"
        )
        add(
            end_names[2 * j + 1],
            np.array([length, y0 + half]),
            (0.0, -1.0, 0.0),
            config.street_width,
            j,
            "end_finish",
        )
    return Town(facades, textures)


# ----------------------------------------------------------------------------------------------------------
# Poses


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


def quaternion_from_matrix(R: np.ndarray) -> np.ndarray:
    """Hamilton quaternion (w, x, y, z) with w >= 0 of a rotation matrix."""
    m = np.asarray(R, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


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
    q = quaternion_from_matrix(R)
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


# ----------------------------------------------------------------------------------------------------------
# Rendering


@dataclass
class RenderedView:
    """A rendered image with its exact geometry.

    Attributes:
        rgb: (H, W, 3) float32 RGB in [0, 255] before photometric effects.
        depth: (H, W) float32 z-depth in metres along the optical axis (inf for sky).
        facade: (H, W) int16 facade index per pixel, -1 for ground and sky.
    """

    rgb: np.ndarray
    depth: np.ndarray
    facade: np.ndarray


def intrinsics_matrix(config: TownConfig) -> np.ndarray:
    """PINHOLE calibration matrix in COLMAP pixel convention (principal point at the image centre)."""
    return np.array(
        [
            [config.focal, 0.0, config.image_width / 2],
            [0.0, config.focal, config.image_height / 2],
            [0.0, 0.0, 1.0],
        ]
    )


def _clip_near(points: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a convex polygon (camera frame, (N, 3)) to z >= near."""
    out = []
    n = len(points)
    for i in range(n):
        a, b = points[i], points[(i + 1) % n]
        a_in, b_in = a[2] >= near, b[2] >= near
        if a_in:
            out.append(a)
        if a_in != b_in:
            out.append(a + (near - a[2]) / (b[2] - a[2]) * (b - a))
    return np.array(out).reshape(-1, 3)


_SKY_ZENITH = np.array([105.0, 145.0, 205.0], dtype=np.float32)
_SKY_HORIZON = np.array([205.0, 218.0, 232.0], dtype=np.float32)
_GROUND = np.array([92.0, 90.0, 88.0], dtype=np.float32)
_HAZE = np.array([170.0, 175.0, 182.0], dtype=np.float32)


def render_view(
    town: Town, K: np.ndarray, R: np.ndarray, t: np.ndarray, width: int, height: int
) -> RenderedView:
    """Render the town seen by a pinhole camera (world-to-camera ``R``, ``t``; COLMAP pixel convention).

    Every pixel centre's ray is intersected analytically with the ground and with each facade plane, so
    geometry is exact and a facade partly behind the camera is handled without a degenerate homography;
    the facade's near-clipped outline only bounds the pixels to visit.
    """
    K_inv = np.linalg.inv(K)
    # Pixel centres: pixel (i, j) in array indexing has COLMAP coordinates (j + 0.5, i + 0.5).
    us = np.arange(width, dtype=np.float64) + 0.5
    vs = np.arange(height, dtype=np.float64) + 0.5
    uu, vv = np.meshgrid(us, vs)

    # Sky and ground, from the world direction of each pixel ray (camera-frame ray with z = 1).
    center = -R.T @ t
    M = R.T @ K_inv  # pixel -> world direction
    dir_z = M[2, 0] * uu + M[2, 1] * vv + M[2, 2]
    dir_norm = np.sqrt(
        (M[0, 0] * uu + M[0, 1] * vv + M[0, 2]) ** 2 + (M[1, 0] * uu + M[1, 1] * vv + M[1, 2]) ** 2 + dir_z**2
    )
    elevation = (dir_z / dir_norm).astype(np.float32)
    with np.errstate(divide="ignore"):
        ground_depth = np.where(dir_z < 0, -center[2] / np.minimum(dir_z, -1e-12), np.inf)
    depth = ground_depth.astype(np.float32)
    sky_mix = np.clip(elevation, 0.0, 1.0)[..., None] ** 0.6
    rgb = (1 - sky_mix) * _SKY_HORIZON + sky_mix * _SKY_ZENITH
    ground = np.isfinite(depth)
    haze = (1.0 - np.exp(-depth[ground] * dir_norm[ground].astype(np.float32) / 120.0))[:, None]
    rgb[ground] = (1 - haze) * _GROUND + haze * _HAZE
    rgb = rgb.astype(np.float32)
    facade_id = np.full((height, width), -1, dtype=np.int16)

    for facade in town.facades:
        corners_cam = facade.corners @ R.T + t
        normal_cam = R @ facade.normal
        if float(normal_cam @ -corners_cam[0]) <= 0:  # camera behind the facade: back faces are invisible
            continue
        clipped = _clip_near(corners_cam, NEAR_PLANE)
        if len(clipped) < 3:
            continue
        proj = clipped @ K.T
        px = proj[:, :2] / proj[:, 2:3]
        x0 = max(int(math.floor(px[:, 0].min())) - 1, 0)
        x1 = min(int(math.ceil(px[:, 0].max())) + 1, width)
        y0 = max(int(math.floor(px[:, 1].min())) - 1, 0)
        y1 = min(int(math.ceil(px[:, 1].max())) + 1, height)
        if x0 >= x1 or y0 >= y1:
            continue
        _draw_facade(
            town.textures[facade.texture],
            facade,
            K_inv,
            R,
            t,
            uu[y0:y1, x0:x1],
            vv[y0:y1, x0:x1],
            rgb[y0:y1, x0:x1],
            depth[y0:y1, x0:x1],
            facade_id[y0:y1, x0:x1],
        )
    return RenderedView(rgb, depth, facade_id)


def _draw_facade(
    texture: Texture,
    facade: Facade,
    K_inv: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    uu: np.ndarray,
    vv: np.ndarray,
    rgb: np.ndarray,
    depth: np.ndarray,
    facade_id: np.ndarray,
) -> None:
    """Z-buffered draw of one facade into the given (views of) image buffers."""
    tw, th = texture.size
    # Plane point for texture coordinates (s, t) in texels (texel centres at +0.5, like COLMAP pixels):
    # X_cam = A @ (s, t, 1). A pixel ray r = K^-1 (u, v, 1) has r_z = 1, so with q = A^-1 r the texture
    # coordinates are (q0 / q2, q1 / q2) and the z-depth is 1 / q2 (negative: the ray hits behind the camera).
    a_s = R @ (np.asarray(facade.u) * (facade.width / tw))
    a_t = R @ np.array([0.0, 0.0, -facade.height / th])
    a_0 = R @ np.asarray(facade.top_left) + t
    G = np.linalg.inv(np.column_stack([a_s, a_t, a_0])) @ K_inv
    q0 = G[0, 0] * uu + G[0, 1] * vv + G[0, 2]
    q1 = G[1, 0] * uu + G[1, 1] * vv + G[1, 2]
    q2 = G[2, 0] * uu + G[2, 1] * vv + G[2, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_q2 = 1.0 / q2
        s = q0 * inv_q2
        tt = q1 * inv_q2
        visible = (
            (q2 > 0) & (inv_q2 >= NEAR_PLANE) & (s >= 0) & (s < tw) & (tt >= 0) & (tt < th) & (inv_q2 < depth)
        )
    if not visible.any():
        return
    s, tt, inv_q2 = s[visible], tt[visible], inv_q2[visible]
    # Texels per pixel from the Jacobian of the pixel -> texture map selects the mip level, so distant and
    # grazing facades are low-pass filtered instead of aliasing into view-dependent SIFT features.
    g20, g21 = G[2, 0], G[2, 1]
    dsdu, dsdv = (G[0, 0] - s * g20) * inv_q2, (G[0, 1] - s * g21) * inv_q2
    dtdu, dtdv = (G[1, 0] - tt * g20) * inv_q2, (G[1, 1] - tt * g21) * inv_q2
    rho2 = np.maximum(dsdu**2 + dtdu**2, dsdv**2 + dtdv**2)
    lod = np.clip(0.5 * np.log2(np.maximum(rho2, 1e-12)), 0.0, float(MIP_LEVELS))
    base = np.minimum(np.floor(lod).astype(np.int32), MIP_LEVELS - 1)
    frac = (lod - base).astype(np.float32)[:, None]
    color = np.zeros((len(s), 3), dtype=np.float32)
    for level in range(MIP_LEVELS + 1):
        weight = np.where(base == level, 1.0 - frac[:, 0], 0.0) + np.where(base + 1 == level, frac[:, 0], 0.0)
        sel = weight > 0
        if not sel.any():
            continue
        scale = 1.0 / (1 << level)
        # cv2.remap samples texel centres at integer coordinates, hence the -0.5.
        sample = _sample(texture.levels[level], s[sel] * scale - 0.5, tt[sel] * scale - 0.5)
        color[sel] += sample * weight[sel, None].astype(np.float32)
    rgb[visible] = color
    depth[visible] = inv_q2
    facade_id[visible] = facade.index


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` at cv2 pixel coordinates ``x``, ``y`` (1-D), as (N, 3) float32."""
    n = len(x)
    cols = 1024  # cv2.remap needs maps smaller than 32767 on each side
    rows = -(-n // cols)
    map_x = np.zeros(rows * cols, dtype=np.float32)
    map_y = np.zeros(rows * cols, dtype=np.float32)
    map_x[:n], map_y[:n] = x, y
    out = cv2.remap(
        image,
        map_x.reshape(rows, cols),
        map_y.reshape(rows, cols),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    return out.reshape(rows * cols, -1)[:n].astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Photometry


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    """Normalised linear motion-blur kernel: a segment of ``length`` px at ``angle`` rad through the centre."""
    half = 0.5 * length
    size = 2 * int(math.ceil(half)) + 1
    kernel = np.zeros((size + 1, size + 1), dtype=np.float64)  # one spare row/column for the splats
    centre = size // 2
    for s in np.linspace(-half, half, 8 * int(math.ceil(length)) + 1):
        x, y = centre + s * math.cos(angle), centre + s * math.sin(angle)
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        kernel[y0, x0] += (1 - fx) * (1 - fy)
        kernel[y0, x0 + 1] += fx * (1 - fy)
        kernel[y0 + 1, x0] += (1 - fx) * fy
        kernel[y0 + 1, x0 + 1] += fx * fy
    kernel = kernel[:size, :size]
    return (kernel / kernel.sum()).astype(np.float32)


def _apply_photometry(rgb: np.ndarray, view: View, config: TownConfig) -> np.ndarray:
    """Exposure (database, day) or night degradation; seeded per view. Returns BGR uint8 for cv2.imwrite."""
    stream = {"db": 3, "day": 4, "night": 5}[view.condition]
    seed = config.seed if view.condition == "db" else config.effective_query_seed
    rng = np.random.default_rng([seed, stream, view.index])
    image = rgb / np.float32(255.0)
    if view.condition == "night":
        gamma = rng.uniform(*config.night_gamma)
        gain = rng.uniform(*config.night_brightness)
        # Sodium-orange or cold-LED street lighting.
        cast = np.array([1.15, 0.85, 0.55] if rng.random() < 0.5 else [0.65, 0.85, 1.2], dtype=np.float32)
        h, w = image.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        # Uneven street lighting: dim ambient light plus a few pools of lamp light, and lens vignetting.
        light = np.full((h, w), 0.35, dtype=np.float32)
        for _ in range(3):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            radius = rng.uniform(0.15, 0.4) * w
            light += np.float32(rng.uniform(0.3, 0.8)) * np.exp(
                -((xx - cx) ** 2 + (yy - cy) ** 2) / np.float32(2 * radius**2)
            )
        r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / np.float32((w / 2) ** 2 + (h / 2) ** 2)
        light *= 1.0 - 0.4 * r2
        # Mottled light and shadow (foliage, lamp glare) at the scale of SIFT patches: unlike the smooth
        # terms above it changes local gradients, hence descriptors, as real night lighting does.
        mottle = cv2.GaussianBlur(
            rng.standard_normal((h, w), dtype=np.float32), (0, 0), config.night_mottle[1]
        )
        mottle *= np.float32(config.night_mottle[0] / max(float(mottle.std()), 1e-6))
        light *= np.exp(mottle)
        image = np.power(image, np.float32(gamma)) * np.float32(gain) * cast * light[..., None] * 255.0
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(*config.night_blur_sigma))
        # Camera shake during the long exposure: a short linear motion blur in a random direction.
        kernel = _motion_kernel(rng.uniform(*config.night_shake_px), rng.uniform(0.0, math.pi))
        image = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        noise_std = rng.uniform(*config.night_noise)
        # Shot noise grows with brightness, read noise is constant.
        image = image + rng.standard_normal(image.shape, dtype=np.float32) * np.sqrt(
            np.float32(noise_std**2) + 0.3 * np.maximum(image, 0.0)
        )
    else:
        gain = 1.0 + rng.uniform(-1.0, 1.0) * config.exposure_jitter
        gamma = 1.0 + rng.uniform(-1.0, 1.0) * 0.5 * config.exposure_jitter
        image = np.power(image, np.float32(gamma)) * np.float32(gain) * 255.0
    out = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out[:, :, ::-1])


# ----------------------------------------------------------------------------------------------------------
# Writing


def scene_hash(config: TownConfig) -> str:
    """Short hash of the config and the generator version; names the cache directory."""
    return config_hash({"config": config.to_json(), "generator_version": GENERATOR_VERSION}, length=12)


def default_scene_dir(config: TownConfig | None = None) -> Path:
    """Cache location of a town: ``$FUSELOC_CACHE/synthetic-town-<hash>``, else
    ``~/.cache/fuseloc/synthetic-town-<hash>``."""
    config = TownConfig() if config is None else config
    base = os.environ.get("FUSELOC_CACHE")
    cache = Path(base) if base else Path.home() / ".cache" / "fuseloc"
    return cache / f"synthetic-town-{scene_hash(config)}"


def _completion_record(config: TownConfig) -> dict[str, Any]:
    return {
        "config": config.to_json(),
        "scene_hash": scene_hash(config),
        "generator_version": GENERATOR_VERSION,
    }


def is_complete(root: Path, config: TownConfig) -> bool:
    """True when ``root`` holds a finished town generated from ``config`` by this generator version."""
    marker = Path(root) / ".complete"
    if not marker.is_file():
        return False
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return record == _completion_record(config)


def _fmt(x: float) -> str:
    return repr(float(x))  # shortest string that round-trips exactly


def _write_colmap_text(out: Path, views: list[View], config: TownConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    c = config
    (out / "cameras.txt").write_text(
        "# Camera list with one line of data per camera:\n"
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
        "# Number of cameras: 1\n"
        f"1 PINHOLE {c.image_width} {c.image_height} {_fmt(c.focal)} {_fmt(c.focal)} "
        f"{_fmt(c.image_width / 2)} {_fmt(c.image_height / 2)}\n"
    )
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(views)}, mean observations per image: 0",
    ]
    for image_id, view in enumerate(views, start=1):
        lines.append(" ".join([str(image_id), *map(_fmt, view.qvec), *map(_fmt, view.tvec), "1", view.name]))
        lines.append("")
    (out / "images.txt").write_text("\n".join(lines) + "\n")
    (out / "points3D.txt").write_text(
        "# 3D point list with one line of data per point:\n"
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
        "# Number of points: 0, mean track length: 0\n"
    )


def _write_lists(out: Path, queries: list[View], config: TownConfig) -> None:
    c = config
    intrinsics = f"PINHOLE {c.image_width} {c.image_height} {_fmt(c.focal)} {_fmt(c.focal)} {_fmt(c.image_width / 2)} {_fmt(c.image_height / 2)}"
    (out / "queries_with_intrinsics.txt").write_text("".join(f"{v.name} {intrinsics}\n" for v in queries))
    (out / "gt_poses.txt").write_text(
        "".join(" ".join([v.name, *map(_fmt, v.qvec), *map(_fmt, v.tvec)]) + "\n" for v in queries)
    )
    (out / "query_conditions.txt").write_text("".join(f"{v.name} {v.condition}\n" for v in queries))


def _write_scene_json(out: Path, town: Town, config: TownConfig) -> None:
    record = {
        "units": "metres; world z up; poses world-to-camera",
        "config": config.to_json(),
        "facades": [
            {
                "index": f.index,
                "texture": f.texture,
                "street": f.street,
                "role": f.role,
                "top_left": list(f.top_left),
                "u": list(f.u),
                "width": f.width,
                "height": f.height,
                "texture_size": list(town.textures[f.texture].size),
            }
            for f in town.facades
        ],
    }
    (out / "scene.json").write_text(json.dumps(record, indent=1) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(root: Path) -> None:
    """Delete temp dirs of earlier, interrupted generations (their process is gone)."""
    for path in root.parent.glob(root.name + ".tmp-*"):
        pid_text = path.name.rsplit("-", 1)[-1]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            logger.info("removing stale temporary directory %s", path)
            shutil.rmtree(path, ignore_errors=True)


def generate_town(
    root: str | Path,
    config: TownConfig = TownConfig(),  # noqa: B008 (frozen, so a shared default is safe)
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Render the town and write it to ``root`` in the generic dataset layout.

    If ``root/.complete`` records the same config (and generator version) the call returns at once, unless
    ``overwrite``. The town is rendered into a sibling ``<root>.tmp-<pid>`` directory, which replaces
    ``root`` only when complete (``.complete`` is its last file), so an interrupted run is never trusted.

    Args:
        root: output directory.
        config: the town to generate.
        overwrite: regenerate even if a complete town for this config is there.
        progress: optional ``callback(done, total)`` after each image.

    Returns:
        ``root``.
    """
    root = Path(root)
    if not overwrite and is_complete(root, config):
        logger.debug("synthetic town already complete at %s", root)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root)
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    start = time.perf_counter()
    try:
        town = build_town(config)
        views = plan_views(config)
        K = intrinsics_matrix(config)
        for folder in ("images/db", "images/query/day", "images/query/night"):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        for i, view in enumerate(views):
            rendered = render_view(town, K, view.R, view.t, config.image_width, config.image_height)
            image = _apply_photometry(rendered.rgb, view, config)
            if not cv2.imwrite(str(tmp / "images" / view.name), image):
                raise OSError(f"could not write {tmp / 'images' / view.name}")
            if progress is not None:
                progress(i + 1, len(views))
            if (i + 1) % 25 == 0 or i + 1 == len(views):
                logger.info("synthetic town: rendered %d/%d images", i + 1, len(views))
        db = [v for v in views if v.condition == "db"]
        queries = [v for v in views if v.condition != "db"]
        _write_colmap_text(tmp / "sparse", db, config)
        _write_lists(tmp, queries, config)
        _write_scene_json(tmp, town, config)
        (tmp / ".complete").write_text(
            json.dumps(_completion_record(config), indent=1, sort_keys=True) + "\n"
        )

        if not overwrite and is_complete(root, config):  # a concurrent run finished first
            shutil.rmtree(tmp)
            return root
        old = None
        if root.exists():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = root.with_name(f"{root.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(root, old)
        os.replace(tmp, root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "synthetic town: %d database + %d query images written to %s in %.1f s",
        len(db),
        len(queries),
        root,
        time.perf_counter() - start,
    )
    return root
