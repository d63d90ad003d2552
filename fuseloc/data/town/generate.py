"""Generating a town into a directory: render every view, write the scene, and mark it complete (last) so
that an interrupted or outdated generation is never trusted."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from fuseloc.data.town.config import GENERATOR_VERSION, TownConfig, scene_hash
from fuseloc.data.town.layout import build_town
from fuseloc.data.town.photometry import apply_photometry
from fuseloc.data.town.render import intrinsics_matrix, render_view
from fuseloc.data.town.views import plan_views
from fuseloc.data.town.write import write_scene

logger = logging.getLogger(__name__)


def _completion_record(config: TownConfig, database: bool = True) -> dict[str, Any]:
    record = {
        "config": config.to_json(),
        "scene_hash": scene_hash(config),
        "generator_version": GENERATOR_VERSION,
    }
    if not database:
        record["database_images"] = False  # absent for full towns, so that older markers stay valid
    return record


def is_complete(root: Path, config: TownConfig, database: bool = True) -> bool:
    """True when ``root`` holds a finished town generated from ``config`` by this generator version (with its
    database images, or without them when ``database`` is False)."""
    marker = Path(root) / ".complete"
    if not marker.is_file():
        return False
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return record == _completion_record(config, database)


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
    database: bool = True,
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
        database: render the database images; False writes the whole scene description but renders only the
            queries (another query seed of a town whose database images exist elsewhere).

    Returns:
        ``root``.
    """
    root = Path(root)
    if not overwrite and is_complete(root, config, database):
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
        rendered_views = views if database else [v for v in views if v.condition != "db"]
        K = intrinsics_matrix(config)
        for folder in ("images/db", "images/query/day", "images/query/night"):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        for i, view in enumerate(rendered_views):
            rendered = render_view(town, K, view.R, view.t, config.image_width, config.image_height)
            image = apply_photometry(rendered.rgb, view, config)
            if not cv2.imwrite(str(tmp / "images" / view.name), image):
                raise OSError(f"could not write {tmp / 'images' / view.name}")
            if progress is not None:
                progress(i + 1, len(rendered_views))
            if (i + 1) % 25 == 0 or i + 1 == len(rendered_views):
                logger.info("synthetic town: rendered %d/%d images", i + 1, len(rendered_views))
        write_scene(tmp, town, views, config)
        (tmp / ".complete").write_text(
            json.dumps(_completion_record(config, database), indent=1, sort_keys=True) + "\n"
        )

        if not overwrite and is_complete(root, config, database):  # a concurrent run finished first
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
    n_db = sum(v.condition == "db" for v in rendered_views)
    logger.info(
        "synthetic town: %d database + %d query images written to %s in %.1f s",
        n_db,
        len(rendered_views) - n_db,
        root,
        time.perf_counter() - start,
    )
    return root
