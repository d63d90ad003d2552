"""Writing a rendered town's scene files in the generic dataset layout: the COLMAP text model of the
database images, the query lists and ``scene.json`` (the images are written as they are rendered)."""

from __future__ import annotations

import json
from pathlib import Path

from fuseloc.data.town.config import TownConfig
from fuseloc.data.town.layout import Town
from fuseloc.data.town.views import View


def write_scene(out: Path, town: Town, views: list[View], config: TownConfig) -> None:
    """Write ``sparse/`` (the database views), the query lists and ``scene.json`` under ``out``."""
    _write_colmap_text(out / "sparse", [v for v in views if v.condition == "db"], config)
    _write_lists(out, [v for v in views if v.condition != "db"], config)
    _write_scene_json(out, town, config)


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
