"""What determines a town (:class:`TownConfig`) and where its generated scene is cached."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuseloc.cachekeys import key_of, keyed_name
from fuseloc.data.town.textures import END_TEXTURES

#: Bump when the rendering or layout code changes in a way that changes the output for the same config, so
#: that caches written by older code are not trusted. 2: view quaternions from ``fuseloc.types.rotmat_to_qvec``
#: (poses differ from version 1 in the last bits).
GENERATOR_VERSION = 2


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
    n_day_queries: int = 100
    n_night_queries: int = 100
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
        if not 1 <= self.n_end_textures <= len(END_TEXTURES):
            raise ValueError(f"n_end_textures must be between 1 and {len(END_TEXTURES)}")

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



def scene_hash(config: TownConfig) -> str:
    """Key of the config and the generator version (:func:`fuseloc.cachekeys.key_of`); names the cache directory."""
    return key_of({"config": config.to_json(), "generator_version": GENERATOR_VERSION})


def default_scene_dir(config: TownConfig | None = None) -> Path:
    """Cache location of a town: ``$FUSELOC_CACHE/synthetic-town-<hash>``, else
    ``~/.cache/fuseloc/synthetic-town-<hash>``."""
    config = TownConfig() if config is None else config
    base = os.environ.get("FUSELOC_CACHE")
    cache = Path(base) if base else Path.home() / ".cache" / "fuseloc"
    return cache / keyed_name("synthetic-town", scene_hash(config))

