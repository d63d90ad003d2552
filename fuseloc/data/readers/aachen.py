"""Aachen Day-Night v1.1 from its standard download (DATASETS.md §4).

Layout::

    root/images_upright/{db,sequences,query}/...                image names are relative to this folder
    root/3D-models/aachen_v_1_1/{cameras,images,points3D}.bin    COLMAP SIFT reference model
    root/queries/day_time_queries_with_intrinsics.txt            name MODEL W H params...
    root/queries/night_time_queries_with_intrinsics.txt          (or ..._v1_1.txt, depending on the download)

Only listed queries are evaluated (never folder globs). No query ground truth: the server scores the
submission, whose names are bare file names.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

from fuseloc.data.readers.base import (
    STANDARD_THRESHOLDS,
    BenchmarkSpec,
    DatasetReader,
    LocalizationData,
    check_images_exist,
    resolve_root,
)
from fuseloc.data.readers.generic import read_query_list
from fuseloc.data.scene import QuerySet, Scene
from fuseloc.errors import InputError

logger = logging.getLogger(__name__)

#: Queries the release evaluates (DATASETS.md §4.2): 824 day + 191 night (98 of v1.0 + 93 added in v1.1).
RELEASE_QUERY_COUNTS = {"day": 824, "night": 191}
DAY_LIST = "queries/day_time_queries_with_intrinsics.txt"
NIGHT_LISTS = ("queries/night_time_queries_with_intrinsics_v1_1.txt", "queries/night_time_queries_with_intrinsics.txt")


class AachenReader(DatasetReader):
    """Aachen Day-Night v1.1.

    Args:
        root: dataset root; default ``$FUSELOC_DATA/aachen_v1.1``. Environment variables are expanded.
        images: image folder relative to ``root``.
        model: COLMAP reference model relative to ``root``.
        queries: query lists with intrinsics, relative to ``root``; default: the day list and the night list
            (``night_time_queries_with_intrinsics_v1_1.txt`` when the download has it, else
            ``night_time_queries_with_intrinsics.txt``).
        check_images: fail early when a listed image file is missing.
        name: benchmark name used in output paths.
    """

    def __init__(self, root: str | Path | None = None, images: str = "images_upright", model: str = "3D-models/aachen_v_1_1",
                 queries: list[str] | None = None, check_images: bool = True, name: str = "aachen_v1.1"):
        self.root = root
        self.images = images
        self.model = model
        self.queries = queries
        self.check_images = check_images
        self.name = name

    def query_lists(self, root: Path) -> list[Path]:
        if self.queries is not None:
            return [root / q for q in self.queries]
        night = next((root / n for n in NIGHT_LISTS if (root / n).is_file()), root / NIGHT_LISTS[-1])
        return [root / DAY_LIST, night]

    def load(self) -> LocalizationData:
        root = resolve_root(self.root, "aachen_v1.1")
        if not root.is_dir():
            raise InputError("Aachen root not found", root)
        image_root = root / self.images
        scene = Scene.from_colmap(root / self.model, image_root)
        names, cameras, conditions = [], [], []
        basenames: dict[str, tuple[Path, int]] = {}
        for path in self.query_lists(root):
            for entry in read_query_list(path):
                base = PurePosixPath(entry.name).name
                if base in basenames:
                    # Submissions use bare file names, so they must identify the query.
                    first = basenames[base]
                    raise InputError(f"query file name {base!r} also listed at {first[0]}:{first[1]}", path, entry.line)
                basenames[base] = (path, entry.line)
                if self.check_images and not (image_root / entry.name).is_file():
                    raise InputError(f"query image {entry.name!r} not found under {image_root}", path, entry.line)
                names.append(entry.name)
                cameras.append(entry.camera)
                conditions.append(_condition(entry.name, path))
        if self.check_images:
            check_images_exist(image_root, scene.image_names, root / self.model, "database")
        queries = QuerySet(names, cameras, None, conditions, image_root)
        counts = {c: conditions.count(c) for c in RELEASE_QUERY_COUNTS}
        if counts != RELEASE_QUERY_COUNTS:
            # A partial or v1.0 list still runs, but its submission would not score as the benchmark's.
            logger.warning("Aachen: the query lists (%s) hold %d day and %d night queries; the v1.1 release "
                           "evaluates %d day and %d night", ", ".join(str(p) for p in self.query_lists(root)),
                           counts["day"], counts["night"], RELEASE_QUERY_COUNTS["day"], RELEASE_QUERY_COUNTS["night"])
        logger.info("Aachen: %d database images, %d points, %d queries (%d night)", scene.num_images, scene.num_points,
                    len(names), conditions.count("night"))
        spec = BenchmarkSpec(name=self.name, thresholds=STANDARD_THRESHOLDS,
                             splits={"day": ("day",), "night": ("night",)}, submission_names="basename")
        return LocalizationData(scene=scene, queries=queries, spec=spec, root=root)


def _condition(name: str, list_path: Path) -> str:
    """day/night from the query folder (``query/night/...``), else from the list's file name."""
    parts = PurePosixPath(name).parts
    if len(parts) > 1 and parts[0] == "query" and parts[1] in ("day", "night"):
        return parts[1]
    return "night" if "night" in list_path.name else "day"
