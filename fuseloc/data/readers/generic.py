"""hloc's convention for custom data: an image root, a COLMAP model, and plain-text query lists.

Layout (all paths configurable)::

    root/
      images/...                     image files; names below are relative to this folder
      sparse/                        COLMAP model (bin or txt) of the database images; may lack points
      queries_with_intrinsics.txt    name MODEL W H params...
      gt_poses.txt                   optional: name qw qx qy qz tx ty tz (world-to-camera)
      query_conditions.txt           optional: name condition
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fuseloc.data.readers.base import STANDARD_THRESHOLDS, BenchmarkSpec, DatasetReader, LocalizationData
from fuseloc.data.readers.colmap_model import locate_image
from fuseloc.data.scene import QuerySet, Scene
from fuseloc.errors import InputError
from fuseloc.io import iter_lines, parse_floats
from fuseloc.types import CAMERA_MODEL_PARAMS, Camera, Pose

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryEntry:
    name: str
    camera: Camera
    line: int  # 1-based line number in the list, for error messages


def read_query_list(path: str | Path) -> list[QueryEntry]:
    """Parse ``name MODEL W H params...`` lines (hloc's ``*_queries_with_intrinsics.txt``)."""
    queries = []
    seen: set[str] = set()
    for line, tokens in iter_lines(path):
        if len(tokens) < 4:
            raise InputError(f"expected 'name MODEL W H params...', got {' '.join(tokens)!r}", path, line)
        if tokens[1] not in CAMERA_MODEL_PARAMS and any(t in CAMERA_MODEL_PARAMS for t in tokens[2:]):
            model_at = next(i for i, t in enumerate(tokens) if t in CAMERA_MODEL_PARAMS)
            raise InputError(f"the name must be one field without spaces, but the camera model comes after "
                             f"{' '.join(tokens[:model_at])!r}", path, line)
        try:
            camera = Camera.from_tokens(tokens[1:])
        except InputError as exc:
            raise exc.at(path, line) from None
        if tokens[0] in seen:
            raise InputError(f"duplicate query {tokens[0]!r}", path, line)
        seen.add(tokens[0])
        queries.append(QueryEntry(tokens[0], camera, line))
    return queries


def read_image_list(path: str | Path) -> list[str]:
    """Parse a list with one image name per line (extra columns ignored)."""
    return [tokens[0] for _, tokens in iter_lines(path)]


def read_pose_list(path: str | Path, centers: bool = False) -> dict[str, Pose]:
    """Parse ``name qw qx qy qz tx ty tz`` lines (or ``... cx cy cz`` camera centres when ``centers``)."""
    poses = {}
    lines: dict[str, int] = {}
    for line, tokens in iter_lines(path):
        if len(tokens) != 8:
            raise InputError(f"expected 'name qw qx qy qz tx ty tz' (8 fields), got {len(tokens)}", path, line)
        if tokens[0] in lines:
            raise InputError(f"duplicate pose for {tokens[0]!r} (first on line {lines[tokens[0]]})", path, line)
        lines[tokens[0]] = line
        values = parse_floats(tokens[1:], path, line, "a pose")
        try:
            poses[tokens[0]] = (Pose.from_center if centers else Pose.from_qt)(values[:4], values[4:])
        except InputError as exc:
            raise exc.at(path, line) from None
    return poses


def read_conditions(path: str | Path) -> dict[str, str]:
    conditions = {}
    for line, tokens in iter_lines(path):
        if len(tokens) != 2:
            raise InputError(f"expected 'name condition', got {' '.join(tokens)!r}", path, line)
        conditions[tokens[0]] = tokens[1]
    return conditions


def write_pose_list(path: str | Path, names: list[str], poses: list[Pose]) -> Path:
    from fuseloc.io import write_text_atomic

    return write_text_atomic(path, "".join(p.to_line(n) + "\n" for n, p in zip(names, poses)))


class GenericReader(DatasetReader):
    """A dataset in hloc's custom-data layout.

    Args:
        root: dataset root directory.
        images: image folder, relative to ``root``.
        model: COLMAP model folder of the database images, relative to ``root``.
        queries: query list with intrinsics, relative to ``root``.
        gt_poses: optional ground-truth pose list, relative to ``root``; ignored when absent.
        conditions: optional ``name condition`` list, relative to ``root``; ignored when absent.
        name: benchmark name used in output paths.
        check_images: fail early when a listed image file is missing.
    """

    def __init__(
        self,
        root: str | Path,
        images: str = "images",
        model: str = "sparse",
        queries: str = "queries_with_intrinsics.txt",
        gt_poses: str = "gt_poses.txt",
        conditions: str = "query_conditions.txt",
        name: str = "custom",
        check_images: bool = True,
    ):
        self.root = Path(root)
        self.images = images
        self.model = model
        self.queries = queries
        self.gt_poses = gt_poses
        self.conditions = conditions
        self.name = name
        self.check_images = check_images

    def load(self) -> LocalizationData:
        if not self.root.is_dir():
            raise InputError("dataset root not found", self.root)
        image_root = self.root / self.images
        scene = Scene.from_colmap(self.root / self.model, image_root)
        query_path = self.root / self.queries
        query_list = read_query_list(query_path)
        names = [q.name for q in query_list]
        if self.check_images:
            for q in query_list:
                if not (image_root / q.name).is_file():
                    raise InputError(f"query image {q.name!r} not found under {image_root}", query_path, q.line)
            for name in scene.image_names:
                if not (image_root / name).is_file():
                    raise InputError(f"database image {name!r} not found under {image_root}",
                                     *locate_image(self.root / self.model, name=name))
        gt = None
        if (self.root / self.gt_poses).is_file():
            gt_map = read_pose_list(self.root / self.gt_poses)
            gt = [gt_map.get(n) for n in names]
            unmatched = sorted(set(gt_map) - set(names))
            if unmatched:
                logger.warning("%s: %d of %d ground-truth names match no query (e.g. %r); they are ignored",
                               self.root / self.gt_poses, len(unmatched), len(gt_map), unmatched[0])
            if gt_map and names and all(p is None for p in gt):
                raise InputError(f"no ground-truth name matches a query (e.g. {unmatched[0]!r} is no name in "
                                 f"{self.queries}); names are relative to the image folder", self.root / self.gt_poses)
        conditions = None
        if (self.root / self.conditions).is_file():
            cond_map = read_conditions(self.root / self.conditions)
            conditions = [cond_map.get(n, "all") for n in names]
        queries = QuerySet(names, [q.camera for q in query_list], gt, conditions, image_root)
        logger.info("%s: %d database images, %d points, %d queries", self.root, scene.num_images, scene.num_points, len(queries))
        spec = BenchmarkSpec(name=self.name, thresholds=STANDARD_THRESHOLDS)
        return LocalizationData(scene=scene, queries=queries, spec=spec, root=self.root)
