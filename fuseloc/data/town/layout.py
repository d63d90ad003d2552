"""The town's layout: parallel street canyons lined with textured facades, repeated textures placed far
apart between different neighbours (:func:`build_town`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fuseloc.data.town.config import TownConfig
from fuseloc.data.town.textures import END_TEXTURES, SIDE_TEXTURES, Texture, load_textures

logger = logging.getLogger(__name__)


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
    tiers = [[s.name for s in SIDE_TEXTURES if s.rich], [s.name for s in SIDE_TEXTURES if not s.rich]]
    assignment = _assign_side_textures(config, tiers, rng)
    chosen = [END_TEXTURES[i].name for i in rng.permutation(len(END_TEXTURES))[: config.n_end_textures]]
    end_names: list[str] = []  # start and finish wall of each street in turn
    for j in range(config.n_streets):
        if len(chosen) >= 2 * config.n_streets:
            end_names += [chosen[2 * j], chosen[2 * j + 1]]
        else:
            # Texture j at the start, j + 1 at the finish (cyclically): copies land in different streets.
            end_names += [chosen[j % len(chosen)], chosen[(j + 1) % len(chosen)]]

    widths = {name: config.street_width if name in end_names else config.facade_width
              for name in {*assignment, *end_names}}
    textures = load_textures(widths, config.texels_per_metre)

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
