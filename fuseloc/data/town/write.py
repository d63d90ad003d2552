"""Writing a rendered town's scene files in the generic dataset layout: the COLMAP text model of the
database images, the query lists and ``scene.json`` (the images are written as they are rendered)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fuseloc.data.town.config import TownConfig
from fuseloc.data.town.layout import Town
from fuseloc.data.town.views import View
from fuseloc.data.writers import ImageRecord, write_model_text
from fuseloc.types import Camera


def write_scene(out: Path, town: Town, views: list[View], config: TownConfig) -> None:
    """Write ``sparse/`` (the database views), the query lists and ``scene.json`` under ``out``."""
    _write_colmap_text(out / "sparse", [v for v in views if v.condition == "db"], config)
    _write_lists(out, [v for v in views if v.condition != "db"], config)
    _write_scene_json(out, town, config)


def _fmt(x: float) -> str:
    return repr(float(x))  # shortest string that round-trips exactly


def _write_colmap_text(out: Path, views: list[View], config: TownConfig) -> None:
    c = config
    camera = Camera("PINHOLE", c.image_width, c.image_height, (c.focal, c.focal, c.image_width / 2, c.image_height / 2))
    no_points = np.zeros((0, 2))
    images = [ImageRecord(image_id, view.name, 1, np.asarray(view.qvec), np.asarray(view.tvec), no_points,
                          np.zeros(0, np.int64))
              for image_id, view in enumerate(views, start=1)]
    write_model_text(out, {1: camera}, images, np.zeros(0, np.int64), np.zeros((0, 3)))


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
